//! When a TCP connection's faults stop: the kill switch of the snapshot
//! it was decided from, or any rule that fired on it turning off (or
//! going). Once lifted, the connection's bytes go as they come.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::HaltSignal;

/// The signals that lift one connection's faults.
#[derive(Debug, Default)]
pub struct Lift {
    signals: Vec<Arc<HaltSignal>>,
}

impl Lift {
    pub fn new(signals: Vec<Arc<HaltSignal>>) -> Self {
        Self { signals }
    }

    pub fn is_lifted(&self) -> bool {
        self.signals.iter().any(|s| s.is_halted())
    }

    /// Completes once lifted.
    pub async fn lifted(&self) {
        let mut waits: Vec<_> = self.signals.iter().map(|s| Box::pin(s.halted())).collect();
        poll_fn(|cx| {
            if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Sleeps `duration`, or less if lifted meanwhile.
    pub async fn sleep(&self, duration: Duration) {
        self.sleep_until(Instant::now() + duration).await;
    }

    /// Sleeps until `deadline`, or less if lifted meanwhile.
    pub async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() || self.is_lifted() {
            return;
        }
        tokio::select! {
            biased;
            () = self.lifted() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
