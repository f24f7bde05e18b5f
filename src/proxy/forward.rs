//! The header rewriting of a reverse proxy: hop-by-hop headers out (but
//! what an upgrade or trailers need), `x-forwarded-*` in, `Host` set to the
//! upstream (or kept, with `host = "preserve"`), the target in origin form.

use http::header::{self, Entry, HeaderName, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};
use hyper::upgrade::OnUpgrade;

use crate::config::{HostMode, UpstreamConfig};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A request rewritten for its upstream.
#[derive(Debug)]
pub(super) struct Outgoing<B> {
    pub(super) request: Request<B>,
    /// The client's connection, handed over once its response, a `101`,
    /// has gone out: `Some` for an HTTP/1.1 request that asks to upgrade
    /// (`Connection: upgrade` and `Upgrade`), which goes on asking.
    pub(super) upgrade: Option<OnUpgrade>,
}

/// Rewrites a client request into the request sent to `upstream`.
///
/// Each header is looked up once, through its entry: this runs for every
/// request, and each lookup of a custom name hashes the whole name.
///
/// A request that breaks RFC 9112 §3.2 (an HTTP/1.1 request without a
/// `Host`, or any request with two) is refused with the reason: checked
/// here, in the one lookup of `Host` the rewriting makes anyway.
#[cfg(test)]
pub(super) fn upstream_request<B>(
    upstream: &UpstreamConfig,
    client_ip: &HeaderValue,
    request: Request<B>,
) -> Result<Outgoing<B>, &'static str> {
    upstream_request_with_host(upstream, &upstream.host_header, client_ip, request)
}

/// [`upstream_request`], with the `Host` sent unless the upstream
/// preserves the client's: the upstream's own, or for forward traffic no
/// upstream has, the request target's authority.
pub(super) fn upstream_request_with_host<B>(
    upstream: &UpstreamConfig,
    host_header: &HeaderValue,
    client_ip: &HeaderValue,
    request: Request<B>,
) -> Result<Outgoing<B>, &'static str> {
    let (mut parts, body) = request.into_parts();
    let headers = &mut parts.headers;
    let may_upgrade = parts.version == Version::HTTP_11;
    let upgrade = if remove_hop_by_hop(headers, Hop::Request { may_upgrade }) {
        // hyper's server leaves the hand-over in every HTTP/1.1 request
        // with an `Upgrade`; without it (another server) there is no
        // connection to tunnel, so the upstream is not asked.
        let upgrade = parts.extensions.remove::<OnUpgrade>();
        if upgrade.is_none() {
            headers.remove(header::CONNECTION);
            headers.remove(header::UPGRADE);
        }
        upgrade
    } else {
        None
    };

    let preserve = upstream.host == HostMode::Preserve;
    let original_host = match headers.entry(HOST) {
        // With `preserve` the client's line stays as it came, byte for
        // byte (it may be signed); otherwise every line goes. Either way
        // there must be exactly one.
        Entry::Occupied(host) if preserve => {
            let mut sent = host.iter();
            let first = sent.next().cloned();
            if sent.next().is_some() {
                return Err("more than one Host header");
            }
            first
        }
        Entry::Occupied(mut host) => {
            let mut sent = host.insert_mult(host_header.clone());
            let first = sent.next();
            if sent.next().is_some() {
                return Err("more than one Host header");
            }
            first
        }
        Entry::Vacant(_) if parts.version == Version::HTTP_11 => {
            return Err("an HTTP/1.1 request without a Host header");
        }
        Entry::Vacant(host) => {
            // HTTP/2 carries the host in the :authority pseudo-header.
            let authority = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            match &authority {
                // HTTP/1.1 says it with `Host`, what a signature over
                // `:authority` covers.
                Some(authority) if preserve => host.insert(authority.clone()),
                // HTTP/1.0 without a host names none: the upstream's it is.
                _ => host.insert(host_header.clone()),
            };
            authority
        }
    };
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(list) => {
            list.insert(client_ip.clone());
        }
        // Several lines are one list: join them all, then add this hop.
        Entry::Occupied(mut list) => {
            let joined = list
                .iter()
                .chain(std::iter::once(client_ip))
                .cloned()
                .reduce(|list, hop| append_to_list(&list, &hop))
                .unwrap_or_else(|| client_ip.clone());
            list.insert_mult(joined);
        }
    }
    // An earlier proxy's values are closer to the client: keep them.
    if let Entry::Vacant(proto) = headers.entry(&X_FORWARDED_PROTO) {
        proto.insert(HeaderValue::from_static("http"));
    }
    if let Some(host) = original_host {
        if let Entry::Vacant(forwarded_host) = headers.entry(&X_FORWARDED_HOST) {
            forwarded_host.insert(host);
        }
    }

    // The connection is the upstream's own: the request line names the
    // path alone (origin form).
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    // Upstreams are spoken to over HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;
    Ok(Outgoing {
        request: Request::from_parts(parts, body),
        upgrade,
    })
}

