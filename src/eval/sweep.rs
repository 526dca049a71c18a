//! A quantization sweep: make each level from one source, compare each with the unquantized
//! reference (see [`super::kld`]), tabulate size against quality, mark the Pareto front and
//! recommend the smallest level that meets the user's bound.
//!
//! - Source: a Hugging Face folder (the reference is an F32 GGUF converted from it; each level is
//!   converted straight from the folder, which for BF16/F16/F32 weights gives the same tensors
//!   as quantizing the F32 GGUF, since widening is exact) or a high-precision GGUF (F32, F16 or
//!   BF16: it is the reference, and each level is quantized from it).
//! - Files live in a private temporary folder that is removed when the sweep ends, also on error;
//!   each level's file is deleted as soon as it has been measured, so the disk holds at most the
//!   reference and one level.
//! - The reference is evaluated once: its compact per-position results ([`super::kld`]'s
//!   base-results file: top-k log-probs, tail mass and k tail samples) are saved and every level
//!   is compared against them. Re-running the two models in lockstep for each level would double
//!   the cost of every level for an exactness the saved results nearly have: same-top-p, Δp and
//!   the PPLs stay exact, and the KLD's tail term is an unbiased sampled estimate (measured
//!   against the exact lockstep KLD in `tests/compare_smollm2.rs`).
use super::kld::{
    compare_with_saved, save_base_results, tokenize, vocab_fingerprint, BaseResultsReader,
    BaseResultsWriter, CompareOptions, KldError, KldReport,
};
use crate::convert::mix::FileType;
use crate::convert::pipeline::{convert, ConvertError, ConvertOptions, ConvertReport, TypeChoice};
use crate::convert::quantize::{quantize, QuantizeOptions};
use crate::formats::gguf::GgufFile;
use crate::formats::GgmlType;
use crate::model::{load_on, Device, EvalOptions, KvType, ModelError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The levels swept when none are named.
pub const DEFAULT_TYPES: [FileType; 6] = [
    FileType::Q8_0,
    FileType::Q6_K,
    FileType::Q5_K_M,
    FileType::Q5_K_S,
    FileType::Q4_K_M,
    FileType::Q4_K_S,
];

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Conversion or quantization of a level failed.
    #[error("making {what}: {source}")]
    Convert {
        /// Which file.
        what: String,
        /// The error (boxed: conversion errors are large).
        source: Box<ConvertError>,
    },
    /// Comparing a level failed.
    #[error("evaluating {what}: {source}")]
    Compare {
        /// Which level.
        what: String,
        /// The error.
        source: KldError,
    },
    /// Loading a model failed.
    #[error("loading {what}: {source}")]
    Model {
        /// Which file.
        what: String,
        /// The error.
        source: ModelError,
    },
    /// Opening a GGUF failed.
    #[error(transparent)]
    Format(#[from] crate::formats::Error),
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The source is neither a folder nor a high-precision GGUF.
    #[error("{0}")]
    BadSource(String),
    /// The temporary folder could not be made.
    #[error("temporary folder {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The user's bound for the recommendation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The lowest-KLD level whose file is at most this many bytes.
    MaxSize(u64),
    /// The smallest level whose mean KLD is at most this.
    MaxKld(f64),
    /// The lowest-KLD (level, cache) whose weights plus K/V cache at the sweep's context take at
    /// most this many bytes.
    MaxMemory(u64),
}

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Levels, in the order to make them.
    pub types: Vec<FileType>,
    /// Context, chunks and forward-pass options for every comparison.
    pub compare: CompareOptions,
    /// Threads for conversion (evaluation uses rayon's global pool).
    pub threads: Option<usize>,
    /// Importance matrix passed to the converter.
    pub imatrix: Option<PathBuf>,
    /// Recommendation bound.
    pub bound: Option<Bound>,
    /// Top log-probs (and tail samples) kept per position for the reference.
    pub top_k: usize,
    /// Where to make the temporary folder (default: the system's temp dir).
    pub work_dir: Option<PathBuf>,
    /// Where the reference and every level are evaluated.
    pub device: Device,
    /// K/V cache types (K, V) each level is evaluated with, one row per level and pair; empty:
    /// the one pair of `compare.eval`. The reference always runs with `compare.eval`'s caches.
    pub caches: Vec<(KvType, KvType)>,
}

