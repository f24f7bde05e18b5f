//! The rule-file watcher: edits that land by atomic rename, Kubernetes
//! ConfigMap symlink swaps, and a broken save that must not take effect.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

fn error_rule(name: &str, path: &str, status: u16) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\n[rule.match]\npath = \"{path}\"\n[rule.fault]\nkind = \"error\"\nstatus = {status}\n"
    )
}

/// Polls `url` until it answers `status`; the watcher works in the background.
async fn eventually(url: &str, status: StatusCode, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(url).await.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never saw {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` beside `path` and renames it over `path`, as editors do.
fn save_by_rename(path: &Path, text: &str) {
    let temporary = path.with_file_name(".save.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn the_watcher_applies_a_save_by_atomic_rename() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], ""),
        &error_rule("first", "/a", 503),
    )
    .await;
    let edge = proxy.url("edge");
    assert_eq!(
        get(&format!("{edge}/a")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    save_by_rename(
        &proxy.rules_dir().join("test.toml"),
        &error_rule("first", "/b", 503),
    );
    eventually(
        &format!("{edge}/b"),
        StatusCode::SERVICE_UNAVAILABLE,
        "the renamed file",
    )
    .await;
    assert_eq!(get(&format!("{edge}/a")).await.status, StatusCode::OK);

    // A broken save is rejected whole; the rules in force stay.
    save_by_rename(&proxy.rules_dir().join("test.toml"), "[[rule]]\nname = ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = proxy.admin("GET", "/api/status", None).await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        if status["last_reload"]["outcome"] == "rejected" {
            assert_eq!(status["last_reload"]["trigger"], "watcher");
            let error = status["last_reload"]["errors"][0].as_str().unwrap();
            assert!(error.contains("test.toml:2:"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "the broken save was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&format!("{edge}/b")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Saving the good version back is a reload like any other, shown as applied.
    save_by_rename(
        &proxy.rules_dir().join("test.toml"),
        &error_rule("first", "/b", 503),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = proxy.admin("GET", "/api/status", None).await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        if status["last_reload"]["outcome"] == "applied" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed save was not shown as applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_watcher_follows_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;

    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let edge = proxy.url("edge");
    let dir = proxy.rules_dir();
    // What the kubelet lays out: a timestamped folder, `..data` pointing at
    // it, and each key a symlink through `..data`.
    std::fs::remove_file(dir.join("test.toml")).unwrap();
    std::fs::create_dir(dir.join("..2026_11_21_v1")).unwrap();
    std::fs::write(
        dir.join("..2026_11_21_v1/outage.toml"),
        error_rule("outage", "/a", 503),
    )
    .unwrap();
    symlink("..2026_11_21_v1", dir.join("..data")).unwrap();
    symlink("..data/outage.toml", dir.join("outage.toml")).unwrap();
    eventually(
        &format!("{edge}/a"),
        StatusCode::SERVICE_UNAVAILABLE,
        "the first version",
    )
    .await;

    // An update: a new folder, then `..data` swapped by renaming a new link over it.
    std::fs::create_dir(dir.join("..2026_11_21_v2")).unwrap();
    std::fs::write(
        dir.join("..2026_11_21_v2/outage.toml"),
        error_rule("outage", "/a", 429),
    )
    .unwrap();
    symlink("..2026_11_21_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_21_v1")).unwrap();
    eventually(
        &format!("{edge}/a"),
        StatusCode::TOO_MANY_REQUESTS,
        "the swapped version",
    )
    .await;
}