/// `existing, addition` as one header value.
fn append_to_list(existing: &HeaderValue, addition: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(existing.len() + 2 + addition.len());
    bytes.extend_from_slice(existing.as_bytes());
    bytes.extend_from_slice(b", ");
    bytes.extend_from_slice(addition.as_bytes());
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| addition.clone())
}

/// Which message [`remove_hop_by_hop`] cleans, and what it may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// A request; `may_upgrade` for HTTP/1.1, the one version with upgrades.
    Request { may_upgrade: bool },
    /// A response; `switching` for a `101` to a request that asked to upgrade.
    Response { switching: bool },
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1),
/// including any named in `Connection`, and every `x-faultline-*` header:
/// those are faultline's own marks, so a client's never reaches the
/// upstream and an upstream's never reaches the client looking like one
/// faultline made.
///
/// Kept, as the next hop needs them: `Connection: upgrade` and `Upgrade` of
/// an upgrade (a request with both, and the `101` to it), which is what
/// the return value says; `TE`'s `trailers` token, in a request (the
/// upstream sends trailers only to a client that accepts them); and
/// `Trailer` (hyper writes only the trailer fields it announces).
///
/// Runs on every request and response, most of which carry no hop-by-hop
/// header or only `connection: keep-alive`: one pass over the names finds
/// those present, and only they are looked up and removed. A message that
/// is no upgrade costs one more bit test.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, hop: Hop) -> bool {
    let present = headers
        .keys()
        .fold(0u16, |present, name| present | hop_by_hop_bit(name));
    if present == 0 {
        return false;
    }
    let upgrade = present & UPGRADE_PAIR == UPGRADE_PAIR
        && matches!(
            hop,
            Hop::Request { may_upgrade: true } | Hop::Response { switching: true }
        )
        && connection_has(headers, b"upgrade");
    let te = if present & TE_BIT != 0 && matches!(hop, Hop::Request { .. }) {
        te_trailers(headers)
    } else {
        Te::Remove
    };
    if present & CONNECTION_BIT != 0 {
        remove_connection_named(headers);
    }
    if present & OWNED_BIT != 0 {
        let owned: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_owned(name))
            .cloned()
            .collect();
        for name in owned {
            headers.remove(name);
        }
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        let bit = 1 << at;
        let kept = (upgrade && bit == UPGRADE_BIT) || (te == Te::Keep && bit == TE_BIT);
        if present & bit != 0 && !kept {
            headers.remove(*name);
        }
    }
    // The client's other connection options are its own: only these go on.
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te == Te::Trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    upgrade
}

/// What becomes of a request's `TE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Te {
    /// It is one line, `trailers`, as it goes on (every gRPC call's):
    /// left in place rather than removed and written again.
    Keep,
    /// It accepts trailers among other codings: `trailers` alone goes on.
    Trailers,
    /// It does not accept trailers, or it is a response's.
    Remove,
}

/// What a request's `TE` lines ask, as [`Te`] says.
fn te_trailers(headers: &HeaderMap) -> Te {
    let mut lines = headers.get_all(header::TE).iter();
    if let (Some(line), None) = (lines.next(), lines.next()) {
        if line.as_bytes() == b"trailers" {
            return Te::Keep;
        }
    }
    if te_accepts_trailers(headers) {
        Te::Trailers
    } else {
        Te::Remove
    }
}

/// Whether a `Connection` line has `token` (an option such as `upgrade`).
fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|line| tokens(line).any(|t| t.eq_ignore_ascii_case(token)))
}

