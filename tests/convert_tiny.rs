//! End-to-end conversion of the natural-weight fixture, and hostile checkpoints that must fail
//! cleanly (clear error, no output file, no temporary file left behind).

use longquant::convert::names::unpermute_heads;
use longquant::convert::pipeline::{convert, ConvertError, ConvertOptions, Progress, TypeChoice};
use longquant::convert::FileType;
use longquant::formats::gguf::{GgufFile, Value};
use longquant::formats::safetensors::SafetensorsModel;
use longquant::formats::GgmlType;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opts(t: FileType) -> ConvertOptions {
    ConvertOptions {
        file_type: TypeChoice::Fixed(t),
        ..ConvertOptions::default()
    }
}

fn run(
    src: &Path,
    out: &Path,
    o: &ConvertOptions,
) -> Result<longquant::convert::ConvertReport, ConvertError> {
    convert(src, out, o, &mut |_p: Progress<'_>| {})
}

fn bf16_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect()
}

#[test]
fn tiny_natural_f32_equals_bf16_source() {
    let src = root().join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.F32.gguf");
    let rep = run(&src, &out, &opts(FileType::F32)).unwrap();
    assert_eq!(rep.tensors.len(), 2 + 16 * 9);
    let g = GgufFile::open(&out).unwrap();
    let st = SafetensorsModel::open(&src).unwrap();
    assert_eq!(
        rep.n_params,
        st.tensors().iter().map(|t| t.n_elements()).sum::<u64>()
    );
    let md = g.metadata();
    assert_eq!(
        md.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(
        md.get("llama.rope.freq_base"),
        Some(&Value::F32(8_000_000.0))
    );
    assert_eq!(md.get("llama.context_length"), Some(&Value::U32(8192)));
    assert_eq!(
        md.get("llama.attention.head_count_kv"),
        Some(&Value::U32(2))
    );
    assert_eq!(md.get("llama.attention.key_length"), Some(&Value::U32(64)));
    assert_eq!(md.get("general.file_type"), Some(&Value::U32(0)));
    assert_eq!(md.get("general.quantization_version"), Some(&Value::U32(2)));
    assert_eq!(
        md.get("tokenizer.ggml.pre").and_then(Value::as_str),
        Some("smollm")
    );
    assert_eq!(
        md.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len()),
        Some(49152)
    );
    assert!(
        g.tensor("output.weight").is_none(),
        "tied embeddings: no output.weight"
    );

    for s in st.tensors() {
        let name = longquant::convert::names::map_hf_name(&s.name, 16);
        let longquant::convert::names::HfName::Tensor(m) = name else {
            panic!("{}", s.name)
        };
        let info = g.tensor(&m.gguf).unwrap();
        assert_eq!(info.ggml_type, GgmlType::F32);
        let want_dims: Vec<u64> = s.shape.iter().rev().copied().collect();
        assert_eq!(info.dims, want_dims, "{}", m.gguf);
        let ours: Vec<f32> = g
            .tensor_data(info)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let src_vals = bf16_to_f32(st.data(s));
        let heads = match m.gguf.rsplit('.').nth(1) {
            Some("attn_q") => Some(4),
            Some("attn_k") => Some(2),
            _ => None,
        };
        let ours = match heads {
            Some(h) => {
                let row = s.shape[1] as usize;
                let mut back = vec![0f32; ours.len()];
                unpermute_heads(&ours, &mut back, row, s.shape[0] as usize / h).unwrap();
                assert_ne!(back, ours, "{}: the permutation moved rows", m.gguf);
                back
            }
            None => ours,
        };
        assert!(
            ours.iter()
                .zip(&src_vals)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} differs from its BF16 source",
            m.gguf
        );
    }
}

