//! The docker-compose stack without Docker. `docker-compose config` resolves
//! `docker-compose.yml`; then every service built from this repository runs
//! here, as a process, with the command, environment and files compose
//! gives it: the six zone containers, faultline with its mounted config and
//! rules, the health check, and the load generator. What a container gets
//! from its network is made local: host names (`lambda-use1`, `faultline`)
//! and `0.0.0.0` listeners become loopback ports, and the health check is
//! told where "127.0.0.1:9000" is (`FAULTLINE_ADMIN`); the load generator
//! also reports every second instead of every ten. Then the walkthrough's
//! scenario plays and the load generator must see us-east-1 fail and
//! us-west-2 answer.
//!
//! Needs `docker-compose` (Debian package; it brings python3-yaml, which
//! turns its output into JSON here). `.ci/run` installs it; elsewhere the
//! test is skipped with a notice.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");

/// `docker-compose config` as JSON, or `None` (skipped) without docker-compose outside CI.
fn resolved_compose_file() -> Option<Value> {
    let config = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .env("FAULTLINE_ADMIN_TOKEN", "compose-test-token")
        .output();
    let config = match config {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("docker-compose is missing ({e}): .ci/run installs the Debian package")
        }
        Err(_) => {
            eprintln!("SKIPPED: docker-compose not installed (apt-get install docker-compose)");
            return None;
        }
    };
    assert!(
        config.status.success(),
        "docker-compose config rejected docker-compose.yml:\n{}",
        String::from_utf8_lossy(&config.stderr)
    );
    // Debian's python3, which the docker-compose package gives PyYAML.
    let mut python = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (docker-compose depends on it)");
    std::io::Write::write_all(&mut python.stdin.take().unwrap(), &config.stdout).unwrap();
    let json = python.wait_with_output().unwrap();
    assert!(json.status.success(), "python3 could not read the YAML");
    Some(serde_json::from_slice(&json.stdout).unwrap())
}

