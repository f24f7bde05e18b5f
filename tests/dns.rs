//! faultline's DNS server through real clients: `dig` (Debian
//! `bind9-dnsutils`, installed by .ci/run) and raw hickory-proto messages
//! over UDP and TCP; the proxy's own resolution through the same rules.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use support::{get, wait_until, TestProxy, TestUpstream};

/// A second faultline, the first one's `upstream` resolver: names it does
/// not know itself are asked there, never on the internet.
async fn upstream_resolver() -> TestProxy {
    TestProxy::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[dns]\nlisten = \"127.0.0.1:0\"\nupstream = [\"system\"]\n[dns.records]\n\"far.test\" = [\"198.51.100.5\"]\n",
        "",
    )
    .await
}

const RULES: &str = r#"
[[rule]]
name = "nx"
[rule.match]
dns = { name = "nx.test" }
[rule.fault]
kind = "dns"
answer = "nxdomain"

[[rule]]
name = "fail"
[rule.match]
dns = { name = "fail.test" }
[rule.fault]
kind = "dns"
answer = "servfail"

[[rule]]
name = "empty"
[rule.match]
dns = { name = "*.empty.test", types = ["A", "AAAA"] }
[rule.fault]
kind = "dns"
answer = "nodata"
ttl = "3s"

[[rule]]
name = "no"
[rule.match]
dns = { name = "no.test" }
[rule.fault]
kind = "dns"
answer = "refused"

[[rule]]
name = "silent"
[rule.match]
dns = { name = "silent.test" }
[rule.fault]
kind = "dns"
answer = "timeout"

[[rule]]
name = "wrong"
[rule.match]
dns = { name = "wrong.test" }
[rule.fault]
kind = "dns"
answer = "addresses"
addresses = ["203.0.113.9", "2001:db8::9"]
ttl = "2s"

[[rule]]
name = "slow"
[rule.match]
dns = { name = "slow.test" }
[rule.fault]
kind = "latency"
delay = "300ms"
"#;

/// faultline with the rules above, `records`, and `resolver` as upstream.
async fn dns_proxy(resolver: SocketAddr) -> TestProxy {
    let long = "a".repeat(60);
    let many: Vec<String> = (1..=16).map(|i| format!("\"2001:db8::{i}\"")).collect();
    TestProxy::start(
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[proxy]\nseed = 1\n[dns]\nlisten = \"127.0.0.1:0\"\nupstream = [\"{resolver}\"]\n[dns.records]\n\"ok.test\" = [\"192.0.2.1\", \"2001:db8::1\"]\n\"slow.test\" = [\"192.0.2.7\"]\n\"{long}.{long}.{long}.many.test\" = [{}]\n",
            many.join(", ")
        ),
        RULES,
    )
    .await
}

fn dns_addr(proxy: &TestProxy) -> SocketAddr {
    proxy.running().dns_addr().unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(0x5eed)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

/// Sends `packet` over UDP; the answer's bytes, or `None` when none came
/// within `wait`.
async fn udp_raw(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, addr).await.unwrap();
    let mut buffer = vec![0u8; 65536];
    let n = tokio::time::timeout(wait, socket.recv(&mut buffer))
        .await
        .ok()?
        .unwrap();
    buffer.truncate(n);
    Some(buffer)
}

/// Sends `packet` over TCP, length-prefixed; the answer, or `None` when
/// the connection closed or nothing came within `wait`.
async fn tcp_raw(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
    tokio::time::timeout(wait, async {
        let length = stream.read_u16().await.ok()?;
        let mut answer = vec![0u8; usize::from(length)];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    })
    .await
    .ok()?
}

