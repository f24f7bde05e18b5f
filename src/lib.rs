//! faultline: a chaos-engineering reverse (and forward) proxy that injects
//! latency, errors and unavailability into HTTP, gRPC, TCP and DNS traffic according to rule files.
//!
//! # Layout
//! Each module owns one thing; `use crate::` points down this list's layers
//! only, never back up (no cycles):
//!
//! - [`diagnostic`], [`duration`], [`files`]: problems in users' files, with line and column; human durations; reading users' files with bounds.
//! - [`aws`]: AWS's wire vocabulary: a request's service, region and operation (SigV4 scope, host name, target, action, REST path), and the protocol its errors speak.
//! - [`grpc`]: gRPC's wire vocabulary: status codes, `grpc-status`/`grpc-message`, telling a call from other HTTP/2, trailers-only headers.
//! - [`tls`]: TLS both ways: listeners' certificates (swapped on reload), upstreams' trust and identity.
//! - [`ca`]: faultline's own CA (made on first use, kept in `[ca] dir`) and the leaves it signs, cached.
//! - [`config`]: how the process runs (listeners, upstreams, routes, settings).
//! - [`fault`]: what happens to a matched request: the fault kinds, written and validated.
//! - [`rules`]: which requests are affected: rule schema, pure validation, matching, the immutable snapshot.
//! - [`scenario`]: rehearsal timelines: their schema and validation, guards, run reports.
//! - [`book`]: the rule files: a file's schema, and the load step (read, parse, validate).
//! - [`plan`]: decide: the pure step from a snapshot and a request to a decision.
//! - [`traffic`], [`metrics`]: the proxy's own running counts; the Prometheus families, handles resolved ahead.
//! - [`control`]: the rules while the proxy runs: runtime switches, TTLs, the halt signal (and `admin.halt_file`, which keeps a halt across restarts), reloads, scenario runs (on tokio's clock, or anchored to the wall clock by `start_at`: armed, joined mid-run); publishes the snapshots.
//! - [`socket`]: TCP streams that write with `send(2)`, for both sides of the proxy.
//! - [`server`]: the one accept loop every listener uses (plain and TLS), per-connection endings
//!   (upgraded connections too), and idle plain HTTP/1.1 connections parking (hyper's state given
//!   back between requests).
//! - [`proxy`]: do: the request pipeline (front doors, the forward listener's routing by authority and destination among them, and intercepted `CONNECT`s served as TLS connections; fault phases, upstream connectors, synthetic responses), and the tunnels of upgraded connections and `CONNECT`s.
//! - [`dns`]: faultline's DNS server: queries read and answered (UDP and TCP, bounded), decided by the same rules (`match.dns`), untouched names answered from `records` or forwarded.
//! - [`tcp`]: TCP upstreams (`tcp://`): their dedicated ports' accept loop, each connection decided
//!   once and copied both ways through its faults (SPEC §9).
//! - [`toxiproxy`]: Toxiproxy 2.12's REST API: its proxies as run-time TCP upstreams, its toxics as
//!   runtime rules.
//! - [`reload`]: what triggers a reload (the rule-file watcher, SIGHUP).
//! - [`admin`]: the admin listener: the JSON API (README "Runtime control"), `/healthz`, `/metrics`.
//! - [`client`], [`ctl`]: the admin API from Rust, typed; `faultline ctl`, its command line, on one proxy or fanned out to a fleet (`--admin a,b,c`, `--fleet HOST:PORT`) with answers side by side and reports merged.
//! - [`app`]: the only place where the pieces are wired together.
//! - [`demo`]: the self-contained demo of `faultline demo`, and its upstream alone.

pub mod admin;
pub mod app;
pub mod aws;
pub mod book;
pub mod ca;
pub mod client;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod diagnostic;
pub mod dns;
pub mod duration;
pub mod fault;
pub mod files;
pub mod grpc;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod scenario;
pub mod server;
pub mod socket;
pub mod tcp;
pub mod tls;
pub mod toxiproxy;
pub mod traffic;
