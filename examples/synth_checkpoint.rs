//! A synthetic Hugging Face checkpoint with Llama-3-8B-ProLong-64k-Instruct's exact configuration,
//! dtype (F32) and layout (7 safetensors shards with an index, HF's shard names), the real Llama-3
//! tokenizer, and random weights with realistic statistics. For conversion tests and benchmarks at
//! full scale: the 8B preset is 32.1 GB, more than this machine's memory.
//!
//! (tests/convert_synth.rs includes this file as a module and calls [`generate`].)
//!
//! ```text
//! cargo run --release --example synth_checkpoint -- --preset prolong-8b-64k|tiny --out DIR [--seed S] [--tokenizer DIR] [--layers N]
//! ```
//!
//! `--layers N` keeps the preset's shapes but only its first N layers (an 8B-shaped model small
//! enough to benchmark on a small machine: every matrix and the output head at full size).
//!
//! Weights (deterministic in the seed, whatever the thread count): every row of a matrix has its
//! own scale (log-normal spread around a per-kind base), a few input channels are scaled up 3-6×
//! in every row (the outlier features of trained LLMs), values are near-Gaussian with a heavy tail
//! (about 1 in 1000 is 3-15× larger). Norm weights are positive around plausible centres.
//!
//! Streaming: shards are written tensor by tensor, each tensor in slices of at most 64 MiB,
//! generated on all cores while a writer thread writes the previous slice, so memory stays at a
//! few slices and the disk is kept busy.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{json, Value};

/// Bytes per generated slice (64 MiB).
const SLICE_BYTES: usize = 64 << 20;
/// Shards of the real checkpoint.
const N_SHARDS: usize = 7;
/// The Llama-3 Instruct chat template (Meta-Llama-3-8B-Instruct's tokenizer_config.json).
const CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

#[derive(Debug, Clone, Copy)]
struct Preset {
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    ffn: u64,
    vocab: u64,
}

const PROLONG_8B: Preset = Preset {
    hidden: 4096,
    layers: 32,
    heads: 32,
    kv_heads: 8,
    ffn: 14336,
    vocab: 128256,
};

/// Scaled down for CI: GQA 4:1, vocabulary, rope theta, context and 7 shards kept; every row a
/// multiple of 256 so the K-quants apply as they do at full size.
const TINY: Preset = Preset {
    hidden: 256,
    layers: 4,
    heads: 4,
    kv_heads: 1,
    ffn: 768,
    vocab: 128256,
};

/// What a tensor is, for its statistics.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Token embeddings (rows = tokens).
    Embed,
    /// A projection; `base` is the typical weight standard deviation.
    Linear { base: f32 },
    /// An RMSNorm weight around `centre`.
    Norm { centre: f32 },
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    /// Outermost first (safetensors order).
    shape: Vec<u64>,
    kind: Kind,
}

impl Tensor {
    fn n_bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * 4
    }
}

/// The tensors in HF's state-dict order (which decides shard membership).
fn tensors(p: &Preset) -> Vec<Tensor> {
    let hd = p.hidden / p.heads;
    let t = |name: String, shape: Vec<u64>, kind| Tensor { name, shape, kind };
    let mut v = vec![t(
        "model.embed_tokens.weight".into(),
        vec![p.vocab, p.hidden],
        Kind::Embed,
    )];
    for l in 0..p.layers {
        let pre = format!("model.layers.{l}");
        let lin = |base| Kind::Linear { base };
        v.push(t(
            format!("{pre}.self_attn.q_proj.weight"),
            vec![p.heads * hd, p.hidden],
            lin(0.020),
        ));
        v.push(t(
            format!("{pre}.self_attn.k_proj.weight"),
            vec![p.kv_heads * hd, p.hidden],
            lin(0.030),
        ));
        v.push(t(
            format!("{pre}.self_attn.v_proj.weight"),
            vec![p.kv_heads * hd, p.hidden],
            lin(0.008),
        ));
        v.push(t(
            format!("{pre}.self_attn.o_proj.weight"),
            vec![p.hidden, p.heads * hd],
            lin(0.012),
        ));
        v.push(t(
            format!("{pre}.mlp.gate_proj.weight"),
            vec![p.ffn, p.hidden],
            lin(0.018),
        ));
        v.push(t(
            format!("{pre}.mlp.up_proj.weight"),
            vec![p.ffn, p.hidden],
            lin(0.015),
        ));
        v.push(t(
            format!("{pre}.mlp.down_proj.weight"),
            vec![p.hidden, p.ffn],
            lin(0.014),
        ));
        v.push(t(
            format!("{pre}.input_layernorm.weight"),
            vec![p.hidden],
            Kind::Norm { centre: 0.3 },
        ));
        v.push(t(
            format!("{pre}.post_attention_layernorm.weight"),
            vec![p.hidden],
            Kind::Norm { centre: 0.25 },
        ));
    }
    v.push(t(
        "model.norm.weight".into(),
        vec![p.hidden],
        Kind::Norm { centre: 2.0 },
    ));
    v.push(t(
        "lm_head.weight".into(),
        vec![p.vocab, p.hidden],
        Kind::Linear { base: 0.010 },
    ));
    v
}

