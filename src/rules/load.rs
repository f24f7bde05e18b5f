//! Reading rule files: every `*.toml` below the rules directory, sorted by
//! path, each parsed and validated, with every problem reported. Scenarios
//! are checked last, against the rules of every file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::{RuleBook, RuleFile, RuleSource};
use crate::diagnostic::{Diagnostic, FieldError, FieldPath};
use crate::scenario::ScenarioSpec;

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

/// Validates rule files already read, in the order given.
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
                if let Some(name) = e
                    .span()
                    .and_then(|span| rule_name_at(&source.text, span.start))
                {
                    diagnostic.message = format!("rule {name:?}: {}", diagnostic.message);
                }
                diagnostics.push(diagnostic);
                continue;
            }
        };
        let base_dir = source.path.parent().unwrap_or(Path::new("."));
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
                base_dir,
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
        match spec.validate(&source.path, &book.rules, upstream_names, &at) {
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

/// The name of the `[[rule]]` whose text holds `offset`, for messages that
/// the schema parser gives without naming the rule.
fn rule_name_at(text: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let rules = document.get_ref().get("rule")?;
    let DeValue::Array(rules) = rules.get_ref() else {
        return None;
    };
    let rule = rules
        .iter()
        .rev()
        .find(|rule| rule.span().start <= offset)?;
    let DeValue::Table(table) = rule.get_ref() else {
        return None;
    };
    match table.get("name")?.get_ref() {
        DeValue::String(name) => Some(name.to_string()),
        _ => None,
    }
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
