//! TCP streams that write with `send(2)`.
//!
//! tokio writes a `TcpStream` with `write(2)` or `writev(2)`, which pass
//! through the file layer (file lookup with its position lock, permission
//! hooks, the iovec copy) before they reach the socket. `send(2)` goes to
//! the socket directly, as HAProxy and nginx do. Every proxied request
//! makes two writes, one to the upstream and one to the client; perf put
//! the file-layer part at about 0.35 µs of kernel time per request, a few
//! percent of the whole (README, Speed).
//!
//! hyper hands a message over as separate slices (head, then body chunks).
//! Small ones are copied into one buffer and sent at once; larger ones go
//! out with `sendmsg(2)`, which skips the file layer too.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Slices totalling at most this many bytes are copied into one buffer on
/// the stack: a message head with a small body, the common case.
const COALESCE_LIMIT: usize = 2048;

/// The most slices one `sendmsg(2)` takes (Linux's `IOV_MAX`); the rest wait
/// for the next write, as std's `writev` does.
const MAX_SLICES: usize = 1024;

/// A peer that has gone away is an `EPIPE` error, never a `SIGPIPE`, even in
/// a program that did not ignore the signal (std's writes do the same).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// A `TcpStream` whose writes use `send(2)`; reads are tokio's (`recv(2)`).
#[derive(Debug)]
pub struct SendStream {
    stream: TcpStream,
}

impl SendStream {
    pub fn new(stream: TcpStream) -> Self {
        Self { stream }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for SendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_send_one(&self.stream, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.stream;
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if bufs.len() > 1 && total <= COALESCE_LIMIT {
            let mut joined = [0u8; COALESCE_LIMIT];
            let mut len = 0;
            for buf in bufs {
                joined[len..len + buf.len()].copy_from_slice(buf);
                len += buf.len();
            }
            return poll_send_one(stream, cx, &joined[..len]);
        }
        match bufs {
            [buf] => poll_send_one(stream, cx, buf),
            _ => {
                let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
                poll_send(stream, cx, || {
                    SockRef::from(stream).send_vectored_with_flags(bufs, SEND_FLAGS)
                })
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Sends `buf` with one `send(2)`.
fn poll_send_one(stream: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    poll_send(stream, cx, || {
        SockRef::from(stream).send_with_flags(buf, SEND_FLAGS)
    })
}

/// Runs `send` once `stream` is writable, as tokio's own writes do: a
/// send that would block clears the readiness and waits for the next.
fn poll_send(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut send: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_io(Interest::WRITABLE, &mut send) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            sent => return Poll::Ready(sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (SendStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (SendStream::new(client.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn vectored_writes_arrive_whole_and_in_order_small_or_large() {
        let (mut sender, mut receiver) = pair().await;
        let large = vec![7u8; 3 * COALESCE_LIMIT];
        let messages: [&[&[u8]]; 3] = [
            // Coalesced on the stack.
            &[b"HTTP/1.1 200 OK\r\n\r\n", b"hello"],
            // Through sendmsg.
            &[b"head", &large, b"tail"],
            // One slice, as it is.
            &[&large],
        ];
        let mut expected = Vec::new();
        for slices in messages {
            let mut owned: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
            let mut bufs = &mut owned[..];
            // A write may take part of the slices: send the rest.
            while !bufs.is_empty() {
                let written = sender.write_vectored(bufs).await.unwrap();
                IoSlice::advance_slices(&mut bufs, written);
            }
            expected.extend(slices.concat());
        }
        sender.shutdown().await.unwrap();
        let mut received = Vec::new();
        receiver.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error_not_a_hang() {
        let (mut sender, receiver) = pair().await;
        drop(receiver);
        let chunk = vec![0u8; 64 * 1024];
        let mut failed = None;
        // The first writes may land in the socket buffer before the reset.
        for _ in 0..64 {
            if let Err(e) = sender.write_all(&chunk).await {
                failed = Some(e);
                break;
            }
        }
        assert!(failed.is_some());
    }
}
