//! The Kubernetes manifests (`deploy/kubernetes`, its `sidecar/` example)
//! and the Helm chart (`deploy/helm/faultline`), rendered and checked
//! offline, with no cluster:
//!
//! - rendered by the real tools: `kubectl kustomize` and `helm lint
//!   --strict` / `helm template` (official kubectl and helm builds, from the
//!   npm package `.ci/run` unpacks);
//! - every object validated strictly against the Kubernetes schemas of
//!   every version from 1.29 on (kubernetes-validate, PyPI, through
//!   `tests/deploy/k8s.py`, which also hands the objects over as JSON);
//! - in every rendering: the config and rules ConfigMaps mounted as
//!   directories (never `subPath`, which never sees an update), the
//!   readiness probe on `/healthz` of the admin port faultline.toml
//!   listens on, the admin token from a Secret through the variable
//!   `token_env` names, Prometheus annotations on that port, both
//!   Services pointing at real ports, a non-root read-only container;
//! - the config and rules the pods would mount, laid out as the kubelet
//!   lays out a ConfigMap volume (`..data`), pass `faultline check`; and
//!   faultline started as the shared Deployment's container would be
//!   (its args, its token) answers the probe, guards the API with the
//!   Secret's token and serves `/metrics`;
//! - the chart renders the same pods, Services, config and rules as the
//!   manifests, in both modes.
//!
//! The tools come from `.ci/run` (`FAULTLINE_K8S_TOOLS`, `FAULTLINE_K8S_PYTHON`);
//! without them the tests fail under CI and are skipped, loudly, elsewhere.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::*;

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");
const CHART: &str = "deploy/helm/faultline";
/// Where the pods mount the two ConfigMaps.
const CONFIG_DIR: &str = "/etc/faultline/config";
const RULES_DIR: &str = "/etc/faultline/rules";
/// The image's user (Dockerfile).
const IMAGE_UID: u64 = 10001;
/// The token the chart is given where a test sets one.
const TOKEN: &str = "deploy-test-token";

struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    python: PathBuf,
    /// Helm's cache, config and data homes: nothing of the user's.
    helm_home: tempfile::TempDir,
}

/// The tools as `.ci/run` installs them; `None` (skipped) outside CI
/// without them, a failure under CI.
fn tools() -> Option<Tools> {
    let base = std::env::var("FAULTLINE_K8S_TOOLS")
        .unwrap_or_else(|_| "/tmp/faultline-k8s-tools".to_owned());
    let python = std::env::var("FAULTLINE_K8S_PYTHON")
        .unwrap_or_else(|_| "/tmp/faultline-k8s-venv/bin/python".to_owned());
    let helm = Path::new(&base).join("helm/helm");
    let kubectl = Path::new(&base).join("kubectl/kubectl");
    let missing: Vec<String> = [&helm, &kubectl, &PathBuf::from(&python)]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "missing {missing:?}: .ci/run installs helm and kubectl (FAULTLINE_K8S_TOOLS) \
             and kubernetes-validate (FAULTLINE_K8S_PYTHON)"
        );
        eprintln!("SKIPPED: {missing:?} not installed (run .ci/run)");
        return None;
    }
    Some(Tools {
        helm,
        kubectl,
        python: PathBuf::from(python),
        helm_home: tempfile::tempdir().unwrap(),
    })
}

/// Runs `command`, feeding it `input`; its stdout, or a failure with its stderr.
fn run(command: &mut Command, input: Option<&[u8]>) -> Vec<u8> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One rendering: what `kubectl apply` would be given.
struct Rendering {
    name: String,
    objects: Vec<Value>,
}

