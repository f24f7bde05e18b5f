//! What triggers a reload of the rule files besides `POST /api/reload`: a
//! watcher on the rules directory and SIGHUP. All three go through
//! [`Control::reload`], which applies a valid change whole and keeps the
//! last good rules otherwise.
//!
//! The watcher looks at the directory, not at single files, so it follows
//! editors that save by writing a new file and renaming it over the old one,
//! and Kubernetes ConfigMap volumes, whose update swaps a `..data` symlink.
//! Bursts of events (an editor's save is several) are debounced into one
//! reload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::control::{Control, ControlError, ReloadSummary, Trigger};

/// How long the rules directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a reload waits for quiet: a directory written to without a
/// pause (a sidecar's log file) still gets its reloads.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// Runs [`Control::reload`] on the blocking pool: it reads files, and the
/// runtime's workers serve requests meanwhile.
pub async fn in_background(
    control: &Arc<Control>,
    trigger: Trigger,
) -> Result<ReloadSummary, ControlError> {
    let control = Arc::clone(control);
    match tokio::task::spawn_blocking(move || control.reload(&trigger)).await {
        Ok(outcome) => outcome,
        // Only a panic inside the reload gets here; the rules in force stay.
        Err(e) => Err(ControlError::Rejected(vec![
            crate::diagnostic::Diagnostic::whole_file(
                Path::new("(reload)"),
                format!("the reload failed: {e}"),
            ),
        ])),
    }
}

/// Watches `dir` and reloads once changes settle, until `stop`.
pub fn watch(
    dir: &Path,
    control: Arc<Control>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (changed, mut changes) = mpsc::unbounded_channel();
    let mut watcher = RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| match event {
            Ok(event) if touches_content(&event.kind) => {
                let _ = changed.send(());
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "rule file watcher"),
        },
        notify::Config::default(),
    )?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    info!(dir = %dir.display(), "watching rule files for changes");
    Ok(tokio::spawn(async move {
        // Dropped with the task: the watcher lives as long as it.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            // Wait for the burst to end, but not forever.
            let give_up = tokio::time::sleep(DEBOUNCE_MAX);
            tokio::pin!(give_up);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut give_up => break,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    change = changes.recv() => if change.is_none() { return },
                }
            }
            debug!("rule files changed");
            // Rejections are logged and shown in /api/status by the reload itself.
            let _ = in_background(&control, Trigger::Watcher).await;
        }
    }))
}

/// Whether an event may have changed what the rule files say. Reading the
/// files (as a reload does) must not count, or every reload would trigger
/// the next.
fn touches_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reloads on every SIGHUP, until `stop`.
#[cfg(unix)]
pub fn on_hangup(
    control: Arc<Control>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                hangup = hangups.recv() => if hangup.is_none() { return },
            }
            let _ = in_background(&control, Trigger::Signal).await;
        }
    }))
}
