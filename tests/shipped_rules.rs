//! Every rule file under `rules/` and every config under `examples/`
//! parses and validates, so the examples cannot rot.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_shipped_rule_file_is_valid() {
    let names: Vec<&str> = faultline::demo::UPSTREAMS.iter().map(|u| u.0).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = faultline::rules::load_dir(&dir, &names)
        .unwrap_or_else(|problems| panic!("{}", faultline::diagnostic::render(&problems)));
    assert!(!rules.rules.is_empty(), "rules/ ships no rule");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/faultline.toml");
    let app = faultline::app::App::load(&path)
        .unwrap_or_else(|problems| panic!("{}", faultline::diagnostic::render(&problems)));
    assert_eq!(app.config().upstreams.len(), 4);
    assert!(!app.rules().is_empty());
}
