//! Reading the files users name (`body_file`s, certificates and keys):
//! regular files only, opened without blocking and read with a bound, so
//! `/dev/zero` cannot grow the process and a FIFO cannot hang a reload.

use std::io::Read;
use std::path::Path;

/// The contents of the regular file at `path`, at most `max_bytes` long.
/// `what` names the file in errors (`body_file`, `tls.cert`…).
pub fn read_bounded(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| format!("cannot read {what} {path:?}: {e}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    let metadata = file.metadata().map_err(cannot)?;
    if !metadata.is_file() {
        return Err(format!("{what} {path:?} is not a regular file"));
    }
    let too_large = || {
        format!(
            "{what} {path:?} is larger than {} KiB, the most a {what} may hold",
            max_bytes / 1024
        )
    };
    if metadata.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // Bounded again while reading: the file may grow after the look.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}
