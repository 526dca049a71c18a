//! Any bytes as a `compare --save-base` file: the reader validates the header against the exact
//! file length before allocating, so it returns a reader or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::eval::kld::BaseResultsReader;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("lq-fuzz-base-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(r) = BaseResultsReader::open(&path) {
        assert_eq!(
            r.tokens.len() as u64,
            u64::from(r.header.n_ctx) * u64::from(r.header.n_chunk)
        );
    }
});