/// One level's measurements.
#[derive(Clone, Debug)]
pub struct SweepRow {
    /// The level.
    pub file_type: FileType,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Bits per weight (tensor bytes · 8 / parameters).
    pub bits_per_weight: f64,
    /// Seconds to make the file.
    pub quantize_seconds: f64,
    /// The comparison with the reference.
    pub report: KldReport,
    /// On the size/KLD Pareto front (size = weights + K/V cache at the sweep's context).
    pub pareto: bool,
    /// K cache type the level was evaluated with.
    pub cache_type_k: KvType,
    /// V cache type.
    pub cache_type_v: KvType,
    /// Bytes of the K/V cache at the sweep's context (every layer).
    pub cache_bytes: u64,
}

impl SweepRow {
    /// Weights plus K/V cache at the sweep's context, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.size_bytes.saturating_add(self.cache_bytes)
    }

    /// `q8_0` when K and V share a type, else `q8_0/f16` (K/V).
    pub fn cache_name(&self) -> String {
        cache_pair_name(self.cache_type_k, self.cache_type_v)
    }

    /// File size in GiB.
    pub fn gib(&self) -> f64 {
        self.size_bytes as f64 / (1u64 << 30) as f64
    }

    /// Mean KLD of the last (longest-position) bucket.
    pub fn long_kld(&self) -> f64 {
        self.report
            .by_position
            .last()
            .map_or(f64::NAN, |b| b.kld.value)
    }
}

/// The sweep's result.
#[derive(Clone, Debug)]
pub struct SweepReport {
    /// The reference file's type name (F32, F16 or BF16).
    pub reference_type: String,
    /// Reference file size in bytes.
    pub reference_bytes: u64,
    /// Reference perplexity.
    pub reference_ppl: f64,
    /// Seconds spent evaluating the reference.
    pub reference_seconds: f64,
    /// One row per level, in the order asked.
    pub rows: Vec<SweepRow>,
    /// The bound used.
    pub bound: Option<Bound>,
    /// Index into `rows` of the recommended level.
    pub recommended: Option<usize>,
    /// Total wall-clock seconds.
    pub seconds: f64,
}

/// A temporary folder removed on drop (also when a sweep fails half-way).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: Option<&Path>) -> Result<TempDir, SweepError> {
        let base = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = base.join(format!("longquant-sweep-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|source| SweepError::Io {
            path: p.clone(),
            source,
        })?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Marks the rows on the Pareto front of (size, KLD): no other row is at most as large and at
/// most as divergent with one of the two strictly better.
pub fn mark_pareto(rows: &mut [SweepRow]) {
    let pts: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| (r.memory_bytes(), r.report.kld.value))
        .collect();
    for (i, r) in rows.iter_mut().enumerate() {
        let (s, k) = pts[i];
        r.pareto = !pts
            .iter()
            .enumerate()
            .any(|(j, &(s2, k2))| j != i && s2 <= s && k2 <= k && (s2 < s || k2 < k));
    }
}

/// The recommended row for a bound: the smallest file meeting a KLD bound, or the lowest KLD
/// within a size bound.
pub fn recommend(rows: &[SweepRow], bound: Option<Bound>) -> Option<usize> {
    let by = |f: &dyn Fn(&SweepRow) -> bool, key: &dyn Fn(&SweepRow) -> f64| {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| f(r))
            .min_by(|a, b| key(a.1).total_cmp(&key(b.1)))
            .map(|(i, _)| i)
    };
    match bound? {
        Bound::MaxKld(x) => by(&|r| r.report.kld.value <= x, &|r| r.size_bytes as f64),
        Bound::MaxSize(s) => by(&|r| r.size_bytes <= s, &|r| r.report.kld.value),
        Bound::MaxMemory(m) => by(&|r| r.memory_bytes() <= m, &|r| r.report.kld.value),
    }
}

/// `q8_0`, or `K/V` when the two halves differ.
pub fn cache_pair_name(k: KvType, v: KvType) -> String {
    if k == v {
        k.name().to_string()
    } else {
        format!("{}/{}", k.name(), v.name())
    }
}

