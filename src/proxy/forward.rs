//! The header rewriting of a reverse proxy: hop-by-hop headers out,
//! `x-forwarded-*` in, `Host` set to the upstream (or kept, with
//! `host = "preserve"`), the target in origin form.

use http::header::{self, Entry, HeaderName, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::config::{HostMode, UpstreamConfig};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Rewrites a client request into the request sent to `upstream`.
///
/// Each header is looked up once, through its entry: this runs for every
/// request, and each lookup of a custom name hashes the whole name.
///
/// A request that breaks RFC 9112 §3.2 (an HTTP/1.1 request without a
/// `Host`, or any request with two) is refused with the reason: checked
/// here, in the one lookup of `Host` the rewriting makes anyway.
pub(super) fn upstream_request<B>(
    upstream: &UpstreamConfig,
    client_ip: &HeaderValue,
    request: Request<B>,
) -> Result<Request<B>, &'static str> {
    let (mut parts, body) = request.into_parts();
    let headers = &mut parts.headers;
    // `te: trailers`, the one TE HTTP/2 allows, is how a gRPC client tells
    // the server that no proxy on the way drops trailers (gRPC
    // PROTOCOL-HTTP2.md); some servers refuse calls without it. Kept for
    // HTTP/2 clients; an HTTP/1.1 request pays the version compare only.
    let keep_te = parts.version == Version::HTTP_2
        && headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes() == b"trailers");
    remove_hop_by_hop(headers);
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }

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
            let mut sent = host.insert_mult(upstream.host_header.clone());
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
                _ => host.insert(upstream.host_header.clone()),
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
    Ok(Request::from_parts(parts, body))
}

/// `existing, addition` as one header value.
fn append_to_list(existing: &HeaderValue, addition: &HeaderValue) -> HeaderValue {
    let mut bytes = Vec::with_capacity(existing.len() + 2 + addition.len());
    bytes.extend_from_slice(existing.as_bytes());
    bytes.extend_from_slice(b", ");
    bytes.extend_from_slice(addition.as_bytes());
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| addition.clone())
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1),
/// including any named in `Connection`, and every `x-faultline-*` header:
/// those are faultline's own marks, so a client's never reaches the
/// upstream and an upstream's never reaches the client looking like one
/// faultline made.
///
/// Runs on every request and response, most of which carry no hop-by-hop
/// header or only `connection: keep-alive`: one pass over the names finds
/// those present, and only they are looked up and removed.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers
        .keys()
        .fold(0u16, |present, name| present | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & hop_by_hop_bit(&header::CONNECTION) != 0 {
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
        if present & (1 << at) != 0 {
            headers.remove(*name);
        }
    }
}

/// Removes the headers a `Connection` header names. Most messages name
/// none (only the options `close` and `keep-alive`): they allocate nothing.
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

/// The header names in one `Connection` line, options left out. `Host` is
/// never hop-by-hop: the proxy replaces it and forwards the client's as
/// `x-forwarded-host`, whatever the client's `Connection` says.
fn named_in(line: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    line.as_bytes()
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !(token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"host"))
        })
}

/// The bit of `name` in [`HOP_BY_HOP`], or 0. A match on the name compares
/// lengths first, so most names are ruled out at once.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    let name = name.as_str();
    match name {
        "connection" => 1 << 0,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => 1 << 5,
        "upgrade" => 1 << 6,
        "proxy-authenticate" => 1 << 7,
        "proxy-authorization" => 1 << 8,
        _ if is_owned_name(name) => OWNED_BIT,
        _ => 0,
    }
}

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
/// in [`hop_by_hop_bit`].
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

#[cfg(test)]
mod tests {
    use super::*;

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
        remove_hop_by_hop(&mut headers);
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
        remove_hop_by_hop(&mut headers);
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
        remove_hop_by_hop(&mut headers);
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
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
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
        let sent = upstream_request(&upstream(), &client, request).unwrap();
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
        let sent = upstream_request(&preserving, &client, request).unwrap();
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
        let sent = upstream_request(&preserving, &client, h2).unwrap();
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
        let sent = upstream_request(&upstream(), &client, request).unwrap();
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
        let sent = upstream_request(&upstream(), &client, request).unwrap();
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
        let sent = upstream_request(&upstream(), &client, request).unwrap();
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
