//! tokenizer.json and tokenizer_config.json → the GGUF tokenizer metadata (`convert::tokenizer::
//! load_vocab`, what `convert` runs on a Hugging Face folder): the input is the tokenizer.json
//! text, optionally followed by a NUL and the tokenizer_config.json text, written to a folder
//! beside a fixed small config. A vocabulary or a typed error; an accepted vocabulary has one
//! type per token, exactly the config's vocab_size tokens, and special ids inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::convert::config::LlamaConfig;
use longquant::convert::tokenizer::load_vocab;

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
  "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
  "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 256,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0}"#;

fuzz_target!(|data: &[u8]| {
    let (tj, tc) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let dir = std::env::temp_dir().join(format!("lq-fuzz-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(dir.join("tokenizer.json"), tj).is_err() {
        return;
    }
    if let Some(tc) = tc {
        if std::fs::write(dir.join("tokenizer_config.json"), tc).is_err() {
            return;
        }
    }
    let config = LlamaConfig::from_json_str(CONFIG).expect("the fixed config is valid");
    if let Ok(v) = load_vocab(&dir, &config, None) {
        assert_eq!(v.tokens.len(), v.token_types.len());
        assert_eq!(v.tokens.len() as u64, config.vocab_size);
        for (_, id) in &v.special_ids {
            assert!((*id as usize) < v.tokens.len());
        }
    }
});
