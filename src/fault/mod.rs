//! What happens to a matched request: the fault kinds (README "Rules",
//! the table of kinds), as written ([`FaultSpec`], its `kind` parsed once into a
//! [`FaultKind`]) and validated ([`Fault`]), one validation function per
//! kind. Validation is pure: a `body_file` was read by the load step
//! ([`BodyFiles`]). Error presets (README "Error presets") live in
//! [`preset`]; deciding which fault a request gets is [`crate::plan`]'s.

pub mod dns;
pub mod latency;
pub mod preset;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::diagnostic::{FieldError, FieldPath};
use crate::grpc::GrpcStatus;

pub use dns::{DnsAnswer, DnsFault};
pub use latency::{Delay, DistributionSpec, Side};
pub use preset::{AwsError, Rendered, RequestIdStyle};

/// How long a blackhole holds a request when the rule does not say.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(300);
/// `retry-after` of an `unavailable` `status` fault when the rule does not say.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest delay, jitter, hold or retry-after a fault may ask for:
/// longer than any rehearsal, short enough that sums never overflow.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest piece a `slice` fault may ask for: one read's buffer.
pub const MAX_SLICE_BYTES: u64 = 64 * 1024;

/// Headers that frame the message: the proxy sets them, a rule may not.
const FRAMING_HEADERS: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
];

/// A fault as written in a rule file or an API body: `kind` and the fields
/// of that kind (README "Rules"). Flat rather than a tagged enum so that every
/// problem can be reported at its own field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Which fault; the other fields are those of this kind.
    pub kind: FaultKind,
    /// `latency`: how long the request waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// `latency`: uniform ± around `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// `latency`: a distribution to sample instead of `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<DistributionSpec>,
    /// `latency`: `request` (before forwarding, the default) or `response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
    /// `error`: the status of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `error`: headers of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// `error`: the body of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `error`: a file holding the body, read when the rule loads; relative to the rule file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
    /// `error`: a real service's error (README "Error presets"), such as `"aws.throttling"`;
    /// `status`, `headers` and `body` given as well override the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// `error`: answer as gRPC, trailers-only, with this status code (0 to 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u64>,
    /// `error`: the `grpc-message` of a gRPC error (percent-encoded on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    /// `abort`: `reset` or `close`; `unavailable`: `status` or `blackhole`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `unavailable` `blackhole`: how long a request is held before its connection closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold: Option<String>,
    /// `unavailable` `status`: the `retry-after` the 503 carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// `bandwidth`: the body's rate, such as `"64KiB/s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// `dribble`: how many pieces the body is sent in…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// `dribble`: …spread over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    /// `truncate`: the body is cut after this many bytes…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_bytes: Option<u64>,
    /// `truncate`: …then the connection is `reset` (default) or `close`d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// `dns`: `nxdomain`, `servfail`, `nodata`, `refused`, `timeout` or `addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// `dns` with `answer = "addresses"`: the IP addresses answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// `dns`: the TTL the answer carries (default 5s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// TCP upstreams: which bytes the fault acts on, `downstream` (the
    /// upstream's, to the client: the default) or `upstream` (the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `slice` (TCP): the average size of the pieces the bytes are cut into…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_size: Option<u64>,
    /// `slice` (TCP): …give or take this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_variation: Option<u64>,
    /// `abort` `reset` on a TCP upstream: how long after it opens the
    /// connection is reset (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Which bytes of a TCP connection a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client's bytes, on their way to the upstream.
    Upstream,
    /// The upstream's bytes, on their way back to the client (the default).
    Downstream,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortMode {
    /// TCP RST: the client sees "connection reset by peer".
    Reset,
    /// FIN at once, before the request body is read.
    Close,
    /// The whole request is read, then FIN with not a byte of response.
    Empty,
    /// Bytes that are not HTTP, then FIN.
    Garbage,
}

/// A validated fault, ready for the request path.
#[derive(Debug, Clone)]
pub enum Fault {
    Latency {
        delay: Delay,
        side: Side,
        /// Given only for TCP upstreams ([`Fault::fits_http`]).
        direction: Option<Direction>,
    },
    Bandwidth {
        bytes_per_sec: u64,
        direction: Option<Direction>,
    },
    Dribble {
        chunks: u64,
        over: Duration,
    },
    Truncate {
        after_bytes: u64,
        then: AbortMode,
        direction: Option<Direction>,
    },
    Respond(Arc<SyntheticResponse>),
    Abort {
        mode: AbortMode,
        /// TCP upstreams: the connection is reset this long after it opened.
        after: Option<Duration>,
    },
    Blackhole {
        max_hold: Duration,
    },
    /// An upstream's dedicated port refuses connections while the rule is
    /// on; a request that still arrives (a shared listener) is reset.
    Refuse,
    /// TCP upstreams: the bytes go in pieces of `average_size` ±
    /// `size_variation`, `delay` apart.
    Slice {
        average_size: u64,
        size_variation: u64,
        delay: Duration,
        direction: Option<Direction>,
    },
    /// TCP upstreams: a side's close reaches the other side `delay` late.
    SlowClose {
        delay: Duration,
        direction: Option<Direction>,
    },
    /// A DNS query's answer (README "DNS"): never an HTTP request's fault.
    Dns(DnsFault),
}