/// Asks `name`/`qtype` the way a stub resolver does, over UDP or TCP.
async fn ask(addr: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Option<Message> {
    let packet = query(name, qtype, None);
    let wait = Duration::from_secs(5);
    let answer = if tcp {
        tcp_raw(addr, &packet, wait).await?
    } else {
        udp_raw(addr, &packet, wait).await?
    };
    let message = Message::from_vec(&answer).unwrap();
    assert_eq!(message.id(), 0x5eed);
    Some(message)
}

/// The answer section as `(ttl, address)`.
fn addresses(message: &Message) -> Vec<(u32, String)> {
    message
        .answers()
        .iter()
        .map(|r| {
            let ip = match r.data() {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => format!("{other:?}"),
            };
            (r.ttl(), ip)
        })
        .collect()
}

/// A status as dig prints it.
fn code(status: &str) -> ResponseCode {
    match status {
        "NOERROR" => ResponseCode::NoError,
        "NXDOMAIN" => ResponseCode::NXDomain,
        "SERVFAIL" => ResponseCode::ServFail,
        "REFUSED" => ResponseCode::Refused,
        other => panic!("{other}"),
    }
}

/// The TTL of the SOA a negative answer carries.
fn soa_ttl(message: &Message) -> Option<u32> {
    message.name_servers().first().map(|r| r.ttl())
}

/// `dig`: Debian's bind9-dnsutils, as .ci/run installs it.
fn dig_path() -> Option<String> {
    let path = std::env::var("FAULTLINE_DIG").unwrap_or_else(|_| "/usr/bin/dig".to_owned());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: .ci/run installs the Debian package bind9-dnsutils"
    );
    eprintln!("SKIPPED: {path} not installed (apt-get install bind9-dnsutils)");
    None
}

/// What dig printed: the status and the answer section's `(ttl, value)`.
#[derive(Debug, PartialEq)]
struct Dug {
    status: Option<String>,
    answers: Vec<(u32, String)>,
    authority_ttl: Option<u32>,
}

