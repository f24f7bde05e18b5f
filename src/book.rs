//! The rule files: a file's schema ([`RuleFile`]: `[[rule]]` and
//! `[[scenario]]` tables), and the load step that turns a rules directory
//! into a validated [`RuleBook`].
//!
//! Loading is three steps: read the files (every `*.toml` below the rules
//! directory, sorted by path, and every `body_file` they name, within
//! [`MAX_BODY_FILE_BYTES`]), parse them, then validate everything
//! ([`validate_sources`], pure: a test validates from strings alone).
//! Scenarios are checked last, against the rules of every file. Every
//! problem is reported, with its file, line and column.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, FieldError, FieldPath};
use crate::fault::{BodyFiles, BodySource};
use crate::rules::{Rule, RuleSource, RuleSpec, UpstreamIdentity};
use crate::scenario::{Scenario, ScenarioSpec};

/// The largest `body_file`: a response body, not a data set.
pub const MAX_BODY_FILE_BYTES: u64 = 1 << 20;

/// A rule file: `[[rule]]` tables, and `[[scenario]]` tables that drive them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rule: Vec<RuleSpec>,
    #[serde(default)]
    pub scenario: Vec<ScenarioSpec>,
}

/// Everything the rule files define, validated.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    /// In evaluation order: files sorted by path, rules in file order.
    pub rules: Vec<Arc<Rule>>,
    pub scenarios: Vec<Arc<Scenario>>,
}

impl RuleBook {
    /// Every rule that selects upstreams and fits none of them (a TCP
    /// upstream's rule with an HTTP condition or kind, or the other way
    /// round: [`Rule::misfit`]), reported at its file.
    pub fn misfits(&self, upstreams: &[UpstreamIdentity<'_>]) -> Vec<Diagnostic> {
        self.rules
            .iter()
            .filter_map(|rule| {
                let message = rule.misfit(upstreams)?;
                let path = match &rule.source {
                    RuleSource::File(path) => path.clone(),
                    RuleSource::Api => PathBuf::from("api"),
                };
                Some(Diagnostic::whole_file(&path, message))
            })
            .collect()
    }

    /// The book, or every misfit in it.
    pub fn fitted(self, upstreams: &[UpstreamIdentity<'_>]) -> Result<Self, Vec<Diagnostic>> {
        match self.misfits(upstreams) {
            problems if problems.is_empty() => Ok(self),
            problems => Err(problems),
        }
    }
}

/// The contents of one rule file.
#[derive(Debug, Clone)]
pub struct RuleText {
    pub path: PathBuf,
    pub text: String,
}

/// Reads and validates every rule file below `dir`.
pub fn load_dir(dir: &Path, upstream_names: &[&str]) -> Result<RuleBook, Vec<Diagnostic>> {
    load_dir_reserving(dir, upstream_names, &[])
}

/// [`load_dir`], where a rule may not take one of the `reserved` names
/// (those of rules added through the admin API).
pub fn load_dir_reserving(
    dir: &Path,
    upstream_names: &[&str],
    reserved: &[&str],
) -> Result<RuleBook, Vec<Diagnostic>> {
    let mut paths = Vec::new();
    let mut seen_dirs = HashSet::new();
    collect_toml_files(dir, &mut paths, &mut seen_dirs).map_err(|e| {
        vec![Diagnostic::whole_file(
            dir,
            format!("cannot read rules directory: {e}"),
        )]
    })?;
    paths.sort();
    let mut sources = Vec::new();
    let mut diagnostics = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push(RuleText { path, text }),
            Err(e) => diagnostics.push(Diagnostic::whole_file(
                &path,
                format!("cannot read rule file: {e}"),
            )),
        }
    }
    match load_sources_reserving(&sources, upstream_names, reserved) {
        Ok(rules) if diagnostics.is_empty() => Ok(rules),
        Ok(_) => Err(diagnostics),
        Err(more) => {
            diagnostics.extend(more);
            Err(diagnostics)
        }
    }
}

/// Reads the `body_file`s that rule files already read name, then
/// validates them, in the order given.
pub fn load_sources(
    sources: &[RuleText],
    upstream_names: &[&str],
) -> Result<RuleBook, Vec<Diagnostic>> {
    load_sources_reserving(sources, upstream_names, &[])
}

/// [`load_sources`] with names no rule may take.
pub fn load_sources_reserving(
    sources: &[RuleText],
    upstream_names: &[&str],
    reserved: &[&str],
) -> Result<RuleBook, Vec<Diagnostic>> {
    let bodies = read_body_files(sources);
    validate_sources(sources, &bodies, upstream_names, reserved)
}