#[test]
fn tiny_natural_every_type() {
    let src = root().join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for t in [
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q5_K_S,
        FileType::Q4_K_M,
        FileType::Q4_K_S,
    ] {
        let out = dir.path().join(format!("tiny.{}.gguf", t.name()));
        let rep = run(&src, &out, &opts(t)).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(
            g.metadata().get("general.file_type"),
            Some(&Value::U32(t.llama_ftype()))
        );
        assert_eq!(rep.file_size, std::fs::metadata(&out).unwrap().len());
        for (name, ty, dims, bytes) in &rep.tensors {
            let info = g.tensor(name).unwrap();
            assert_eq!(
                (&info.ggml_type, &info.dims, &info.n_bytes),
                (ty, dims, bytes)
            );
        }
        // 1-D tensors stay F32 at every type.
        assert_eq!(
            g.tensor("blk.0.attn_norm.weight").unwrap().ggml_type,
            GgmlType::F32
        );
        sizes.push((t, rep.file_size, rep.bits_per_weight()));
    }
    // Sizes order as the types' bits per weight do.
    let bpw = |t: FileType| sizes.iter().find(|s| s.0 == t).unwrap().2;
    assert!(bpw(FileType::F16) > bpw(FileType::Q8_0));
    assert!(bpw(FileType::Q8_0) > bpw(FileType::Q6_K));
    assert!(bpw(FileType::Q6_K) > bpw(FileType::Q5_K_M));
    assert!(bpw(FileType::Q5_K_M) > bpw(FileType::Q4_K_M));
    assert!(bpw(FileType::Q4_K_M) > bpw(FileType::Q4_K_S));
}

#[test]
fn auto_keeps_source_precision_and_refusals() {
    let src = root().join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.auto.gguf");
    let rep = run(&src, &out, &ConvertOptions::default()).unwrap();
    assert_eq!(
        rep.file_type,
        FileType::BF16,
        "BF16 source, auto → BF16 (no downcast)"
    );
    // Existing output without force: refused, file untouched.
    let before = std::fs::read(&out).unwrap();
    let e = run(&src, &out, &opts(FileType::Q8_0)).unwrap_err();
    assert!(matches!(e, ConvertError::Refused(_)), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // With force it is replaced.
    let o = ConvertOptions {
        force: true,
        ..opts(FileType::Q8_0)
    };
    run(&src, &out, &o).unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), before);
    // The input can never be the output, even with force.
    let e = run(&src, &src.join("model.safetensors"), &o).unwrap_err();
    assert!(matches!(e, ConvertError::Refused(_)), "{e}");
    // A missing imatrix file is a typed error, and nothing is written.
    let o = ConvertOptions {
        imatrix: Some(dir.path().join("x.dat")),
        ..opts(FileType::Q4_K_M)
    };
    assert!(matches!(
        run(&src, &dir.path().join("i.gguf"), &o).unwrap_err(),
        ConvertError::Imatrix(_)
    ));
    assert!(!dir.path().join("i.gguf").exists());
}

// ---- hostile checkpoints ----

/// A small Llama checkpoint (SmolLM2's tokenizer, so vocab 49152): hidden 32, 2 layers, 2 heads,
/// 1 KV head, FFN 64, tied embeddings.
struct Mini {
    tensors: Vec<(String, &'static str, Vec<u64>, Vec<u8>)>,
    config: serde_json::Value,
}

impl Mini {
    fn new() -> Mini {
        let (h, ff, v) = (32u64, 64u64, 49152u64);
        let kv = 16u64;
        let mut shapes: Vec<(String, Vec<u64>)> =
            vec![("model.embed_tokens.weight".into(), vec![v, h])];
        for l in 0..2 {
            let p = format!("model.layers.{l}.");
            shapes.push((format!("{p}input_layernorm.weight"), vec![h]));
            shapes.push((format!("{p}self_attn.q_proj.weight"), vec![h, h]));
            shapes.push((format!("{p}self_attn.k_proj.weight"), vec![kv, h]));
            shapes.push((format!("{p}self_attn.v_proj.weight"), vec![kv, h]));
            shapes.push((format!("{p}self_attn.o_proj.weight"), vec![h, h]));
            shapes.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
            shapes.push((format!("{p}mlp.gate_proj.weight"), vec![ff, h]));
            shapes.push((format!("{p}mlp.up_proj.weight"), vec![ff, h]));
            shapes.push((format!("{p}mlp.down_proj.weight"), vec![h, ff]));
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        let mut seed = 1u32;
        let tensors = shapes
            .into_iter()
            .map(|(n, s)| {
                let count: u64 = s.iter().product();
                let bytes: Vec<u8> = (0..count)
                    .flat_map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        let x = ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1;
                        x.to_le_bytes()
                    })
                    .collect();
                (n, "F32", s, bytes)
            })
            .collect();
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "intermediate_size": 64, "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048, "tie_word_embeddings": true, "torch_dtype": "float32"});
        Mini { tensors, config }
    }

