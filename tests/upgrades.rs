//! Upgraded connections through faultline, with a real WebSocket client
//! and server (tokio-tungstenite): the handshake is forwarded, the tunnel
//! carries every kind of message and the close handshake; rules act on the
//! handshake (error, latency, abort, blackhole) and on the upstream's bytes
//! (truncate, bandwidth); halt and shutdown release and end tunnels.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Loose enough for a loaded 2-core machine.
const LOOSE: Duration = Duration::from_secs(10);

const UPGRADED: &str =
    r#"faultline_requests_total{code="101",method="GET",region="us-east-1",upstream="chat-use1"}"#;

/// A WebSocket server that echoes every text and binary message.
struct EchoUpstream {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(message)) = ws.next().await {
                        let answered = match message {
                            Message::Text(_) | Message::Binary(_) => ws.send(message).await,
                            // tungstenite queued the pong: send it now.
                            Message::Ping(_) => ws.flush().await,
                            // The close is answered by tungstenite itself.
                            _ => Ok(()),
                        };
                        if answered.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(upstream: &EchoUpstream, grace: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 42\nshutdown_grace = \"{grace}\"\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"chat-use1\"\nurl = \"http://{}\"\nlabels = {{ region = \"us-east-1\" }}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"chat-use1\"\n",
        upstream.addr
    )
}

async fn connect(proxy: &TestProxy, path: &str) -> Result<Ws, WsError> {
    let url = format!("ws://{}{path}", proxy.addr("edge"));
    let (ws, response) = tokio::time::timeout(LOOSE, tokio_tungstenite::connect_async(url))
        .await
        .expect("the handshake did not finish")?;
    assert_eq!(response.status(), 101);
    Ok(ws)
}

/// The next message that is not a ping or pong.
async fn next_message(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(LOOSE, ws.next())
        .await
        .expect("no message came")
}

async fn echo(ws: &mut Ws, message: Message) {
    ws.send(message.clone()).await.unwrap();
    let answer = next_message(ws).await.unwrap().unwrap();
    assert!(answer == message, "sent {message:?}, got back {answer:?}");
}

/// Reads until the connection ends; panics if it is still open after [`LOOSE`].
async fn until_closed(ws: &mut Ws) {
    let closed = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(LOOSE, closed)
        .await
        .expect("the tunnel was not closed");
}

#[tokio::test]
async fn websocket_messages_cross_both_ways_and_close_cleanly() {
    let upstream = EchoUpstream::start().await;
    let proxy = TestProxy::start(&config(&upstream, "5s"), "").await;
    let mut ws = connect(&proxy, "/chat").await.unwrap();
    echo(&mut ws, Message::text("hello through faultline")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = next_message(&mut ws).await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));

    let big: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;

    // The close handshake: the server's answer, then the end.
    ws.close(None).await.unwrap();
    let answer = next_message(&mut ws).await;
    assert!(matches!(answer, Some(Ok(Message::Close(_)))), "{answer:?}");
    assert!(next_message(&mut ws).await.is_none());

    assert_eq!(upstream.handshakes(), 1);
    assert_eq!(proxy.metric(UPGRADED).await, Some(1.0));
}

#[tokio::test]
async fn rules_answer_delay_or_end_the_handshake() {
    let upstream = EchoUpstream::start().await;
    let rules = [
        rule(
            "no-chat",
            "",
            "path = \"/chat\"",
            "kind = \"error\"\nstatus = 503\nbody = \"chat is down\"",
        ),
        rule(
            "slow",
            "",
            "path = \"/slow\"",
            "kind = \"latency\"\ndelay = \"200ms\"",
        ),
        rule(
            "hang-up",
            "",
            "path = \"/abort\"",
            "kind = \"abort\"\nmode = \"reset\"",
        ),
    ]
    .concat();
    let proxy = TestProxy::start(&config(&upstream, "5s"), &rules).await;

    match connect(&proxy, "/chat").await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["x-faultline-rule"], "no-chat");
            assert_eq!(response.body().as_deref(), Some(&b"chat is down"[..]));
        }
        Err(other) => panic!("expected the injected 503, got {other}"),
        Ok(_) => panic!("expected the injected 503, got an upgrade"),
    }
    assert_eq!(
        upstream.handshakes(),
        0,
        "an answered handshake was forwarded"
    );

    let start = Instant::now();
    let mut ws = connect(&proxy, "/slow").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    echo(&mut ws, Message::text("late but fine")).await;

    assert!(connect(&proxy, "/abort").await.is_err());
    assert_eq!(upstream.handshakes(), 1);
    assert_eq!(proxy.metric(UPGRADED).await, Some(1.0));
}

