//! Rehearsal timelines (README "Scenarios"): the `[[scenario]]` schema and its
//! validation ([`spec`]), the guard that stops a run when the healthy side
//! suffers ([`guard`]), and the per-step report of a run ([`report`]).
//!
//! Running a scenario changes rules, so the run itself lives with the
//! rules' one owner, [`crate::control`]; this module holds what can be
//! decided without it.

pub mod guard;
pub mod report;
pub mod spec;

pub use guard::{GuardWatch, Verdict};
pub use report::{Report, Segment};
pub use spec::{Guard, RuleChange, Scenario, ScenarioSpec, Step};