impl Tools {
    /// Validates a YAML stream; the objects in it.
    fn validate(&self, name: &str, yaml: &[u8]) -> Rendering {
        let out = run(
            Command::new(&self.python).args(["tests/deploy/k8s.py", "validate"]),
            Some(yaml),
        );
        let out: Value = serde_json::from_slice(&out).unwrap();
        let versions = out["versions"].as_array().unwrap();
        assert!(
            versions.first() == Some(&json!("1.29.0")) && versions.len() >= 5,
            "{name}: validated against {versions:?}"
        );
        let objects = out["documents"].as_array().unwrap().clone();
        assert!(!objects.is_empty(), "{name}: nothing rendered");
        Rendering {
            name: name.to_owned(),
            objects,
        }
    }

    fn kustomize(&self, dir: &str) -> Rendering {
        let yaml = run(Command::new(&self.kubectl).args(["kustomize", dir]), None);
        self.validate(&format!("kubectl kustomize {dir}"), &yaml)
    }

    fn helm(&self, command: &str, args: &[&str]) -> Vec<u8> {
        let home = self.helm_home.path();
        run(
            Command::new(&self.helm)
                .arg(command)
                .args(args)
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data")),
            None,
        )
    }

    /// `helm template`'s complaint about values the chart refuses.
    fn chart_refuses(&self, values: &[&str]) -> String {
        let home = self.helm_home.path();
        let out = Command::new(&self.helm)
            .args(["template", "refused", CHART])
            .args(values)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "helm template accepted {values:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `helm lint --strict` with these values, then `helm template`.
    fn chart(&self, release: &str, values: &[&str]) -> Rendering {
        let mut lint = vec![CHART];
        lint.extend(values);
        self.helm("lint", &[&["--strict"], lint.as_slice()].concat());
        let mut template = vec![release, CHART, "--namespace", "chaos"];
        template.extend(values);
        let yaml = self.helm("template", &template);
        self.validate(&format!("helm template {}", template.join(" ")), &yaml)
    }
}

impl Rendering {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: one {kind}", self.name);
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn pod(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]
    }
}

/// The faultline container of a pod spec: a container, or a native
/// sidecar (an init container that keeps running).
fn faultline_container(spec: &Value) -> (&Value, bool) {
    let find = |list: &str| {
        spec[list]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "faultline")
    };
    match (find("containers"), find("initContainers")) {
        (Some(c), None) => (c, false),
        (None, Some(c)) => (c, true),
        other => panic!("one faultline container, found {other:?}"),
    }
}

/// Every container of a pod spec, init containers included.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().into_iter().flatten())
        .collect()
}

/// The number a Service's `targetPort` or a probe's `port` stands for in
/// the pod: a number, or a container port's name.
fn resolve_port(spec: &Value, port: &Value) -> Option<u64> {
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    containers(spec)
        .into_iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
}

