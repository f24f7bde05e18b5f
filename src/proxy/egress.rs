//! The forward proxy's front door (`mode = "forward"`): clients that set
//! `HTTP_PROXY` / `HTTPS_PROXY` send absolute-form requests
//! (`GET http://host:port/path`) and `CONNECT host:port`, and the upstream
//! is picked from that authority: a configured `[[upstream]]` with the same
//! host and port (its name, labels and rules apply), else the first
//! `[[destination]]` whose host glob matches, else the stand-in
//! [`FORWARD_OTHER`]; destinations and `other` send each request to its own
//! authority (or the destination's `connect_to`).
//!
//! Pure: the checks a request passes before it enters the pipeline, each
//! failure the client's (`400 client_protocol`) or the policy's (`403
//! connect_port_denied`). The tunnel itself is [`super::tunnel`]'s.

use http::uri::{Authority, Scheme};
use http::{Method, Uri};

use super::synthetic::ProxyError;
use crate::config::{Config, DestinationConfig, ForwardSettings, UpstreamConfig, FORWARD_OTHER};

/// What a forward listener's request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The upstream it is counted under and whose rules apply.
    pub(super) upstream: usize,
    /// Set for a `CONNECT`: where the tunnel goes, port explicit.
    pub(super) tunnel: Option<Authority>,
    /// A `CONNECT` to a host the listener intercepts.
    pub(super) intercept: bool,
}

/// Every forward listener's settings, and how an authority finds its upstream.
#[derive(Debug, Default)]
pub(super) struct ForwardRoutes {
    /// By listener index; `None` for reverse listeners.
    listeners: Vec<Option<ForwardSettings>>,
    /// The configured upstreams, to find one by authority.
    upstreams: Vec<UpstreamConfig>,
    /// The index of [`FORWARD_OTHER`], when there is a forward listener.
    other: Option<usize>,
    /// In file order: the first whose host glob matches names the traffic.
    destinations: Vec<DestinationConfig>,
}

impl ForwardRoutes {
    pub(super) fn new(config: &Config) -> Self {
        Self {
            listeners: config.listeners.iter().map(|l| l.forward.clone()).collect(),
            upstreams: config.upstreams.clone(),
            other: config
                .upstreams
                .iter()
                .position(|u| u.ad_hoc && u.name == FORWARD_OTHER),
            destinations: config.destinations.clone(),
        }
    }

    /// Where a destination's traffic is dialled instead of the host the
    /// client names, by upstream index.
    pub(super) fn connect_to(&self, upstream: usize) -> Option<&Authority> {
        self.destinations
            .iter()
            .find(|d| d.upstream == upstream)?
            .connect_to
            .as_ref()
    }

    /// Whether a `CONNECT` to `uri` on `listener` is decrypted.
    pub(super) fn intercepts(&self, listener: usize, uri: &Uri) -> bool {
        let Some(Some(settings)) = self.listeners.get(listener) else {
            return false;
        };
        uri.authority()
            .is_some_and(|authority| settings.intercepts(authority.host()))
    }

    /// The upstream, and a `CONNECT`'s tunnel target, for a request that
    /// came in on forward listener `listener`.
    pub(super) fn route(
        &self,
        listener: usize,
        method: &Method,
        uri: &Uri,
    ) -> Result<Target, ProxyError> {
        let (Some(Some(settings)), Some(other)) = (self.listeners.get(listener), self.other) else {
            return Err(ProxyError::NoRoute);
        };
        let bad = |reason: &str| ProxyError::ClientProtocol {
            reason: reason.to_owned(),
        };
        if method == Method::CONNECT {
            // hyper reads a CONNECT's target in authority form only.
            let Some(authority) = uri.authority() else {
                return Err(bad("CONNECT needs host:port"));
            };
            let host = authority.host();
            let Some(port) = authority.port_u16().filter(|&port| port != 0) else {
                return Err(bad("CONNECT needs host:port, with a port"));
            };
            if host.is_empty() || authority.as_str().contains('@') {
                return Err(bad("CONNECT needs host:port"));
            }
            if !settings.allows_connect_to(port) {
                return Err(ProxyError::ConnectPortDenied { port });
            }
            let upstream = self.find(None, host, port).unwrap_or(other);
            return Ok(Target {
                upstream,
                tunnel: Some(authority.clone()),
                intercept: settings.intercepts(host),
            });
        }
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(scheme) if *scheme == Scheme::HTTPS => {
                return Err(bad(
                    "a forward proxy reaches https:// through CONNECT, not in absolute form",
                ))
            }
            Some(_) => return Err(bad("only http:// is forwarded in absolute form")),
            None => {
                return Err(bad(
                    "a forward proxy takes absolute-form requests (GET http://host/path)",
                ))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(bad("the request's URI has no host"));
        };
        let host = authority.host();
        if host.is_empty() || authority.as_str().contains('@') {
            return Err(bad("the request's URI has no valid host"));
        }
        let port = match authority.port_u16() {
            Some(0) => return Err(bad("the request's URI has port 0")),
            Some(port) => port,
            // Something after the host that is not a port.
            None if authority.as_str().len() > host.len() => {
                return Err(bad("the request's URI has an invalid port"))
            }
            None => 80,
        };
        let upstream = self.find(Some(&Scheme::HTTP), host, port).unwrap_or(other);
        Ok(Target {
            upstream,
            tunnel: None,
            intercept: false,
        })
    }

