//! Shared by the integration tests: where the fetched fixtures live and the rule for a missing
//! one. Under `CI=true` (or `1`) a missing fixture fails the test; elsewhere the test prints a note
//! and returns, so a plain clone without `fixtures/fetch.sh` still runs everything else.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(path)` when it exists; otherwise panics under CI and returns `None` with a note elsewhere.
pub fn require(p: PathBuf) -> Option<PathBuf> {
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "fixture {} is missing: run `bash fixtures/fetch.sh` (required under CI=true)",
            p.display()
        );
    }
    eprintln!(
        "note: skipping, fixture {} is missing (run `bash fixtures/fetch.sh`)",
        p.display()
    );
    None
}

/// A file or folder under `fixtures/cache/` (see `fixtures/fetch.sh`).
pub fn fixture(rel: &str) -> Option<PathBuf> {
    require(root().join("fixtures/cache").join(rel))
}
