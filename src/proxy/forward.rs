//! The header rewriting of a reverse proxy: hop-by-hop headers out,
//! `x-forwarded-*` in, `Host` set to the upstream, the target in origin form.

use http::header::{self, HeaderName, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::config::UpstreamConfig;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Rewrites a client request into the request sent to `upstream`.
pub fn upstream_request<B>(
    upstream: &UpstreamConfig,
    client_ip: &HeaderValue,
    request: Request<B>,
) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    let original_host = parts.headers.remove(HOST).or_else(|| {
        // HTTP/2 carries the host in the :authority pseudo-header.
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    remove_hop_by_hop(&mut parts.headers);

    // Several lines are one list: join them all, then add this hop.
    let forwarded_for = parts
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .chain(std::iter::once(client_ip))
        .cloned()
        .reduce(|list, hop| append_to_list(&list, &hop))
        .unwrap_or_else(|| client_ip.clone());
    parts.headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    // An earlier proxy's values are closer to the client: keep them.
    if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(host) = original_host {
        if !parts.headers.contains_key(&X_FORWARDED_HOST) {
            parts.headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    parts.headers.insert(HOST, upstream.host_header.clone());

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
    Request::from_parts(parts, body)
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
/// including any named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds the hop-by-hop headers present: most
    // messages carry none, or only `connection: keep-alive`, and a hashed
    // removal per absent name would cost more than the pass.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Cloning a value shares its bytes. Collecting nothing allocates
        // nothing: only a second `Connection` line costs a Vec.
        let mut lines = headers.get_all(header::CONNECTION).iter().cloned();
        let first = lines.next();
        let more: Vec<HeaderValue> = lines.collect();
        for line in first.iter().chain(&more) {
            for token in line.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                // `close` and `keep-alive` are options, not header names
                // (a `keep-alive` header goes with the list below).
                if !(token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive"))
                {
                    // A token that is no valid header name names nothing.
                    headers.remove(token);
                }
            }
        }
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(*name);
        }
    }
}

const CONNECTION_BIT: u16 = 1;

/// Headers that concern one connection only; `connection` first.
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
    fn a_message_without_hop_by_hop_headers_is_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let before = headers.clone();
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
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