    fn safetensors(tensors: &[&(String, &'static str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut off = 0usize;
        for (n, dt, s, b) in tensors {
            header.insert(
                n.clone(),
                serde_json::json!({"dtype": dt, "shape": s, "data_offsets": [off, off + b.len()]}),
            );
            off += b.len();
        }
        let mut h = serde_json::Value::Object(header).to_string().into_bytes();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        for t in tensors {
            out.extend_from_slice(&t.3);
        }
        out
    }

    fn write(&self, dir: &Path) {
        let tok = root().join("fixtures/tiny-natural");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tok.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("config.json"), self.config.to_string()).unwrap();
        let all: Vec<_> = self.tensors.iter().collect();
        std::fs::write(dir.join("model.safetensors"), Mini::safetensors(&all)).unwrap();
    }
}

/// The error of converting `mini`, after checking that nothing was left in the output folder.
fn fails(mini: &Mini) -> ConvertError {
    let src = tempfile::tempdir().unwrap();
    mini.write(src.path());
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let e = run(src.path(), &out, &opts(FileType::Q8_0)).unwrap_err();
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "output folder not empty after {e}: {left:?}"
    );
    e
}

#[test]
fn mini_checkpoint_converts() {
    let src = tempfile::tempdir().unwrap();
    Mini::new().write(src.path());
    let out = src.path().join("out.gguf");
    let rep = run(src.path(), &out, &opts(FileType::Q8_0)).unwrap();
    assert_eq!(rep.tensors.len(), 2 + 2 * 9);
    // 32-wide rows: Q8_0 fits (block 32), token_embd as tied output stays Q8_0.
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(
        g.tensor("token_embd.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        rep.facts
            .iter()
            .find(|f| f.what == "rope theta")
            .unwrap()
            .gguf,
        "10000"
    );
}

#[test]
fn config_disagrees_with_shapes() {
    let mut m = Mini::new();
    m.config["intermediate_size"] = 96.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::ShapeMismatch { name, .. } if name.contains("mlp")),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let mut m = Mini::new();
    m.tensors
        .retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight");
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::MissingTensor { name } if name == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    // Untied config without lm_head.
    let mut m = Mini::new();
    m.config["tie_word_embeddings"] = false.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::MissingTensor { name } if name == "lm_head.weight"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_and_dtype() {
    let mut m = Mini::new();
    m.tensors.push((
        "model.layers.2.mlp.up_proj.weight".into(),
        "F32",
        vec![64, 32],
        vec![0; 64 * 32 * 4],
    ));
    assert!(matches!(fails(&m), ConvertError::UnexpectedTensor { .. }));
    let mut m = Mini::new();
    if let Some(t) = m.tensors.iter_mut().find(|t| t.0 == "model.norm.weight") {
        t.1 = "I32";
    }
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::UnsupportedDtype { name, .. } if name == "model.norm.weight"),
        "{e}"
    );
}