fn port_of(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Standard base64, as a Secret's `data` holds it.
fn base64_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = alphabet.iter().position(|a| *a == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// What a rendering gives faultline: its config and rule files, and the
/// admin token when the rendering carries the Secret.
struct Mounted {
    config: String,
    rules: BTreeMap<String, String>,
    token: Option<String>,
    args: Vec<String>,
}

/// The checks every rendering must pass, whatever the mode; returns what
/// the faultline container mounts.
fn check(r: &Rendering) -> Mounted {
    let name = &r.name;
    let pod = r.pod();
    let spec = &pod["spec"];
    let (faultline, native_sidecar) = faultline_container(spec);

    // No subPath anywhere: a subPath mount is a copy the kubelet never
    // updates, so a rules change would never reach the replica.
    for container in containers(spec) {
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
                "{name}: container {} mounts with subPath: {mount}",
                container["name"]
            );
        }
    }
    // The config and the rules: ConfigMaps of this rendering, whole (no
    // `items`, so a new rule file appears), mounted read-only as directories.
    let mut mounted = BTreeMap::new();
    for dir in [CONFIG_DIR, RULES_DIR] {
        let mount = faultline["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
        assert_eq!(mount["readOnly"], true, "{name}: {mount}");
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let config_map = &volume["configMap"];
        assert!(
            config_map.is_object() && config_map.get("items").is_none(),
            "{name}: {dir} must be a whole ConfigMap: {volume}"
        );
        let object = r
            .named("ConfigMap", config_map["name"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{name}: no ConfigMap {}", config_map["name"]));
        let data: BTreeMap<String, String> =
            serde_json::from_value(object["data"].clone()).unwrap();
        mounted.insert(dir, (config_map["name"].as_str().unwrap().to_owned(), data));
    }
    let (rules_name, rules) = mounted.remove(RULES_DIR).unwrap();
    let (_, config) = mounted.remove(CONFIG_DIR).unwrap();
    // The rules ConfigMap keeps its name, so an update replaces it in
    // place (a generated hash suffix would make every update a rollout).
    assert!(
        rules_name.ends_with("-rules"),
        "{name}: rules ConfigMap {rules_name}"
    );
    assert!(
        !rules.is_empty() && rules.keys().all(|k| k.ends_with(".toml")),
        "{name}: rule files {:?}",
        rules.keys()
    );
    let args: Vec<String> = serde_json::from_value(faultline["args"].clone()).unwrap();
    assert_eq!(
        args,
        ["run", "-c", &format!("{CONFIG_DIR}/faultline.toml")],
        "{name}"
    );
    let config = config
        .get("faultline.toml")
        .unwrap_or_else(|| panic!("{name}: no faultline.toml in the config ConfigMap"))
        .clone();
    let toml: toml::Value = toml::from_str(&config).unwrap();
    let admin = toml["admin"]["listen"].as_str().unwrap();
    // Beyond loopback: the kubelet, Prometheus and `ctl --fleet` reach the
    // pod's IP; so the API needs its token, from the environment.
    assert!(admin.starts_with("0.0.0.0:"), "{name}: admin on {admin}");
    let admin_port = port_of(admin);
    assert_eq!(
        toml["admin"]["token_env"].as_str(),
        Some("FAULTLINE_ADMIN_TOKEN")
    );
    assert!(
        toml["admin"].get("token").is_none(),
        "{name}: a token in the config"
    );
    assert_eq!(
        toml["proxy"]["rules_dir"].as_str(),
        Some("../rules"),
        "{name}: the rules are {RULES_DIR}, next to {CONFIG_DIR}"
    );
    // The halt file's folder: a writable emptyDir of the pod (the root
    // filesystem is read-only), so a restarted container comes back halted.
    let halt_file = toml["admin"]["halt_file"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no admin.halt_file"));
    let halt_dir = halt_file.rsplit_once('/').unwrap().0;
    let mount = faultline["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == halt_dir)
        .unwrap_or_else(|| panic!("{name}: nothing mounted at {halt_dir}"));
    assert!(
        mount.get("readOnly").is_none_or(|ro| ro == false),
        "{name}: {mount}"
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "{name}: {volume}");

    // The token: from a Secret, never a literal.
    let variable = faultline["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "FAULTLINE_ADMIN_TOKEN")
        .unwrap_or_else(|| panic!("{name}: no FAULTLINE_ADMIN_TOKEN"));
    assert!(variable.get("value").is_none(), "{name}: {variable}");
    let secret_ref = &variable["valueFrom"]["secretKeyRef"];
    let (secret, key) = (
        secret_ref["name"].as_str().unwrap(),
        secret_ref["key"].as_str().unwrap(),
    );
    let token = r.named("Secret", secret).map(|s| {
        let encoded = s["data"][key].as_str().unwrap();
        let token = String::from_utf8(base64_decode(encoded)).unwrap();
        assert!(!token.is_empty(), "{name}: empty token in {secret}");
        token
    });

    // Ready when /healthz on the admin port answers.
    let probes: &[&str] = if native_sidecar {
        &["readinessProbe", "startupProbe"]
    } else {
        &["readinessProbe"]
    };
    for probe in probes {
        let get = &faultline[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{name}: {probe}");
        assert_eq!(
            resolve_port(spec, &get["port"]),
            Some(admin_port),
            "{name}: {probe} on {}",
            get["port"]
        );
    }
    if native_sidecar {
        assert_eq!(faultline["restartPolicy"], "Always", "{name}");
    }

    // Prometheus finds /metrics on the admin port.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
    assert_eq!(
        annotations["prometheus.io/port"],
        admin_port.to_string(),
        "{name}"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");

    // Non-root, read-only, nothing more than it needs.
    let security = |field: &str| -> Value {
        let own = &faultline["securityContext"][field];
        if own.is_null() {
            spec["securityContext"][field].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(security("runAsNonRoot"), true, "{name}");
    assert_eq!(security("runAsUser"), IMAGE_UID, "{name}");
    assert_eq!(
        security("seccompProfile")["type"],
        "RuntimeDefault",
        "{name}"
    );
    let own = &faultline["securityContext"];
    assert_eq!(own["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(own["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(own["capabilities"]["drop"], json!(["ALL"]), "{name}");
    let resources = &faultline["resources"];
    for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        assert!(
            resources.pointer(field).is_some(),
            "{name}: no {field}: {resources}"
        );
    }

    // The Services select these pods; the headless one lists every
    // replica's admin port, ready or not.
    let labels = &pod["metadata"]["labels"];
    let selects = |service: &Value| {
        let selector = service["spec"]["selector"].as_object().unwrap();
        !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
    };
    let services = r.all("Service");
    assert_eq!(
        services.len(),
        2,
        "{name}: a Service for traffic, one for the fleet"
    );
    let (headless, traffic): (Vec<&Value>, Vec<&Value>) = services
        .into_iter()
        .partition(|s| s["spec"]["clusterIP"] == "None");
    let (headless, traffic) = (headless[0], traffic[0]);
    for service in [headless, traffic] {
        assert!(
            selects(service),
            "{name}: {service} does not select {labels}"
        );
        let target = &service["spec"]["ports"][0]["targetPort"];
        assert!(
            resolve_port(spec, target).is_some(),
            "{name}: {target} is no port of the pod"
        );
    }
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{name}");
    assert_eq!(
        resolve_port(spec, &headless["spec"]["ports"][0]["targetPort"]),
        Some(admin_port),
        "{name}"
    );
    let listener = toml["listener"][0]["listen"].as_str().unwrap();
    let traffic_port = resolve_port(spec, &traffic["spec"]["ports"][0]["targetPort"]).unwrap();
    if native_sidecar {
        // The proxy is the pod's own: loopback, and the app calls it.
        assert!(listener.starts_with("127.0.0.1:"), "{name}: {listener}");
        let app = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] != "faultline")
            .unwrap();
        let pointed = app["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["value"].as_str().is_some_and(|v| v.contains(listener)));
        assert!(
            pointed,
            "{name}: the app is not pointed at {listener}: {app}"
        );
        assert_ne!(traffic_port, port_of(listener), "{name}");
    } else {
        assert!(listener.starts_with("0.0.0.0:"), "{name}: {listener}");
        assert_eq!(
            traffic_port,
            port_of(listener),
            "{name}: traffic goes to the proxy"
        );
    }

    Mounted {
        config,
        rules,
        token,
        args,
    }
}

/// Lays `files` out in `dir` as the kubelet lays out a ConfigMap volume:
/// a timestamped folder, `..data` pointing at it, each key a symlink
/// through `..data`.
fn configmap_volume(dir: &Path, files: &BTreeMap<String, String>) {
    use std::os::unix::fs::symlink;
    let version = "..2026_12_01_14_00_00.000000001";
    std::fs::create_dir_all(dir.join(version)).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(version).join(file), text).unwrap();
        symlink(format!("..data/{file}"), dir.join(file)).unwrap();
    }
    symlink(version, dir.join("..data")).unwrap();
}

/// `faultline check` on what the pod mounts, laid out as the kubelet does.
fn faultline_check(r: &Rendering, mounted: &Mounted) {
    let root = tempfile::tempdir().unwrap();
    configmap_volume(
        &root.path().join("config"),
        &BTreeMap::from([("faultline.toml".to_owned(), mounted.config.clone())]),
    );
    configmap_volume(&root.path().join("rules"), &mounted.rules);
    let out = Command::new(FAULTLINE)
        .args(["check", "-c"])
        .arg(root.path().join("config/faultline.toml"))
        .env("FAULTLINE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: faultline check: {text}", r.name);
    // Each rule file read once: the `..data` copies are skipped.
    assert!(text.contains(": ok ("), "{}: {text}", r.name);
}

/// A Deployment's pod template and its Services, with the names that only
/// say which generator made them (kustomize's hash suffix) made equal.
fn comparable(r: &Rendering) -> Value {
    let mut template = r.pod().clone();
    template["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k.starts_with("prometheus.io/"));
    for volume in template["spec"]["volumes"].as_array_mut().unwrap() {
        let Some(name) = volume["configMap"]["name"].as_str().map(str::to_owned) else {
            continue;
        };
        if let Some((base, _hash)) = name.split_once("-config-") {
            volume["configMap"]["name"] = json!(format!("{base}-config"));
        }
    }
    let mut services: Vec<Value> = r
        .all("Service")
        .into_iter()
        .map(|s| json!({"name": s["metadata"]["name"], "spec": s["spec"]}))
        .collect();
    services.sort_by_key(|s| s["name"].to_string());
    json!({
        "deployment": r.one("Deployment")["metadata"]["name"],
        "replicas": r.one("Deployment")["spec"]["replicas"],
        "selector": r.one("Deployment")["spec"]["selector"],
        "template": template,
        "services": services,
    })
}

/// The same TOML, comments and layout aside.
fn same_toml(a: &str, b: &str) -> bool {
    toml::from_str::<toml::Value>(a).unwrap() == toml::from_str::<toml::Value>(b).unwrap()
}

#[test]
fn the_manifests_and_the_chart_validate_and_mount_the_rules_as_a_directory() {
    let Some(tools) = tools() else {
        return;
    };
    let shared = tools.kustomize("deploy/kubernetes");
    let sidecar = tools.kustomize("deploy/kubernetes/sidecar");
    let chart_shared = tools.chart(
        "faultline",
        &["--set", &format!("adminToken.value={TOKEN}")],
    );
    let chart_sidecar = tools.chart("orders", &["-f", &format!("{CHART}/values-sidecar.yaml")]);
    // Every knob at once: more replicas, other ports, a token Secret of
    // the user's, rules from a file.
    let chart_custom = tools.chart(
        "chaos",
        &[
            "--set",
            "replicas=5,ports.admin=9100,ports.proxy=8081,adminToken.existingSecret=ops-token",
            "--set-file",
            "rules.payments-errors\\.toml=deploy/kubernetes/sidecar/rules/payments-errors.toml",
        ],
    );

    for r in [
        &shared,
        &sidecar,
        &chart_shared,
        &chart_sidecar,
        &chart_custom,
    ] {
        let mounted = check(r);
        faultline_check(r, &mounted);
    }

    // The manifests ship no token: the user makes the Secret (README).
    assert!(shared.all("Secret").is_empty() && sidecar.all("Secret").is_empty());
    // The chart makes one, or uses the user's.
    assert_eq!(check(&chart_shared).token.as_deref(), Some(TOKEN));
    assert!(chart_custom.all("Secret").is_empty());
    let custom = check(&chart_custom);
    let custom_pod = chart_custom.pod();
    let (faultline, _) = faultline_container(&custom_pod["spec"]);
    assert_eq!(
        faultline["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "ops-token"
    );
    assert_eq!(chart_custom.one("Deployment")["spec"]["replicas"], 5);
    assert!(custom.config.contains("0.0.0.0:9100") && custom.config.contains("0.0.0.0:8081"));
    assert_eq!(
        custom.rules["payments-errors.toml"],
        std::fs::read_to_string("deploy/kubernetes/sidecar/rules/payments-errors.toml").unwrap()
    );
    // A config change rolls the pods; a rules change must not (it reloads).
    let annotations = &custom_pod["metadata"]["annotations"];
    assert!(annotations["checksum/config"].is_string(), "{annotations}");
    assert_eq!(annotations.as_object().unwrap().len(), 4, "{annotations}");

    // Values that cannot work are refused with the field (values.schema.json).
    for (values, field) in [
        (["--set", "mode=daemonset"], "/mode"),
        (["--set", "ports.admin=70000"], "/ports/admin"),
        (["--set-string", "config=[admin]"], "/config"),
        (["--set", "rules.outage=x"], "outage"),
    ] {
        let complaint = tools.chart_refuses(&values);
        assert!(complaint.contains(field), "{values:?}: {complaint}");
    }

    // The chart renders what the manifests say, in both modes.
    for (manifests, chart) in [(&shared, &chart_shared), (&sidecar, &chart_sidecar)] {
        assert_eq!(
            comparable(manifests),
            comparable(chart),
            "{} and {} differ",
            manifests.name,
            chart.name
        );
        let (m, c) = (check(manifests), check(chart));
        assert!(
            same_toml(&m.config, &c.config),
            "faultline.toml differs:\n{}\n---\n{}",
            m.config,
            c.config
        );
        assert_eq!(
            m.rules.keys().collect::<Vec<_>>(),
            c.rules.keys().collect::<Vec<_>>()
        );
        for (file, text) in &m.rules {
            assert!(same_toml(text, &c.rules[file]), "{file} differs");
        }
    }
    // The chart's default rules are the manifests' example, byte for byte.
    assert_eq!(check(&shared).rules, check(&chart_shared).rules);
    assert_eq!(check(&shared).args, check(&chart_shared).args);
}

/// faultline run as the shared Deployment's container: its args against
/// the ConfigMaps laid out as the kubelet does, the Secret's token in the
/// variable; its addresses made loopback ports of this machine. The
/// readiness probe's GET answers, the API wants the token, the scrape
/// path serves metrics, and a rules update through `..data` is reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faultline_runs_as_the_chart_s_pod_says() {
    let Some(tools) = tools() else {
        return;
    };
    let r = tools.chart(
        "faultline",
        &["--set", &format!("adminToken.value={TOKEN}")],
    );
    let mounted = check(&r);
    let token = mounted.token.clone().unwrap();
    let pod = r.pod();
    let (faultline, _) = faultline_container(&pod["spec"]);

    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (admin, proxy) = (free(), free());
    let root = tempfile::tempdir().unwrap();
    // The pod's emptyDir for the halt file, under `root` too.
    let state = root.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = mounted
        .config
        .replace("0.0.0.0:9000", &admin.to_string())
        .replace("0.0.0.0:8080", &proxy.to_string())
        .replace("/var/lib/faultline", state.to_str().unwrap());
    assert!(!config.contains("0.0.0.0"), "{config}");
    configmap_volume(
        &root.path().join("config"),
        &BTreeMap::from([("faultline.toml".to_owned(), config)]),
    );
    let rules_dir = root.path().join("rules");
    configmap_volume(&rules_dir, &mounted.rules);

    // The container's args, with the mount points moved under `root`.
    let args: Vec<String> = mounted
        .args
        .iter()
        .map(|a| a.replace("/etc/faultline", root.path().to_str().unwrap()))
        .collect();
    let env: Vec<(String, String)> = faultline["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => token.clone(), // the secretKeyRef, checked above
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect();
    let start = || {
        tokio::process::Command::new(FAULTLINE)
            .args(&args)
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut child = start();

    // The readiness probe, as the kubelet sends it.
    let probe = &faultline["readinessProbe"]["httpGet"];
    let probe_url = format!("http://{admin}{}", probe["path"].as_str().unwrap());
    wait_until("the readiness probe to pass", async || {
        let request = http::Request::get(&probe_url).body(empty()).unwrap();
        match client().request(request).await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    })
    .await;

    let status_with = async |token: Option<&str>| {
        let mut request = http::Request::get(format!("http://{admin}/api/status"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        send(&client(), request.body(empty()).unwrap()).await
    };
    assert_eq!(status_with(None).await.status, 401);
    assert_eq!(status_with(Some("not-the-token")).await.status, 401);
    assert_eq!(status_with(Some(&token)).await.status, 200);

    let annotations = &pod["metadata"]["annotations"];
    let metrics = get(&format!(
        "http://{admin}{}",
        annotations["prometheus.io/path"].as_str().unwrap()
    ))
    .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .text()
        .contains("faultline_scenario_step{scenario=\"payments-brownout\"}"));

    // A rules update the way the kubelet writes one: a new folder, then
    // `..data` swapped by renaming a new link over it.
    let token = &token;
    let rules = |text: &'static str| async move {
        let request = http::Request::get(format!("http://{admin}/api/rules"))
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        send(&client(), request).await.text().contains(text)
    };
    assert!(!rules("\"k8s-update\"").await);
    let update = "..2026_12_01_14_05_00.000000002";
    std::fs::create_dir(rules_dir.join(update)).unwrap();
    for (file, text) in &mounted.rules {
        std::fs::write(rules_dir.join(update).join(file), text).unwrap();
    }
    let added = "[[rule]]\nname = \"k8s-update\"\nenabled = false\n\
                 [rule.fault]\nkind = \"error\"\nstatus = 500\n";
    std::fs::write(rules_dir.join(update).join("added.toml"), added).unwrap();
    std::os::unix::fs::symlink(update, rules_dir.join("..data_tmp")).unwrap();
    std::fs::rename(rules_dir.join("..data_tmp"), rules_dir.join("..data")).unwrap();
    // A new key's link comes after the swap, as the kubelet makes it.
    std::os::unix::fs::symlink("..data/added.toml", rules_dir.join("added.toml")).unwrap();
    wait_until("the rules update to be reloaded", async || {
        rules("\"k8s-update\"").await
    })
    .await;

    // The README's commands ("Run a fleet on Kubernetes"), as `kubectl
    // exec` runs them in the pod: `faultline ctl` with the pod's
    // environment (so the Secret's token), `--fleet` on the headless
    // Service's address (here, this one replica's), the shipped scenario
    // armed 30 s ahead, then the kill switch.
    let fleet = format!("127.0.0.1:{}", admin.port());
    let ctl = async |args: &[&str]| {
        let out = tokio::process::Command::new(FAULTLINE)
            .args(["ctl", "--fleet", &fleet])
            .args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ctl {args:?}: {stdout}{stderr}");
        stdout
    };
    let status = ctl(&["status"]).await;
    assert!(status.contains("agree     yes, on 1 replica: "), "{status}");
    let started = ctl(&["scenario", "start", "payments-brownout", "--at", "+30s"]).await;
    assert!(
        started.contains("agree     yes, on 1 replica: state scheduled, step 0/3"),
        "{started}"
    );
    let halted = ctl(&["halt"]).await;
    assert!(halted.contains("halted on 1 of 1 replicas"), "{halted}");
    let status = ctl(&["--json", "status"]).await;
    assert!(status.contains("\"halted\": true"), "{status}");

    // The container restarts (the kubelet's restartPolicy) and keeps the
    // pod's emptyDir: it comes back halted.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut child = start();
    wait_until("the restarted container to answer", async || {
        let request = http::Request::get(&probe_url).body(empty()).unwrap();
        client().request(request).await.is_ok()
    })
    .await;
    let status = ctl(&["--json", "status"]).await;
    assert!(status.contains("\"halted\": true"), "{status}");
    ctl(&["resume"]).await;
    assert!(!state.join("halted").exists());

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
