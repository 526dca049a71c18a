//! Any bytes as a model GGUF: the reader, the hyperparameters (`model::LlamaConfig`), the weights
//! (`Model::load`), the tokenizer and the chat template each accept it or refuse it with a typed
//! error; an accepted config respects the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::chat_template::ChatTemplate;
use longquant::formats::gguf::GgufFile;
use longquant::model::{LlamaConfig, Model};
use longquant::tokenizer::GgufTokenizer;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("lq-fuzz-model-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    if let Ok(c) = LlamaConfig::from_metadata(file.metadata(), 32000) {
        assert!(c.n_layer <= 4096 && c.n_head <= 4096 && c.n_embd <= 1 << 20);
        assert_eq!(c.head_dim * c.n_head, c.n_embd);
    }
    let _ = Model::load(&file);
    let _ = GgufTokenizer::from_gguf(&file);
    let _ = ChatTemplate::from_metadata(file.metadata());
});
