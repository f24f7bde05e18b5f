//! Every rule file shipped under `rules/` parses and validates against the
//! demo's upstreams, so the examples cannot rot.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_shipped_rule_file_is_valid() {
    let names: Vec<&str> = faultline::demo::UPSTREAMS.iter().map(|u| u.0).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = faultline::rules::load_dir(&dir, &names)
        .unwrap_or_else(|problems| panic!("{}", faultline::diagnostic::render(&problems)));
    assert!(!rules.is_empty(), "rules/ ships no rule");
}
