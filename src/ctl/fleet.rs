//! `faultline ctl` on many replicas: who they are (`--admin a,b,c`, or every
//! address `--fleet HOST:PORT` resolves to), one call sent to all of them at
//! once with a per-replica timeout, and what each answered. A replica that
//! fails is named and the others are still acted on; the command then ends
//! with [`ClientError::Replicas`] (exit status 1).

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::{json, Value};

use super::{agree, client, write_all, ScenarioVerb, Target, Verb};
use crate::client::ClientError;

/// How long each replica of a fleet may take to answer, unless `--timeout`
/// says otherwise: short, so one dead pod does not hold up a `halt`.
pub const FLEET_TIMEOUT: Duration = Duration::from_secs(2);

/// What one replica answered: the API's text, or why there is none.
#[derive(Debug)]
pub(super) struct Reply {
    /// The replica's admin URL, as the calls used it.
    pub replica: String,
    pub result: Result<String, Failure>,
}

/// Why a replica gave no usable answer.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// The whole one-line message, for stderr.
    pub message: String,
    /// A shorter one for its line in a table (the URL is already there).
    pub brief: String,
    /// The API's status and error code, when it answered with an error.
    pub status: Option<u16>,
    pub code: Option<String>,
}

impl Failure {
    pub(super) fn of(error: &ClientError) -> Failure {
        let brief = match error {
            ClientError::Unreachable { reason, .. } => format!("unreachable: {reason}"),
            ClientError::Unauthorized { message, .. } => format!("token refused: {message}"),
            ClientError::Protocol { reason, .. } => format!("unexpected answer: {reason}"),
            other => other.to_string(),
        };
        Failure {
            message: error.to_string(),
            brief,
            status: match error {
                ClientError::Api { status, .. } => Some(*status),
                _ => None,
            },
            code: error.code().map(str::to_owned),
        }
    }
}

impl Reply {
    /// The answer as `T`; an answer that is not `T` turns the reply into a
    /// failure, so it is named and counted like an unreachable replica.
    pub(super) fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        let text = self.result.as_ref().ok()?;
        match serde_json::from_str(text) {
            Ok(value) => Some(value),
            Err(e) => {
                self.result = Err(Failure::of(&ClientError::Protocol {
                    url: self.replica.clone(),
                    reason: format!("not the JSON expected ({e}); is this faultline's admin API?"),
                }));
                None
            }
        }
    }
}

/// `--fleet HOST:PORT`: every address the name resolves to, as admin URLs.
pub(super) async fn resolve(fleet: &str) -> Result<Vec<String>, ClientError> {
    let usage = |why: String| ClientError::Usage(format!("--fleet {fleet}: {why}"));
    let port_given = fleet
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_given {
        return Err(usage(
            "expected HOST:PORT, a name and the admin port (e.g. faultline-admin.chaos.svc:9000)"
                .to_owned(),
        ));
    }
    let addresses = tokio::net::lookup_host(fleet)
        .await
        .map_err(|e| usage(format!("cannot resolve the name: {e}")))?;
    let urls = urls_of(addresses);
    if urls.is_empty() {
        return Err(usage(
            "the name resolves to no address (no replica is ready behind it?)".to_owned(),
        ));
    }
    Ok(urls)
}

/// `http://ADDR:PORT` for each address, once each, in the resolver's order.
fn urls_of(addresses: impl IntoIterator<Item = SocketAddr>) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for address in addresses {
        // `SocketAddr` writes IPv6 in brackets, as a URL needs.
        let url = format!("http://{address}");
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

/// The verb on every replica at once; then one table (or one JSON document)
/// for all of them.
pub(super) async fn run(
    target: &Target,
    urls: &[String],
    verb: &Verb,
    (method, path, body): (Method, String, Option<Value>),
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    if let Verb::Scenario {
        verb: ScenarioVerb::Start { follow: true, .. },
    } = verb
    {
        return Err(ClientError::Usage(
            "--follow follows one proxy; with several, start the run and watch it with `faultline ctl … scenario status NAME`".to_owned(),
        ));
    }
    let timeout = target.timeout.unwrap_or(FLEET_TIMEOUT);
    let mut clients = Vec::new();
    for url in urls {
        let api = client(target, url, timeout)?;
        // The same replica twice would be acted on twice and counted twice.
        if !clients
            .iter()
            .any(|c: &crate::client::AdminClient| c.base() == api.base())
        {
            clients.push(api);
        }
    }
    let calls: Vec<_> = clients
        .iter()
        .map(|api| {
            let (api, method, path, body) =
                (api.clone(), method.clone(), path.clone(), body.clone());
            tokio::spawn(async move { api.call(method, &path, body).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(calls.len());
    for (api, call) in clients.iter().zip(calls) {
        let result = match call.await {
            Ok(answer) => answer.map_err(|e| Failure::of(&e)),
            Err(e) => Err(Failure::of(&ClientError::Protocol {
                url: api.base().to_owned(),
                reason: format!("the call failed inside ctl: {e}"),
            })),
        };
        replies.push(Reply {
            replica: api.base().to_owned(),
            result,
        });
    }
    let shown = if target.json {
        agree::json(verb, &mut replies)
    } else {
        agree::render(verb, &mut replies, SystemTime::now())
    };
    write_all(out, &shown.text)?;
    let failed: Vec<&Reply> = replies.iter().filter(|r| r.result.is_err()).collect();
    if let Some(problem) = shown.problem {
        return Err(problem);
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(ClientError::Replicas {
        total: replies.len(),
        failed: failed.iter().map(|r| r.replica.clone()).collect(),
        lines: failed
            .iter()
            .filter_map(|r| {
                let failure = r.result.as_ref().err()?;
                Some(format!("{}: {}", r.replica, failure.message))
            })
            .collect(),
    })
}

/// The per-replica results as JSON: `{"replica", "ok": true, "result"}` or
/// `{"replica", "ok": false, "error", "status", "code"}`.
pub(super) fn replica_json(replies: &[Reply]) -> Value {
    replies
        .iter()
        .map(|reply| match &reply.result {
            Ok(text) => json!({
                "replica": reply.replica,
                "ok": true,
                "result": serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!(text)),
            }),
            Err(failure) => json!({
                "replica": reply.replica,
                "ok": false,
                "error": failure.message,
                "status": failure.status,
                "code": failure.code,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_is_one_replica() {
        let addresses: Vec<SocketAddr> = ["10.0.0.7:9000", "[fd00::2]:9000", "10.0.0.7:9000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            urls_of(addresses),
            ["http://10.0.0.7:9000", "http://[fd00::2]:9000"]
        );
        assert!(urls_of([]).is_empty());
    }

    #[tokio::test]
    async fn a_fleet_needs_a_port() {
        for bad in ["faultline-admin", "faultline-admin:http", ":9000"] {
            let error = resolve(bad).await.unwrap_err().to_string();
            assert!(error.contains("expected HOST:PORT"), "{error}");
        }
        let unknown = resolve("no-such-host.invalid:9000").await.unwrap_err();
        assert!(
            unknown.to_string().contains("cannot resolve the name"),
            "{unknown}"
        );
    }
}
