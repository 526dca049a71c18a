//! [`remove_pending`] (the signal path: remove every uncommitted temporary before exiting) in a
//! test binary of its own, since it acts on every temporary of the process.
use longquant_formats::atomic::{remove_pending, AtomicFile};

#[test]
fn remove_pending_removes_open_temporaries_only() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done.bin");
    longquant_formats::atomic::write_atomic(&done, b"complete", false).unwrap();
    let a = AtomicFile::create(&dir.path().join("a.bin"), false).unwrap();
    let b = AtomicFile::create(&dir.path().join("a.bin"), false).unwrap();
    assert_ne!(a.temp_path(), b.temp_path(), "two writers, two temporaries");
    let (ta, tb) = (a.temp_path().to_path_buf(), b.temp_path().to_path_buf());
    assert!(ta.exists() && tb.exists());
    assert_eq!(remove_pending(), 2);
    assert!(!ta.exists() && !tb.exists());
    assert_eq!(std::fs::read(&done).unwrap(), b"complete");
    drop((a, b));
    assert_eq!(remove_pending(), 0);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1);
}