impl Fault {
    /// The kind the fault was written as, for logs and metrics.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::Bandwidth { .. } => FaultKind::Bandwidth,
            Fault::Dribble { .. } => FaultKind::Dribble,
            Fault::Truncate { .. } => FaultKind::Truncate,
            Fault::Respond(response) if response.unavailable => FaultKind::Unavailable,
            Fault::Respond(_) => FaultKind::Error,
            Fault::Abort { .. } => FaultKind::Abort,
            Fault::Blackhole { .. } | Fault::Refuse => FaultKind::Unavailable,
            Fault::Slice { .. } => FaultKind::Slice,
            Fault::SlowClose { .. } => FaultKind::SlowClose,
            Fault::Dns(_) => FaultKind::Dns,
        }
    }

    /// Whether the fault means something to an HTTP request: not the
    /// TCP-only kinds, nor a TCP field (`direction`, `after`).
    pub fn fits_http(&self) -> bool {
        match self {
            Fault::Latency { direction, .. }
            | Fault::Bandwidth { direction, .. }
            | Fault::Truncate { direction, .. } => direction.is_none(),
            Fault::Abort { after, .. } => after.is_none(),
            Fault::Dribble { .. } | Fault::Respond(_) | Fault::Blackhole { .. } | Fault::Refuse => {
                true
            }
            // TCP-only kinds, and DNS answers: never an HTTP request's.
            Fault::Slice { .. } | Fault::SlowClose { .. } | Fault::Dns(_) => false,
        }
    }

    /// Whether the fault means something to a TCP connection (SPEC §9):
    /// no answers, no `dribble` (it spreads a length a stream has not),
    /// no response-side latency, and an abort is a reset or a close.
    pub fn fits_tcp(&self) -> bool {
        match self {
            Fault::Latency { side, .. } => *side == Side::Request,
            Fault::Abort { mode, .. } => matches!(mode, AbortMode::Reset | AbortMode::Close),
            Fault::Bandwidth { .. }
            | Fault::Truncate { .. }
            | Fault::Blackhole { .. }
            | Fault::Refuse
            | Fault::Slice { .. }
            | Fault::SlowClose { .. } => true,
            Fault::Respond(_) | Fault::Dribble { .. } | Fault::Dns(_) => false,
        }
    }
}

/// A response the proxy makes itself, built once when the rule loads.
#[derive(Debug, Clone)]
pub struct SyntheticResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Made by an `unavailable` fault rather than an `error` fault.
    pub unavailable: bool,
    /// A preset's request ids, made fresh for each response; `None` (no
    /// per-response work) for every response a preset did not make.
    pub request_ids: Option<RequestIdStyle>,
    /// An `aws.*` preset's error, answered in the protocol of the service
    /// asked when the request tells it (the fields above are the answer
    /// when it does not).
    pub adaptive: Option<Adaptive>,
}

/// An AWS error answered in the protocol of the request, with the rule's
/// own `status` and `headers` over it.
#[derive(Debug, Clone)]
pub struct Adaptive {
    pub error: &'static AwsError,
    pub status: Option<StatusCode>,
    pub headers: HeaderMap,
}

/// The kinds of fault (README "Rules"): parsed from `kind` once, so
/// that every `match` on a kind is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Latency,
    Error,
    Abort,
    Unavailable,
    Bandwidth,
    Dribble,
    Truncate,
    /// TCP upstreams only.
    Slice,
    /// TCP upstreams only.
    SlowClose,
    Dns,
}

