//! `faultline ctl` on many replicas: who they are (`--admin a,b,c`, or every
//! address `--fleet HOST:PORT` resolves to), one call sent to all of them at
//! once with a per-replica timeout, and what each answered (and a run
//! followed on all of them, `scenario start --follow`). A replica that
//! fails is named and the others are still acted on; the command then ends
//! with [`ClientError::Replicas`] (exit status 1).

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::{json, Value};

use super::scenario::{has_ended, FOLLOW_EVERY};
use super::{agree, client, write_all, ScenarioVerb, Target, Verb};
use crate::client::{AdminClient, ClientError};
use crate::control::ScenarioView;

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
            "expected HOST:PORT, a name and the admin port (e.g. faultline-fleet.chaos.svc:9000, the headless Service of deploy/kubernetes)"
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
/// for all of them. `scenario start --follow` then follows the run on all.
pub(super) async fn run(
    target: &Target,
    urls: &[String],
    verb: &Verb,
    (method, path, body): (Method, String, Option<Value>),
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let timeout = target.timeout.unwrap_or(FLEET_TIMEOUT);
    let mut clients: Vec<AdminClient> = Vec::new();
    for url in urls {
        let api = client(target, url, timeout)?;
        // The same replica twice would be acted on twice and counted twice.
        if !clients.iter().any(|c| c.base() == api.base()) {
            clients.push(api);
        }
    }
    let mut replies = fan_out(&clients, &method, &path, body).await;
    let shown = if target.json {
        agree::json(verb, &mut replies)
    } else {
        agree::render(verb, &mut replies, SystemTime::now())
    };
    write_all(out, &shown.text)?;
    if let Some(problem) = shown.problem {
        return Err(problem);
    }
    let mut failed = failures(&replies);
    if let Verb::Scenario {
        verb: ScenarioVerb::Start {
            name, follow: true, ..
        },
    } = verb
    {
        if failed.len() == replies.len() {
            // Started nowhere: nothing to follow.
            return Err(replicas_failed(replies.len(), &failed));
        }
        let started = places(&mut replies);
        let live = target.live && !target.json;
        for late in follow(&clients, name, started, live, out).await? {
            if !failed.iter().any(|(url, _)| *url == late.0) {
                failed.push(late);
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(replicas_failed(replies.len(), &failed))
}

fn replicas_failed(total: usize, failed: &[(String, String)]) -> ClientError {
    ClientError::Replicas {
        total,
        failed: failed.iter().map(|(url, _)| url.clone()).collect(),
        lines: failed
            .iter()
            .map(|(url, message)| format!("{url}: {message}"))
            .collect(),
    }
}

/// One call to every replica at once, each bounded by its client's timeout;
/// the replies in the replicas' order.
async fn fan_out(
    clients: &[AdminClient],
    method: &Method,
    path: &str,
    body: Option<Value>,
) -> Vec<Reply> {
    let calls: Vec<_> = clients
        .iter()
        .map(|api| {
            let (api, method, path, body) =
                (api.clone(), method.clone(), path.to_owned(), body.clone());
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
    replies
}

/// Each failed replica's URL and message.
fn failures(replies: &[Reply]) -> Vec<(String, String)> {
    replies
        .iter()
        .filter_map(|r| Some((r.replica.clone(), r.result.as_ref().err()?.message.clone())))
        .collect()
}

/// Where a run is on one replica: its state and step; `None` without an answer.
type Place = Option<(String, Option<usize>)>;

fn places(replies: &mut [Reply]) -> Vec<Place> {
    replies
        .iter_mut()
        .map(|reply| {
            let view = reply.parse::<ScenarioView>()?;
            let step = view.run.as_ref()?.current_step.as_ref().map(|s| s.index);
            Some((view.state, step))
        })
        .collect()
}

/// `scenario start --follow` on a fleet: the run's table on every replica,
/// redrawn in place on a terminal (`live`) or written again when a
/// replica's state or step changes, until no replica runs it; then the
/// merged report. Answers the replicas that failed the report.
async fn follow(
    clients: &[AdminClient],
    name: &str,
    started: Vec<Place>,
    live: bool,
    out: &mut dyn Write,
) -> Result<Vec<(String, String)>, ClientError> {
    let status = Verb::Scenario {
        verb: ScenarioVerb::Status {
            name: name.to_owned(),
        },
    };
    let path = format!("/api/scenarios/{name}");
    // The start's own table was the first frame.
    let mut drawn_lines = 0;
    let mut last = started;
    loop {
        let mut replies = fan_out(clients, &Method::GET, &path, None).await;
        let places = places(&mut replies);
        // A running or scheduled run (anything not ended) is still to follow.
        let running = places.iter().flatten().any(|(state, _)| !has_ended(state));
        let frame = agree::render(&status, &mut replies, SystemTime::now()).text;
        if live {
            // Up over the last frame, clear it, draw the new one.
            let up = if drawn_lines > 0 {
                format!("\x1b[{drawn_lines}A\x1b[J")
            } else {
                String::new()
            };
            write_all(out, &format!("{up}{frame}"))?;
            drawn_lines = frame.lines().count();
        } else if last != places || !running {
            write_all(out, &format!("\n{frame}"))?;
        }
        last = places;
        if !running {
            break;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    let report = Verb::Scenario {
        verb: ScenarioVerb::Report {
            name: name.to_owned(),
        },
    };
    let path = format!("/api/scenarios/{name}/report");
    let mut replies = fan_out(clients, &Method::GET, &path, None).await;
    let shown = agree::render(&report, &mut replies, SystemTime::now());
    write_all(out, &format!("\n{}", shown.text))?;
    match shown.problem {
        Some(problem) => Err(problem),
        None => Ok(failures(&replies)),
    }
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
        for bad in ["faultline-fleet", "faultline-fleet:http", ":9000"] {
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
