//! The kill switch on disk (`admin.halt_file`): a halt writes the file, a
//! resume removes it, and start-up reads it. A replica restarted while
//! halted (a crash, an OOM kill, a container restart) comes back halted
//! instead of rejoining the fleet's anchored runs.
//!
//! The file holds one line saying who halted and when; only its presence
//! counts. Writing is best effort: a halt always takes effect in memory,
//! and a file that cannot be written is logged as an error, never a reason
//! to keep faults running.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::error;

/// The most of the file that start-up reads (it names who halted, for the log).
const MAX_NOTE: u64 = 512;

#[derive(Debug)]
pub struct HaltFile {
    path: PathBuf,
}

/// Why start-up could not read the halt file.
#[derive(Debug, thiserror::Error)]
#[error("admin.halt_file {path}: {reason}")]
pub struct HaltFileError {
    path: String,
    reason: String,
}

impl HaltFile {
    /// Reads what the last halt wrote: `Some(note)` when the proxy must start
    /// halted. Fails when the file's folder is missing (no halt could be
    /// kept) or the file exists and cannot be read (it might be a halt).
    pub fn open(path: PathBuf) -> Result<(HaltFile, Option<String>), HaltFileError> {
        let fail = |reason: String| HaltFileError {
            path: path.display().to_string(),
            reason,
        };
        let folder = match path.parent() {
            Some(folder) if folder.as_os_str().is_empty() => Path::new("."),
            Some(folder) => folder,
            None => return Err(fail("not a file path".to_owned())),
        };
        if !folder.is_dir() {
            return Err(fail(format!(
                "the folder {} does not exist, so a halt could not be kept",
                folder.display()
            )));
        }
        let note = match std::fs::File::open(&path) {
            Ok(file) => {
                let mut text = String::new();
                file.take(MAX_NOTE)
                    .read_to_string(&mut text)
                    .map_err(|e| fail(format!("exists but cannot be read: {e}")))?;
                let line = text.lines().next().unwrap_or("").trim();
                Some(if line.is_empty() {
                    "no note".to_owned()
                } else {
                    line.to_owned()
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("exists but cannot be read: {e}"))),
        };
        Ok((HaltFile { path }, note))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the halt across restarts. Written whole (a temporary file
    /// renamed over it), so a crash mid-write leaves no half file.
    pub(super) fn record(&self, caller: &str, at: SystemTime) {
        let note = format!(
            "halted by {caller} at {}\n",
            humantime::format_rfc3339_millis(at)
        );
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let written =
            std::fs::write(&temporary, note).and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            error!(
                path = %self.path.display(),
                "the halt could not be written to admin.halt_file ({e}): it holds \
                 now, but a restart would not be halted"
            );
        }
    }

    /// Forgets the halt: the next start is not halted.
    pub(super) fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => error!(
                path = %self.path.display(),
                "admin.halt_file could not be removed ({e}): the next start will be halted"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_recorded_halt_is_read_back_and_a_cleared_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("halted");
        let (file, note) = HaltFile::open(path.clone()).unwrap();
        assert_eq!(note, None);
        file.record("ctl", SystemTime::UNIX_EPOCH);
        let (file, note) = HaltFile::open(path.clone()).unwrap();
        assert_eq!(
            note.as_deref(),
            Some("halted by ctl at 1970-01-01T00:00:00.000Z")
        );
        file.clear();
        assert!(!path.exists());
        assert_eq!(HaltFile::open(path).unwrap().1, None);
    }

    #[test]
    fn a_missing_folder_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = HaltFile::open(dir.path().join("nowhere/halted")).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not exist, so a halt could not be kept"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_file_still_halts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("halted");
        std::fs::write(&path, "").unwrap();
        assert_eq!(HaltFile::open(path).unwrap().1.as_deref(), Some("no note"));
    }
}