#[tokio::test]
async fn truncate_cuts_the_upstreams_bytes_in_the_tunnel() {
    let upstream = EchoUpstream::start().await;
    let proxy = TestProxy::start(
        &config(&upstream, "5s"),
        &rule(
            "cut",
            "",
            "",
            "kind = \"truncate\"\nafter_bytes = 1000\nthen = \"reset\"",
        ),
    )
    .await;
    let mut ws = connect(&proxy, "/chat").await.unwrap();
    // Under the limit: whole.
    echo(&mut ws, Message::text("short")).await;
    // Over it: the tunnel breaks before the message is whole.
    ws.send(Message::binary(vec![7u8; 64 * 1024]))
        .await
        .unwrap();
    let answer = next_message(&mut ws).await;
    assert!(
        !matches!(answer, Some(Ok(Message::Binary(_)))),
        "the message crossed whole: {answer:?}"
    );
    until_closed(&mut ws).await;
    assert_eq!(proxy.injected("cut").await, 1);
    assert_eq!(proxy.metric(UPGRADED).await, Some(1.0));
}

#[tokio::test]
async fn bandwidth_paces_the_tunnel_until_halt_lets_it_go() {
    let upstream = EchoUpstream::start().await;
    let proxy = TestProxy::start(
        &config(&upstream, "5s"),
        &rule("narrow", "", "", "kind = \"bandwidth\"\nrate = \"1KiB/s\""),
    )
    .await;
    let mut ws = connect(&proxy, "/chat").await.unwrap();
    // 32 KiB at 1 KiB/s takes half a minute.
    let message = Message::binary(vec![1u8; 32 * 1024]);
    ws.send(message.clone()).await.unwrap();
    let paced = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
    assert!(paced.is_err(), "32 KiB crossed a 1 KiB/s tunnel in 500 ms");

    let halted = proxy.admin("POST", "/api/halt", None).await;
    assert_eq!(halted.status, 200, "{}", halted.text());
    let start = Instant::now();
    let answer = next_message(&mut ws).await.unwrap().unwrap();
    assert!(answer == message);
    assert!(start.elapsed() < LOOSE);
    // Unshaped from now on.
    echo(&mut ws, Message::binary(vec![2u8; 64 * 1024])).await;
}

#[tokio::test]
async fn a_blackholed_handshake_holds_until_halt_lets_it_through() {
    let upstream = EchoUpstream::start().await;
    let proxy = TestProxy::start(
        &config(&upstream, "5s"),
        &rule(
            "hole",
            "",
            "",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
        ),
    )
    .await;
    let url = format!("ws://{}/chat", proxy.addr("edge"));
    let held = tokio::spawn(tokio_tungstenite::connect_async(url));
    proxy.until_injected("hole", 1).await;
    assert_eq!(upstream.handshakes(), 0, "a held handshake was forwarded");

    let halted = proxy.admin("POST", "/api/halt", None).await;
    assert_eq!(halted.status, 200, "{}", halted.text());
    let (mut ws, response) = tokio::time::timeout(LOOSE, held)
        .await
        .expect("halt did not let the handshake go")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    echo(&mut ws, Message::text("let go")).await;
    assert_eq!(upstream.handshakes(), 1);
}

#[tokio::test]
async fn shutdown_waits_for_tunnels_then_closes_them_after_the_grace_period() {
    let upstream = EchoUpstream::start().await;
    let proxy = TestProxy::start(&config(&upstream, "1s"), "").await;
    let mut ws = connect(&proxy, "/chat").await.unwrap();
    echo(&mut ws, Message::text("before")).await;

    let start = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown());
    // Draining: the tunnel still carries messages.
    echo(&mut ws, Message::text("during the grace period")).await;
    until_closed(&mut ws).await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "closed {:?} into a 1 s grace period",
        start.elapsed()
    );
    tokio::time::timeout(LOOSE, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}

/// A WebSocket to an `https://` upstream with `protocol = "auto"` whose
/// TLS offers h2 first: the upgrade goes over HTTP/1.1, the one version
/// that carries it, and the tunnel works.
#[tokio::test]
async fn a_websocket_to_an_auto_https_upstream_goes_over_http1() {
    let files = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new("chat CA");
    let leaf = ca.leaf(&["chat.internal"]);
    let mut tls = (*support::tls::server_config(&leaf, None)).clone();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ca_file = ca.write(files.path());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"chat\"\nurl = \"https://{addr}\"\n\
         tls = {{ ca = \"{}\", server_name = \"chat.internal\" }}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"chat\"\n",
        ca_file.display()
    );
    let proxy = TestProxy::start(&config, "").await;
    let mut ws = connect(&proxy, "/chat").await.unwrap();
    echo(&mut ws, Message::text("over http/1.1")).await;
    server.abort();
}
