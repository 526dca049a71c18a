//! config.json text → `LlamaConfig`: a config or a typed error; an accepted config respects the
//! converter's limits and its heads divide, and its rope factors have head_dim / 2 entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::convert::config::{limits, LlamaConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = LlamaConfig::from_json_str(text) {
        assert!(c.n_layer >= 1 && c.n_layer <= limits::MAX_LAYERS);
        assert!(c.hidden_size <= limits::MAX_WIDTH && c.vocab_size <= limits::MAX_VOCAB);
        assert!(c.head_dim <= limits::MAX_HEAD_DIM && c.n_head <= limits::MAX_HEADS);
        assert_eq!(c.n_head % c.n_head_kv, 0);
        if let Some(f) = c.rope_freqs() {
            assert_eq!(f.len() as u64, c.head_dim / 2);
        }
    }
});