async fn dig(dig: &str, addr: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Dug {
    let mut args = vec![
        format!("@{}", addr.ip()),
        "-p".to_owned(),
        addr.port().to_string(),
        "+tries=1".to_owned(),
        "+time=2".to_owned(),
        name.to_owned(),
        qtype.to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let dig = dig.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(dig)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|rest| rest.split(',').next().unwrap_or("").to_owned());
    let mut section = "";
    let mut answers = Vec::new();
    let mut authority_ttl = None;
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix(";; ")
            .and_then(|l| l.strip_suffix(" SECTION:"))
        {
            section = if name == "ANSWER" {
                "answer"
            } else if name == "AUTHORITY" {
                "authority"
            } else {
                ""
            };
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.is_empty() || line.starts_with(';') || fields.len() < 5 {
            continue;
        }
        let ttl: u32 = fields[1].parse().unwrap();
        match section {
            "answer" => answers.push((ttl, fields[4].to_owned())),
            "authority" => authority_ttl = Some(ttl),
            _ => {}
        }
    }
    Dug {
        status,
        answers,
        authority_ttl,
    }
}

/// Each answer kind, over UDP and TCP, from dig and from a Rust client:
/// the status, the records and their TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_kind_over_udp_and_tcp() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    let dig_path = dig_path();
    // (name, type, status, answers, TTL of the negative answer's SOA)
    type Case = (
        &'static str,
        RecordType,
        &'static str,
        Vec<(u32, &'static str)>,
        Option<u32>,
    );
    let cases: Vec<Case> = vec![
        ("nx.test", RecordType::A, "NXDOMAIN", vec![], Some(5)),
        ("fail.test", RecordType::A, "SERVFAIL", vec![], None),
        ("db.empty.test", RecordType::A, "NOERROR", vec![], Some(3)),
        (
            "db.empty.test",
            RecordType::AAAA,
            "NOERROR",
            vec![],
            Some(3),
        ),
        ("no.test", RecordType::A, "REFUSED", vec![], None),
        (
            "wrong.test",
            RecordType::A,
            "NOERROR",
            vec![(2, "203.0.113.9")],
            None,
        ),
        (
            "wrong.test",
            RecordType::AAAA,
            "NOERROR",
            vec![(2, "2001:db8::9")],
            None,
        ),
        (
            "ok.test",
            RecordType::A,
            "NOERROR",
            vec![(5, "192.0.2.1")],
            None,
        ),
        (
            "ok.test",
            RecordType::AAAA,
            "NOERROR",
            vec![(5, "2001:db8::1")],
            None,
        ),
        // A name in `records` with no address of the type: NODATA.
        ("ok.test", RecordType::TXT, "NOERROR", vec![], Some(5)),
        // Forwarded to the second faultline, whose records know it.
        (
            "far.test",
            RecordType::A,
            "NOERROR",
            vec![(5, "198.51.100.5")],
            None,
        ),
    ];
    for (name, qtype, status, answers, soa) in &cases {
        let answers: Vec<(u32, String)> =
            answers.iter().map(|(t, a)| (*t, (*a).to_owned())).collect();
        for tcp in [false, true] {
            let what = format!("{name} {qtype} over {}", if tcp { "TCP" } else { "UDP" });
            let message = ask(addr, name, *qtype, tcp).await.unwrap();
            assert_eq!(message.response_code(), code(status), "{what}");
            assert_eq!(addresses(&message), answers, "{what}");
            assert_eq!(soa_ttl(&message), *soa, "{what}");
            assert!(message.recursion_available(), "{what}");
            if let Some(dig_path) = &dig_path {
                let extra: &[&str] = if tcp { &["+tcp"] } else { &[] };
                let dug = dig(dig_path, addr, name, &qtype.to_string(), extra).await;
                assert_eq!(
                    dug,
                    Dug {
                        status: Some((*status).to_owned()),
                        answers: answers.clone(),
                        authority_ttl: *soa,
                    },
                    "dig {what}"
                );
            }
        }
    }
    // The metrics count each answer; injected ones as dns faults of their rule.
    let series = |answer: &str| format!("faultline_dns_queries_total{{answer=\"{answer}\"}}");
    let per_case = if dig_path.is_some() { 4.0 } else { 2.0 };
    assert_eq!(proxy.metric(&series("nxdomain")).await, Some(per_case));
    assert_eq!(proxy.metric(&series("forwarded")).await, Some(per_case));
    assert_eq!(proxy.metric(&series("records")).await, Some(3.0 * per_case));
    assert_eq!(
        proxy
            .metric("faultline_faults_injected_total{kind=\"dns\",region=\"\",rule=\"empty\",upstream=\"\"}")
            .await,
        Some(2.0 * per_case)
    );
    assert_eq!(proxy.injected("wrong").await as f64, 2.0 * per_case);
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// `answer = "timeout"` sends nothing, over UDP or TCP; dig says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_answer_is_no_answer() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    let series = "faultline_dns_queries_total{answer=\"timeout\"}";
    for (tcp, n) in [(false, 1.0), (true, 2.0)] {
        let packet = query("silent.test", RecordType::A, None);
        let asked = async {
            if tcp {
                tcp_raw(addr, &packet, Duration::from_secs(2)).await
            } else {
                udp_raw(addr, &packet, Duration::from_secs(2)).await
            }
        };
        let (answer, ()) = tokio::join!(asked, async {
            wait_until(series, async || proxy.metric(series).await == Some(n)).await;
        });
        assert_eq!(answer, None, "an answer came (tcp: {tcp})");
    }
    if let Some(dig_path) = dig_path() {
        let dug = dig(&dig_path, addr, "silent.test", "A", &["+time=1"]).await;
        assert_eq!(dug.status, None, "{dug:?}");
    }
    // The server is still there.
    assert!(ask(addr, "ok.test", RecordType::A, false).await.is_some());
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// A `latency` rule on a name delays its answer, over UDP and TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_rule_delays_the_answer() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    for tcp in [false, true] {
        let started = Instant::now();
        let message = ask(addr, "slow.test", RecordType::A, tcp).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert_eq!(addresses(&message), [(5, "192.0.2.7".to_owned())]);
    }
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// A UDP answer never exceeds 512 bytes, or the client's EDNS size (up to
/// 1232): a larger one is cut to its question with TC set, and the whole
/// answer comes over TCP, as dig's retry shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answers_fit_the_client_and_set_tc() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    let long = "a".repeat(60);
    let name = format!("{long}.{long}.{long}.many.test");
    let wait = Duration::from_secs(5);
    let plain = udp_raw(addr, &query(&name, RecordType::AAAA, None), wait)
        .await
        .unwrap();
    assert!(plain.len() <= 512, "{}", plain.len());
    let cut = Message::from_vec(&plain).unwrap();
    assert!(cut.truncated());
    assert!(cut.answers().is_empty());
    assert_eq!(cut.queries().len(), 1);
    let edns = udp_raw(addr, &query(&name, RecordType::AAAA, Some(4096)), wait)
        .await
        .unwrap();
    assert!(edns.len() > 512 && edns.len() <= 1232, "{}", edns.len());
    let whole = Message::from_vec(&edns).unwrap();
    assert!(!whole.truncated());
    assert_eq!(whole.answers().len(), 16);
    let tcp = tcp_raw(addr, &query(&name, RecordType::AAAA, None), wait)
        .await
        .unwrap();
    assert_eq!(Message::from_vec(&tcp).unwrap().answers().len(), 16);
    if let Some(dig_path) = dig_path() {
        let dug = dig(&dig_path, addr, &name, "AAAA", &["+noedns"]).await;
        assert_eq!(dug.answers.len(), 16, "dig retried over TCP: {dug:?}");
    }
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// Malformed packets: no crash, a bare FORMERR header at most (never
/// larger than what was sent), or nothing; the server answers on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_no_amplification() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    let good = query("ok.test", RecordType::A, None);
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let mut no_question = good.clone();
    no_question[5] = 0;
    let mut answers_claimed = good.clone();
    answers_claimed[7] = 40;
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut forward_pointer = good[..12].to_vec();
    forward_pointer.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
    let mut a_response = good.clone();
    a_response[2] |= 0x80;
    let mut other_opcode = good.clone();
    other_opcode[2] = (other_opcode[2] & 0x87) | (5 << 3);
    let mut big_label = good[..12].to_vec();
    big_label.push(200);
    big_label.extend_from_slice(&[b'x'; 40]);
    let bad: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("empty", Vec::new(), None),
        ("five bytes", good[..5].to_vec(), None),
        ("a header alone", good[..12].to_vec(), Some(1)),
        ("the question cut", good[..good.len() - 2].to_vec(), Some(1)),
        ("two questions announced", two_questions, Some(1)),
        ("no question", no_question, Some(1)),
        ("answers announced, none sent", answers_claimed, Some(1)),
        ("a compression loop", looped, Some(1)),
        ("a pointer forward", forward_pointer, Some(1)),
        ("a label longer than 63", big_label, Some(1)),
        ("a response", a_response, None),
        ("an UPDATE", other_opcode, Some(4)),
    ];
    for (what, packet, rcode) in &bad {
        // UDP cannot send an empty datagram to mean anything; skip it there.
        if !packet.is_empty() {
            let answer = udp_raw(addr, packet, Duration::from_millis(500)).await;
            match rcode {
                Some(code) => {
                    let answer = answer.unwrap_or_else(|| panic!("{what}: no answer"));
                    assert!(answer.len() <= packet.len(), "{what}: amplified");
                    assert_eq!(answer[3] & 0x0f, *code, "{what}");
                    assert_eq!(&answer[..2], &packet[..2], "{what}: id");
                }
                None => assert_eq!(answer, None, "{what}"),
            }
        }
        let over_tcp = tcp_raw(addr, packet, Duration::from_secs(2)).await;
        match rcode {
            Some(code) => assert_eq!(
                over_tcp.map(|a| a[3] & 0x0f),
                Some(*code),
                "{what} over TCP"
            ),
            None => assert_eq!(over_tcp, None, "{what} over TCP"),
        }
    }
    // TCP: a message longer than the limit, or of length zero, closes the connection.
    for length in [0u16, 5000] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&length.to_be_bytes()).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{length}: {read:?}");
    }
    assert_eq!(
        addresses(&ask(addr, "ok.test", RecordType::A, false).await.unwrap()),
        [(5, "192.0.2.1".to_owned())]
    );
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// A DNS rule on an upstream's host name makes the proxy's requests to it
/// fail as a real resolution failure does (502 upstream_dns), while other
/// upstreams answer; an `addresses` rule sends the proxy elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_resolves_through_the_dns_rules() {
    let app = TestUpstream::start("app").await;
    let other = TestUpstream::start("other").await;
    let moved = TestUpstream::start("moved").await;
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[proxy]\nseed = 1\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"app\"\nurl = \"http://app.test:{}\"\n\n\
         [[upstream]]\nname = \"other\"\nurl = \"http://other.test:{}\"\n\n\
         [[upstream]]\nname = \"moved\"\nurl = \"http://moved.test:{}\"\n\n\
         [[route]]\nlistener = \"edge\"\npath_prefix = \"/app\"\nupstream = \"app\"\n\
         [[route]]\nlistener = \"edge\"\npath_prefix = \"/other\"\nupstream = \"other\"\n\
         [[route]]\nlistener = \"edge\"\npath_prefix = \"/moved\"\nupstream = \"moved\"\n\n\
         [dns]\n[dns.records]\n\"app.test\" = [\"127.0.0.1\"]\n\"other.test\" = [\"127.0.0.1\"]\n",
        app.addr.port(),
        other.addr.port(),
        moved.addr.port()
    );
    let rules = r#"