/// wyrand: one multiply per 64 random bits; plenty for test weights.
#[derive(Clone, Copy)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Mix the seed (splitmix64 finaliser) so neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng(z ^ (z >> 31))
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0).wrapping_mul(u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db));
        (t >> 64) as u64 ^ t as u64
    }

    /// Near-Gaussian (Irwin-Hall of three 16-bit uniforms, unit variance) with a heavy tail: the
    /// remaining 16 bits put about 1 value in 1000 at 3-15× its size.
    #[inline]
    fn weight(&mut self) -> f32 {
        let r = self.next();
        let u = |s: u32| ((r >> s) & 0xffff) as f32 * (1.0 / 65536.0);
        let g = (u(0) + u(16) + u(32) - 1.5) * 2.0;
        let tail = (r >> 48) as u32;
        if tail & 0x3ff == 0 {
            g * (3.0 + ((tail >> 10) & 0x3f) as f32 * (12.0 / 63.0))
        } else {
            g
        }
    }

    /// A standard-normal-ish value without the tail (for scales).
    fn gauss(&mut self) -> f32 {
        let r = self.next();
        let u = |s: u32| ((r >> s) & 0xffff) as f32 * (1.0 / 65536.0);
        (u(0) + u(16) + u(32) + u(48) - 2.0) * 3f32.sqrt()
    }
}

fn tensor_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Per-input-channel scales of a matrix: ~0.4% of channels 3-6× larger in every row.
fn channel_scales(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0xc0ff_ee00);
    (0..n)
        .map(|_| {
            let r = rng.next();
            if r.is_multiple_of(256) {
                3.0 + ((r >> 8) % 1000) as f32 * 0.003
            } else {
                1.0
            }
        })
        .collect()
}