impl FaultKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Latency,
        FaultKind::Error,
        FaultKind::Abort,
        FaultKind::Unavailable,
        FaultKind::Bandwidth,
        FaultKind::Dribble,
        FaultKind::Truncate,
        FaultKind::Slice,
        FaultKind::SlowClose,
        FaultKind::Dns,
    ];

    /// The kind as users write it, in files, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Error => "error",
            FaultKind::Abort => "abort",
            FaultKind::Unavailable => "unavailable",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Dribble => "dribble",
            FaultKind::Truncate => "truncate",
            FaultKind::Slice => "slice",
            FaultKind::SlowClose => "slow_close",
            FaultKind::Dns => "dns",
        }
    }

    /// The fields this kind takes; any other field given is an error.
    fn fields(self) -> &'static [&'static str] {
        match self {
            FaultKind::Latency => &["delay", "jitter", "distribution", "side", "direction"],
            FaultKind::Error => &[
                "status",
                "headers",
                "body",
                "body_file",
                "preset",
                "grpc_status",
                "grpc_message",
            ],
            FaultKind::Abort => &["mode", "after"],
            FaultKind::Unavailable => &["mode", "max_hold", "retry_after"],
            FaultKind::Bandwidth => &["rate", "direction"],
            FaultKind::Dribble => &["chunks", "over"],
            FaultKind::Truncate => &["after_bytes", "then", "direction"],
            FaultKind::Slice => &["average_size", "size_variation", "delay", "direction"],
            FaultKind::SlowClose => &["delay", "direction"],
            FaultKind::Dns => &["answer", "addresses", "ttl"],
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault kind {text:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

impl<'de> Deserialize<'de> for FaultKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The contents of the `body_file`s that rules name, read by the load step
/// (validation itself reads no file). Keyed by the file's path as the
/// rule names it, joined to the folder of the rule file.
#[derive(Debug, Clone, Default)]
pub struct BodyFiles {
    files: BTreeMap<PathBuf, Result<Bytes, String>>,
}

/// No file read: for rules that must carry their body inline.
static NO_FILES: BodyFiles = BodyFiles {
    files: BTreeMap::new(),
};

impl BodyFiles {
    /// What reading `path` gave: its bytes, or why it could not be read.
    pub fn insert(&mut self, path: PathBuf, contents: Result<Bytes, String>) {
        self.files.insert(path, contents);
    }

    fn get(&self, path: &Path) -> Option<&Result<Bytes, String>> {
        self.files.get(path)
    }
}

/// Where a fault's `body_file` is resolved, and the files already read.
#[derive(Debug, Clone, Copy)]
pub struct BodySource<'a> {
    /// The folder of the rule file: `body_file` is relative to it.
    pub base_dir: &'a Path,
    pub files: &'a BodyFiles,
}

impl BodySource<'static> {
    /// No `body_file` can be found: rules added through the API carry their
    /// body inline, and tests validate from strings.
    pub fn inline() -> Self {
        BodySource {
            base_dir: Path::new("."),
            files: &NO_FILES,
        }
    }
}

impl FaultSpec {
    /// The fields given, by name.
    fn given(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 26] = [
            ("answer", self.answer.is_some()),
            ("addresses", self.addresses.is_some()),
            ("ttl", self.ttl.is_some()),
            ("direction", self.direction.is_some()),
            ("average_size", self.average_size.is_some()),
            ("size_variation", self.size_variation.is_some()),
            ("after", self.after.is_some()),
            ("rate", self.rate.is_some()),
            ("chunks", self.chunks.is_some()),
            ("over", self.over.is_some()),
            ("after_bytes", self.after_bytes.is_some()),
            ("then", self.then.is_some()),
            ("delay", self.delay.is_some()),
            ("jitter", self.jitter.is_some()),
            ("distribution", self.distribution.is_some()),
            ("side", self.side.is_some()),
            ("status", self.status.is_some()),
            ("headers", self.headers.is_some()),
            ("body", self.body.is_some()),
            ("body_file", self.body_file.is_some()),
            ("preset", self.preset.is_some()),
            ("grpc_status", self.grpc_status.is_some()),
            ("grpc_message", self.grpc_message.is_some()),
            ("mode", self.mode.is_some()),
            ("max_hold", self.max_hold.is_some()),
            ("retry_after", self.retry_after.is_some()),
        ];
        fields
            .iter()
            .filter(|(_, given)| *given)
            .map(|(name, _)| *name)
            .collect()
    }

    /// The `body_file` this fault reads, resolved against `base_dir`: the
    /// load step reads it before validation.
    pub fn body_path(&self, base_dir: &Path) -> Option<PathBuf> {
        self.body_file.as_ref().map(|file| base_dir.join(file))
    }

    /// Validates the fault. Pure: a `body_file` is looked up in `bodies`.
    pub fn validate(
        &self,
        bodies: BodySource<'_>,
        at: &FieldPath,
    ) -> Result<Fault, Vec<FieldError>> {
        let mut errors = Vec::new();
        let allowed = self.kind.fields();
        for field in self.given() {
            if !allowed.contains(&field) {
                errors.push(FieldError::new(
                    at.key(field),
                    format!(
                        "`{field}` does not apply to kind = \"{}\" (it takes {})",
                        self.kind,
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let fault = match self.kind {
            FaultKind::Latency => self.latency(at, &mut errors),
            FaultKind::Error => {
                Fault::Respond(Arc::new(self.error_response(bodies, at, &mut errors)))
            }
            FaultKind::Abort => self.abort(at, &mut errors),
            FaultKind::Unavailable => self.unavailable(at, &mut errors),
            FaultKind::Bandwidth => self.bandwidth(at, &mut errors),
            FaultKind::Dribble => self.dribble(at, &mut errors),
            FaultKind::Truncate => self.truncate(at, &mut errors),
            FaultKind::Slice => self.slice(at, &mut errors),
            FaultKind::SlowClose => self.slow_close(at, &mut errors),
            FaultKind::Dns => Fault::Dns(self.dns(at, &mut errors)),
        };
        if errors.is_empty() {
            Ok(fault)
        } else {
            Err(errors)
        }
    }

    fn latency(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let delay = fault_duration(&self.delay, at, "delay", errors);
        let jitter = fault_duration(&self.jitter, at, "jitter", errors);
        let side = match self.side.as_deref() {
            None | Some("request") => Side::Request,
            Some("response") => Side::Response,
            Some(other) => {
                errors.push(FieldError::new(
                    at.key("side"),
                    format!("unknown side {other:?}; expected request or response"),
                ));
                Side::Request
            }
        };
        let no_delay = Delay::Fixed {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        };
        let delay = match (&self.delay, &self.distribution) {
            (Some(_), None) => Delay::Fixed {
                delay: delay.unwrap_or_default(),
                jitter: jitter.unwrap_or_default(),
            },
            (None, Some(distribution)) => {
                if self.jitter.is_some() {
                    errors.push(FieldError::new(
                        at.key("jitter"),
                        "jitter goes with `delay`; a distribution has its own spread",
                    ));
                }
                distribution
                    .validate(&at.key("distribution"), errors)
                    .unwrap_or(no_delay)
            }
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    at.key("distribution"),
                    "give either `delay` or `distribution`, not both",
                ));
                no_delay
            }
            (None, None) => {
                errors.push(FieldError::new(
                    at.key("kind"),
                    "kind = \"latency\" needs `delay` or `distribution`",
                ));
                no_delay
            }
        };
        if self.side.is_some() && self.direction.is_some() {
            errors.push(FieldError::new(
                at.key("direction"),
                "give either `side` (HTTP) or `direction` (TCP), not both",
            ));
        }
        let direction = self.direction(at, errors);
        Fault::Latency {
            delay,
            side,
            direction,
        }
    }

    /// `direction`, when given.
    fn direction(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Option<Direction> {
        match self.direction.as_deref()? {
            "upstream" => Some(Direction::Upstream),
            "downstream" => Some(Direction::Downstream),
            other => {
                errors.push(FieldError::new(
                    at.key("direction"),
                    format!("unknown direction {other:?}; expected upstream or downstream"),
                ));
                None
            }
        }
    }

    fn abort(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let mode = self.mode.as_deref();
        let mode = match mode {
            Some("reset") => AbortMode::Reset,
            Some("close") => AbortMode::Close,
            Some("empty") => AbortMode::Empty,
            Some("garbage") => AbortMode::Garbage,
            _ => {
                errors.push(bad_mode(at, "abort", mode, "reset, close, empty, garbage"));
                AbortMode::Reset
            }
        };
        let after = fault_duration(&self.after, at, "after", errors);
        if after.is_some() && mode != AbortMode::Reset {
            errors.push(FieldError::new(
                at.key("after"),
                "after applies to mode = \"reset\" only",
            ));
        }
        Fault::Abort { mode, after }
    }

    fn slice(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let delay = fault_duration(&self.delay, at, "delay", errors).unwrap_or_default();
        let average_size = self.average_size.unwrap_or(0);
        let size_variation = self.size_variation.unwrap_or(0);
        if average_size == 0 {
            errors.push(FieldError::new(
                at.key("average_size"),
                "kind = \"slice\" needs `average_size` of at least 1 byte",
            ));
        } else if size_variation >= average_size {
            errors.push(FieldError::new(
                at.key("size_variation"),
                format!(
                    "size_variation {size_variation} must be less than average_size {average_size}"
                ),
            ));
        }
        if average_size > MAX_SLICE_BYTES {
            errors.push(FieldError::new(
                at.key("average_size"),
                format!("average_size {average_size} is more than {MAX_SLICE_BYTES} bytes"),
            ));
        }
        Fault::Slice {
            average_size: average_size.clamp(1, MAX_SLICE_BYTES),
            size_variation: size_variation.min(average_size.saturating_sub(1)),
            delay,
            direction: self.direction(at, errors),
        }
    }

    fn slow_close(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let delay = fault_duration(&self.delay, at, "delay", errors);
        if self.delay.is_none() {
            errors.push(FieldError::new(
                at.key("kind"),
                "kind = \"slow_close\" needs `delay`",
            ));
        }
        Fault::SlowClose {
            delay: delay.unwrap_or_default(),
            direction: self.direction(at, errors),
        }
    }

    fn unavailable(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let max_hold = fault_duration(&self.max_hold, at, "max_hold", errors);
        let retry_after = fault_duration(&self.retry_after, at, "retry_after", errors);
        let mut not_for = |field: &str, given: bool, mode: &str| {
            if given {
                errors.push(FieldError::new(
                    at.key(field),
                    format!("{field} applies to mode = \"{mode}\" only"),
                ));
            }
        };
        match self.mode.as_deref() {
            None | Some("status") => {
                not_for("max_hold", self.max_hold.is_some(), "blackhole");
                Fault::Respond(Arc::new(service_unavailable(
                    retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                )))
            }
            Some("blackhole") => {
                not_for("retry_after", self.retry_after.is_some(), "status");
                let max_hold = max_hold.unwrap_or(DEFAULT_MAX_HOLD);
                if max_hold.is_zero() {
                    errors.push(FieldError::new(
                        at.key("max_hold"),
                        "max_hold must be more than zero",
                    ));
                }
                Fault::Blackhole { max_hold }
            }
            Some("refuse") => {
                for (field, given) in [
                    ("max_hold", self.max_hold.is_some()),
                    ("retry_after", self.retry_after.is_some()),
                ] {
                    if given {
                        errors.push(FieldError::new(
                            at.key(field),
                            format!("{field} does not apply to mode = \"refuse\""),
                        ));
                    }
                }
                Fault::Refuse
            }
            Some(other) => {
                errors.push(bad_mode(
                    at,
                    "unavailable",
                    Some(other),
                    "status, blackhole, refuse",
                ));
                Fault::Refuse
            }
        }
    }

    fn bandwidth(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let bytes_per_sec = match self.rate.as_deref().map(parse_rate) {
            Some(Ok(bytes_per_sec)) => bytes_per_sec,
            Some(Err(e)) => {
                errors.push(FieldError::new(at.key("rate"), e));
                1
            }
            None => {
                errors.push(FieldError::new(
                    at.key("kind"),
                    "kind = \"bandwidth\" needs `rate`",
                ));
                1
            }
        };
        Fault::Bandwidth {
            bytes_per_sec,
            direction: self.direction(at, errors),
        }
    }

    fn dribble(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let over = fault_duration(&self.over, at, "over", errors);
        let chunks = self.chunks.unwrap_or(0);
        if chunks == 0 {
            errors.push(FieldError::new(
                at.key("chunks"),
                "kind = \"dribble\" needs `chunks` of at least 1",
            ));
        }
        if self.over.is_none() {
            errors.push(FieldError::new(
                at.key("kind"),
                "kind = \"dribble\" needs `over`",
            ));
        }
        Fault::Dribble {
            chunks: chunks.max(1),
            over: over.unwrap_or_default(),
        }
    }

    fn truncate(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Fault {
        let then = match self.then.as_deref() {
            None | Some("reset") => AbortMode::Reset,
            Some("close") => AbortMode::Close,
            Some(other) => {
                errors.push(FieldError::new(
                    at.key("then"),
                    format!("unknown then {other:?}; expected reset or close"),
                ));
                AbortMode::Reset
            }
        };
        if self.after_bytes.is_none() {
            errors.push(FieldError::new(
                at.key("kind"),
                "kind = \"truncate\" needs `after_bytes`",
            ));
        }
        Fault::Truncate {
            after_bytes: self.after_bytes.unwrap_or(0),
            then,
            direction: self.direction(at, errors),
        }
    }

    /// The answer of an `error` fault, built once: the preset's, if any,
    /// with the rule's own `status`, `headers` and `body` over it.
    fn error_response(
        &self,
        bodies: BodySource<'_>,
        at: &FieldPath,
        errors: &mut Vec<FieldError>,
    ) -> SyntheticResponse {
        let preset = self.preset.as_deref().map(|name| {
            let found = preset::find(name);
            if found.is_none() {
                errors.push(FieldError::new(
                    at.key("preset"),
                    format!(
                        "unknown preset {name:?}; expected one of {}",
                        preset::names()
                    ),
                ));
            }
            found
        });
        let grpc = self.grpc_error(preset.flatten(), at, errors);
        let status = match self.status.map(|s| (s, StatusCode::from_u16(s))) {
            Some((code, Ok(status))) if (200..=599).contains(&code) => Some(status),
            Some((code, _)) => {
                errors.push(FieldError::new(
                    at.key("status"),
                    format!("status {code} is not an HTTP status from 200 to 599"),
                ));
                None
            }
            None => {
                // An unknown preset has been reported already.
                if preset.is_none() && self.grpc_status.is_none() {
                    errors.push(FieldError::new(
                        at.key("kind"),
                        "kind = \"error\" needs `status`, `grpc_status` or `preset`",
                    ));
                }
                None
            }
        };
        let headers = header_map(self.headers.as_ref(), &at.key("headers"), errors);
        if let Some((code, message)) = grpc {
            // The rule's headers are metadata of the call, on top.
            let mut headers_out = crate::grpc::trailers_only(code, message);
            headers_out.extend(headers);
            return SyntheticResponse {
                status: StatusCode::OK,
                headers: headers_out,
                body: Bytes::new(),
                unavailable: false,
                request_ids: None,
                adaptive: None,
            };
        }
        let body = match (&self.body, &self.body_file) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    at.key("body_file"),
                    "give either `body` or `body_file`, not both",
                ));
                None
            }
            (Some(body), None) => Some(Bytes::from(body.clone())),
            (None, Some(file)) => {
                let path = bodies.base_dir.join(file);
                match bodies.files.get(&path) {
                    Some(Ok(bytes)) => Some(bytes.clone()),
                    Some(Err(why)) => {
                        errors.push(FieldError::new(at.key("body_file"), why.clone()));
                        None
                    }
                    None => {
                        errors.push(FieldError::new(
                            at.key("body_file"),
                            format!("body_file {path:?} was not read with the rule file"),
                        ));
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let mut response = match preset.flatten() {
            Some(preset) => preset.response(body),
            None => SyntheticResponse {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                headers: HeaderMap::new(),
                body: body.unwrap_or_default(),
                unavailable: false,
                request_ids: None,
                adaptive: None,
            },
        };
        if let Some(status) = status {
            response.status = status;
        }
        if let Some(adaptive) = response.adaptive.as_mut() {
            adaptive.status = status;
            adaptive.headers = headers.clone();
        }
        // The rule's headers replace the preset's of the same name.
        response.headers.extend(headers);
        response
    }
}

impl FaultSpec {
    /// The status and message of an `error` fault that answers as gRPC
    /// (`grpc_status`, or a `grpc.*` preset, the rule's `grpc_status` and
    /// `grpc_message` over the preset's), or `None` for an HTTP error.
    /// Fields that cannot go with a gRPC error are reported here.
    fn grpc_error<'p>(
        &'p self,
        preset: Option<&'p preset::Preset>,
        at: &FieldPath,
        errors: &mut Vec<FieldError>,
    ) -> Option<(GrpcStatus, &'p str)> {
        let from_preset = preset.and_then(preset::Preset::grpc);
        if let (Some(_), Some(preset), None) = (self.grpc_status, preset, from_preset) {
            errors.push(FieldError::new(
                at.key("grpc_status"),
                format!(
                    "`grpc_status` does not go with preset {:?}, an HTTP error; the gRPC presets are {}",
                    preset.name,
                    preset::grpc_names()
                ),
            ));
        }
        let code = match self.grpc_status {
            None => from_preset.map(|(code, _)| code),
            Some(code) => match GrpcStatus::new(code) {
                Some(code) => Some(code),
                None => {
                    errors.push(FieldError::new(
                        at.key("grpc_status"),
                        format!(
                            "grpc_status {code} is not a gRPC status code; expected one of {}",
                            GrpcStatus::names()
                        ),
                    ));
                    // Reported; the rest is still checked as gRPC.
                    Some(GrpcStatus::UNKNOWN)
                }
            },
        };
        let Some(code) = code else {
            if self.grpc_message.is_some() {
                errors.push(FieldError::new(
                    at.key("grpc_message"),
                    "`grpc_message` goes with `grpc_status` or a gRPC preset",
                ));
            }
            return None;
        };
        let why = "a gRPC error is always HTTP 200 with its status in `grpc_status`, and trailers-only: it has no body";
        for (field, given) in [
            ("status", self.status.is_some()),
            ("body", self.body.is_some()),
            ("body_file", self.body_file.is_some()),
        ] {
            if given {
                errors.push(FieldError::new(
                    at.key(field),
                    format!("`{field}` does not go with a gRPC error: {why}"),
                ));
            }
        }
        for name in self.headers.iter().flat_map(|h| h.keys()) {
            let lower = name.to_ascii_lowercase();
            if lower == "grpc-status" || lower == "grpc-message" {
                errors.push(FieldError::new(
                    at.key("headers").key(name.as_str()),
                    format!("header {name:?} is set by `grpc_status` and `grpc_message`"),
                ));
            }
        }
        let message = self
            .grpc_message
            .as_deref()
            .or(from_preset.map(|(_, message)| message))
            .unwrap_or("");
        Some((code, message))
    }
}

/// How the response body is paced or cut; body-shaping faults stack.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shaping {
    pub bytes_per_sec: Option<u64>,
    /// (chunks, over)
    pub dribble: Option<(u64, Duration)>,
    /// (after_bytes, then)
    pub truncate: Option<(u64, AbortMode)>,
}

impl Shaping {
    pub fn is_none(&self) -> bool {
        *self == Shaping::default()
    }

    /// Adds one shaping fault: the slowest rate and the earliest cut win.
    pub fn add(&mut self, fault: &Fault) {
        match *fault {
            Fault::Bandwidth { bytes_per_sec, .. } => {
                self.bytes_per_sec = Some(
                    self.bytes_per_sec
                        .map_or(bytes_per_sec, |r| r.min(bytes_per_sec)),
                );
            }
            Fault::Dribble { chunks, over } => self.dribble = Some((chunks, over)),
            Fault::Truncate {
                after_bytes, then, ..
            } => {
                if self.truncate.is_none_or(|(after, _)| after_bytes < after) {
                    self.truncate = Some((after_bytes, then));
                }
            }
            // Not shaping faults: the planner never adds them here.
            Fault::Latency { .. }
            | Fault::Respond(_)
            | Fault::Abort { .. }
            | Fault::Blackhole { .. }
            | Fault::Refuse
            | Fault::Slice { .. }
            | Fault::SlowClose { .. }
            | Fault::Dns(_) => {}
        }
    }
}

/// `"64KiB/s"`, `"1.5MiB/s"`, `"500B/s"`, `"10KB/s"`: bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid rate {text:?}; expected a value like \"64KiB/s\" or \"1MB/s\"");
    let per_second = text.trim().strip_suffix("/s").ok_or_else(invalid)?;
    let split = per_second
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = per_second.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let unit_bytes = match unit.trim() {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let rate = (number * unit_bytes).round();
    if rate < 1.0 || !rate.is_finite() {
        return Err(format!("rate {text:?} must be at least 1B/s"));
    }
    Ok(rate as u64)
}

/// A fault's duration field: parsed, and capped at [`MAX_FAULT_DURATION`].
pub(crate) fn fault_duration(
    value: &Option<String>,
    at: &FieldPath,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Duration> {
    let text = value.as_ref()?;
    match crate::duration::parse(text) {
        Ok(d) if d <= MAX_FAULT_DURATION => Some(d),
        Ok(_) => {
            errors.push(FieldError::new(
                at.key(field),
                format!("{field} {text:?} is longer than the 24h a fault may last"),
            ));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(at.key(field), e));
            None
        }
    }
}

fn bad_mode(at: &FieldPath, kind: &str, mode: Option<&str>, expected: &str) -> FieldError {
    match mode {
        Some(mode) => FieldError::new(
            at.key("mode"),
            format!("unknown mode {mode:?} for kind = \"{kind}\"; expected one of {expected}"),
        ),
        None => FieldError::new(
            at.key("kind"),
            format!("kind = \"{kind}\" needs `mode` ({expected})"),
        ),
    }
}

/// The 503 an `unavailable` `status` fault answers with.
fn service_unavailable(retry_after: Duration) -> SyntheticResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // retry-after is whole seconds; round up so "500ms" does not become "0".
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    SyntheticResponse {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers,
        body: Bytes::from_static(
            br#"{"error":"service_unavailable","message":"the upstream is unavailable"}"#,
        ),
        unavailable: true,
        request_ids: None,
        adaptive: None,
    }
}

fn header_map(
    headers: Option<&BTreeMap<String, String>>,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.into_iter().flatten() {
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(
                at.key(name.as_str()),
                format!("header {name:?} frames the message; the proxy sets it"),
            ));
            continue;
        }
        let parsed_name = HeaderName::from_bytes(name.as_bytes());
        let parsed_value = HeaderValue::from_str(value);
        match (parsed_name, parsed_value) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            (Err(_), _) => errors.push(FieldError::new(
                at.key(name.as_str()),
                format!("invalid header name {name:?}"),
            )),
            (_, Err(_)) => errors.push(FieldError::new(
                at.key(name.as_str()),
                format!("invalid value for header {name:?}"),
            )),
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(toml_text: &str) -> Result<Fault, Vec<String>> {
        let spec: FaultSpec =
            toml::from_str(toml_text).map_err(|e| vec![e.message().to_owned()])?;
        spec.validate(BodySource::inline(), &FieldPath::root().key("fault"))
            .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn error_faults_build_their_response_once() {
        let Ok(Fault::Respond(response)) = fault(
            "kind = \"error\"\nstatus = 429\nheaders = { \"content-type\" = \"application/json\" }\nbody = '{\"message\":\"Rate Exceeded.\"}'",
        ) else {
            panic!("expected a response fault")
        };
        assert_eq!(response.status, 429);
        assert_eq!(response.headers["content-type"], "application/json");
        assert_eq!(&response.body[..], br#"{"message":"Rate Exceeded."}"#);
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        let errors = fault("kind = \"latency\"\ndelay = \"1s\"\nstatus = 500").unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.status: `status` does not apply to kind = \"latency\" (it takes delay, jitter, distribution, side, direction)"]
        );
        let errors = fault("kind = \"explode\"").unwrap_err();
        assert_eq!(
            errors,
            // Parsed with the file: the message comes from the schema.
            vec!["unknown fault kind \"explode\"; expected one of latency, error, abort, unavailable, bandwidth, dribble, truncate, slice, slow_close, dns"]
        );
        let errors = fault("kind = \"latency\"\nlatency = \"1s\"").unwrap_err();
        assert!(
            errors[0].starts_with("unknown field `latency`"),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_fields_and_modes_are_named() {
        assert_eq!(
            fault("kind = \"latency\"").unwrap_err(),
            vec!["fault.kind: kind = \"latency\" needs `delay` or `distribution`"]
        );
        assert_eq!(
            fault("kind = \"abort\"\nmode = \"explode\"").unwrap_err(),
            vec!["fault.mode: unknown mode \"explode\" for kind = \"abort\"; expected one of reset, close, empty, garbage"]
        );
        assert!(
            fault("kind = \"latency\"\ndelay = \"soon\"").unwrap_err()[0]
                .starts_with("fault.delay: invalid duration \"soon\"")
        );
    }

    #[test]
    fn invalid_values_name_their_field() {
        let errors = fault("kind = \"error\"\nstatus = 42").unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.status: status 42 is not an HTTP status from 200 to 599"]
        );
        let errors =
            fault("kind = \"unavailable\"\nmode = \"status\"\nmax_hold = \"1s\"").unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.max_hold: max_hold applies to mode = \"blackhole\" only"]
        );
    }

    #[test]
    fn durations_are_capped_and_framing_headers_refused() {
        assert_eq!(
            fault("kind = \"latency\"\ndelay = \"400000000000y\"").unwrap_err(),
            vec!["fault.delay: delay \"400000000000y\" is longer than the 24h a fault may last"]
        );
        assert_eq!(
            fault("kind = \"error\"\nstatus = 500\nheaders = { \"Content-Length\" = \"9\" }").unwrap_err(),
            vec!["fault.headers.Content-Length: header \"Content-Length\" frames the message; the proxy sets it"]
        );
    }

    #[test]
    fn tcp_kinds_and_fields_are_checked() {
        let Ok(Fault::Slice {
            average_size: 100,
            size_variation: 10,
            delay,
            direction: Some(Direction::Upstream),
        }) = fault("kind = \"slice\"\naverage_size = 100\nsize_variation = 10\ndelay = \"5ms\"\ndirection = \"upstream\"")
        else {
            panic!("expected a slice")
        };
        assert_eq!(delay, Duration::from_millis(5));
        assert_eq!(
            fault("kind = \"slice\"\naverage_size = 10\nsize_variation = 10").unwrap_err(),
            vec!["fault.size_variation: size_variation 10 must be less than average_size 10"]
        );
        assert_eq!(
            fault("kind = \"slow_close\"").unwrap_err(),
            vec!["fault.kind: kind = \"slow_close\" needs `delay`"]
        );
        assert_eq!(
            fault("kind = \"bandwidth\"\nrate = \"1KiB/s\"\ndirection = \"sideways\"").unwrap_err(),
            vec![
                "fault.direction: unknown direction \"sideways\"; expected upstream or downstream"
            ]
        );
        assert_eq!(
            fault("kind = \"abort\"\nmode = \"close\"\nafter = \"1s\"").unwrap_err(),
            vec!["fault.after: after applies to mode = \"reset\" only"]
        );
        let latency = fault("kind = \"latency\"\ndelay = \"1s\"").unwrap();
        assert!(latency.fits_http() && latency.fits_tcp());
        let downstream =
            fault("kind = \"latency\"\ndelay = \"1s\"\ndirection = \"downstream\"").unwrap();
        assert!(!downstream.fits_http() && downstream.fits_tcp());
        let error = fault("kind = \"error\"\nstatus = 503").unwrap();
        assert!(error.fits_http() && !error.fits_tcp());
    }

    #[test]
    fn rates_read_like_users_write_them() {
        assert_eq!(parse_rate("64KiB/s"), Ok(65_536));
        assert_eq!(parse_rate("1.5MiB/s"), Ok(1_572_864));
        assert_eq!(parse_rate("10KB/s"), Ok(10_000));
        assert_eq!(parse_rate("500B/s"), Ok(500));
        assert!(parse_rate("fast").unwrap_err().contains("64KiB/s"));
        assert!(parse_rate("0B/s").is_err());
    }

    fn respond(toml_text: &str) -> Arc<SyntheticResponse> {
        match fault(toml_text) {
            Ok(Fault::Respond(response)) => response,
            other => panic!("expected a response fault, got {other:?}"),
        }
    }

    #[test]
    fn every_preset_validates_without_a_status() {
        for preset in preset::PRESETS {
            let response = respond(&format!("kind = \"error\"\npreset = \"{}\"", preset.name));
            assert_eq!(response.status, preset.status, "{}", preset.name);
            for (name, value) in preset.headers {
                assert_eq!(response.headers[*name], *value, "{}", preset.name);
            }
            assert_eq!(
                response.request_ids.is_some(),
                preset.request_ids.is_some(),
                "{}",
                preset.name
            );
            assert!(!response.unavailable);
        }
        let throttling = respond("kind = \"error\"\npreset = \"aws.throttling\"");
        assert_eq!(throttling.status, 400);
        assert_eq!(
            throttling.headers["x-amzn-errortype"],
            "ThrottlingException"
        );
        assert_eq!(
            throttling.headers["content-type"],
            "application/x-amz-json-1.1"
        );
        assert_eq!(
            &throttling.body[..],
            br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
        );
        assert_eq!(throttling.request_ids, Some(RequestIdStyle::Amzn));
    }

    #[test]
    fn unknown_presets_list_the_known_ones() {
        assert_eq!(
            fault("kind = \"error\"\npreset = \"aws.explode\"").unwrap_err(),
            vec![format!(
                "fault.preset: unknown preset \"aws.explode\"; expected one of {}",
                preset::names()
            )]
        );
        assert!(preset::names().starts_with("aws.throttling, aws.service-unavailable"));
        assert_eq!(
            fault("kind = \"error\"").unwrap_err(),
            vec!["fault.kind: kind = \"error\" needs `status`, `grpc_status` or `preset`"]
        );
        assert_eq!(
            fault("kind = \"latency\"\ndelay = \"1s\"\npreset = \"aws.throttling\"").unwrap_err(),
            vec!["fault.preset: `preset` does not apply to kind = \"latency\" (it takes delay, jitter, distribution, side, direction)"]
        );
    }

    #[test]
    fn a_rules_status_headers_and_body_override_the_presets() {
        let response = respond(
            "kind = \"error\"\npreset = \"lambda.too-many-requests\"\nstatus = 503\nheaders = { \"Retry-After\" = \"30\", \"x-extra\" = \"yes\" }\nbody = '{\"message\":\"mine\"}'",
        );
        assert_eq!(response.status, 503);
        assert_eq!(response.headers.get_all("retry-after").iter().count(), 1);
        assert_eq!(response.headers["retry-after"], "30");
        assert_eq!(response.headers["x-extra"], "yes");
        assert_eq!(
            response.headers["x-amzn-errortype"],
            "TooManyRequestsException"
        );
        assert_eq!(&response.body[..], br#"{"message":"mine"}"#);
        assert_eq!(response.request_ids, Some(RequestIdStyle::Amzn));

        // Only what is given is replaced.
        let response =
            respond("kind = \"error\"\npreset = \"lambda.too-many-requests\"\nstatus = 500");
        assert_eq!(response.status, 500);
        assert_eq!(
            response.headers["x-amzn-errortype"],
            "TooManyRequestsException"
        );
        assert!(response.body.starts_with(br#"{"Reason":"#));

        // An `aws.*` preset keeps the rule's status and headers for the
        // protocol it answers in; a body of the rule's own stays fixed.
        let response = respond(
            "kind = \"error\"\npreset = \"aws.throttling\"\nstatus = 429\nheaders = { \"x-amz-retry-after\" = \"1500\" }",
        );
        let adaptive = response.adaptive.clone().unwrap();
        assert_eq!(adaptive.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(adaptive.headers["x-amz-retry-after"], "1500");
        let fixed = respond("kind = \"error\"\npreset = \"aws.throttling\"\nbody = \"{}\"");
        assert!(fixed.adaptive.is_none());

        // An S3 body of the rule's own no longer repeats the ids.
        let s3 = respond("kind = \"error\"\npreset = \"s3.slow-down\"");
        assert!(matches!(
            s3.request_ids,
            Some(RequestIdStyle::S3 { echo: Some(_) })
        ));
        let s3 = respond("kind = \"error\"\npreset = \"s3.slow-down\"\nbody = \"<Error/>\"");
        assert_eq!(s3.request_ids, Some(RequestIdStyle::S3 { echo: None }));
        assert_eq!(&s3.body[..], b"<Error/>");

        // Plain error faults do no per-response work.
        assert_eq!(respond("kind = \"error\"\nstatus = 500").request_ids, None);
        // The rule's own headers are checked as before.
        assert_eq!(
            fault("kind = \"error\"\npreset = \"aws.throttling\"\nheaders = { \"Content-Length\" = \"9\" }").unwrap_err(),
            vec!["fault.headers.Content-Length: header \"Content-Length\" frames the message; the proxy sets it"]
        );
    }

    #[test]
    fn grpc_errors_answer_trailers_only() {
        let response = respond("kind = \"error\"\ngrpc_status = 14\ngrpc_message = \"down 100%\"");
        assert_eq!(response.status, 200);
        assert_eq!(response.headers["content-type"], "application/grpc");
        assert_eq!(response.headers["grpc-status"], "14");
        assert_eq!(response.headers["grpc-message"], "down 100%25");
        assert!(response.body.is_empty());
        assert_eq!(response.request_ids, None);

        // No message: no grpc-message.
        let bare = respond("kind = \"error\"\ngrpc_status = 0");
        assert_eq!(bare.headers["grpc-status"], "0");
        assert!(!bare.headers.contains_key("grpc-message"));

        // A preset's message, or the rule's over it; metadata on top.
        let preset = respond("kind = \"error\"\npreset = \"grpc.resource-exhausted\"");
        assert_eq!(preset.headers["grpc-status"], "8");
        assert_eq!(
            preset.headers["grpc-message"],
            "Resource has been exhausted (e.g. check quota)."
        );
        let mine = respond(
            "kind = \"error\"\npreset = \"grpc.unavailable\"\ngrpc_message = \"mine\"\nheaders = { \"retry-pushback-ms\" = \"500\" }",
        );
        assert_eq!(mine.headers["grpc-status"], "14");
        assert_eq!(mine.headers["grpc-message"], "mine");
        assert_eq!(mine.headers["retry-pushback-ms"], "500");
        let recoded = respond("kind = \"error\"\npreset = \"grpc.unavailable\"\ngrpc_status = 4");
        assert_eq!(recoded.headers["grpc-status"], "4");
    }

    #[test]
    fn grpc_errors_refuse_what_grpc_cannot_carry() {
        assert_eq!(
            fault("kind = \"error\"\ngrpc_status = 17").unwrap_err(),
            vec![format!(
                "fault.grpc_status: grpc_status 17 is not a gRPC status code; expected one of {}",
                GrpcStatus::names()
            )]
        );
        assert!(GrpcStatus::names().starts_with("0 OK, 1 CANCELLED, 2 UNKNOWN"));
        let why = "a gRPC error is always HTTP 200 with its status in `grpc_status`, and trailers-only: it has no body";
        assert_eq!(
            fault("kind = \"error\"\ngrpc_status = 14\nstatus = 503\nbody = \"x\"").unwrap_err(),
            vec![
                format!("fault.status: `status` does not go with a gRPC error: {why}"),
                format!("fault.body: `body` does not go with a gRPC error: {why}"),
            ]
        );
        assert_eq!(
            fault("kind = \"error\"\npreset = \"grpc.internal\"\nstatus = 500").unwrap_err(),
            vec![format!(
                "fault.status: `status` does not go with a gRPC error: {why}"
            )]
        );
        assert_eq!(
            fault("kind = \"error\"\ngrpc_status = 14\nheaders = { \"Grpc-Status\" = \"0\" }").unwrap_err(),
            vec!["fault.headers.Grpc-Status: header \"Grpc-Status\" is set by `grpc_status` and `grpc_message`"]
        );
        assert_eq!(
            fault("kind = \"error\"\nstatus = 500\ngrpc_message = \"x\"").unwrap_err(),
            vec!["fault.grpc_message: `grpc_message` goes with `grpc_status` or a gRPC preset"]
        );
        assert_eq!(
            fault("kind = \"error\"\npreset = \"aws.throttling\"\ngrpc_status = 8").unwrap_err(),
            vec!["fault.grpc_status: `grpc_status` does not go with preset \"aws.throttling\", an HTTP error; the gRPC presets are grpc.unavailable, grpc.deadline-exceeded, grpc.resource-exhausted, grpc.internal"]
        );
        assert_eq!(
            fault("kind = \"abort\"\nmode = \"reset\"\ngrpc_status = 14").unwrap_err(),
            vec!["fault.grpc_status: `grpc_status` does not apply to kind = \"abort\" (it takes mode, after)"]
        );
    }

    #[test]
    fn unavailable_status_rounds_retry_after_up() {
        let Ok(Fault::Respond(response)) = fault("kind = \"unavailable\"\nretry_after = \"1.5s\"")
        else {
            panic!("expected a response fault")
        };
        assert_eq!(response.status, 503);
        assert_eq!(response.headers["retry-after"], "2");
    }
}