/// Reads every `body_file` the rules and the scenarios' `set` patches of
/// `sources` name. A file that cannot be read, is not a regular file or is
/// larger than [`MAX_BODY_FILE_BYTES`] is kept as the reason, which
/// validation reports at the `body_file` field.
pub fn read_body_files(sources: &[RuleText]) -> BodyFiles {
    // A file that does not parse is reported by validation.
    let files: Vec<(&Path, RuleFile)> = sources
        .iter()
        .filter_map(|source| Some((base_dir(&source.path), toml::from_str(&source.text).ok()?)))
        .collect();
    // A step's `body_file` is resolved against its rule's file, as the rule's own is.
    let rule_dirs: HashMap<&str, &Path> = files
        .iter()
        .flat_map(|(dir, file)| file.rule.iter().map(|rule| (rule.name.as_str(), *dir)))
        .collect();
    let mut paths = Vec::new();
    for (dir, file) in &files {
        paths.extend(
            file.rule
                .iter()
                .filter_map(|rule| rule.fault.body_path(dir)),
        );
        for step in file.scenario.iter().flat_map(|s| &s.step) {
            for (rule, set) in &step.set {
                let named = set
                    .fault
                    .as_ref()
                    .and_then(|f| f.get("body_file")?.as_str());
                if let Some(named) = named {
                    paths.push(rule_dirs.get(rule.as_str()).unwrap_or(dir).join(named));
                }
            }
        }
    }
    let mut bodies = BodyFiles::default();
    for path in paths {
        let contents = read_body_file(&path);
        bodies.insert(path, contents);
    }
    bodies
}

/// One `body_file`: a regular file of at most [`MAX_BODY_FILE_BYTES`].
fn read_body_file(path: &Path) -> Result<Bytes, String> {
    crate::files::read_bounded(path, MAX_BODY_FILE_BYTES, "body_file").map(Bytes::from)
}

/// The folder a rule file's relative paths are resolved against.
fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Validates rule files already read, in the order given; `bodies` holds
/// the `body_file`s they name. Pure: reads no file.
pub fn validate_sources(
    sources: &[RuleText],
    bodies: &BodyFiles,
    upstream_names: &[&str],
    reserved: &[&str],
) -> Result<RuleBook, Vec<Diagnostic>> {
    let mut rules = Vec::new();
    // Checked once every file's rules are known: a step may name any of them.
    let mut scenarios: Vec<(&RuleText, usize, ScenarioSpec)> = Vec::new();
    let mut diagnostics = Vec::new();
    // Where each name was first defined, to point at both places of a duplicate.
    let mut first_defined: HashMap<String, String> = HashMap::new();
    for source in sources {
        let file: RuleFile = match toml::from_str(&source.text) {
            Ok(file) => file,
            Err(e) => {
                let mut diagnostic = Diagnostic::from_toml(&source.path, &source.text, &e);
                if let Some((table, name)) = e
                    .span()
                    .and_then(|span| table_name_at(&source.text, span.start))
                {
                    diagnostic.message = format!("{table} {name:?}: {}", diagnostic.message);
                }
                diagnostics.push(diagnostic);
                continue;
            }
        };
        let bodies = BodySource {
            base_dir: base_dir(&source.path),
            files: bodies,
        };
        scenarios.extend(
            file.scenario
                .into_iter()
                .enumerate()
                .map(|(i, spec)| (source, i, spec)),
        );
        for (i, spec) in file.rule.into_iter().enumerate() {
            let at = FieldPath::root().key("rule").index(i);
            let place = |field: &FieldPath| {
                Diagnostic::from_field(
                    &source.path,
                    &source.text,
                    &FieldError::new(field.clone(), ""),
                )
            };
            if reserved.contains(&spec.name.as_str()) {
                let here = place(&at.key("name"));
                diagnostics.push(Diagnostic {
                    message: format!(
                        "rule {:?}: a rule added through the admin API has this name; delete that one first",
                        spec.name
                    ),
                    ..here
                });
                continue;
            }
            if let Some(first) = first_defined.get(&spec.name) {
                let here = place(&at.key("name"));
                diagnostics.push(Diagnostic {
                    message: format!("rule {:?} is defined twice; first at {first}", spec.name),
                    ..here
                });
                continue;
            }
            let there = place(&at.key("name"));
            first_defined.insert(
                spec.name.clone(),
                format!("{}:{}:{}", there.path.display(), there.line, there.column),
            );
            match spec.validate(
                RuleSource::File(source.path.clone()),
                bodies,
                upstream_names,
                &at,
            ) {
                Ok(rule) => rules.push(Arc::new(rule)),
                Err(errors) => diagnostics.extend(
                    errors
                        .iter()
                        .map(|e| Diagnostic::from_field(&source.path, &source.text, e)),
                ),
            }
        }
    }
    let mut book = RuleBook {
        rules,
        scenarios: Vec::new(),
    };
    let mut first_scenario: HashMap<String, String> = HashMap::new();
    for (source, i, spec) in scenarios {
        let at = FieldPath::root().key("scenario").index(i);
        let here = Diagnostic::from_field(
            &source.path,
            &source.text,
            &FieldError::new(at.key("name"), ""),
        );
        if let Some(first) = first_scenario.get(&spec.name) {
            diagnostics.push(Diagnostic {
                message: format!(
                    "scenario {:?} is defined twice; first at {first}",
                    spec.name
                ),
                ..here
            });
            continue;
        }
        first_scenario.insert(
            spec.name.clone(),
            format!("{}:{}:{}", here.path.display(), here.line, here.column),
        );
        match spec.validate(&source.path, &book.rules, bodies, upstream_names, &at) {
            Ok(scenario) => book.scenarios.push(Arc::new(scenario)),
            Err(errors) => diagnostics.extend(
                errors
                    .iter()
                    .map(|e| Diagnostic::from_field(&source.path, &source.text, e)),
            ),
        }
    }
    if diagnostics.is_empty() {
        Ok(book)
    } else {
        Err(diagnostics)
    }
}