/// Whether `TE` accepts trailers: the one token a proxy may pass on, as
/// hop-by-hop as the rest (RFC 9110 §10.1.4), but the upstream sends
/// trailers only to a client that says so.
fn te_accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|line| {
        tokens(line).any(|token| {
            // `trailers` takes no parameters; others do (`gzip;q=0.5`).
            let name = token.split(|b| *b == b';').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// The comma-separated tokens of a header line, trimmed, empty ones left out.
fn tokens(line: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    line.as_bytes()
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Removes the headers a `Connection` header names. Most messages name
/// none (only the options `close`, `keep-alive` and `upgrade`): they
/// allocate nothing.
fn remove_connection_named(headers: &mut HeaderMap) {
    let lines = headers.get_all(header::CONNECTION);
    if lines.iter().all(|line| named_in(line).next().is_none()) {
        return;
    }
    // A token that is no valid header name names nothing.
    let names: Vec<HeaderName> = lines
        .iter()
        .flat_map(named_in)
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The header names in one `Connection` line, options left out. Some names
/// are never removed this way, whatever the client's `Connection` says:
/// `Host`, which the proxy replaces and forwards as `x-forwarded-host`;
/// `Upgrade`, `TE` and `Trailer`, which [`remove_hop_by_hop`] keeps or
/// removes by their own rules (RFC 9110 §10.1.4 asks a client sending `TE`
/// to name it in `Connection`).
fn named_in(line: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    tokens(line).filter(|token| {
        !(token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
            || token.eq_ignore_ascii_case(b"host")
            || token.eq_ignore_ascii_case(b"upgrade")
            || token.eq_ignore_ascii_case(b"te")
            || token.eq_ignore_ascii_case(b"trailer"))
    })
}

/// The bit of `name` in [`HOP_BY_HOP`], or 0. A match on the name compares
/// lengths first, so most names are ruled out at once.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    let name = name.as_str();
    match name {
        "connection" => CONNECTION_BIT,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => TE_BIT,
        "transfer-encoding" => 1 << 4,
        "upgrade" => UPGRADE_BIT,
        "proxy-authenticate" => 1 << 6,
        "proxy-authorization" => 1 << 7,
        _ if is_owned_name(name) => OWNED_BIT,
        _ => 0,
    }
}

const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 3;
const UPGRADE_BIT: u16 = 1 << 5;
/// Both present: the message may be an upgrade.
const UPGRADE_PAIR: u16 = CONNECTION_BIT | UPGRADE_BIT;

/// The bit of the `x-faultline-*` headers in [`hop_by_hop_bit`].
const OWNED_BIT: u16 = 1 << 15;

/// Whether faultline owns the header: `x-faultline-*` marks only it sets.
/// Runs for every header of every message: most names are ruled out by
/// their first byte.
fn is_owned(name: &HeaderName) -> bool {
    is_owned_name(name.as_str())
}

fn is_owned_name(name: &str) -> bool {
    name.as_bytes().first() == Some(&b'x') && name.starts_with("x-faultline-")
}

/// Headers that concern one connection only, in the order of their bits
/// in [`hop_by_hop_bit`]. `Trailer` is not one (RFC 9110 dropped it from
/// the list): it goes on, so the trailers it announces do.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: Hop = Hop::Request { may_upgrade: true };
    const RESPONSE: Hop = Hop::Response { switching: false };

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!remove_hop_by_hop(&mut headers, REQUEST));
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn every_connection_line_is_read_and_odd_tokens_are_harmless() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("X-Upper , bad name!, ,x-second"),
        );
        headers.insert("x-upper", HeaderValue::from_static("1"));
        headers.insert("x-second", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, RESPONSE);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn faultline_headers_are_faultlines_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-faultline-error",
            HeaderValue::from_static("upstream_timeout"),
        );
        headers.insert("x-faultline-rule", HeaderValue::from_static("not-mine"));
        headers.insert("x-faultline", HeaderValue::from_static("kept"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, RESPONSE);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-faultline", "x-kept"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let before = headers.clone();
        remove_hop_by_hop(&mut headers, RESPONSE);
        assert_eq!(headers, before);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_its_connection_option_alone() {
        let upgrade = || {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONNECTION,
                HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
            );
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert("x-secret", HeaderValue::from_static("1"));
            headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            headers.insert("sec-websocket-key", HeaderValue::from_static("k"));
            headers
        };
        for hop in [REQUEST, Hop::Response { switching: true }] {
            let mut headers = upgrade();
            assert!(remove_hop_by_hop(&mut headers, hop), "{hop:?}");
            let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["connection", "sec-websocket-key", "upgrade"]);
            assert_eq!(headers[header::CONNECTION], "upgrade");
            assert_eq!(headers[header::UPGRADE], "websocket");
        }
        // HTTP/1.0 has no upgrades; a response that is no `101` to one is
        // none either.
        for hop in [Hop::Request { may_upgrade: false }, RESPONSE] {
            let mut headers = upgrade();
            assert!(!remove_hop_by_hop(&mut headers, hop), "{hop:?}");
            let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["sec-websocket-key"]);
        }
        // `Upgrade` without the option, or the option without `Upgrade`.
        let mut headers = upgrade();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!remove_hop_by_hop(&mut headers, REQUEST));
        assert!(!headers.contains_key(header::UPGRADE));
        let mut headers = upgrade();
        headers.remove(header::UPGRADE);
        assert!(!remove_hop_by_hop(&mut headers, REQUEST));
        assert!(!headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn an_upgrade_no_server_can_hand_over_is_not_asked_for() {
        // Built here, not read by hyper's server: no hand-over to take.
        let request = Request::builder()
            .uri("/chat")
            .header(HOST, "client.example")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = upstream_request(&upstream(), &client, request).unwrap();
        assert!(sent.upgrade.is_none());
        assert!(!sent.request.headers().contains_key(header::CONNECTION));
        assert!(!sent.request.headers().contains_key(header::UPGRADE));
    }

    #[test]
    fn te_keeps_its_trailers_token_and_trailer_goes_on() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        headers.append(header::TE, HeaderValue::from_static("gzip;q=0.5"));
        headers.append(header::TE, HeaderValue::from_static("deflate, Trailers"));
        headers.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        assert!(!remove_hop_by_hop(&mut headers, REQUEST));
        let te: Vec<_> = headers.get_all(header::TE).iter().collect();
        assert_eq!(te, ["trailers"]);
        assert_eq!(headers[header::TRAILER], "x-checksum");
        assert!(!headers.contains_key(header::CONNECTION));

        // Without the token, `TE` goes; a response has no use for it.
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut headers, REQUEST);
        assert!(headers.is_empty());
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        remove_hop_by_hop(&mut headers, RESPONSE);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["trailer"]);

        // A gRPC call's `te: trailers` stays as it is; any other spelling
        // of it is written the one way HTTP/2 takes.
        for (sent, kept) in [
            ("trailers", "trailers"),
            ("Trailers", "trailers"),
            ("trailers ", "trailers"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::TE, HeaderValue::from_static(sent));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            remove_hop_by_hop(&mut headers, REQUEST);
            let te: Vec<_> = headers.get_all(header::TE).iter().collect();
            assert_eq!(te, [kept], "{sent:?}");
            assert_eq!(headers.len(), 2);
        }
        let mut headers = HeaderMap::new();
        headers.append(header::TE, HeaderValue::from_static("trailers"));
        headers.append(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers, REQUEST);
        let te: Vec<_> = headers.get_all(header::TE).iter().collect();
        assert_eq!(te, ["trailers"], "two lines become one");
    }

    fn upstream() -> UpstreamConfig {
        UpstreamConfig {
            name: "orders".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("10.0.0.9:8080"),
            host_header: HeaderValue::from_static("10.0.0.9:8080"),
            host: Default::default(),
            protocol: Default::default(),
            labels: Default::default(),
            listen: None,
            listen_tls: None,
            ad_hoc: false,
            transport: crate::config::Transport::Http,
            tls: None,
        }
    }

    #[test]
    fn the_host_is_replaced_and_forwarded() {
        let request = Request::builder()
            .uri("/a?b")
            .header(HOST, "first.example")
            .body(())
            .unwrap();
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = upstream_request(&upstream(), &client, request)
            .unwrap()
            .request;
        let hosts: Vec<_> = sent.headers().get_all(HOST).iter().collect();
        assert_eq!(hosts, ["10.0.0.9:8080"]);
        assert_eq!(sent.headers()[&X_FORWARDED_HOST], "first.example");
        assert_eq!(sent.headers()[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(sent.uri(), "/a?b");
    }

    #[test]
    fn preserve_keeps_the_clients_host_byte_for_byte() {
        let preserving = UpstreamConfig {
            host: HostMode::Preserve,
            ..upstream()
        };
        let client = HeaderValue::from_static("127.0.0.1");
        let request = Request::builder()
            .uri("/a")
            .header(HOST, "DynamoDB.us-east-1.amazonaws.com:443")
            .body(())
            .unwrap();
        let sent = upstream_request(&preserving, &client, request)
            .unwrap()
            .request;
        let hosts: Vec<_> = sent.headers().get_all(HOST).iter().collect();
        assert_eq!(hosts, ["DynamoDB.us-east-1.amazonaws.com:443"]);
        assert_eq!(
            sent.headers()[&X_FORWARDED_HOST],
            "DynamoDB.us-east-1.amazonaws.com:443"
        );
        // HTTP/2: the :authority becomes the Host.
        let h2 = Request::builder()
            .uri("https://s3.us-west-2.amazonaws.com/bucket")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let sent = upstream_request(&preserving, &client, h2).unwrap().request;
        assert_eq!(sent.headers()[HOST], "s3.us-west-2.amazonaws.com");
        // Two lines are still refused.
        let two = Request::builder()
            .uri("/")
            .header(HOST, "a.example")
            .header(HOST, "b.example")
            .body(())
            .unwrap();
        assert_eq!(
            upstream_request(&preserving, &client, two).unwrap_err(),
            "more than one Host header"
        );
    }

    #[test]
    fn a_request_without_exactly_one_host_is_refused() {
        let client = HeaderValue::from_static("127.0.0.1");
        let two = Request::builder()
            .uri("/")
            .header(HOST, "first.example")
            .header(HOST, "second.example")
            .body(())
            .unwrap();
        assert_eq!(
            upstream_request(&upstream(), &client, two).unwrap_err(),
            "more than one Host header"
        );
        let none = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(
            upstream_request(&upstream(), &client, none).unwrap_err(),
            "an HTTP/1.1 request without a Host header"
        );
        let old = Request::builder()
            .uri("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert!(upstream_request(&upstream(), &client, old).is_ok());
    }

    #[test]
    fn a_connection_header_cannot_drop_the_host() {
        let request = Request::builder()
            .uri("/")
            .header(HOST, "client.example")
            .header(header::CONNECTION, "Host, x-secret")
            .header("x-secret", "1")
            .body(())
            .unwrap();
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = upstream_request(&upstream(), &client, request)
            .unwrap()
            .request;
        assert_eq!(sent.headers()[HOST], "10.0.0.9:8080");
        assert_eq!(sent.headers()[&X_FORWARDED_HOST], "client.example");
        assert!(!sent.headers().contains_key("x-secret"));
        assert!(!sent.headers().contains_key(header::CONNECTION));
    }

    #[test]
    fn an_earlier_proxys_proto_and_host_are_kept() {
        let request = Request::builder()
            .uri("http://inner.example/")
            .version(Version::HTTP_2)
            .header(&X_FORWARDED_PROTO, "https")
            .header(&X_FORWARDED_HOST, "outer.example")
            .body(())
            .unwrap();
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = upstream_request(&upstream(), &client, request)
            .unwrap()
            .request;
        assert_eq!(sent.headers()[&X_FORWARDED_PROTO], "https");
        assert_eq!(sent.headers()[&X_FORWARDED_HOST], "outer.example");
        assert_eq!(sent.headers()[HOST], "10.0.0.9:8080");
        assert_eq!(sent.uri(), "/");
    }

    #[test]
    fn the_authority_stands_in_for_a_missing_host_on_http2() {
        let request = Request::builder()
            .uri("http://inner.example:81/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = upstream_request(&upstream(), &client, request)
            .unwrap()
            .request;
        assert_eq!(sent.headers()[&X_FORWARDED_HOST], "inner.example:81");
        assert_eq!(sent.headers()[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_list() {
        let value = append_to_list(
            &HeaderValue::from_static("10.0.0.1"),
            &HeaderValue::from_static("127.0.0.1"),
        );
        assert_eq!(value, "10.0.0.1, 127.0.0.1");
    }
}
