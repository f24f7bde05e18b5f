//! `faultline toxiproxy-server`: Toxiproxy's own command line, parsed as
//! Go's `flag` package parses it (`-host H`, `-host=H`, `--host H`), for
//! images and test harnesses that start `toxiproxy-server`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// What `toxiproxy-server`'s flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    /// `-host` (default `localhost`) and `-port` (default `8474`), resolved.
    pub listen: SocketAddr,
    /// `-config`: a JSON array of proxies, as `/populate` takes.
    pub config: Option<PathBuf>,
    /// `-seed`: the seed of toxicity draws.
    pub seed: Option<u64>,
    /// `-admin` (faultline's own): where faultline's admin API and
    /// `/metrics` listen.
    pub admin: SocketAddr,
}

/// Where faultline's admin API listens unless `-admin` says.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9000";

/// The usage line, for `-help` and errors.
pub const USAGE: &str = "usage: faultline toxiproxy-server [-host HOST] [-port PORT] [-config FILE] [-seed N] [-admin ADDR] [-proxy-metrics] [-runtime-metrics]";

/// Why the flags were not accepted; `Help` asks for the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    Help,
    Invalid(String),
}

/// Parses the arguments after `toxiproxy-server`.
pub fn parse(args: &[String]) -> Result<ServerArgs, ArgsError> {
    let mut host = "localhost".to_owned();
    let mut port = "8474".to_owned();
    let mut config = None;
    let mut seed = None;
    let mut admin = DEFAULT_ADMIN.to_owned();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(ArgsError::Invalid(format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        match name {
            "h" | "help" => return Err(ArgsError::Help),
            // Toxiproxy's metrics flags: faultline's metrics are always on
            // its admin listener's /metrics.
            "proxy-metrics" | "runtime-metrics" => continue,
            "host" | "port" | "config" | "admin" | "seed" => {}
            other => {
                return Err(ArgsError::Invalid(format!(
                    "flag provided but not defined: -{other}"
                )))
            }
        }
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| ArgsError::Invalid(format!("flag needs an argument: -{name}")))?,
        };
        match name {
            "host" => host = value,
            "port" => port = value,
            "config" => config = Some(PathBuf::from(value)),
            "admin" => admin = value,
            _ => {
                seed = Some(value.parse().map_err(|_| {
                    ArgsError::Invalid(format!("invalid value {value:?} for flag -seed"))
                })?)
            }
        }
    }
    let port: u16 = port
        .parse()
        .map_err(|_| ArgsError::Invalid(format!("invalid port {port:?}")))?;
    let listen = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.find(SocketAddr::is_ipv4))
            .ok_or_else(|| ArgsError::Invalid(format!("cannot resolve host {host:?}")))?,
    };
    let admin = admin
        .parse()
        .map_err(|_| ArgsError::Invalid(format!("invalid -admin address {admin:?}")))?;
    Ok(ServerArgs {
        listen,
        config,
        seed,
        admin,
    })
}

/// The faultline config that serves those flags: the Toxiproxy API and
/// the admin API, nothing else.
pub fn config_text(args: &ServerArgs) -> String {
    let seed = args
        .seed
        .map(|seed| format!("seed = {seed}\n"))
        .unwrap_or_default();
    format!(
        "[admin]\nlisten = \"{}\"\n\n[proxy]\n{seed}\n[toxiproxy]\nlisten = \"{}\"\nallow_remote = {}\n",
        args.admin,
        args.listen,
        !args.listen.ip().is_loopback()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Result<ServerArgs, ArgsError> {
        parse(
            &text
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn flags_read_as_go_reads_them() {
        let default = args("").unwrap();
        assert_eq!(default.listen, "127.0.0.1:8474".parse().unwrap());
        let given =
            args("-host=0.0.0.0 --port 18474 -config proxies.json -seed 7 -proxy-metrics").unwrap();
        assert_eq!(given.listen, "0.0.0.0:18474".parse().unwrap());
        assert_eq!(given.config, Some(PathBuf::from("proxies.json")));
        assert_eq!(given.seed, Some(7));
        assert_eq!(
            args("-colour red"),
            Err(ArgsError::Invalid(
                "flag provided but not defined: -colour".into()
            ))
        );
        assert_eq!(
            args("-port"),
            Err(ArgsError::Invalid("flag needs an argument: -port".into()))
        );
        assert_eq!(args("-help"), Err(ArgsError::Help));
        assert!(config_text(&given).contains("allow_remote = true"));
    }
}