/// Bytes of one value in a cache of type `t` (block types: block bytes / 32).
fn cache_value_bytes(t: KvType) -> f64 {
    match t {
        KvType::F32 => 4.0,
        KvType::F16 | KvType::BF16 => 2.0,
        KvType::Q8_0 => 34.0 / 32.0,
        KvType::Q5_1 => 24.0 / 32.0,
        KvType::Q5_0 => 22.0 / 32.0,
        KvType::Q4_1 => 20.0 / 32.0,
        KvType::Q4_0 | KvType::IQ4_NL => 18.0 / 32.0,
    }
}

/// Bytes of a K/V cache of `n_ctx` positions for `config` (every layer, K and V), as llama.cpp
/// allocates it.
pub fn cache_bytes(config: &crate::model::LlamaConfig, n_ctx: usize, k: KvType, v: KvType) -> u64 {
    let per_pos = (config.n_layer * config.n_embd_kv()) as f64;
    (per_pos * n_ctx as f64 * (cache_value_bytes(k) + cache_value_bytes(v))).round() as u64
}

enum Src {
    Folder(PathBuf),
    Gguf(PathBuf),
}

/// Runs a sweep of `src` on `text`. `progress` receives one line per step.
pub fn sweep(
    src: &Path,
    text: &str,
    opts: &SweepOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SweepReport, SweepError> {
    let start = Instant::now();
    let tmp = TempDir::new(opts.work_dir.as_deref())?;
    let source = if src.is_dir() {
        Src::Folder(src.to_path_buf())
    } else {
        Src::Gguf(src.to_path_buf())
    };

    // 1. The reference.
    let ref_path = match &source {
        Src::Folder(dir) => {
            progress("converting the reference (F32)");
            let out = tmp.0.join("reference.F32.gguf");
            let copts = ConvertOptions {
                file_type: TypeChoice::Fixed(FileType::F32),
                threads: opts.threads,
                ..ConvertOptions::default()
            };
            convert(dir, &out, &copts, &mut |_| {}).map_err(|source| SweepError::Convert {
                what: "the F32 reference".into(),
                source: Box::new(source),
            })?;
            out
        }
        Src::Gguf(p) => p.clone(),
    };
    let ref_file = GgufFile::open(&ref_path)?;
    let reference_type = reference_type_name(&ref_file)?;
    if matches!(source, Src::Gguf(_)) && reference_type == "quantized" {
        return Err(SweepError::BadSource(format!(
            "{} is quantized; a sweep needs an F32, F16 or BF16 reference (or a Hugging Face folder)",
            src.display()
        )));
    }
    let reference_bytes = ref_file.file_size();
    let base_results = tmp.0.join("reference.lqkb");
    let ref_start = Instant::now();
    {
        let model = load_on(&ref_file, opts.device).map_err(|source| SweepError::Model {
            what: "the reference".into(),
            source,
        })?;
        let tok = GgufTokenizer::from_gguf(&ref_file)?;
        let cmp_err = |source| SweepError::Compare {
            what: "the reference".into(),
            source,
        };
        let (tokens, bos) = tokenize(&tok, text).map_err(cmp_err)?;
        let mut w = BaseResultsWriter::create(
            &base_results,
            opts.top_k,
            vocab_fingerprint(ref_file.metadata()).unwrap_or(0),
        )
        .map_err(cmp_err)?;
        save_base_results(
            model.as_ref(),
            &tokens,
            bos,
            &opts.compare,
            &mut w,
            &mut |d, t| progress(&format!("reference: chunk {d}/{t}")),
        )
        .map_err(cmp_err)?;
    }
    let reference_seconds = ref_start.elapsed().as_secs_f64();
    drop(ref_file);

    // 2. Each level, with each cache pair.
    let caches = if opts.caches.is_empty() {
        vec![(
            opts.compare.eval.cache_type_k,
            opts.compare.eval.cache_type_v,
        )]
    } else {
        opts.caches.clone()
    };
    let mut rows = Vec::with_capacity(opts.types.len() * caches.len());
    for &ft in &opts.types {
        let name = ft.name();
        progress(&format!("making {name}"));
        let out = tmp.0.join(format!("level.{name}.gguf"));
        let t0 = Instant::now();
        let rep: ConvertReport = match &source {
            Src::Folder(dir) => {
                let copts = ConvertOptions {
                    file_type: TypeChoice::Fixed(ft),
                    threads: opts.threads,
                    imatrix: opts.imatrix.clone(),
                    ..ConvertOptions::default()
                };
                convert(dir, &out, &copts, &mut |_| {})
            }
            Src::Gguf(p) => {
                let mut q = QuantizeOptions::new(ft);
                q.threads = opts.threads;
                q.imatrix = opts.imatrix.clone();
                quantize(p, &out, &q, &mut |_| {})
            }
        }
        .map_err(|source| SweepError::Convert {
            what: name.into(),
            source: Box::new(source),
        })?;
        let quantize_seconds = t0.elapsed().as_secs_f64();
        {
            let f = GgufFile::open(&out)?;
            let model = load_on(&f, opts.device).map_err(|source| SweepError::Model {
                what: name.into(),
                source,
            })?;
            for &(ck, cv) in &caches {
                let what = if caches.len() > 1 {
                    format!("{name} with a {} cache", cache_pair_name(ck, cv))
                } else {
                    name.to_string()
                };
                let cmp_err = |source| SweepError::Compare {
                    what: what.clone(),
                    source,
                };
                let mut reader = BaseResultsReader::open(&base_results).map_err(cmp_err)?;
                let copts = CompareOptions {
                    eval: EvalOptions {
                        cache_type_k: ck,
                        cache_type_v: cv,
                    },
                    ..opts.compare
                };
                let report = compare_with_saved(
                    &mut reader,
                    model.as_ref(),
                    vocab_fingerprint(f.metadata()),
                    &copts,
                    &mut |d, t, s| {
                        progress(&format!(
                            "{what}: chunk {d}/{t}, KLD {:.5}, same top {:.2}%",
                            s.kld, s.same_top_p
                        ))
                    },
                )
                .map_err(cmp_err)?;
                rows.push(SweepRow {
                    file_type: ft,
                    size_bytes: rep.file_size,
                    bits_per_weight: rep.bits_per_weight(),
                    quantize_seconds,
                    report,
                    pareto: false,
                    cache_type_k: ck,
                    cache_type_v: cv,
                    cache_bytes: cache_bytes(model.config(), opts.compare.n_ctx, ck, cv),
                });
            }
        }
        let _ = std::fs::remove_file(&out);
    }
    mark_pareto(&mut rows);
    let recommended = recommend(&rows, opts.bound);
    let reference_ppl = rows.first().map_or(f64::NAN, |r| r.report.ppl_base.value);
    Ok(SweepReport {
        reference_type,
        reference_bytes,
        reference_ppl,
        reference_seconds,
        rows,
        bound: opts.bound,
        recommended,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// "F32", "F16", "BF16" when every 2-D tensor has that type, else "quantized".
fn reference_type_name(f: &GgufFile) -> Result<String, SweepError> {
    let mut seen: Option<GgmlType> = None;
    for t in f.tensors().iter().filter(|t| t.dims.len() == 2) {
        match t.ggml_type {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                if seen.is_none_or(|s| s == t.ggml_type || s == GgmlType::F32) {
                    seen = Some(t.ggml_type);
                }
            }
            _ => return Ok("quantized".into()),
        }
    }
    Ok(format!("{:?}", seen.unwrap_or(GgmlType::F32)))
}

/// Evaluation options with the forward pass's defaults.
pub fn default_compare(n_ctx: usize, max_chunks: Option<usize>) -> CompareOptions {
    CompareOptions {
        n_ctx,
        max_chunks,
        eval: EvalOptions::default(),
    }
}

impl SweepReport {
    /// The JSON document of a sweep: one object per row with the table's columns, plus each row's
    /// full comparison.
    pub fn to_json(&self) -> serde_json::Value {
        let r = self;
        serde_json::json!({
            "reference": {
                "type": r.reference_type,
                "size_bytes": r.reference_bytes,
                "ppl": r.reference_ppl,
                "seconds": r.reference_seconds,
            },
            "rows": r.rows.iter().map(|row| serde_json::json!({
                "type": row.file_type.name(),
                "size_bytes": row.size_bytes,
                "gib": row.gib(),
                "bits_per_weight": row.bits_per_weight,
                "ppl": row.report.ppl_model.value,
                "delta_ppl": row.report.ppl_diff.value,
                "kld_mean": row.report.kld.value,
                "kld_p99": row.report.kld_percentiles.p99,
                "same_top_p": row.report.same_top_p.value,
                "long_kld": row.long_kld(),
                "quantize_seconds": row.quantize_seconds,
                "cache_type_k": row.cache_type_k.name(),
                "cache_type_v": row.cache_type_v.name(),
                "cache_bytes": row.cache_bytes,
                "memory_bytes": row.memory_bytes(),
                "pareto": row.pareto,
                "compare": row.report.to_json(),
            })).collect::<Vec<_>>(),
            "bound": match r.bound {
                Some(Bound::MaxSize(s)) => serde_json::json!({"max_size_bytes": s}),
                Some(Bound::MaxKld(k)) => serde_json::json!({"max_kld": k}),
                Some(Bound::MaxMemory(m)) => serde_json::json!({"max_memory_bytes": m}),
                None => serde_json::Value::Null,
            },
            "recommended": r.recommended.and_then(|i| r.rows.get(i)).map(|row| row.file_type.name()),
            "recommended_cache": r.recommended.and_then(|i| r.rows.get(i)).map(|row| row.cache_name()),
            "seconds": r.seconds,
        })
    }

    /// The human table (same numbers as the JSON, rounded for display).
    pub fn table(&self) -> String {
        let r = self;
        let mut o = String::new();
        o.push_str(&format!(
            "reference: {} ({:.4} GiB), PPL {:.4}, evaluated in {:.1} s\n",
            r.reference_type,
            r.reference_bytes as f64 / (1u64 << 30) as f64,
            r.reference_ppl,
            r.reference_seconds
        ));
        // A cache column when the rows differ in cache type (weights × cache sweeps).
        let caches = r.rows.iter().any(|x| {
            (x.cache_type_k, x.cache_type_v) != (r.rows[0].cache_type_k, r.rows[0].cache_type_v)
        });
        o.push_str(&format!(
            "{}{:<8} {:>9} {:>6} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10} {:>8}  \n",
            if caches {
                format!("{:<10} ", "cache")
            } else {
                String::new()
            },
            "type",
            "GiB",
            "bpw",
            "PPL",
            "ΔPPL",
            "KLD",
            "99% KLD",
            "same top",
            "long KLD",
            "quant s"
        ));
        for (i, row) in r.rows.iter().enumerate() {
            let mark = match (row.pareto, r.recommended == Some(i)) {
                (true, true) => "* <= recommended",
                (true, false) => "*",
                (false, true) => "<= recommended",
                (false, false) => "",
            };
            o.push_str(&format!(
                "{}{:<8} {:>9.4} {:>6.2} {:>10.4} {:>+9.4} {:>10.6} {:>10.6} {:>8.2}% {:>10.6} {:>8.1}  {mark}\n",
                if caches { format!("{:<10} ", row.cache_name()) } else { String::new() },
                row.file_type.name(),
                row.gib(),
                row.bits_per_weight,
                row.report.ppl_model.value,
                row.report.ppl_diff.value,
                row.report.kld.value,
                row.report.kld_percentiles.p99,
                row.report.same_top_p.value,
                row.long_kld(),
                row.quantize_seconds,
            ));
        }
        if caches {
            o.push_str("* = on the Pareto front of weights + K/V cache at the context vs KLD\n");
        } else {
            o.push_str("* = on the size/KLD Pareto front\n");
        }
        match (r.bound, r.recommended) {
            (Some(_), Some(i)) => {
                if let Some(row) = r.rows.get(i) {
                    if caches || matches!(r.bound, Some(Bound::MaxMemory(_))) {
                        o.push_str(&format!(
                            "recommended: {} with a {} cache ({:.4} GiB with its cache)\n",
                            row.file_type.name(),
                            row.cache_name(),
                            row.memory_bytes() as f64 / (1u64 << 30) as f64
                        ));
                    } else {
                        o.push_str(&format!("recommended: {}\n", row.file_type.name()));
                    }
                }
            }
            (Some(_), None) => o.push_str("recommended: none of the levels meets the bound\n"),
            (None, _) => {}
        }
        o.push_str(&format!("total {:.1} s\n", r.seconds));
        o
    }
}