/// Fill `out` (little-endian f32 bytes) with rows `row0..` of a tensor.
fn fill_rows(t: &Tensor, tseed: u64, channels: &[f32], row0: u64, out: &mut [u8]) {
    let row_len = *t.shape.last().unwrap_or(&1) as usize;
    let row_bytes = row_len * 4;
    out.par_chunks_mut(row_bytes)
        .enumerate()
        .for_each(|(i, row)| {
            let r = row0 + i as u64;
            // One generator per row: the bytes depend only on (seed, tensor, row).
            let mut rng = Rng::new(tseed ^ r.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            match t.kind {
                Kind::Norm { centre } => {
                    for b in row.chunks_exact_mut(4) {
                        let v = centre * (0.35 * rng.gauss()).exp();
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                }
                Kind::Embed | Kind::Linear { .. } => {
                    let base = match t.kind {
                        Kind::Linear { base } => base,
                        _ => 0.009,
                    };
                    // Row scale: log-normal spread (σ of ln ≈ 0.3), as trained rows differ.
                    let s = base * (0.3 * rng.gauss()).exp();
                    let with_channels = matches!(t.kind, Kind::Linear { .. });
                    for (j, b) in row.chunks_exact_mut(4).enumerate() {
                        let c = if with_channels {
                            channels.get(j).copied().unwrap_or(1.0)
                        } else {
                            1.0
                        };
                        let v = s * c * rng.weight();
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        });
}

/// Contiguous groups of tensors (in state-dict order) for exactly `n` shards (fewer only when
/// there are fewer tensors): HF's greedy rule with the given maximum, then the largest groups
/// halved until there are `n`.
fn shard_groups(ts: &[Tensor], max: u64, n: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in ts.iter().enumerate() {
        let b = t.n_bytes();
        match groups.last_mut() {
            Some(g) if size + b <= max => {
                g.push(i);
                size += b;
            }
            _ => {
                groups.push(vec![i]);
                size = b;
            }
        }
    }
    while groups.len() > n {
        // Too many: merge the adjacent pair with the smallest sum.
        let (k, _) = (0..groups.len() - 1)
            .map(|k| {
                let s: u64 = groups[k]
                    .iter()
                    .chain(&groups[k + 1])
                    .map(|&i| ts[i].n_bytes())
                    .sum();
                (k, s)
            })
            .min_by_key(|x| x.1)
            .unwrap_or((0, 0));
        let next = groups.remove(k + 1);
        groups[k].extend(next);
    }
    while groups.len() < n {
        let Some((k, _)) = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.len() > 1)
            .max_by_key(|(_, g)| g.iter().map(|&i| ts[i].n_bytes()).sum::<u64>())
        else {
            break;
        };
        let half = groups[k].len() / 2;
        let tail = groups[k].split_off(half);
        groups.insert(k + 1, tail);
    }
    groups
}

fn config_json(p: &Preset) -> Value {
    json!({
        "_name_or_path": "princeton-nlp/Llama-3-8B-ProLong-64k-Instruct",
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": p.hidden,
        "initializer_range": 0.02,
        "intermediate_size": p.ffn,
        "max_position_embeddings": 65536,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": p.heads,
        "num_hidden_layers": p.layers,
        "num_key_value_heads": p.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": null,
        "rope_theta": 8000000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
        "use_cache": true,
        "vocab_size": p.vocab
    })
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, s + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The tokenizer files: Llama-3's tokenizer.json with the BOS post-processor Meta added after
/// release (and ProLong ships), tokenizer_config.json as the Instruct model's.
pub fn write_tokenizer(src: &Path, out: &Path) -> Result<(), String> {
    let read = |f: &str| -> Result<Value, String> {
        let p = src.join(f);
        let s = std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut tok = read("tokenizer.json")?;
    if let Some(o) = tok.as_object_mut() {
        o.insert(
            "post_processor".into(),
            longquant::convert::tokenizer::llama3_bos_post_processor(),
        );
    }
    // Compact, as HF writes it: the file is 9 MB either way.
    let s = serde_json::to_string(&tok).map_err(|e| e.to_string())?;
    std::fs::write(out.join("tokenizer.json"), s).map_err(|e| e.to_string())?;

    let mut cfg = read("tokenizer_config.json")?;
    if let Some(o) = cfg.as_object_mut() {
        o.insert("bos_token".into(), json!("<|begin_of_text|>"));
        o.insert("eos_token".into(), json!("<|eot_id|>"));
        o.insert("chat_template".into(), json!(CHAT_TEMPLATE));
        o.insert("model_max_length".into(), json!(65536));
    }
    write_json(&out.join("tokenizer_config.json"), &cfg)?;
    write_json(
        &out.join("special_tokens_map.json"),
        &json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
                "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.44.2"}),
    )
}

/// Writes buffers on its own thread and hands them back for reuse.
struct Sink {
    to_writer: Option<SyncSender<Vec<u8>>>,
    back: Receiver<Vec<u8>>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Sink {
    fn new(path: &Path) -> Result<Sink, String> {
        let f = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        let (back_tx, back) = sync_channel::<Vec<u8>>(2);
        let name = path.display().to_string();
        let handle = std::thread::spawn(move || {
            let mut w = BufWriter::with_capacity(8 << 20, f);
            for buf in rx {
                w.write_all(&buf)
                    .map_err(|e| format!("writing {name}: {e}"))?;
                let _ = back_tx.try_send(buf);
            }
            w.flush().map_err(|e| format!("writing {name}: {e}"))
        });
        Ok(Sink {
            to_writer: Some(tx),
            back,
            handle: Some(handle),
        })
    }

    /// A buffer of `n` bytes, recycled when one is free.
    fn buffer(&self, n: usize) -> Vec<u8> {
        let mut b = self.back.try_recv().unwrap_or_default();
        b.resize(n, 0);
        b
    }

    fn send(&self, b: Vec<u8>) -> Result<(), String> {
        self.to_writer
            .as_ref()
            .ok_or("writer closed")?
            .send(b)
            .map_err(|_| "writer thread stopped".to_string())
    }

    fn finish(mut self) -> Result<(), String> {
        drop(self.to_writer.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Err("writer thread panicked".into()),
        }
    }
}

fn write_shard(path: &Path, ts: &[Tensor], members: &[usize], seed: u64) -> Result<u64, String> {
    // Data order inside a file: by name, as safetensors' serializer sorts same-dtype tensors.
    let mut order: Vec<usize> = members.to_vec();
    order.sort_by(|&a, &b| ts[a].name.cmp(&ts[b].name));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    for &i in &order {
        let t = &ts[i];
        header.insert(
            t.name.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [off, off + t.n_bytes()]}),
        );
        off += t.n_bytes();
    }
    let mut h = serde_json::to_string(&Value::Object(header)).map_err(|e| e.to_string())?;
    // The header is padded with spaces to a multiple of 8, as safetensors writes it.
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let sink = Sink::new(path)?;
    let mut first = sink.buffer(0);
    first.extend_from_slice(&(h.len() as u64).to_le_bytes());
    first.extend_from_slice(h.as_bytes());
    sink.send(first)?;
    for &i in &order {
        let t = &ts[i];
        let row_len = *t.shape.last().unwrap_or(&1) as usize;
        let n_rows: u64 = t.shape.iter().rev().skip(1).product();
        let tseed = tensor_seed(seed, i);
        let channels = channel_scales(tseed, row_len);
        let rows_per_slice = (SLICE_BYTES / (row_len * 4)).max(1) as u64;
        let mut r = 0u64;
        while r < n_rows.max(1) {
            let rows = rows_per_slice.min(n_rows.max(1) - r);
            let mut buf = sink.buffer(rows as usize * row_len * 4);
            fill_rows(t, tseed, &channels, r, &mut buf);
            sink.send(buf)?;
            r += rows;
        }
    }
    sink.finish()?;
    Ok(8 + h.len() as u64 + off)
}

/// What [`generate`] wrote.
pub struct Summary {
    /// Shard file names, in order.
    pub shards: Vec<String>,
    /// Tensor bytes.
    pub total: u64,
    /// Bytes written to shards (headers included).
    pub written: u64,
    /// Wall seconds.
    pub seconds: f64,
}

/// Write the checkpoint of `preset` (`prolong-8b-64k` or `tiny`) into `out`, tokenizer files
/// from `tok_dir` (the npm Llama-3 tokenizer's `tokenizer.json` and `tokenizer_config.json`).
pub fn generate(
    preset: &str,
    out: &Path,
    seed: u64,
    tok_dir: &Path,
    verbose: bool,
) -> Result<Summary, String> {
    generate_layers(preset, None, out, seed, tok_dir, verbose)
}

/// [`generate`] with only the first `layers` layers of the preset (all of them when `None`).
pub fn generate_layers(
    preset: &str,
    layers: Option<u64>,
    out: &Path,
    seed: u64,
    tok_dir: &Path,
    verbose: bool,
) -> Result<Summary, String> {
    let mut p = match preset {
        "prolong-8b-64k" => PROLONG_8B,
        "tiny" => TINY,
        other => {
            return Err(format!(
                "--preset must be prolong-8b-64k or tiny (got {other:?})"
            ))
        }
    };
    if let Some(n) = layers {
        if n == 0 || n > p.layers {
            return Err(format!(
                "--layers must be 1..={} for {preset} (got {n})",
                p.layers
            ));
        }
        p.layers = n;
    }
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let start = Instant::now();
    let ts = tensors(&p);
    let total: u64 = ts.iter().map(Tensor::n_bytes).sum();
    // HF's default 5 GB shards give ProLong's 7; smaller presets get the same count.
    let max = if total > 20_000_000_000 {
        5_000_000_000
    } else {
        total.div_ceil(N_SHARDS as u64)
    };
    let groups = shard_groups(&ts, max, N_SHARDS);
    let n = groups.len();
    let mut weight_map = BTreeMap::new();
    let mut written = 0u64;
    let mut shards = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let bytes = write_shard(&out.join(&file), &ts, g, seed)?;
        written += bytes;
        for &i in g {
            weight_map.insert(ts[i].name.clone(), file.clone());
        }
        if verbose {
            eprintln!(
                "{file}: {} tensors, {:.2} GB ({:.0} s)",
                g.len(),
                bytes as f64 / 1e9,
                start.elapsed().as_secs_f64()
            );
        }
        shards.push(file);
    }
    write_json(
        &out.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    write_json(&out.join("config.json"), &config_json(&p))?;
    write_tokenizer(tok_dir, out)?;
    Ok(Summary {
        shards,
        total,
        written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn run() -> Result<(), String> {
    let mut preset = None;
    let mut out = None;
    let mut seed = 0u64;
    let mut layers = None;
    let mut tok_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cache/llama3-tokenizer");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = Some(val()?),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--tokenizer" => tok_dir = PathBuf::from(val()?),
            "--layers" => layers = Some(val()?.parse().map_err(|e| format!("--layers: {e}"))?),
            "-h" | "--help" => {
                println!("synth_checkpoint --preset prolong-8b-64k|tiny --out DIR [--seed S] [--tokenizer DIR] [--layers N]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let preset = preset.ok_or("--preset prolong-8b-64k|tiny is required")?;
    let out = out.ok_or("--out DIR is required")?;
    let s = generate_layers(&preset, layers, &out, seed, &tok_dir, true)?;
    println!(
        "wrote {} ({} shards, {:.3} GB of weights, {:.3} GB on disk) in {:.1} s ({:.0} MB/s)",
        out.display(),
        s.shards.len(),
        s.total as f64 / 1e9,
        s.written as f64 / 1e9,
        s.seconds,
        s.written as f64 / 1e6 / s.seconds.max(1e-9)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
