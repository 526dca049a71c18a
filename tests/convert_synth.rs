//! The synthetic ProLong-shaped checkpoint (examples/synth_checkpoint.rs, `tiny` preset): its
//! layout and statistics, and its conversion: per-tensor types equal llama-quantize's on our F32
//! conversion of the same weights (tests/data/mixes/synth-tiny.json, see PROVENANCE.md), and the
//! GGUF carries what long context needs (llama-bpe, add_bos, rope theta 8e6, context 65536).

#[path = "../examples/synth_checkpoint.rs"]
#[allow(dead_code)]
mod synth;

use longquant::convert::pipeline::{convert, plan, ConvertOptions, Progress, TypeChoice};
use longquant::convert::sha256::sha256_hex;
use longquant::convert::FileType;
use longquant::formats::gguf::{GgufFile, Value};
use longquant::formats::safetensors::{Dtype, SafetensorsModel};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer_dir() -> Option<PathBuf> {
    let p = root().join("fixtures/cache/llama3-tokenizer");
    if p.join("tokenizer.json").is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} missing; run fixtures/fetch.sh",
        p.display()
    );
    eprintln!(
        "note: {} missing (run fixtures/fetch.sh); skipped",
        p.display()
    );
    None
}

fn read_json(p: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn tiny_preset_layout_statistics_and_conversion() {
    let Some(tok) = tokenizer_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("Llama-3-8B-ProLong-64k-Instruct-tiny");
    let s = synth::generate("tiny", &ck, 7, &tok, false).unwrap();

    // Layout: 7 shards with HF's names, an index naming every tensor, ProLong's config.
    assert_eq!(s.shards.len(), 7);
    for (i, f) in s.shards.iter().enumerate() {
        assert_eq!(f, &format!("model-{:05}-of-00007.safetensors", i + 1));
    }
    let index = read_json(&ck.join("model.safetensors.index.json"));
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(s.total));
    let st = SafetensorsModel::open(&ck).unwrap();
    assert_eq!(st.shard_paths().len(), 7);
    assert_eq!(st.tensors().len(), 2 + 4 * 9 + 1);
    assert!(st.tensors().iter().all(|t| t.dtype == Dtype::F32));
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        st.tensors().len()
    );
    let cfg = read_json(&ck.join("config.json"));
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["rope_theta"].as_f64(), Some(8_000_000.0));
    assert_eq!(cfg["max_position_embeddings"], 65536);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["vocab_size"], 128256);
    assert_eq!(cfg["bos_token_id"], 128000);
    assert_eq!(
        cfg["eos_token_id"],
        serde_json::json!([128001, 128008, 128009])
    );
    assert_eq!(
        cfg["num_attention_heads"].as_u64().unwrap() / cfg["num_key_value_heads"].as_u64().unwrap(),
        4,
        "GQA 4:1 as ProLong's 32/8"
    );

    // Statistics: row scales spread, heavy tails, outlier channels, positive norms.
    let q = st.get("model.layers.1.mlp.gate_proj.weight").unwrap();
    let w = f32s(st.data(q));
    let row_len = q.shape[1] as usize;
    let row_std: Vec<f64> = w
        .chunks(row_len)
        .map(|r| {
            (r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / r.len() as f64).sqrt()
        })
        .collect();
    let (lo, hi) = row_std
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    assert!(hi / lo > 2.0, "row scale spread {lo}..{hi}");
    let n = w.len() as f64;
    let m2 = w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n;
    let m4 = w.iter().map(|&x| f64::from(x).powi(4)).sum::<f64>() / n;
    assert!(
        m4 / (m2 * m2) > 4.0,
        "kurtosis {} (Gaussian: 3)",
        m4 / (m2 * m2)
    );
    let norm = f32s(st.data(st.get("model.layers.0.input_layernorm.weight").unwrap()));
    assert!(norm.iter().all(|&x| x > 0.0 && x < 3.0));
    let emb = f32s(st.data(st.get("model.embed_tokens.weight").unwrap()));
    let emb_std =
        (emb.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / emb.len() as f64).sqrt();
    assert!((0.003..0.03).contains(&emb_std), "embedding std {emb_std}");

    // Deterministic in the seed; another seed gives other weights.
    let again = dir.path().join("again");
    synth::generate("tiny", &again, 7, &tok, false).unwrap();
    let other = dir.path().join("other");
    synth::generate("tiny", &other, 8, &tok, false).unwrap();
    let h = |d: &Path| sha256_hex(&std::fs::read(d.join(&s.shards[2])).unwrap());
    assert_eq!(h(&ck), h(&again));
    assert_ne!(h(&ck), h(&other));
    std::fs::remove_dir_all(&again).unwrap();
    std::fs::remove_dir_all(&other).unwrap();

    // The plan's types equal llama-quantize's for every mix of the table.
    let table = read_json(&root().join("tests/data/mixes/synth-tiny.json"));
    for (ty, want) in table.as_object().unwrap() {
        let opts = ConvertOptions {
            file_type: TypeChoice::Fixed(FileType::from_name(ty).unwrap()),
            ..ConvertOptions::default()
        };
        let p = plan(&ck, &st, &opts).unwrap();
        assert_eq!(p.tensors.len(), want.as_object().unwrap().len());
        for t in &p.tensors {
            assert_eq!(
                Some(t.ggml_type.name().to_ascii_uppercase().as_str()),
                want[&t.name].as_str(),
                "{ty} {}",
                t.name
            );
        }
    }

    // Real conversions: Q4_K_M and Q8_0.
    for ty in ["Q4_K_M", "Q8_0"] {
        let out = dir.path().join(format!("prolong-tiny.{ty}.gguf"));
        let opts = ConvertOptions {
            file_type: TypeChoice::Fixed(FileType::from_name(ty).unwrap()),
            ..ConvertOptions::default()
        };
        let rep = convert(&ck, &out, &opts, &mut |_p: Progress<'_>| {}).unwrap();
        assert_eq!(rep.source_bytes, s.total);
        let g = GgufFile::open(&out).unwrap();
        for t in g.tensors() {
            assert_eq!(
                Some(t.ggml_type.name().to_ascii_uppercase().as_str()),
                table[ty][&t.name].as_str(),
                "{ty} {}",
                t.name
            );
        }
        let md = g.metadata();
        assert_eq!(
            md.get("tokenizer.ggml.pre").and_then(Value::as_str),
            Some("llama-bpe")
        );
        assert_eq!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            md.get("llama.rope.freq_base"),
            Some(&Value::F32(8_000_000.0))
        );
        assert_eq!(md.get("llama.context_length"), Some(&Value::U32(65536)));
        assert_eq!(
            md.get("tokenizer.ggml.bos_token_id")
                .and_then(Value::as_u64),
            Some(128000)
        );
        assert_eq!(
            md.get("tokenizer.ggml.eos_token_id")
                .and_then(Value::as_u64),
            Some(128009)
        );
        assert!(md
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains("<|start_header_id|>")));
        assert!(rep
            .facts
            .iter()
            .all(|f| f.what == "generation_config eos ids" || f.gguf == f.source));
    }
}