    /// The first configured upstream at `host:port` (over `scheme`, if
    /// given), else the first destination whose glob takes `host`.
    fn find(&self, scheme: Option<&Scheme>, host: &str, port: u16) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|upstream| {
                scheme.is_none_or(|scheme| upstream.scheme == *scheme)
                    && upstream.has_authority(host, port)
            })
            .or_else(|| {
                // Globs are lowercase and match case-insensitively.
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                self.destinations
                    .iter()
                    .find(|d| d.host.matches(bare))
                    .map(|d| d.upstream)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[[listener]]
name = "egress"
mode = "forward"
allow_ports = [8443]

[[upstream]]
name = "orders"
url = "http://orders.internal:8080"

[[upstream]]
name = "api"
url = "https://API.example.test"
"#;

    fn routes() -> ForwardRoutes {
        let config = Config::parse(CONFIG, Path::new(".")).unwrap();
        ForwardRoutes::new(&config)
    }

    fn route(method: Method, uri: &str) -> Result<Target, String> {
        let uri: Uri = uri.parse().unwrap();
        routes()
            .route(0, &method, &uri)
            .map_err(|e| format!("{} {}", e.status().as_u16(), e.code()))
    }

    fn upstream(method: Method, uri: &str) -> usize {
        route(method, uri).unwrap().upstream
    }

    #[test]
    fn an_authority_finds_its_configured_upstream_else_other() {
        assert_eq!(upstream(Method::GET, "http://orders.internal:8080/x"), 0);
        assert_eq!(upstream(Method::GET, "http://ORDERS.internal:8080/"), 0);
        // Another port, or https://'s upstream over http://: not that upstream.
        assert_eq!(upstream(Method::GET, "http://orders.internal/x"), 2);
        assert_eq!(upstream(Method::GET, "http://api.example.test:443/"), 2);
        assert_eq!(upstream(Method::CONNECT, "api.example.test:443"), 1);
        assert_eq!(upstream(Method::CONNECT, "elsewhere.test:443"), 2);
        assert_eq!(
            route(Method::CONNECT, "elsewhere.test:8443")
                .unwrap()
                .tunnel,
            Some(Authority::from_static("elsewhere.test:8443"))
        );
    }

    #[test]
    fn connect_reaches_443_and_the_allowed_ports_only() {
        assert_eq!(
            route(Method::CONNECT, "mail.test:25"),
            Err("403 connect_port_denied".into())
        );
        assert!(route(Method::CONNECT, "mail.test:8443").is_ok());
        assert_eq!(
            route(Method::CONNECT, "mail.test"),
            Err("400 client_protocol".into())
        );
        assert_eq!(
            route(Method::CONNECT, "mail.test:0"),
            Err("400 client_protocol".into())
        );
    }

    #[test]
    fn only_absolute_http_is_forwarded() {
        for uri in [
            "/path",
            "https://api.example.test/",
            "ftp://files.test/",
            "http://x.test:99999/",
            "http://x.test:0/",
        ] {
            assert_eq!(
                route(Method::GET, uri),
                Err("400 client_protocol".into()),
                "{uri}"
            );
        }
        assert_eq!(route(Method::GET, "http://x.test/").unwrap().tunnel, None);
    }
}