/// The `[[rule]]` or `[[scenario]]` whose text holds `offset`, and its
/// name, for messages that the schema parser gives without naming it.
fn table_name_at(text: &str, offset: usize) -> Option<(&'static str, String)> {
    let document = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, &'static str, String)> = None;
    for (key, what) in [("rule", "rule"), ("scenario", "scenario")] {
        let Some(tables) = document.get_ref().get(key) else {
            continue;
        };
        let DeValue::Array(tables) = tables.get_ref() else {
            continue;
        };
        let Some(table) = tables.iter().rev().find(|t| t.span().start <= offset) else {
            continue;
        };
        // The nearest table that starts before the offset holds it.
        if best
            .as_ref()
            .is_some_and(|(start, _, _)| *start > table.span().start)
        {
            continue;
        }
        let DeValue::Table(fields) = table.get_ref() else {
            continue;
        };
        let name = match fields.get("name").map(|n| n.get_ref()) {
            Some(DeValue::String(name)) => name.to_string(),
            _ => continue,
        };
        best = Some((table.span().start, what, name));
    }
    best.map(|(_, what, name)| (what, name))
}

/// Every `*.toml` below `dir`, following symlinks (ConfigMap mounts are
/// symlinks) but skipping hidden entries (a ConfigMap's `..data` copies).
fn collect_toml_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen_dirs: &mut HashSet<PathBuf>,
) -> std::io::Result<()> {
    if !seen_dirs.insert(dir.canonicalize()?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue; // a dangling symlink, mid-swap
        };
        if metadata.is_dir() {
            collect_toml_files(&path, out, seen_dirs)?;
        } else if path.extension().is_some_and(|ext| ext == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str, text: &str) -> RuleText {
        RuleText {
            path: PathBuf::from(path),
            text: text.to_owned(),
        }
    }

    const SLOW: &str =
        "[[rule]]\nname = \"slow\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"100ms\"\n";

    #[test]
    fn duplicate_names_point_at_the_first_definition() {
        let errors = load_sources(&[text("a.toml", SLOW), text("b.toml", SLOW)], &[]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "b.toml:2:1: error: rule \"slow\" is defined twice; first at a.toml:2:1"
        );
    }

    #[test]
    fn validation_errors_carry_line_and_column() {
        let broken = "[[rule]]\nname = \"x\"\n[rule.match]\nupstreams = [\"nope\"]\n[rule.fault]\nkind = \"latency\"\ndelay = \"1s\"\n";
        let errors = load_sources(&[text("r.toml", broken)], &["orders"]).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "r.toml:4:14: error: rule[0].match.upstreams[0]: rule \"x\": no upstream is named \"nope\""
        );
    }

    #[test]
    fn a_scenarios_schema_error_names_the_scenario() {
        let broken = format!(
            "{SLOW}[[scenario]]\nname = \"outage\"\nduration = \"1m\"\nbogus = 1\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\"]\n"
        );
        let errors = load_sources(&[text("r.toml", &broken)], &[]).unwrap_err();
        let message = errors[0].to_string();
        assert!(
            message.starts_with("r.toml:9:1: error: scenario \"outage\": unknown field `bogus`"),
            "{message}"
        );
    }

    #[test]
    fn body_files_are_read_with_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small.json"), "{}").unwrap();
        let big = vec![b'x'; MAX_BODY_FILE_BYTES as usize + 1];
        std::fs::write(dir.path().join("big.json"), big).unwrap();
        let rule = |name: &str, file: &str| {
            format!("[[rule]]\nname = \"{name}\"\n[rule.fault]\nkind = \"error\"\nstatus = 500\nbody_file = \"{file}\"\n")
        };
        let path = dir.path().join("r.toml");
        let ok = load_sources(
            &[RuleText {
                path: path.clone(),
                text: rule("ok", "small.json"),
            }],
            &[],
        )
        .unwrap();
        assert!(
            matches!(&ok.rules[0].fault, crate::fault::Fault::Respond(r) if &r.body[..] == b"{}")
        );
        for (file, expected) in [
            ("big.json", "is larger than 1024 KiB"),
            (".", "is not a regular file"),
            ("missing.json", "cannot read body_file"),
        ] {
            let text = rule("bad", file);
            let errors = load_sources(
                &[RuleText {
                    path: path.clone(),
                    text,
                }],
                &[],
            )
            .unwrap_err();
            let message = errors[0].to_string();
            assert!(message.contains(expected), "{file}: {message}");
            assert!(
                message.contains(":6:1: error: rule[0].fault.body_file"),
                "{file}: {message}"
            );
        }
    }

    #[test]
    fn schema_errors_carry_line_and_column() {
        let broken = "[[rule]]\nname = \"x\"\nprobabilty = 0.5\n";
        let errors = load_sources(&[text("r.toml", broken)], &[]).unwrap_err();
        let message = errors[0].to_string();
        assert!(
            message.starts_with("r.toml:3:1: error: rule \"x\": unknown field `probabilty`"),
            "{message}"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary rule files give problems or a rule book, never a panic.

    use proptest::prelude::*;

    use super::*;

    /// A value of one of the types rule files use, as TOML text.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| format!("{x:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-zA-Z0-9 ./*_:-]{0,12}".prop_map(|s| format!("{s:?}")),
            prop::sample::select(vec![
                "\"1s\"",
                "\"-5ms\"",
                "\"400000000000y\"",
                "\"0s\"",
                "\"64KiB/s\"",
                "\"/**\"",
                "\"[\"",
                "\"{a,b}\"",
                "\"header:x\"",
                "\"client_ip\"",
                "[]",
                "{}",
                "\"aws.throttling\"",
                "\"blackhole\"",
                "\"refuse\"",
                "\"lognormal\"",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// A key rule files know, in a table they know, or noise.
    fn line() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "name",
            "description",
            "enabled",
            "probability",
            "times",
            "every",
            "sticky",
            "kind",
            "delay",
            "jitter",
            "side",
            "status",
            "body",
            "body_file",
            "preset",
            "mode",
            "max_hold",
            "retry_after",
            "rate",
            "chunks",
            "over",
            "after_bytes",
            "then",
            "upstreams",
            "labels",
            "methods",
            "path",
            "headers",
            "duration",
            "at",
            "enable",
            "disable",
            "max_error_ratio",
            "window",
            "min_requests",
            "bogus",
        ]);
        let table = prop::sample::select(vec![
            "[[rule]]",
            "[rule.fault]",
            "[rule.match]",
            "[rule.fault.distribution]",
            "[[scenario]]",
            "[[scenario.step]]",
            "[scenario.guard]",
            "[scenario.step.set.a]",
        ]);
        prop_oneof![
            3 => (key, value()).prop_map(|(k, v)| format!("{k} = {v}")),
            1 => table.prop_map(str::to_owned),
            1 => "[^\n]{0,20}",
        ]
    }

    fn check(text: &str) {
        let source = RuleText {
            path: PathBuf::from("rules/r.toml"),
            text: text.to_owned(),
        };
        // Either outcome is fine; a panic fails the property.
        let _ = validate_sources(&[source], &BodyFiles::default(), &["a", "b"], &[]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_gives_problems_or_rules(text in "\\PC{0,300}") {
            check(&text);
        }

        #[test]
        fn arbitrary_rule_files_give_problems_or_rules(lines in prop::collection::vec(line(), 0..40)) {
            check(&lines.join("\n"));
        }
    }
}
