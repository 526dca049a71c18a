//! Cooperative cancellation for long jobs (Ctrl-C, SIGTERM).
//!
//! A signal that killed the process outright would skip the destructors that remove temporary
//! output files, so the CLI installs a handler that only sets a flag here; the streaming loops
//! (conversion, requantization, export) call [`check`] between slices and return
//! [`Interrupted`], and unwinding through the normal error path drops the writers, which delete
//! their temporary files. The library never installs a handler itself.
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The job was cancelled at the user's request; nothing was written to the final output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted: the job was cancelled and its temporary files removed")]
pub struct Interrupted;

/// Ask every running job to stop at its next check. Safe to call from a signal handler thread.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop has been requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Interrupted)` once a stop has been requested.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
