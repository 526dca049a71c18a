//! All-or-nothing output files: the one helper every writer in the workspace commits through
//! (the GGUF writer, the Hugging Face export, `compare --save-base`).
//!
//! [`AtomicFile::create`] opens a fresh temporary `.<name>.tmp-<pid>-<n>` in the target's
//! directory (same filesystem, so the final rename is atomic; `create_new`, so two writers never
//! share one). [`AtomicFile::commit`] flushes and fsyncs it, moves it to the final name and fsyncs
//! the directory. Until then nothing exists under the final name, whatever happens:
//! - an error (a full disk included) or a drop before `commit` removes the temporary;
//! - Ctrl-C/SIGTERM: the binary's handler calls [`remove_pending`] before it exits, which removes
//!   every temporary of the process still registered;
//! - `kill -9` or a power cut leaves the temporary; the next `create` for the same target removes
//!   temporaries whose process no longer runs (Linux `/proc`; elsewhere they stay, hidden and
//!   never mistaken for outputs);
//! - two processes writing the same target each fill their own temporary; the final file is one
//!   of them, complete. Without `overwrite`, the move is a hard link, which fails if the name
//!   exists, so the second writer gets [`ErrorKind::OutputExists`] instead of replacing the first.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::{Error, ErrorKind};

/// Temporaries of this process not yet committed or removed.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Distinguishes temporaries of one process (two threads may write the same target).
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn io(op: &'static str, source: std::io::Error) -> ErrorKind {
    ErrorKind::Io { op, source }
}

/// The directory `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The prefix every temporary for `target` starts with: `.<name>.tmp-`.
fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    format!(".{name}.tmp-")
}

/// Whether a temporary name's writer (`<pid>` or `<pid>-<n>` after the prefix) is gone.
fn writer_is_gone(suffix: &str) -> bool {
    let pid = suffix.split('-').next().unwrap_or("");
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if pid == std::process::id().to_string() {
        return false;
    }
    // Only where /proc answers for live processes can absence mean "gone".
    Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists()
}

/// Removes the temporaries left for `target` by processes that no longer run (a `kill -9`).
/// Returns how many were removed. Errors are ignored: this is housekeeping.
pub fn clean_stale(target: &Path) -> usize {
    let prefix = temp_prefix(target);
    let Ok(entries) = std::fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(suffix) = name.strip_prefix(&prefix) {
            if writer_is_gone(suffix) && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Removes every temporary this process has not committed yet; for a signal handler that is
/// about to exit without unwinding. Returns how many were removed.
pub fn remove_pending() -> usize {
    let mut list = pending();
    let mut n = 0;
    for p in list.drain(..) {
        if std::fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    n
}

/// An output being written under a temporary name; see the module documentation.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    done: bool,
}

impl AtomicFile {
    /// Starts writing `target`: cleans stale temporaries for it, then creates a new temporary.
    /// Without `overwrite`, an existing target is refused now (and again at commit).
    pub fn create(target: &Path, overwrite: bool) -> Result<AtomicFile, Error> {
        if !overwrite && target.exists() {
            return Err(Error::new(target, ErrorKind::OutputExists));
        }
        clean_stale(target);
        let tmp = parent_dir(target).join(format!(
            "{}{}-{}",
            temp_prefix(target),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::new(&tmp, io("create", e)))?;
        pending().push(tmp.clone());
        Ok(AtomicFile {
            target: target.to_path_buf(),
            tmp,
            file: Some(file),
            done: false,
        })
    }

    /// The final name.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// The open temporary (a second handle, for writers that want to own one, e.g. a buffer).
    pub fn try_clone_file(&self) -> Result<File, Error> {
        match &self.file {
            Some(f) => f
                .try_clone()
                .map_err(|e| Error::new(&self.tmp, io("open", e))),
            None => Err(Error::new(
                &self.tmp,
                io("open", std::io::Error::other("file already closed")),
            )),
        }
    }

    /// Syncs the temporary and moves it to the final name, then syncs the directory. Any
    /// other handle to the temporary must have been flushed before.
    pub fn commit(mut self, overwrite: bool) -> Result<(), Error> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| Error::new(&self.target, io("fsync", e)))?;
        }
        if overwrite {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| Error::new(&self.target, io("rename", e)))?;
        } else {
            match std::fs::hard_link(&self.tmp, &self.target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.tmp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::new(&self.target, ErrorKind::OutputExists));
                }
                // Filesystems without hard links: check, then rename (not race-free).
                Err(_) => {
                    if self.target.exists() {
                        return Err(Error::new(&self.target, ErrorKind::OutputExists));
                    }
                    std::fs::rename(&self.tmp, &self.target)
                        .map_err(|e| Error::new(&self.target, io("rename", e)))?;
                }
            }
        }
        self.done = true;
        pending().retain(|p| p != &self.tmp);
        let dir = parent_dir(&self.target);
        // Make the move durable. Opening a directory read-only and fsyncing it is the portable
        // Unix way; where that fails we still have a complete file.
        if let Ok(d) = File::open(&dir) {
            d.sync_all()
                .map_err(|e| Error::new(&dir, io("fsync directory", e)))?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
            pending().retain(|p| p != &self.tmp);
        }
    }
}

/// Writes `bytes` to `target` through an [`AtomicFile`].
pub fn write_atomic(target: &Path, bytes: &[u8], overwrite: bool) -> Result<(), Error> {
    use std::io::Write;
    let f = AtomicFile::create(target, overwrite)?;
    let mut h = f.try_clone_file()?;
    h.write_all(bytes)
        .map_err(|e| Error::new(f.target(), io("write", e)))?;
    drop(h);
    f.commit(overwrite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_drop_and_stale_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("out.bin");
        write_atomic(&t, b"one", false).unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), b"one");
        // No overwrite: refused, the first file intact, no temporary left.
        let e = write_atomic(&t, b"two", false).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::OutputExists));
        write_atomic(&t, b"three", true).unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), b"three");
        // Dropped before commit: nothing left.
        let f = AtomicFile::create(&dir.path().join("x"), false).unwrap();
        let tmp = f.temp_path().to_path_buf();
        assert!(tmp.exists());
        drop(f);
        assert!(!tmp.exists());
        // A temporary of a process that is gone is removed by the next create; one of a live
        // process (ours, pid 1) and unrelated names are kept.
        let stale = dir.path().join(".out.bin.tmp-4000000000-0");
        let legacy = dir.path().join(".out.bin.tmp-4000000001");
        let live = dir.path().join(".out.bin.tmp-1-0");
        let other = dir.path().join(".other.tmp-4000000000-0");
        for p in [&stale, &legacy, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        let f = AtomicFile::create(&t, true).unwrap();
        assert!(!stale.exists() && !legacy.exists());
        assert!(live.exists() && other.exists());
        drop(f);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            [".other.tmp-4000000000-0", ".out.bin.tmp-1-0", "out.bin"]
        );
    }
}