/// A service's process: its stdout as lines, stderr kept for failures.
struct Service {
    name: String,
    child: std::process::Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn spawn(name: &str, program: &str, args: &[String], env: &[(String, String)]) -> Service {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run {program}: {e}"));
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Service {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first line from now on that `wanted` accepts.
    fn line_where(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "{}: no line {what}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value after `flag` in a command.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// What a program in the image is called here.
fn program(name: &str) -> String {
    match name {
        "faultline" => FAULTLINE.to_owned(),
        example => support::example(example).display().to_string(),
    }
}

/// Lays the service's mounts out under `root`: directories linked, files
/// copied with `rewrite` applied. Returns container path → local path.
fn mount(service: &Value, root: &Path, rewrite: &dyn Fn(&str) -> String) -> Vec<(String, PathBuf)> {
    let mut mounts = Vec::new();
    for volume in strings(&service["volumes"]) {
        let mut parts = volume.split(':');
        let (host, inside) = (parts.next().unwrap(), parts.next().unwrap());
        let local = root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        if Path::new(host).is_dir() {
            std::os::unix::fs::symlink(host, &local).unwrap();
        } else {
            let text = std::fs::read_to_string(host)
                .unwrap_or_else(|e| panic!("mounted file {host}: {e}"));
            std::fs::write(&local, rewrite(&text)).unwrap();
        }
        mounts.push((inside.to_owned(), local));
    }
    mounts
}

#[test]
fn the_compose_stack_runs_without_docker() {
    let Some(compose) = resolved_compose_file() else {
        return;
    };
    let services = compose["services"].as_object().unwrap();
    for name in ["faultline", "loadgen", "prometheus", "grafana"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no {name}"
        );
    }

    // The zone containers: `faultline demo-upstream` on a free port each,
    // reachable under the container's name and its network aliases.
    let mut hosts: HashMap<String, String> = HashMap::new();
    let mut zones = Vec::new();
    let mut zone_of: HashMap<String, (String, String)> = HashMap::new();
    for (name, service) in services {
        let command = strings(&service["command"]);
        if command.first().map(String::as_str) != Some("demo-upstream") {
            continue;
        }
        let args: Vec<String> = command
            .iter()
            .map(|a| {
                if a.starts_with("0.0.0.0:") {
                    "127.0.0.1:0".to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut zone = Service::spawn(name, FAULTLINE, &args, &environment(service));
        let line = zone.line_where("saying where it listens", |l| l.contains("listening on"));
        let addr = line.rsplit("http://").next().unwrap().to_owned();
        let region = flag(&command, "--region").unwrap().to_owned();
        let zone_name = flag(&command, "--zone").unwrap().to_owned();
        let aliases = strings(&service["networks"]["default"]["aliases"]);
        for host in aliases.iter().chain([name]) {
            hosts.insert(host.clone(), addr.clone());
            zone_of.insert(host.clone(), (region.clone(), zone_name.clone()));
        }
        zones.push(zone);
    }
    assert_eq!(zones.len(), 6, "three zones in each of two regions");

    // faultline: its listeners on free loopback ports, upstream host names
    // on the zones' ports, everything else as mounted.
    let faultline = &services["faultline"];
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let ports: HashMap<&str, &str> = [("8080", proxy.as_str()), ("9000", admin.as_str())].into();
    let rewrite = |text: &str| {
        let mut text = text
            .replace("\"0.0.0.0:8080\"", &format!("\"{proxy}\""))
            .replace("\"0.0.0.0:9000\"", &format!("\"{admin}\""));
        for (host, addr) in &hosts {
            text = text.replace(
                &format!("http://{host}:8080\""),
                &format!("http://{addr}\""),
            );
        }
        text
    };
    let root = tempfile::tempdir().unwrap();
    let mounts = mount(faultline, root.path(), &rewrite);
    let inside = |arg: &str| {
        mounts
            .iter()
            .find(|(path, _)| arg == path)
            .map_or_else(|| arg.to_owned(), |(_, local)| local.display().to_string())
    };
    let args: Vec<String> = strings(&faultline["command"])
        .iter()
        .map(|a| inside(a))
        .collect();
    let config_path = PathBuf::from(inside("/etc/faultline/faultline.toml"));

    // The config is the demo's topology: the same upstreams and labels, and
    // each upstream's host name is an alias of the zone its labels name.
    let config_text = std::fs::read_to_string("examples/compose/faultline.toml").unwrap();
    let config: toml::Table = config_text.parse().unwrap();
    let upstreams = config["upstream"].as_array().unwrap();
    let names: Vec<_> = upstreams
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    let demo: Vec<_> = faultline::demo::UPSTREAMS.iter().map(|u| u.0).collect();
    assert_eq!(names, demo, "the compose config's upstreams are the demo's");
    for (name, service, region, zone) in faultline::demo::UPSTREAMS {
        let upstream = upstreams
            .iter()
            .find(|u| u["name"].as_str() == Some(name))
            .unwrap();
        assert_eq!(
            upstream["url"].as_str(),
            Some(format!("http://{name}:8080").as_str())
        );
        let label = |key: &str| upstream["labels"][key].as_str();
        assert_eq!(label("region"), Some(region), "{name}");
        assert_eq!(label("zone"), Some(zone), "{name}");
        assert_eq!(label("service"), Some(service), "{name}");
        assert_eq!(
            zone_of.get(name),
            Some(&(region.to_owned(), zone.to_owned())),
            "{name} must be an alias of the {zone} container"
        );
    }

    let env = environment(faultline);
    assert!(
        env.iter()
            .any(|(k, v)| k == "FAULTLINE_ADMIN_TOKEN" && !v.is_empty()),
        "faultline's admin API needs a token off loopback"
    );
    let proxy_process = Service::spawn("faultline", FAULTLINE, &args, &env);
    assert!(config_path.exists());

    // The health check, as the container runs it, where 127.0.0.1:9000 is
    // the admin API.
    let health = strings(&faultline["healthcheck"]["test"]);
    assert_eq!(health.first().map(String::as_str), Some("CMD"));
    let mut check_env = env.clone();
    check_env.push(("FAULTLINE_ADMIN".to_owned(), format!("http://{admin}")));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = Command::new(program(&health[1]))
            .args(&health[2..])
            .envs(check_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        if status.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the health check never passed: {}\nfaultline's stderr:\n{}",
            String::from_utf8_lossy(&status.stderr),
            proxy_process.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The load generator, pointed at faultline's ports.
    let loadgen = &services["loadgen"];
    let entrypoint = strings(&loadgen["entrypoint"]);
    let mut args: Vec<String> = entrypoint[1..]
        .iter()
        .chain(&strings(&loadgen["command"]))
        .map(|a| {
            let mut a = a.clone();
            for (port, local) in &ports {
                a = a.replace(&format!("faultline:{port}"), local);
            }
            a
        })
        .collect();
    args.extend(["--every".to_owned(), "1s".to_owned()]);
    let mut load = Service::spawn(
        "loadgen",
        &program(&entrypoint[0]),
        &args,
        &environment(loadgen),
    );
    load.line_where("with traffic before the outage", |l| {
        l.contains("calls:") && l.contains("no scenario")
    });

    // The walkthrough: start the model incident from the faultline container.
    let start = Command::new(FAULTLINE)
        .args([
            "ctl",
            "scenario",
            "start",
            "us-east-1-lambda-capacity",
            "--speed",
            "60",
        ])
        .envs(check_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "ctl scenario start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    // us-east-1 fails, us-west-2 answers, nothing is lost. The first line
    // of the run may hold calls from before it; the brownout it turns off
    // is not the outage.
    load.line_where("from the run", |l| {
        l.contains("running us-east-1-lambda-capacity")
    });
    let during = load.line_where("showing the outage and the failover", |l| {
        l.contains("running us-east-1-lambda-capacity")
            && !l.contains("(failed 0%)")
            && !l.contains("(failed -)")
    });
    assert!(during.contains("lost 0"), "{during}");
    assert!(!during.contains("us-west-2 answered 0,"), "{during}");

    // Prometheus and Grafana are the upstream images; their mounted files
    // are the ones tests/dashboard.rs runs and checks.
    for (service, file) in [
        ("prometheus", "examples/prometheus/prometheus.yml"),
        ("grafana", "examples/grafana/dashboards"),
        ("grafana", "examples/grafana/provisioning"),
    ] {
        let volumes = strings(&services[service]["volumes"]);
        assert!(
            volumes.iter().any(|v| v.contains(file)),
            "{service} mounts {file}: {volumes:?}"
        );
    }
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert!(home.starts_with("/var/lib/grafana/dashboards/"));
    let dashboard = Path::new("examples/grafana/dashboards")
        .join(home.trim_start_matches("/var/lib/grafana/dashboards/"));
    assert!(dashboard.exists(), "the home dashboard {home} is mounted");

    drop(load);
    drop(proxy_process);
}
