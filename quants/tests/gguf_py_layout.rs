//! Our block layouts, decoded by someone else: quantize pseudo-random rows with our code, write
//! the raw blocks and our dequantization to a temp dir, and have gguf-py
//! (`scripts/golden/dequant_check.py`, i.e. `gguf.quants.dequantize`) decode the same bytes. Any
//! disagreement in field order, bit packing or scale arithmetic shows up as a non-identical f32.
//!
//! Needs `python3` with the `gguf` package. Without it the test fails when `CI=true` and is
//! otherwise skipped with a note (the golden test covers the same formats without Python).

#[path = "../examples/dump_blocks.rs"]
mod dump_blocks;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    // quants/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A fresh directory under the system temp dir, removed on drop (the crate has no `tempfile`
/// dev-dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("longquant-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// `Some(reason)` when python3 or gguf-py is unavailable.
fn python_gguf_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
    {
        Err(e) => Some(format!("cannot run python3: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "python3 cannot import gguf/numpy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

#[test]
fn block_layouts_match_gguf_py() {
    if let Some(why) = python_gguf_missing() {
        if in_ci() {
            panic!("CI=true but gguf-py is unavailable: {why}");
        }
        eprintln!("NOTE: skipping the gguf-py layout check: {why} (pip install gguf numpy)");
        return;
    }

    let dir = TempDir::new("layout");
    let written =
        dump_blocks::dump_all(dir.path(), 0x1A70_C0DE).expect("quantize and write blocks");
    assert_eq!(written.len(), dump_blocks::LAYOUT_FORMATS.len());

    let script = repo_root().join("scripts/golden/dequant_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run dequant_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("stderr:\n{stderr}");
    }
    assert!(
        out.status.success(),
        "dequant_check.py exited with {:?}:\n{stdout}\n{stderr}",
        out.status.code()
    );

    // Every type we wrote must be reported OK, with the number of values we wrote.
    let n_values = dump_blocks::ROWS * dump_blocks::ROW_LEN;
    for name in &written {
        let ok = stdout.lines().any(|line| {
            let mut f = line.split_whitespace();
            f.next() == Some("OK")
                && f.next() == Some(*name)
                && f.next() == Some(format!("values={n_values}").as_str())
        });
        assert!(
            ok,
            "no `OK {name} values={n_values}` line from dequant_check.py:\n{stdout}"
        );
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}

/// The script must actually detect a layout error: flip one quant bit in a copy of our Q4_K
/// blocks and expect a MISMATCH and exit status 1 (guards against a check that always passes).
#[test]
fn dequant_check_detects_a_flipped_bit() {
    if let Some(why) = python_gguf_missing() {
        if in_ci() {
            panic!("CI=true but gguf-py is unavailable: {why}");
        }
        eprintln!("NOTE: skipping: {why}");
        return;
    }
    let dir = TempDir::new("flipped");
    let x = dump_blocks::test_rows(7);
    let (mut blocks, deq) =
        dump_blocks::roundtrip(longquant_quants::BlockFormat::Q4_K, &x).expect("Q4_K round trip");
    // Row 1, first super-block, byte 16: the first packed-quant byte (after d, dmin and the 12
    // scale bytes), i.e. weight 0 of sub-block 0 — gaussian data in row 1, so its scale is
    // non-zero and the flip must change a dequantized value.
    let row_bytes = longquant_quants::BlockFormat::Q4_K
        .row_size(dump_blocks::ROW_LEN)
        .expect("row of whole super-blocks");
    blocks[row_bytes + 16] ^= 0x01;
    std::fs::write(dir.path().join("Q4_K.bin"), &blocks).expect("write");
    let f32_bytes: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("Q4_K.f32"), f32_bytes).expect("write");
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/golden/dequant_check.py"))
        .arg(dir.path())
        .output()
        .expect("run dequant_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISMATCH Q4_K"), "{stdout}");
}