[[rule]]
name = "app-gone"
[rule.match]
dns = { name = "app.test", types = ["A", "AAAA"] }
[rule.fault]
kind = "dns"
answer = "nodata"

[[rule]]
name = "moved-here"
[rule.match]
dns = { name = "moved.test" }
[rule.fault]
kind = "dns"
answer = "addresses"
addresses = ["127.0.0.1"]
"#;
    let proxy = TestProxy::start(&config, rules).await;
    let edge = proxy.url("edge");
    for _ in 0..3 {
        let reply = get(&format!("{edge}/app/x")).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        assert_eq!(reply.header("x-faultline-error"), Some("upstream_dns"));
        assert_eq!(reply.header("x-faultline-rule"), None);
        assert_eq!(get(&format!("{edge}/other/x")).await.status, 200);
    }
    assert_eq!(app.requests(), 0);
    assert_eq!(
        proxy
            .metric("faultline_upstream_errors_total{reason=\"dns\",upstream=\"app\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(proxy.injected("app-gone").await, 3);
    // No record and no system answer for moved.test: the rule's address.
    let reply = get(&format!("{edge}/moved/x")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("moved"));
    // The rule off: the record answers again.
    let off = proxy
        .admin("POST", "/api/rules/app-gone/disable", None)
        .await;
    assert_eq!(off.status, 200);
    assert_eq!(get(&format!("{edge}/app/x")).await.status, 200);
    assert_eq!(app.requests(), 1);
    proxy.shutdown().await;
}

/// DNS rules are rules: added and deleted through the admin API, and the
/// kill switch lets a delayed answer go, with the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rules_and_the_kill_switch_apply_to_dns() {
    let resolver = upstream_resolver().await;
    let proxy = dns_proxy(dns_addr(&resolver)).await;
    let addr = dns_addr(&proxy);
    let added = proxy
        .admin(
            "POST",
            "/api/rules",
            Some(r#"{"name":"api-nx","match":{"dns":{"name":"ok.test","types":["A"]}},"fault":{"kind":"dns","answer":"nxdomain","ttl":"1s"},"ttl":"1h"}"#),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let message = ask(addr, "ok.test", RecordType::A, false).await.unwrap();
    assert_eq!(message.response_code(), ResponseCode::NXDomain);
    assert_eq!(soa_ttl(&message), Some(1));
    // AAAA is not the rule's.
    let message = ask(addr, "ok.test", RecordType::AAAA, true).await.unwrap();
    assert_eq!(addresses(&message), [(5, "2001:db8::1".to_owned())]);
    assert_eq!(
        proxy
            .admin("DELETE", "/api/rules/api-nx", None)
            .await
            .status,
        204
    );
    let message = ask(addr, "ok.test", RecordType::A, false).await.unwrap();
    assert_eq!(addresses(&message), [(5, "192.0.2.1".to_owned())]);

    let added = proxy
        .admin(
            "POST",
            "/api/rules",
            Some(r#"{"name":"api-slow","match":{"dns":{"name":"ok.test"}},"fault":{"kind":"latency","delay":"30s"}}"#),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let started = Instant::now();
    let asked = tokio::spawn(async move { ask(addr, "ok.test", RecordType::A, false).await });
    proxy.until_injected("api-slow", 1).await;
    assert_eq!(proxy.admin("POST", "/api/halt", None).await.status, 200);
    let message = asked.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(addresses(&message), [(5, "192.0.2.1".to_owned())]);
    // Halted: no rule answers; the truth comes from the upstream resolver.
    let message = ask(addr, "wrong.test", RecordType::A, false).await.unwrap();
    assert_eq!(addresses(&message), []);
    assert_eq!(proxy.injected("wrong").await, 0);
    proxy.shutdown().await;
    resolver.shutdown().await;
}

/// The head of the proxy's answer to `request`, lowercase.
async fn answer_head(proxy: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("the proxy answers")
            .unwrap();
        assert_eq!(read, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// A forward listener's requests and `CONNECT`s resolve through the DNS
/// rules too: a name a rule empties is `502 upstream_dns`, under `other`;
/// so does a destination's `connect_to`, under the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_connections_resolve_through_the_dns_rules() {
    let target = TestUpstream::start("target").await;
    let port = target.addr.port();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"egress\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nallow_ports = [{port}]\n\n\
         [dns]\n[dns.records]\n\"up.test\" = [\"127.0.0.1\"]\n\"down.test\" = [\"127.0.0.1\"]\n\n\
         [[destination]]\nname = \"via-up\"\nhost = \"via-up.test\"\nconnect_to = \"up.test:{port}\"\n\n\
         [[destination]]\nname = \"via-down\"\nhost = \"via-down.test\"\nconnect_to = \"down.test:{port}\"\n"
    );
    let rules = "[[rule]]\nname = \"down\"\n[rule.match]\ndns = { name = \"down.test\" }\n[rule.fault]\nkind = \"dns\"\nanswer = \"nxdomain\"\n";
    let proxy = TestProxy::start(&config, rules).await;
    let egress = proxy.addr("egress");
    let get =
        |host: &str| format!("GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    let head = answer_head(egress, &get("up.test")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let head = answer_head(egress, &get("down.test")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-faultline-error: upstream_dns"), "{head}");
    let connect =
        |host: &str| format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    let head = answer_head(egress, &connect("up.test")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let head = answer_head(egress, &connect("down.test")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-faultline-error: upstream_dns"), "{head}");
    assert_eq!(
        proxy
            .metric("faultline_upstream_errors_total{reason=\"dns\",upstream=\"other\"}")
            .await,
        Some(2.0)
    );
    // A destination dials its `connect_to`, resolved the same way.
    let head = answer_head(egress, &get("via-up.test")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let head = answer_head(egress, &get("via-down.test")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-faultline-error: upstream_dns"), "{head}");
    assert_eq!(
        proxy
            .metric("faultline_upstream_errors_total{reason=\"dns\",upstream=\"via-down\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(proxy.injected("down").await, 3);
    proxy.shutdown().await;
}