#[test]
fn nan_names_the_tensor() {
    let mut m = Mini::new();
    let t = m
        .tensors
        .iter_mut()
        .find(|t| t.0 == "model.layers.1.mlp.down_proj.weight")
        .unwrap();
    t.3[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::NonFinite { name, index: 10, .. } if name == "model.layers.1.mlp.down_proj.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("down_proj"));
}

#[test]
fn missing_shard() {
    let m = Mini::new();
    let src = tempfile::tempdir().unwrap();
    m.write(src.path());
    std::fs::remove_file(src.path().join("model.safetensors")).unwrap();
    // Two shards with an index; only the first is present.
    let (a, b) = m.tensors.split_at(5);
    let a: Vec<_> = a.iter().collect();
    std::fs::write(
        src.path().join("model-00001-of-00002.safetensors"),
        Mini::safetensors(&a),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for t in &m.tensors[..5] {
        map.insert(t.0.clone(), "model-00001-of-00002.safetensors".into());
    }
    for t in b {
        map.insert(t.0.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        src.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let e = run(
        src.path(),
        &out_dir.path().join("o.gguf"),
        &opts(FileType::F16),
    )
    .unwrap_err();
    assert!(matches!(e, ConvertError::Format(_)), "{e}");
    assert!(e.to_string().contains("00002"), "{e}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

// ---- config.json that disagrees with its tensors, or is absurd (issue 19, item 3) ----

use longquant::convert::config::ConfigError;
use longquant::formats::ErrorKind;
use std::time::{Duration, Instant};

/// The config error inside a conversion failure.
fn config_err(e: &ConvertError) -> &ConfigError {
    match e {
        ConvertError::Config { source, .. } => source,
        other => panic!("expected a config.json error, got {other:?}"),
    }
}

#[test]
fn a_billion_layers_beside_two_is_refused_at_once() {
    // Measured before the fix: `convert` grew to 23 GiB listing the 9·10^9 tensor names such a
    // config calls for. Now the count is refused before anything is sized by it.
    let t0 = Instant::now();
    let mut m = Mini::new();
    m.config["num_hidden_layers"] = 1_000_000_000u64.into();
    let e = fails(&m);
    assert!(
        matches!(
            config_err(&e),
            ConfigError::TooLarge {
                field: "num_hidden_layers",
                value: 1_000_000_000,
                ..
            }
        ),
        "{e}"
    );
    // Within the sanity limit but beyond the checkpoint: refused naming both counts.
    let mut m = Mini::new();
    m.config["num_hidden_layers"] = 4096.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::LayerCountMismatch { config: 4096, found: 2, first_missing }
            if first_missing == "model.layers.2.input_layernorm.weight"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("4096") && msg.contains("2 layers"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[test]
fn missing_or_extra_layers() {
    // The last layer absent altogether: the count disagrees.
    let mut m = Mini::new();
    m.config["num_hidden_layers"] = 3.into();
    let e = fails(&m);
    assert!(
        matches!(
            &e,
            ConvertError::LayerCountMismatch {
                config: 3,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
    // A layer in the middle absent: the first missing tensor is named.
    let mut m = Mini::new();
    m.tensors.retain(|t| !t.0.starts_with("model.layers.0."));
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::MissingTensor { name } if name == "model.layers.0.input_layernorm.weight"),
        "{e}"
    );
    // One layer fewer in the config than in the checkpoint.
    let mut m = Mini::new();
    m.config["num_hidden_layers"] = 1.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::UnexpectedTensor { name } if name.starts_with("model.layers.1.")),
        "{e}"
    );
}

#[test]
fn absurd_config_values_are_refused() {
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("num_attention_heads", 0.into()),
        ("num_key_value_heads", 0.into()),
        ("hidden_size", 0.into()),
        ("vocab_size", (1u64 << 32).into()),
        ("max_position_embeddings", (1u64 << 40).into()),
        ("rms_norm_eps", (-1.0).into()),
        ("rope_theta", 0.0.into()),
    ];
    for (field, value) in cases {
        let mut m = Mini::new();
        m.config[field] = value.clone();
        let e = fails(&m);
        assert!(
            matches!(config_err(&e), ConfigError::BadValue { .. }),
            "{field} = {value}: {e}"
        );
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    let too_large: Vec<(&'static str, u64)> = vec![
        ("vocab_size", 1 << 25),
        ("hidden_size", 1 << 21),
        ("intermediate_size", 1 << 30),
        ("num_attention_heads", 1 << 20),
        ("head_dim", 1 << 30),
        ("max_position_embeddings", 1 << 30),
    ];
    for (field, value) in too_large {
        let mut m = Mini::new();
        m.config[field] = value.into();
        let e = fails(&m);
        assert!(
            matches!(config_err(&e), ConfigError::TooLarge { field: f, value: v, .. } if *f == field && *v == value),
            "{field} = {value}: {e}"
        );
    }
    // A head width derived from hidden_size / heads obeys the head_dim limit too (fuzz finding,
    // config_json: hidden_size 8672 over 2 heads).
    let mut m = Mini::new();
    m.config["hidden_size"] = 8672.into();
    m.config["num_attention_heads"] = 2.into();
    m.config["num_key_value_heads"] = 2.into();
    let e = fails(&m);
    assert!(
        matches!(
            config_err(&e),
            ConfigError::TooLarge {
                field: "head_dim",
                value: 4336,
                limit: 4096
            }
        ),
        "{e}"
    );
    // Heads that do not divide the width (no explicit head_dim), KV heads that do not divide heads.
    let mut m = Mini::new();
    m.config["num_attention_heads"] = 3.into();
    m.config["num_key_value_heads"] = 3.into();
    assert!(matches!(
        config_err(&fails(&m)),
        ConfigError::Inconsistent(_)
    ));
    let mut m = Mini::new();
    m.config["num_key_value_heads"] = 4.into();
    assert!(matches!(
        config_err(&fails(&m)),
        ConfigError::Inconsistent(_)
    ));
}

#[test]
fn config_shapes_disagreeing_with_tensors_name_both() {
    // vocab_size one more than the embedding's rows.
    let mut m = Mini::new();
    m.config["vocab_size"] = 49153.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::ShapeMismatch { name, expected, found }
            if name == "model.embed_tokens.weight" && expected == &[49153, 32] && found == &[49152, 32]),
        "{e}"
    );
    assert!(e.to_string().contains("49153") && e.to_string().contains("49152"));
    // An explicit head_dim with head_dim × heads ≠ hidden: the q projection does not fit.
    let mut m = Mini::new();
    m.config["head_dim"] = 8.into();
    let e = fails(&m);
    // (q_proj is then [2·8, 32], k_proj [1·8, 32]; whichever the reader lists first is named.)
    assert!(
        matches!(&e, ConvertError::ShapeMismatch { name, expected, found }
            if (name == "model.layers.0.self_attn.q_proj.weight" && expected == &[16, 32] && found == &[32, 32])
            || (name == "model.layers.0.self_attn.k_proj.weight" && expected == &[8, 32] && found == &[16, 32])),
        "{e}"
    );
    // KV heads: k_proj sized for 1 KV head, config says 2.
    let mut m = Mini::new();
    m.config["num_key_value_heads"] = 2.into();
    let e = fails(&m);
    assert!(
        matches!(&e, ConvertError::ShapeMismatch { name, expected, .. }
            if name.contains("k_proj") && expected == &[32, 32]),
        "{e}"
    );
}

#[test]
fn dtype_disagreeing_with_data_length() {
    // Declared F16 with F32-sized data: the reader refuses the tensor before any conversion.
    let mut m = Mini::new();
    let t = m
        .tensors
        .iter_mut()
        .find(|t| t.0 == "model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    t.1 = "F16";
    let e = fails(&m);
    match &e {
        ConvertError::Format(f) => assert!(
            matches!(&f.kind, ErrorKind::TensorSizeMismatch { tensor, .. } if tensor == "model.layers.1.self_attn.v_proj.weight"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

/// Writes `m` as two shards plus an index whose weight map `edit` may change.
fn write_sharded(
    m: &Mini,
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    m.write(dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (a, b) = m.tensors.split_at(5);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (part, name) in [(a, names[0]), (b, names[1])] {
        let refs: Vec<_> = part.iter().collect();
        std::fs::write(dir.join(name), Mini::safetensors(&refs)).unwrap();
        for t in part {
            map.insert(t.0.clone(), name.into());
        }
    }
    edit(&mut map);
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn sharded_error(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> ErrorKind {
    let m = Mini::new();
    let src = tempfile::tempdir().unwrap();
    write_sharded(&m, src.path(), edit);
    let out_dir = tempfile::tempdir().unwrap();
    let e = run(
        src.path(),
        &out_dir.path().join("o.gguf"),
        &opts(FileType::F16),
    )
    .unwrap_err();
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
    match e {
        ConvertError::Format(f) => f.kind,
        other => panic!("{other:?}"),
    }
}

#[test]
fn index_disagreeing_with_shards() {
    // The unmodified sharded checkpoint converts (no over-rejection).
    let src = tempfile::tempdir().unwrap();
    write_sharded(&Mini::new(), src.path(), |_| {});
    let out_dir = tempfile::tempdir().unwrap();
    run(
        src.path(),
        &out_dir.path().join("o.gguf"),
        &opts(FileType::F16),
    )
    .unwrap();
    // A shard holds a tensor the index does not list.
    let kind = sharded_error(|map| {
        map.remove("model.norm.weight");
    });
    assert!(
        matches!(&kind, ErrorKind::ShardTensorNotInIndex { tensor, .. } if tensor == "model.norm.weight"),
        "{kind:?}"
    );
    // The index lists a tensor that no shard holds.
    let kind = sharded_error(|map| {
        map.insert(
            "model.layers.0.extra.weight".into(),
            "model-00001-of-00002.safetensors".into(),
        );
    });
    assert!(
        matches!(&kind, ErrorKind::IndexTensorNotInShard { tensor, .. } if tensor == "model.layers.0.extra.weight"),
        "{kind:?}"
    );
    // The index maps a tensor to the wrong shard.
    let kind = sharded_error(|map| {
        map.insert(
            "model.norm.weight".into(),
            "model-00001-of-00002.safetensors".into(),
        );
    });
    assert!(
        matches!(
            &kind,
            ErrorKind::ShardTensorNotInIndex { .. } | ErrorKind::IndexTensorNotInShard { .. }
        ),
        "{kind:?}"
    );
}
