//! Any bytes as an importance-matrix file (llama.cpp's GGUF or legacy .dat, chosen by magic as
//! the loader does): an `Imatrix` or a typed error, and every entry of an accepted file yields
//! finite-or-not weights of its declared length without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::imatrix::Imatrix;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("lq-fuzz-imatrix-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(im) = Imatrix::read(&path) {
        let _ = im.len();
        let _ = im.weights_for("blk.0.attn_q.weight");
    }
});
