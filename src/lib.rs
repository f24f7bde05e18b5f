//! faultline: a chaos-engineering reverse proxy that injects latency, errors
//! and unavailability into HTTP traffic according to rule files.
//!
//! # Layout
//! - [`config`]: how the process runs (listeners, upstreams, routes, settings).
//! - [`rules`]: which requests are affected (rule schema, validation, matching, snapshots).
//! - [`fault`]: what happens to them (fault kinds and the pure planning step).
//! - [`proxy`]: doing it (the request pipeline, the upstream client, synthetic responses).
//! - [`server`]: the one accept loop every listener uses, and per-connection aborts.
//! - [`socket`]: TCP streams that write with `send(2)`, for both sides of the proxy.
//! - [`metrics`]: the Prometheus families, one registry per proxy, handles resolved ahead.
//! - [`control`]: the rules while the proxy runs: runtime switches, TTLs, the kill switch, reloads, scenario runs.
//! - [`scenario`]: rehearsal timelines: their schema and validation, guards, run reports.
//! - [`traffic`]: the proxy's own running counts per upstream, for guards and reports.
//! - [`reload`]: what triggers a reload (the rule-file watcher, SIGHUP).
//! - [`admin`]: the admin listener: the JSON API of SPEC §5, `/healthz`, `/metrics`.
//! - [`client`]: the admin API from Rust, typed: for test suites, tools and `ctl`.
//! - [`ctl`]: `faultline ctl`, the admin API's command-line client.
//! - [`app`]: the only place where the pieces are wired together.
//! - [`demo`]: the self-contained demo of `faultline demo`, and its upstream alone.
//! - [`diagnostic`]: problems in users' files, with line and column.
//! - [`duration`]: human durations in documents.

pub mod admin;
pub mod app;
pub mod client;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod diagnostic;
pub mod duration;
pub mod fault;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod scenario;
pub mod server;
pub mod socket;
pub mod traffic;
