//! Problems found in a user's files, and where they are.
//!
//! Validation works on parsed documents and reports a [`FieldError`]: a
//! [`FieldPath`] such as `rule[2].match.path` plus a message. Only the layer
//! that read the text turns that path into a line and column, so the same
//! validation serves TOML files (with positions) and JSON bodies (with the
//! field path alone).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeArray, DeTable, DeValue};

/// One step into a document: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// The location of a value inside a document, from its root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by a table key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        Self(segments)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A validation problem at a field of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: FieldPath,
    pub message: String,
}

impl FieldError {
    pub fn new(field: FieldPath, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.segments().is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A problem in a file, ready to print as `PATH:LINE:COL: error: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A problem with the file as a whole, such as a failed read.
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// A problem at a byte offset of `text`, the contents of `path`.
    pub fn at_offset(path: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_and_column(text, offset);
        Self {
            path: path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A TOML syntax or schema error, at the span the parser reported.
    pub fn from_toml(path: &Path, text: &str, error: &toml::de::Error) -> Self {
        let offset = error.span().map_or(0, |span| span.start);
        // The parser's message can span several lines; one line per problem.
        let message = error.message().trim().replace('\n', " ");
        Self::at_offset(path, text, offset, message)
    }

    /// A validation error, placed at its field in the TOML `text`.
    ///
    /// A field that is absent (a missing required key) is reported at the
    /// nearest enclosing value that exists.
    pub fn from_field(path: &Path, text: &str, error: &FieldError) -> Self {
        let offset = locate(text, &error.field).map_or(0, |span| span.start);
        Self::at_offset(path, text, offset, error.to_string())
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Several diagnostics printed one per line.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The span of the deepest existing value along `field` in a TOML document.
pub fn locate(text: &str, field: &FieldPath) -> Option<Range<usize>> {
    let document = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table = Some(document.get_ref());
    let mut array: Option<&DeArray<'_>> = None;
    for segment in field.segments() {
        let value = match (segment, table, array) {
            (Segment::Key(key), Some(t), _) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == key.as_str())
                .map(|(k, v)| {
                    // Point at the key itself: that is where a reader looks.
                    span = Some(k.span());
                    v
                }),
            (Segment::Index(i), _, Some(a)) => a.get(*i).inspect(|v| span = Some(v.span())),
            _ => None,
        };
        let Some(value) = value else { break };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    span
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_toml_keys() {
        let path = FieldPath::root()
            .key("rule")
            .index(2)
            .key("match")
            .key("path");
        assert_eq!(path.to_string(), "rule[2].match.path");
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbb = \"é x\"\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        let x = text.find('x').unwrap();
        assert_eq!(line_and_column(text, x), (2, 9));
    }

    #[test]
    fn locates_keys_inside_arrays_of_tables() {
        let text = "[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"b\"\n[rule.match]\npath = \"x\"\n";
        let field = FieldPath::root()
            .key("rule")
            .index(1)
            .key("match")
            .key("path");
        let span = locate(text, &field).unwrap();
        assert_eq!(line_and_column(text, span.start), (7, 1));
        // A missing key falls back to the deepest value that exists.
        let missing = FieldPath::root().key("rule").index(0).key("fault");
        let span = locate(text, &missing).unwrap();
        assert_eq!(line_and_column(text, span.start), (1, 1));
    }
}
