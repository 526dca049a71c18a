//! Batched evaluation of one token chunk, layer by layer, in memory O(n·d).
//!
//! The whole chunk goes through layer 0, then layer 1, ... (rather than token by token), so
//! each weight matrix is streamed once per token tile and only one layer's K/V exist at a time.
//! Live buffers: the residual stream and the queries (n × n_embd f32 each), one layer's K and V
//! (n × n_embd_kv each, F16 or F32), and per-tile temporaries; attention is computed block by
//! block with an online softmax and never forms the n × n score matrix.
//!
//! Numerics follow llama.cpp's CPU graph for `LLM_ARCH_LLAMA` where it matters for agreement:
//! RMSNorm sums squares in f64 and scales in f32 before the gain (ggml_rms_norm then ggml_mul);
//! RoPE angles come from the same running f32 product `θ·base^(-2/n_rot)` as ggml's rope cache,
//! and each rotation fuses one product as GCC's FMA contraction of ggml's `rotate_pairs` does;
//! with an F16 KV cache, K and V are rounded to f16 and everything else stays f32, as in ggml's
//! tiled flash-attention kernel (`ggml_compute_forward_flash_attn_ext_tiled`, which
//! llama-perplexity uses on x86 for batches of at least `GGML_FA_TILE_Q` queries).
use super::kernels::ActCache;
use super::weights::{DequantizedTensors, Weights};
use super::{LlamaConfig, ModelError};
use half::f16;
use longquant_formats::gguf::GgufFile;
use longquant_quants::simd::kernels;
use rayon::prelude::*;

use super::kv_cache::FaKv;
pub use super::kv_cache::KvType;

/// A matrix-product input observer (see [`Model::eval_observed`]).
type Observer<'o> = &'o mut dyn FnMut(&str, &[f32]);

/// Options for [`Model::eval`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalOptions {
    /// K cache type (llama.cpp's `--cache-type-k`).
    pub cache_type_k: KvType,
    /// V cache type (llama.cpp's `--cache-type-v`).
    pub cache_type_v: KvType,
}

impl EvalOptions {
    /// The same type for K and V.
    pub fn with_cache_type(t: KvType) -> Self {
        Self {
            cache_type_k: t,
            cache_type_v: t,
        }
    }
}

/// Tokens per tile for the projections and the FFN (bounds the FFN temporaries to
/// `TOKEN_TILE × n_ff` while keeping each weight block reused across many tokens).
const TOKEN_TILE: usize = 512;
/// Positions per output-head tile (bounds the logits buffer to `LOGIT_TILE × n_vocab`).
const LOGIT_TILE: usize = 32;
/// Query rows per attention task (batch evaluation).
const BQ: usize = 32;
/// Keys per attention block: the unit of the K/V layout and of the online softmax.
const BK: usize = 64;
/// Keys per attention super-block (a multiple of [`BK`]): the unit of work of
/// `attend_superblock`. Every query's softmax is ONE running state over all its key blocks in
/// order, as in ggml's tiled flash attention (`ggml_compute_forward_flash_attn_ext_tiled`);
/// merging per-super-block partial states instead rounds differently beyond 512 keys.
const SB: usize = 8 * BK;
/// Below this many queries, attention gives each task one query head (all queries) instead of
/// a block of queries (all heads).
const SPLIT_BELOW: usize = 64;
/// Below this many query·key·dim products, decoding attention stays on the calling thread.
const PAR_MIN_ATTN: usize = 1 << 19;
/// Below this many elements, elementwise work stays on the calling thread: a rayon dispatch
/// costs more than the work (decoding runs a few hundred such ops per token).
const PAR_MIN: usize = 1 << 15;

/// A Llama model ready to run: hyperparameters plus weights borrowed from the GGUF map.
#[derive(Debug)]
pub struct Model<'a> {
    /// Hyperparameters.
    pub config: LlamaConfig,
    /// Tensors.
    pub weights: Weights<'a>,
}

/// K or V values in the cache type.
#[derive(Debug)]
enum KvData {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// A borrowed K or V block in the cache type.
#[derive(Clone, Copy)]
enum KvSlice<'b> {
    F16(&'b [f16]),
    F32(&'b [f32]),
}

/// K and V of one layer for every position evaluated so far, laid out for attention: per
/// block of [`BK`] positions and per KV head, K transposed (`[dim][key]`, so one query's scores
/// against a block are BK-wide vector FMAs) and V row-major (`[key][dim]`, so the weighted sum
/// is head-width vector FMAs per key). Blocks are zero-padded to BK positions.
#[derive(Debug)]
struct LayerKv {
    k: KvData,
    v: KvData,
    /// Set for every other cache type pair: llama.cpp's one-chunk flash-attention path.
    fa: Option<FaKv>,
    len: usize,
    n_head_kv: usize,
    head_dim: usize,
}

impl LayerKv {
    /// A cache of K type `tk` and V type `tv`. Same-type F16 and F32 pairs keep the blocked
    /// layout of the tiled kernel; any other pair takes llama.cpp's one-chunk flash-attention
    /// path ([`FaKv`]), which needs `head_dim % 32 == 0` for the quantized types (checked by
    /// [`Model::check_cache_types`]).
    fn new(tk: KvType, tv: KvType, n_head_kv: usize, head_dim: usize) -> Self {
        let fa = match (tk, tv) {
            (KvType::F16, KvType::F16) | (KvType::F32, KvType::F32) => None,
            _ => Some(FaKv::new(tk, tv, n_head_kv, head_dim)),
        };
        let data = || match tk {
            KvType::F16 if fa.is_none() => KvData::F16(Vec::new()),
            _ => KvData::F32(Vec::new()),
        };
        Self {
            k: data(),
            v: data(),
            fa,
            len: 0,
            n_head_kv,
            head_dim,
        }
    }

    fn clear(&mut self) {
        if let Some(fa) = self.fa.as_mut() {
            fa.clear();
        }
        for b in [&mut self.k, &mut self.v] {
            match b {
                KvData::F16(b) => b.clear(),
                KvData::F32(b) => b.clear(),
            }
        }
        self.len = 0;
    }

    /// Elements of one (block, KV head) piece of K or V.
    fn block_len(&self) -> usize {
        self.head_dim * BK
    }

    /// Appends the rows of `k` and `v` (`n_embd_kv` values per position), rounded to f16 for
    /// an F16 cache as ggml's `set_rows` into its cache does.
    fn push(&mut self, k: &[f32], v: &[f32]) {
        let (nkv, hd) = (self.n_head_kv, self.head_dim);
        let dkv = nkv * hd;
        let n = k.len() / dkv;
        if let Some(fa) = self.fa.as_mut() {
            fa.push(k, v);
            self.len += n;
            return;
        }
        let total = (self.len + n).div_ceil(BK) * nkv * self.block_len();
        let len = self.len;
        match (&mut self.k, &mut self.v) {
            (KvData::F16(kb), KvData::F16(vb)) => {
                kb.resize(total, f16::ZERO);
                vb.resize(total, f16::ZERO);
                let conv = kernels().f32_to_f16_row;
                let (mut kh, mut vh) = (vec![f16::ZERO; dkv], vec![f16::ZERO; dkv]);
                for (r, (kr, vr)) in k.chunks_exact(dkv).zip(v.chunks_exact(dkv)).enumerate() {
                    conv(kr, &mut kh);
                    conv(vr, &mut vh);
                    scatter_kv(kb, vb, &kh, &vh, len + r, nkv, hd);
                }
            }
            (KvData::F32(kb), KvData::F32(vb)) => {
                kb.resize(total, 0.0);
                vb.resize(total, 0.0);
                for (r, (kr, vr)) in k.chunks_exact(dkv).zip(v.chunks_exact(dkv)).enumerate() {
                    scatter_kv(kb, vb, kr, vr, len + r, nkv, hd);
                }
            }
            // Both halves are made by the same constructor.
            _ => unreachable!("K and V of one layer share the cache type"),
        }
        self.len += n;
    }

    /// K (transposed) and V of KV head `g` in key block `b`.
    fn block(&self, b: usize, g: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        let bl = self.block_len();
        let at = (b * self.n_head_kv + g) * bl;
        fn pick(d: &KvData, at: usize, bl: usize) -> KvSlice<'_> {
            match d {
                KvData::F16(x) => KvSlice::F16(&x[at..at + bl]),
                KvData::F32(x) => KvSlice::F32(&x[at..at + bl]),
            }
        }
        (pick(&self.k, at, bl), pick(&self.v, at, bl))
    }
}

/// Writes position `p`'s K and V rows into the blocked layout of [`LayerKv`].
fn scatter_kv<T: Copy>(
    kb: &mut [T],
    vb: &mut [T],
    krow: &[T],
    vrow: &[T],
    p: usize,
    nkv: usize,
    hd: usize,
) {
    let (b, j) = (p / BK, p % BK);
    for g in 0..nkv {
        let base = (b * nkv + g) * hd * BK;
        let ks = &krow[g * hd..(g + 1) * hd];
        for (c, &x) in ks.iter().enumerate() {
            kb[base + c * BK + j] = x;
        }
        vb[base + j * hd..base + (j + 1) * hd].copy_from_slice(&vrow[g * hd..(g + 1) * hd]);
    }
}

/// Applies `f` to matching `chunk`-sized pieces of `a` and `b`, on the rayon pool only when
/// there is enough work to pay for the dispatch.
fn zip_chunks<A: Send, B: Sync>(
    a: &mut [A],
    b: &[B],
    chunk: usize,
    f: impl Fn(&mut [A], &[B]) + Sync + Send,
) {
    if a.len() >= PAR_MIN {
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk))
            .for_each(|(x, y)| f(x, y));
    } else {
        a.chunks_mut(chunk)
            .zip(b.chunks(chunk))
            .for_each(|(x, y)| f(x, y));
    }
}

/// Applies `f(index, piece)` to every `chunk`-sized piece of `a`, in parallel only when large.
fn for_chunks<A: Send>(a: &mut [A], chunk: usize, f: impl Fn(usize, &mut [A]) + Sync + Send) {
    if a.len() >= PAR_MIN {
        a.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, x)| f(i, x));
    } else {
        a.chunks_mut(chunk).enumerate().for_each(|(i, x)| f(i, x));
    }
}

/// A tracer: called with a tensor's name and values.
#[cfg(feature = "trace")]
pub type Tracer = Box<dyn FnMut(&str, &[f32])>;

#[cfg(feature = "trace")]
thread_local! {
    static TRACE: std::cell::RefCell<Option<Tracer>> = const { std::cell::RefCell::new(None) };
}

/// Installs (or with `None` removes) this thread's tracer: with the `trace` feature, the forward
/// pass run from this thread calls it with every intermediate tensor, named as llama.cpp's graph
/// names it (`Qcur-0`/`Kcur-0` after RoPE, `Vcur-0`, `attn_out-0`, `ffn_inp-0`, `ffn_out-0`,
/// `l_out-0`, ...; `Qcur_mm-0`/`Kcur_mm-0` before RoPE), one token tile of
/// rows at a time. A debugging aid for comparing with llama.cpp's `cb_eval` dumps.
#[cfg(feature = "trace")]
pub fn set_trace(f: Option<Tracer>) {
    TRACE.with(|t| *t.borrow_mut() = f);
}

/// Shows `v` to the tracer as `name`-`il` (nothing without the `trace` feature).
#[inline(always)]
fn trace(_name: &str, _il: usize, _v: &[f32]) {
    #[cfg(feature = "trace")]
    TRACE.with(|t| {
        if let Some(f) = t.borrow_mut().as_mut() {
            f(&format!("{_name}-{_il}"), _v);
        }
    });
}

/// `x += o`, elementwise.
fn add_in_place(x: &mut [f32], o: &[f32]) {
    zip_chunks(x, o, 4096, |x, o| {
        for (x, &o) in x.iter_mut().zip(o) {
            *x += o;
        }
    });
}

/// RMSNorm of each `d`-wide row of `x` into `y`, times `gain`.
fn rms_norm(x: &[f32], gain: &[f32], eps: f32, y: &mut [f32]) {
    let d = gain.len();
    zip_chunks(y, x, d, |y, x| {
        let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / d as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(gain) {
            *y = (x * scale) * g;
        }
    });
}

/// Options for [`Model::session`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionOptions {
    /// K cache type.
    pub cache_type_k: KvType,
    /// V cache type.
    pub cache_type_v: KvType,
}

/// Incremental decoding state: a K/V cache for every layer of every position fed so far.
///
/// [`Session::feed`] appends tokens (a whole prompt at once, then one token at a time, or any
/// mix) and runs exactly the kernels [`Model::eval`] runs, so feeding a sequence in pieces
/// gives bit for bit the logits of evaluating it whole (attention visits every query's keys in
/// the same blocks and super-blocks whatever the batch).
#[derive(Debug)]
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    opts: SessionOptions,
    kv: Vec<LayerKv>,
    len: usize,
}

impl Session<'_, '_> {
    /// Positions in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `tokens` at positions `len()..len() + tokens.len()` and calls
    /// `on_logits(pos, logits)` once, for the last of them (the distribution of the next token).
    /// On error the session is unchanged.
    pub fn feed(
        &mut self,
        tokens: &[u32],
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        let last = (self.len + tokens.len()).saturating_sub(1);
        self.feed_logits_from(tokens, last, on_logits)
    }

    /// Like [`Session::feed`], with logits for every new position `pos >= logits_from`
    /// (absolute positions).
    pub fn feed_logits_from(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        self.model.check_tokens(tokens, self.len)?;
        self.model
            .check_cache_types(self.opts.cache_type_k, self.opts.cache_type_v)?;
        self.model.run(
            tokens,
            self.len,
            &mut self.kv,
            false,
            logits_from,
            on_logits,
            None,
        );
        self.len += tokens.len();
        Ok(())
    }
}

impl<'a> Model<'a> {
    /// Reads the hyperparameters and borrows the tensors of an open GGUF file.
    pub fn load(file: &'a GgufFile) -> Result<Self, ModelError> {
        Self::load_with(file, None)
    }

    /// Like [`Model::load`], with the matrices taken from a dequantized copy of the file.
    pub fn load_dequantized(
        file: &'a GgufFile,
        f32s: &'a DequantizedTensors,
    ) -> Result<Self, ModelError> {
        Self::load_with(file, Some(f32s))
    }

    fn load_with(
        file: &'a GgufFile,
        f32s: Option<&'a DequantizedTensors>,
    ) -> Result<Self, ModelError> {
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = match embd.dims.as_slice() {
            [_, v] => usize::try_from(*v)
                .map_err(|_| ModelError::InvalidConfig("vocabulary too large".into()))?,
            _ => {
                return Err(ModelError::ShapeMismatch {
                    tensor: embd.name.clone(),
                    expected: vec![0, 0],
                    got: embd.dims.clone(),
                })
            }
        };
        let config = LlamaConfig::from_metadata(file.metadata(), n_vocab)?;
        if let Some(v) = file
            .metadata()
            .get("llama.vocab_size")
            .and_then(|v| v.as_u64())
        {
            if v as usize != n_vocab {
                return Err(ModelError::ShapeMismatch {
                    tensor: embd.name.clone(),
                    expected: vec![config.n_embd as u64, v],
                    got: embd.dims.clone(),
                });
            }
        }
        let weights = Weights::load(file, &config, f32s)?;
        Ok(Self { config, weights })
    }

    /// A new, empty incremental-decoding session over this model.
    pub fn session(&self, opts: SessionOptions) -> Session<'_, 'a> {
        Session {
            model: self,
            opts,
            kv: (0..self.config.n_layer)
                .map(|_| {
                    LayerKv::new(
                        opts.cache_type_k,
                        opts.cache_type_v,
                        self.config.n_head_kv,
                        self.config.head_dim,
                    )
                })
                .collect(),
            len: 0,
        }
    }

    /// Checks that the head size suits the cache types (the quantized types store 32-value
    /// blocks, as llama.cpp requires).
    pub(crate) fn check_cache_types(&self, k: KvType, v: KvType) -> Result<(), ModelError> {
        for t in [k, v] {
            if !self.config.head_dim.is_multiple_of(t.block_size()) {
                return Err(ModelError::InvalidConfig(format!(
                    "cache type {t} needs a head size that is a multiple of {}, this model's is {}",
                    t.block_size(),
                    self.config.head_dim
                )));
            }
        }
        Ok(())
    }

    /// Checks that `tokens` can be appended at position `p0`.
    pub(crate) fn check_tokens(&self, tokens: &[u32], p0: usize) -> Result<(), ModelError> {
        let cfg = &self.config;
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let end = p0.saturating_add(tokens.len());
        if end > cfg.context_length {
            return Err(ModelError::ContextTooLong {
                requested: end,
                max: cfg.context_length,
            });
        }
        for (i, &id) in tokens.iter().enumerate() {
            if id as usize >= cfg.n_vocab {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    pos: p0 + i,
                    n_vocab: cfg.n_vocab,
                });
            }
        }
        Ok(())
    }

    /// Evaluates `tokens` as one sequence at positions `0..n` from an empty state, then calls
    /// `on_logits(pos, logits)` in order for every position `pos >= logits_from` with that
    /// position's `n_vocab` logits (predicting token `pos + 1`). Logits are produced a few
    /// positions at a time and not kept; only one layer's K/V exist at a time.
    pub fn eval(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        self.check_tokens(tokens, 0)?;
        self.check_cache_types(opts.cache_type_k, opts.cache_type_v)?;
        let mut kv = [LayerKv::new(
            opts.cache_type_k,
            opts.cache_type_v,
            self.config.n_head_kv,
            self.config.head_dim,
        )];
        self.run(tokens, 0, &mut kv, true, logits_from, on_logits, None);
        Ok(())
    }

    /// Like [`Model::eval`], and also shows every matrix product's input to `observe(tensor,
    /// acts)`: `tensor` is the weight's GGUF name (`blk.N.attn_q.weight`, ..., `output.weight`)
    /// and `acts` holds whole f32 input rows of that weight's width (a tile of tokens; Q, K and
    /// V, and gate and up, see the same rows). Calls come in evaluation order from this thread.
    /// The output head is shown only the positions `>= logits_from`. This is the hook an
    /// importance matrix is collected through (llama.cpp's imatrix callback sees the same
    /// `src1` of every `mul_mat`).
    pub fn eval_observed(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), ModelError> {
        self.check_tokens(tokens, 0)?;
        self.check_cache_types(opts.cache_type_k, opts.cache_type_v)?;
        let mut kv = [LayerKv::new(
            opts.cache_type_k,
            opts.cache_type_v,
            self.config.n_head_kv,
            self.config.head_dim,
        )];
        self.run(
            tokens,
            0,
            &mut kv,
            true,
            logits_from,
            on_logits,
            Some(observe),
        );
        Ok(())
    }

    /// The forward pass of `tokens` at positions `p0..p0 + n` (already checked). `kv` holds
    /// one cache per layer with `p0` positions each, extended here; with `scratch`, `kv` is a
    /// single buffer reused (cleared) by every layer and `p0` must be 0. `observe` sees every
    /// matrix product's input (see [`Model::eval_observed`]).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        tokens: &[u32],
        p0: usize,
        kv: &mut [LayerKv],
        scratch: bool,
        logits_from: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        mut observe: Option<Observer<'_>>,
    ) {
        // Shows `acts` to the observer as the input of layer `il`'s tensor `names` (or of a
        // top-level tensor when `il` is None).
        let mut show = |il: Option<usize>, names: &[&str], acts: &[f32]| {
            if let Some(f) = observe.as_deref_mut() {
                for name in names {
                    match il {
                        Some(il) => f(&format!("blk.{il}.{name}.weight"), acts),
                        None => f(&format!("{name}.weight"), acts),
                    }
                }
            }
        };
        let cfg = &self.config;
        let n = tokens.len();
        let d = cfg.n_embd;
        let dkv = cfg.n_embd_kv();
        let w = &self.weights;

        // Embedding lookup.
        let mut x = vec![0.0f32; n * d];
        for_chunks(&mut x, d, |i, row| {
            w.token_embd.dequantize_row(tokens[i] as usize, row);
        });

        let rope = RopeTable::new(cfg, w.rope_freqs.as_deref(), p0, n);
        let mut q = vec![0.0f32; n * d];
        let tile = TOKEN_TILE.min(n);
        let mut xn = vec![0.0f32; tile * d];
        let mut kt = vec![0.0f32; tile * dkv];
        let mut vt = vec![0.0f32; tile * dkv];
        let mut o = vec![0.0f32; tile * d];
        let mut g = vec![0.0f32; tile * cfg.n_ff];
        let mut u = vec![0.0f32; tile * cfg.n_ff];

        for (il, lw) in w.layers.iter().enumerate() {
            let cache = if scratch {
                let c = &mut kv[0];
                c.clear();
                c
            } else {
                &mut kv[il]
            };
            // Q, K, V for every token, tile by tile.
            for t0 in (0..n).step_by(tile) {
                let nt = tile.min(n - t0);
                let xs = &x[t0 * d..(t0 + nt) * d];
                let xn = &mut xn[..nt * d];
                rms_norm(xs, &lw.attn_norm, cfg.rms_eps, xn);
                show(Some(il), &["attn_q", "attn_k", "attn_v"], xn);
                let mut acts = ActCache::new(xn, d);
                let qs = &mut q[t0 * d..(t0 + nt) * d];
                acts.matmul(&lw.wq, qs);
                acts.matmul(&lw.wk, &mut kt[..nt * dkv]);
                acts.matmul(&lw.wv, &mut vt[..nt * dkv]);
                trace("Qcur_mm", il, qs);
                trace("Kcur_mm", il, &kt[..nt * dkv]);
                trace("Vcur", il, &vt[..nt * dkv]);
                rope.apply(qs, t0, cfg.n_head, cfg.head_dim);
                rope.apply(&mut kt[..nt * dkv], t0, cfg.n_head_kv, cfg.head_dim);
                trace("Qcur", il, qs);
                trace("Kcur", il, &kt[..nt * dkv]);
                cache.push(&kt[..nt * dkv], &vt[..nt * dkv]);
            }
            // Attention output overwrites the queries.
            attention(&mut q, p0, cache, cfg);
            // Output projection, residual, FFN, residual — tile by tile.
            for t0 in (0..n).step_by(tile) {
                let nt = tile.min(n - t0);
                let os = &mut o[..nt * d];
                show(Some(il), &["attn_output"], &q[t0 * d..(t0 + nt) * d]);
                ActCache::new(&q[t0 * d..(t0 + nt) * d], d).matmul(&lw.wo, os);
                trace("attn_out", il, os);
                let xs = &mut x[t0 * d..(t0 + nt) * d];
                add_in_place(xs, os);
                trace("ffn_inp", il, xs);
                let xn = &mut xn[..nt * d];
                rms_norm(xs, &lw.ffn_norm, cfg.rms_eps, xn);
                show(Some(il), &["ffn_gate", "ffn_up"], xn);
                let (gs, us) = (&mut g[..nt * cfg.n_ff], &mut u[..nt * cfg.n_ff]);
                let mut acts = ActCache::new(xn, d);
                acts.matmul(&lw.gate, gs);
                acts.matmul(&lw.up, us);
                trace("ffn_gate", il, gs);
                trace("ffn_up", il, us);
                zip_chunks(gs, us, 4096, swiglu);
                show(Some(il), &["ffn_down"], gs);
                ActCache::new(gs, cfg.n_ff).matmul(&lw.down, os);
                trace("ffn_out", il, os);
                add_in_place(xs, os);
                trace("l_out", il, xs);
            }
        }

        // Final norm and output head, a few positions at a time.
        let from = logits_from.max(p0).min(p0 + n) - p0;
        let lt = LOGIT_TILE.min(n - from).max(1);
        let mut logits = vec![0.0f32; lt * cfg.n_vocab];
        let mut xn = vec![0.0f32; lt * d];
        for r0 in (from..n).step_by(lt) {
            let np = lt.min(n - r0);
            let xn = &mut xn[..np * d];
            rms_norm(&x[r0 * d..(r0 + np) * d], &w.output_norm, cfg.rms_eps, xn);
            show(None, &["output"], xn);
            let lg = &mut logits[..np * cfg.n_vocab];
            ActCache::new(xn, d).matmul(&w.output, lg);
            for (i, row) in lg.chunks(cfg.n_vocab).enumerate() {
                on_logits(p0 + r0 + i, row);
            }
        }
    }
}

/// cos/sin of every rotated pair at every position, computed as ggml's `ggml_rope_cache_init`
/// does for mode 0: θ starts at the position and is multiplied by `base^(-2/n_rot)` per pair;
/// `rope_freqs` factors divide θ. Row `r` of the table is position `p0 + r`.
pub(crate) struct RopeTable {
    half: usize,
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    /// The table for positions `p0..p0 + n`.
    pub(crate) fn new(cfg: &LlamaConfig, freqs: Option<&[f32]>, p0: usize, n: usize) -> Self {
        let half = cfg.n_rot / 2;
        let theta_scale = cfg.rope_freq_base.powf(-2.0 / cfg.n_rot as f32);
        let mut cs = vec![(0.0f32, 0.0f32); n * half];
        for_chunks(&mut cs, half.max(1), |r, row| {
            let mut theta = (p0 + r) as f32;
            for (i, c) in row.iter_mut().enumerate() {
                let ff = freqs.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
                let t = theta / ff;
                *c = (t.cos(), t.sin());
                theta *= theta_scale;
            }
        });
        Self { half, cs }
    }

    /// The table as `[position][pair][cos, sin]` f32 values (for a device backend).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn flat(&self) -> Vec<f32> {
        self.cs.iter().flat_map(|&(c, s)| [c, s]).collect()
    }

    /// Rotates adjacent pairs (2i, 2i+1) of the first `n_rot` dims of every head of every row;
    /// row `r` of `x` is table row `r0 + r`.
    fn apply(&self, x: &mut [f32], r0: usize, n_heads: usize, head_dim: usize) {
        let half = self.half;
        if half == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        let fma = longquant_quants::simd::cpu::features().fma;
        for_chunks(x, n_heads * head_dim, |r, row| {
            let cs = &self.cs[(r0 + r) * half..(r0 + r + 1) * half];
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU supports FMA (checked above).
                unsafe { rotate_fma(row, cs, head_dim) };
                return;
            }
            rotate(row, cs, head_dim);
        });
    }
}

/// Rotates the pairs of every `head_dim`-wide head of `row` by `cs`. The arithmetic is ggml's
/// `rotate_pairs` as GCC compiles it with FMA contraction (llama.cpp's CPU backend is built with
/// `-march=native`): the first product of each output is fused with the other, already rounded,
/// product: `x0' = fma(x0, cos, -(x1·sin))`, `x1' = fma(x0, sin, x1·cos)`. Checked bit for bit
/// against llama.cpp's `Qcur`/`Kcur` after RoPE (scripts/llamacpp/dump_tensors.py); the unfused
/// form differs in about a fifth of the values by an ulp, which then flips Q8_0 activation
/// roundings downstream.
#[inline(always)]
fn rotate(row: &mut [f32], cs: &[(f32, f32)], head_dim: usize) {
    for head in row.chunks_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0.mul_add(c, -(x1 * s));
            pair[1] = x0.mul_add(s, x1 * c);
        }
    }
}

/// [`rotate`] compiled with FMA, so `mul_add` is one instruction instead of a libm call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rotate_fma(row: &mut [f32], cs: &[(f32, f32)], head_dim: usize) {
    rotate(row, cs, head_dim)
}

/// Head geometry shared by the attention kernels.
#[derive(Clone, Copy)]
struct Heads {
    hd: usize,
    nh: usize,
    nkv: usize,
    group: usize,
    scale: f32,
}

impl Heads {
    fn new(nh: usize, nkv: usize, hd: usize) -> Self {
        Self {
            hd,
            nh,
            nkv,
            group: nh / nkv,
            scale: 1.0f32 / (hd as f32).sqrt(),
        }
    }
}

/// Online-softmax state of a set of query rows: running max `m`, running sum `l` and the
/// unnormalized output `acc` (`hd` values per row).
struct RowState {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl RowState {
    fn new(rows: usize, hd: usize) -> Self {
        Self {
            m: vec![f32::NEG_INFINITY; rows],
            l: vec![0.0; rows],
            acc: vec![0.0; rows * hd],
        }
    }
}

/// The query rows of one task for one KV head: row `r` is query head `gk·group + r % group`
/// of the query at position `pos[r]`.
struct Rows {
    q: Vec<f32>,
    pos: Vec<usize>,
}

impl Rows {
    /// Gathers KV head `g`'s query heads from `nq` rows of `q` (positions `i0..`).
    fn gather(q: &[f32], i0: usize, g: usize, h: &Heads) -> Self {
        let d = h.nh * h.hd;
        let nq = q.len() / d;
        let mut rows = Rows {
            q: Vec::with_capacity(nq * h.group * h.hd),
            pos: Vec::with_capacity(nq * h.group),
        };
        for qi in 0..nq {
            for hh in 0..h.group {
                let head = g * h.group + hh;
                rows.q
                    .extend_from_slice(&q[qi * d + head * h.hd..qi * d + (head + 1) * h.hd]);
                rows.pos.push(i0 + qi);
            }
        }
        rows
    }

    /// Gathers query head `g·group + hh` of every row of `q` (positions `i0..`).
    fn gather_head(q: &[f32], i0: usize, g: usize, hh: usize, h: &Heads) -> Self {
        let d = h.nh * h.hd;
        let head = g * h.group + hh;
        let nq = q.len() / d;
        Rows {
            q: (0..nq)
                .flat_map(|qi| &q[qi * d + head * h.hd..qi * d + (head + 1) * h.hd])
                .copied()
                .collect(),
            pos: (0..nq).map(|qi| i0 + qi).collect(),
        }
    }

    /// Writes the normalized outputs of `st` back into the rows of `q` they came from.
    fn scatter(&self, st: &RowState, q: &mut [f32], g: usize, h: &Heads) {
        let d = h.nh * h.hd;
        for r in 0..self.pos.len() {
            let (qi, head) = (r / h.group, g * h.group + r % h.group);
            let inv = 1.0 / st.l[r];
            let dst = &mut q[qi * d + head * h.hd..qi * d + (head + 1) * h.hd];
            for (o, &a) in dst.iter_mut().zip(&st.acc[r * h.hd..(r + 1) * h.hd]) {
                *o = a * inv;
            }
        }
    }
}

/// Which attention block kernel this CPU runs (the same for every call of a process, so batch
/// evaluation and decoding agree bit for bit).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttnKernel {
    /// Register-tiled AVX-512 kernel (needs `head_dim % 16 == 0`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// The portable kernel compiled for AVX2+FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The portable kernel.
    Portable,
}

impl AttnKernel {
    fn detect(hd: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let f = longquant_quants::simd::cpu::features();
            if hd.is_multiple_of(16) && f.avx512f && f.avx2_fma_f16c() {
                return AttnKernel::Avx512;
            }
            if f.avx2 && f.fma {
                return AttnKernel::Avx2;
            }
        }
        let _ = hd;
        AttnKernel::Portable
    }
}

/// Per-task scratch: probabilities of one key block for every row, and K/V blocks widened to f32.
struct Scratch {
    p: Vec<f32>,
    kf: Vec<f32>,
    vf: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize, hd: usize) -> Self {
        Self {
            p: vec![0.0; rows * BK],
            kf: vec![0.0; hd * BK],
            vf: vec![0.0; hd * BK],
        }
    }
}

/// Widens a cache block to f32 into `buf` (or borrows it when it already is f32).
fn widen<'b>(s: KvSlice<'b>, buf: &'b mut [f32]) -> &'b [f32] {
    match s {
        KvSlice::F32(x) => x,
        KvSlice::F16(x) => {
            (kernels().f16_to_f32_row)(x, buf);
            buf
        }
    }
}

/// Accumulates into `st` the attention of `rows` over KV head `g`'s keys in super-block `sb`
/// (causal: row `r` sees keys `..= pos[r]`), key block by key block. A row's result depends only
/// on its own query, its position and the cache, never on the other rows.
#[allow(clippy::too_many_arguments)]
fn attend_superblock(
    kern: AttnKernel,
    rows: &Rows,
    kv: &LayerKv,
    g: usize,
    sb: usize,
    st: &mut RowState,
    sc: &mut Scratch,
    h: &Heads,
) {
    let kend = rows
        .pos
        .iter()
        .copied()
        .max()
        .map_or(0, |p| p + 1)
        .min(kv.len);
    let nr = rows.pos.len();
    let p = &mut sc.p[..nr * BK];
    for j0 in (sb * SB..((sb + 1) * SB).min(kend)).step_by(BK) {
        // Keys that exist and are visible to some row.
        let jn = BK.min(kend - j0);
        let (kb, vb) = kv.block(j0 / BK, g);
        match kern {
            #[cfg(target_arch = "x86_64")]
            AttnKernel::Avx512 => match (kb, vb) {
                // Few rows (decoding): read the f16 cache directly, converting on load.
                (KvSlice::F16(k), KvSlice::F16(v)) if nr < 12 => {
                    // SAFETY: AttnKernel::Avx512 is chosen only when AVX-512F, FMA, F16C and
                    // AVX2 were detected at run time and head_dim is a multiple of 16.
                    unsafe { avx512::block(&rows.q, &rows.pos, j0, jn, k, v, h, st, p) }
                }
                _ => {
                    let k = widen(kb, &mut sc.kf);
                    let v = widen(vb, &mut sc.vf);
                    // SAFETY: as above.
                    unsafe { avx512::block(&rows.q, &rows.pos, j0, jn, k, v, h, st, p) }
                }
            },
            #[cfg(target_arch = "x86_64")]
            AttnKernel::Avx2 => {
                let k = widen(kb, &mut sc.kf);
                let v = widen(vb, &mut sc.vf);
                // SAFETY: AttnKernel::Avx2 is chosen only when AVX2 and FMA were detected.
                unsafe { block_portable_avx2(&rows.q, &rows.pos, j0, jn, k, v, h, st, p) }
            }
            AttnKernel::Portable => {
                let k = widen(kb, &mut sc.kf);
                let v = widen(vb, &mut sc.vf);
                block_portable(&rows.q, &rows.pos, j0, jn, k, v, h, st, p)
            }
        }
    }
}

/// Causal grouped-query attention, in place: row `i` of `q` (n × n_head·head_dim, position
/// `p0 + i`) is replaced by its attention output over keys `0..=p0 + i` of `kv`.
///
/// Every query's softmax runs over fixed key blocks of [`BK`] (absolute positions) in one
/// running state, in key order, so its result does not depend on which other queries are
/// evaluated with it. Many queries: tasks own [`BQ`] of them and walk all their keys. Few
/// queries (decoding): one task per query head.
fn attention(q: &mut [f32], p0: usize, kv: &LayerKv, cfg: &LlamaConfig) {
    let h = Heads::new(cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    attention_with(AttnKernel::detect(h.hd), q, p0, kv, &h);
}

/// [`attention`] with a chosen kernel.
fn attention_with(kern: AttnKernel, q: &mut [f32], p0: usize, kv: &LayerKv, h: &Heads) {
    if let Some(fa) = kv.fa.as_ref() {
        fa.attention(q, p0, h.nh, h.scale);
        return;
    }
    let h = *h;
    let d = h.nh * h.hd;
    let n = q.len() / d;
    if n == 0 {
        return;
    }
    if n >= SPLIT_BELOW {
        // One task per query block × KV head (causal blocks differ in cost, so the small
        // tasks let rayon balance them); a block's heads are written back once all are done.
        q.par_chunks_mut(BQ * d).enumerate().for_each(|(bi, qblk)| {
            let i0 = p0 + bi * BQ;
            let nr = (qblk.len() / d) * h.group;
            let last_sb = (i0 + qblk.len() / d - 1) / SB;
            let qb: &[f32] = qblk;
            let done: Vec<(Rows, RowState)> = (0..h.nkv)
                .into_par_iter()
                .map(|g| {
                    let mut sc = Scratch::new(nr, h.hd);
                    let mut st = RowState::new(nr, h.hd);
                    let rows = Rows::gather(qb, i0, g, &h);
                    for sb in 0..=last_sb {
                        attend_superblock(kern, &rows, kv, g, sb, &mut st, &mut sc, &h);
                    }
                    (rows, st)
                })
                .collect();
            for (g, (rows, st)) in done.iter().enumerate() {
                rows.scatter(st, qblk, g, &h);
            }
        });
    } else {
        // One task per query head, each walking all its keys in order, so every row sees the
        // same single running softmax as in batch evaluation.
        let n_sb = (p0 + n - 1) / SB + 1;
        let task = |t: usize| {
            let (g, hh) = (t / h.group, t % h.group);
            let rows = Rows::gather_head(q, p0, g, hh, &h);
            let mut st = RowState::new(n, h.hd);
            let mut sc = Scratch::new(n, h.hd);
            for sb in 0..n_sb {
                attend_superblock(kern, &rows, kv, g, sb, &mut st, &mut sc, &h);
            }
            st
        };
        // Short contexts: less work than a rayon dispatch is worth.
        let parts: Vec<RowState> = if n * h.nh * (p0 + n) * h.hd >= PAR_MIN_ATTN {
            (0..h.nh).into_par_iter().map(task).collect()
        } else {
            (0..h.nh).map(task).collect()
        };
        for (t, st) in parts.iter().enumerate() {
            let head = t; // task t is query head t (g·group + hh)
            for qi in 0..n {
                let inv = 1.0 / st.l[qi];
                let dst = &mut q[qi * d + head * h.hd..qi * d + (head + 1) * h.hd];
                for (o, &a) in dst.iter_mut().zip(&st.acc[qi * h.hd..(qi + 1) * h.hd]) {
                    *o = a * inv;
                }
            }
        }
    }
}

/// `e^x` for `x ≤ 0` (softmax arguments after subtracting the max), in plain f32 arithmetic
/// that vectorizes: `x = n·ln2 + r` with |r| ≤ ln2/2, a degree-6 polynomial for `e^r` (Cephes
/// `expf` coefficients, relative error ~2e-7, like ggml's SIMD `ggml_v_expf`), and `2^n` put
/// into the exponent bits. Arguments below -87 (and -inf) give 0 (e^-87 ≈ 1.6e-38).
#[inline(always)]
fn exp_neg(x_in: f32) -> f32 {
    let x = x_in.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // Two-step ln2 for an exact reduction (Cody–Waite).
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // n ∈ [-126, 0] here, so the biased exponent stays normal.
    let v = er * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x_in < -87.0 {
        0.0
    } else {
        v
    }
}

/// [`block_portable`] compiled for AVX2+FMA (its loops vectorize to 8 lanes; Rust never fuses
/// or reorders the f32 operations, so the results equal the portable build's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_portable_avx2(
    q: &[f32],
    pos: &[usize],
    j0: usize,
    jn: usize,
    kt: &[f32],
    vb: &[f32],
    h: &Heads,
    st: &mut RowState,
    p: &mut [f32],
) {
    block_portable(q, pos, j0, jn, kt, vb, h, st, p)
}

/// One key block (keys `j0..j0 + jn`, K transposed `[dim][BK]`, V `[BK][dim]`, both f32) for
/// every row, one row at a time: scores, online-softmax update, weighted sum of V.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_portable(
    q: &[f32],
    pos: &[usize],
    j0: usize,
    jn: usize,
    kt: &[f32],
    vb: &[f32],
    h: &Heads,
    st: &mut RowState,
    p: &mut [f32],
) {
    let hd = h.hd;
    let s = &mut p[..BK];
    for (r, &i) in pos.iter().enumerate() {
        if i < j0 {
            continue;
        }
        let lim = jn.min(i + 1 - j0);
        s.fill(0.0);
        for (c, &qc) in q[r * hd..(r + 1) * hd].iter().enumerate() {
            for (sj, &kv) in s.iter_mut().zip(&kt[c * BK..(c + 1) * BK]) {
                *sj += qc * kv;
            }
        }
        let mut mx = f32::NEG_INFINITY;
        for sj in s.iter_mut().take(lim) {
            *sj *= h.scale;
            mx = mx.max(*sj);
        }
        let arow = &mut st.acc[r * hd..(r + 1) * hd];
        let m_new = st.m[r].max(mx);
        if m_new > st.m[r] {
            let c = exp_neg(st.m[r] - m_new);
            st.l[r] *= c;
            for a in arow.iter_mut() {
                *a *= c;
            }
            st.m[r] = m_new;
        }
        let mut sum = 0.0f32;
        for sj in s.iter_mut().take(lim) {
            *sj = exp_neg(*sj - m_new);
            sum += *sj;
        }
        st.l[r] += sum;
        for (j, &pj) in s.iter().enumerate().take(lim) {
            for (a, &vv) in arow.iter_mut().zip(&vb[j * hd..(j + 1) * hd]) {
                *a += pj * vv;
            }
        }
    }
}

/// The AVX-512 attention block kernel: scores and the weighted sum of V are register-tiled
/// over up to [`avx512::R`] rows × 64 keys (or × 64 head dims), so each K or V vector loaded
/// serves several queries. Each score and each output lane is one FMA chain in a fixed order
/// (over head dims, then over keys), whatever the tiling, so results do not depend on which
/// rows share a tile.
/// `g ← silu(g) · u` in place. With AVX-512 this is ggml's `ggml_vec_swiglu_f32` lane for
/// lane (`x / (1 + e^(0 − x))` with ggml's `ggml_v_expf`, then the product): its output is
/// quantized before the down projection, where a one-ulp difference can flip a rounding and
/// move the result by a whole quantization step, so matching llama.cpp's bits here matters for
/// quantized models. Elsewhere (and for a tail shorter than 16) it uses `f32::exp`, as ggml's
/// scalar `ggml_silu_f32` does with `expf`.
fn swiglu(g: &mut [f32], u: &[f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if swiglu_avx512_available() {
        // SAFETY: AVX-512F, AVX2, FMA and F16C were detected just above.
        done = unsafe { avx512::swiglu(g, u) };
    }
    for (g, &u) in g[done..].iter_mut().zip(&u[done..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
fn swiglu_avx512_available() -> bool {
    let f = longquant_quants::simd::cpu::features();
    f.avx512f && f.avx2_fma_f16c()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Heads, RowState, BK};
    use half::f16;
    use std::arch::x86_64::*;

    /// Rows per register tile (6 × 4 accumulators + 4 loaded vectors + 1 broadcast ≤ 32).
    pub(super) const R: usize = 6;

    /// A cache element type the kernel reads 16 at a time as f32.
    pub(super) trait Elem: Copy {
        const IS_F16: bool;
    }
    impl Elem for f32 {
        const IS_F16: bool = false;
    }
    impl Elem for f16 {
        const IS_F16: bool = true;
    }

    /// 16 elements at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn ld<E: Elem>(p: *const E) -> __m512 {
        if E::IS_F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }

    /// Sum of the 16 lanes in one fixed order (halves, then quarters, then pairs: the order of
    /// GCC's `_mm512_reduce_add_ps`, which ggml's softmax uses).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn hsum(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }

    /// `e^x` per lane, computed as ggml's AVX-512 `ggml_v_expf` computes it (same reduction,
    /// polynomial and rounding steps), so softmax weights match llama.cpp's bit for bit:
    /// `n = round(x·log2 e)` by the 1.5·2^23 trick, `b = x − n·ln2` in two FMA steps, a
    /// degree-5 polynomial for `e^b`, then `scalef` by `2^n`; `|n| > 192` saturates to 0 or +inf.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn exp(x: __m512) -> __m512 {
        let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let shift = c(0x4b40_0000); // 0x1.8p23
        let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), shift); // log2(e)
        let n = _mm512_sub_ps(z, shift);
        // ln 2 split in a high part (exact products with n) and a low part.
        let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
        let u = _mm512_mul_ps(b, b);
        let hi = _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17));
        let mid = _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb));
        let lo = _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0));
        let j = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, u, mid), u, lo);
        let res = _mm512_scalef_ps(j, n);
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        if big == 0 {
            return res;
        }
        let nonpos = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
        let sat = _mm512_mask_blend_ps(nonpos, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
        _mm512_mask_blend_ps(big, res, sat)
    }

    /// `g ← g / (1 + e^(0 − g)) · u` over the first `16·⌊len/16⌋` values, as ggml's AVX-512
    /// `ggml_vec_swiglu_f32`; returns how many values were done.
    ///
    /// # Safety
    /// AVX-512F, AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn swiglu(g: &mut [f32], u: &[f32]) -> usize {
        let n = g.len().min(u.len()) / 16 * 16;
        let one = _mm512_set1_ps(1.0);
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= both lengths.
            unsafe {
                let x = _mm512_loadu_ps(g.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
                let silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
                let y = _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr().add(i)));
                _mm512_storeu_ps(g.as_mut_ptr().add(i), y);
            }
        }
        n
    }

    /// Scores of `T` rows (from `r0`) against the 64 keys of a block: `p[r][j] = q_r · k_j`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn qk<E: Elem, const T: usize>(
        q: &[f32],
        r0: usize,
        hd: usize,
        kt: &[E],
        p: &mut [f32],
    ) {
        debug_assert!(q.len() >= (r0 + T) * hd && kt.len() >= hd * BK && p.len() >= (r0 + T) * BK);
        let (qp, kp) = (q.as_ptr().add(r0 * hd), kt.as_ptr());
        let mut a = [[_mm512_setzero_ps(); 4]; T];
        for c in 0..hd {
            let kr = kp.add(c * BK);
            let k = [ld(kr), ld(kr.add(16)), ld(kr.add(32)), ld(kr.add(48))];
            for (t, at) in a.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*qp.add(t * hd + c));
                for w in 0..4 {
                    at[w] = _mm512_fmadd_ps(qv, k[w], at[w]);
                }
            }
        }
        let pp = p.as_mut_ptr().add(r0 * BK);
        for (t, at) in a.iter().enumerate() {
            for (w, &v) in at.iter().enumerate() {
                _mm512_storeu_ps(pp.add(t * BK + 16 * w), v);
            }
        }
    }

    /// `acc[r][c0..c0 + 16W] += Σ_j p[r][j] · v[j][c0..]` for `T` rows from `r0`, keys `0..jn`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv<E: Elem, const T: usize, const W: usize>(
        p: &[f32],
        r0: usize,
        jn: usize,
        vb: &[E],
        hd: usize,
        c0: usize,
        acc: &mut [f32],
    ) {
        debug_assert!(c0 + 16 * W <= hd && jn <= BK && vb.len() >= BK * hd);
        debug_assert!(p.len() >= (r0 + T) * BK && acc.len() >= (r0 + T) * hd);
        let ap = acc.as_mut_ptr().add(r0 * hd + c0);
        let (pp, vp) = (p.as_ptr().add(r0 * BK), vb.as_ptr().add(c0));
        let mut a = [[_mm512_setzero_ps(); W]; T];
        for (t, at) in a.iter_mut().enumerate() {
            for (w, v) in at.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(ap.add(t * hd + 16 * w));
            }
        }
        for j in 0..jn {
            let vr = vp.add(j * hd);
            let mut v = [_mm512_setzero_ps(); W];
            for (w, vw) in v.iter_mut().enumerate() {
                *vw = ld(vr.add(16 * w));
            }
            for (t, at) in a.iter_mut().enumerate() {
                let pj = _mm512_set1_ps(*pp.add(t * BK + j));
                for w in 0..W {
                    at[w] = _mm512_fmadd_ps(pj, v[w], at[w]);
                }
            }
        }
        for (t, at) in a.iter().enumerate() {
            for (w, &v) in at.iter().enumerate() {
                _mm512_storeu_ps(ap.add(t * hd + 16 * w), v);
            }
        }
    }

    /// Online-softmax update of row `r` (at position `i`) from its raw scores in `p[r]`, which
    /// are replaced by the probabilities (0 for keys after `i`). A row that sees no key of the
    /// block keeps its state and gets all-zero probabilities, which add exactly nothing.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn softmax_row(
        r: usize,
        i: usize,
        j0: usize,
        h: &Heads,
        st: &mut RowState,
        p: &mut [f32],
    ) {
        let pr = &mut p[r * BK..(r + 1) * BK];
        if i < j0 {
            pr.fill(0.0);
            return;
        }
        let lim = (i + 1 - j0).min(BK);
        let (sc, ninf) = (_mm512_set1_ps(h.scale), _mm512_set1_ps(f32::NEG_INFINITY));
        let pp = pr.as_mut_ptr();
        let mut s = [_mm512_setzero_ps(); 4];
        for (w, sw) in s.iter_mut().enumerate() {
            let valid = lim.saturating_sub(16 * w).min(16);
            let mask = ((1u32 << valid) - 1) as __mmask16;
            *sw = _mm512_mask_mov_ps(
                ninf,
                mask,
                _mm512_mul_ps(_mm512_loadu_ps(pp.add(16 * w)), sc),
            );
        }
        let mx = _mm512_reduce_max_ps(_mm512_max_ps(
            _mm512_max_ps(s[0], s[1]),
            _mm512_max_ps(s[2], s[3]),
        ));
        let hd = h.hd;
        let m_old = st.m[r];
        let m_new = m_old.max(mx);
        if m_new > m_old {
            // libm's expf, as ggml's tiled kernel rescales with.
            let c = (m_old - m_new).exp();
            st.l[r] *= c;
            let cv = _mm512_set1_ps(c);
            let ap = st.acc.as_mut_ptr().add(r * hd);
            for c0 in (0..hd).step_by(16) {
                _mm512_storeu_ps(ap.add(c0), _mm512_mul_ps(_mm512_loadu_ps(ap.add(c0)), cv));
            }
            st.m[r] = m_new;
        }
        // As ggml_vec_soft_max_f32: each 16-lane sum is added to an f64 total, which is added
        // to the f32 running sum in f64.
        let mv = _mm512_set1_ps(m_new);
        let mut sum = 0.0f64;
        for (w, sw) in s.iter().enumerate() {
            let e = exp(_mm512_sub_ps(*sw, mv));
            _mm512_storeu_ps(pp.add(16 * w), e);
            sum += hsum(e) as f64;
        }
        st.l[r] = (st.l[r] as f64 + sum) as f32;
    }

    /// Runs `$f::<E, T>` for the tile size `T = $t` (1..=R) with the given arguments.
    macro_rules! by_tile {
        ($t:expr, $f:ident::<$e:ty $(, $w:literal)?>($($arg:expr),*)) => {
            match $t {
                1 => $f::<$e, 1 $(, $w)?>($($arg),*),
                2 => $f::<$e, 2 $(, $w)?>($($arg),*),
                3 => $f::<$e, 3 $(, $w)?>($($arg),*),
                4 => $f::<$e, 4 $(, $w)?>($($arg),*),
                5 => $f::<$e, 5 $(, $w)?>($($arg),*),
                _ => $f::<$e, 6 $(, $w)?>($($arg),*),
            }
        };
    }

    /// One key block (keys `j0..j0 + jn`; K transposed `[dim][BK]`, V `[BK][dim]`) for every
    /// row: register-tiled scores, per-row online softmax, register-tiled weighted sum of V.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C, and `h.hd` must be a multiple of 16.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<E: Elem>(
        q: &[f32],
        pos: &[usize],
        j0: usize,
        jn: usize,
        kt: &[E],
        vb: &[E],
        h: &Heads,
        st: &mut RowState,
        p: &mut [f32],
    ) {
        let (hd, nr) = (h.hd, pos.len());
        assert!(
            hd.is_multiple_of(16)
                && q.len() >= nr * hd
                && kt.len() >= hd * BK
                && vb.len() >= hd * BK
                && p.len() >= nr * BK
                && st.acc.len() >= nr * hd
                && st.m.len() >= nr
                && st.l.len() >= nr
                && jn <= BK
        );
        let mut r0 = 0;
        while r0 < nr {
            let t = (nr - r0).min(R);
            by_tile!(t, qk::<E>(q, r0, hd, kt, p));
            r0 += t;
        }
        for (r, &i) in pos.iter().enumerate() {
            softmax_row(r, i, j0, h, st, p);
        }
        let mut r0 = 0;
        while r0 < nr {
            let t = (nr - r0).min(R);
            let mut c0 = 0;
            while c0 + 64 <= hd {
                by_tile!(t, pv::<E, 4>(p, r0, jn, vb, hd, c0, &mut st.acc));
                c0 += 64;
            }
            while c0 < hd {
                by_tile!(t, pv::<E, 1>(p, r0, jn, vb, hd, c0, &mut st.acc));
                c0 += 16;
            }
            r0 += t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every kernel this CPU can run.
    fn kernels_here(hd: usize) -> Vec<AttnKernel> {
        let mut ks = vec![AttnKernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                ks.push(AttnKernel::Avx2);
            }
            if AttnKernel::detect(hd) == AttnKernel::Avx512 {
                ks.push(AttnKernel::Avx512);
            }
        }
        ks
    }

    /// Causal attention in f64 over K/V as the cache holds them (f16-rounded for F16).
    fn reference(q: &[f32], k: &[f32], v: &[f32], h: &Heads, t: KvType) -> Vec<f32> {
        let round = |x: f32| match t {
            KvType::F16 => f16::from_f32(x).to_f32() as f64,
            _ => x as f64,
        };
        let (d, dkv) = (h.nh * h.hd, h.nkv * h.hd);
        let n = q.len() / d;
        let mut out = vec![0.0f32; q.len()];
        for i in 0..n {
            for head in 0..h.nh {
                let g = head / h.group;
                let qr = &q[i * d + head * h.hd..i * d + (head + 1) * h.hd];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kr = &k[j * dkv + g * h.hd..j * dkv + (g + 1) * h.hd];
                        let dot: f64 = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * round(b)).sum();
                        dot * h.scale as f64
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..h.hd {
                    let o: f64 = (0..=i)
                        .map(|j| e[j] * round(v[j * dkv + g * h.hd + c]))
                        .sum();
                    out[i * d + head * h.hd + c] = (o / sum) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_reference_and_does_not_depend_on_batching() {
        // head_dim 80 exercises both the 64-wide and the 16-wide column tiles; 600 positions
        // span two super-blocks and a partial key block.
        let h = Heads::new(6, 2, 80);
        let (d, dkv, n) = (h.nh * h.hd, h.nkv * h.hd, 600);
        // Large queries make the softmax peaky, so max tracking and rescaling are exercised.
        let q: Vec<f32> = noise(n * d, 1).iter().map(|x| 4.0 * x).collect();
        let (k, v) = (noise(n * dkv, 2), noise(n * dkv, 3));
        for kern in kernels_here(h.hd) {
            for t in [KvType::F16, KvType::F32] {
                let mut kv = LayerKv::new(t, t, h.nkv, h.hd);
                kv.push(&k, &v);
                let mut batch = q.clone();
                attention_with(kern, &mut batch, 0, &kv, &h);
                let want = reference(&q, &k, &v, &h, t);
                let worst = batch
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 2e-5, "{t:?}: worst error {worst}");
                // The same queries fed in pieces (a batch, a few, then one at a time) against a
                // growing cache give the same bits.
                let mut kv = LayerKv::new(t, t, h.nkv, h.hd);
                let mut pieces = vec![(0, 70), (70, 80)];
                pieces.extend((80..n).map(|i| (i, i + 1)));
                for (a, b) in pieces {
                    kv.push(&k[a * dkv..b * dkv], &v[a * dkv..b * dkv]);
                    let mut part = q[a * d..b * d].to_vec();
                    attention_with(kern, &mut part, a, &kv, &h);
                    for (x, (y, z)) in part.iter().zip(&batch[a * d..b * d]).enumerate() {
                        assert_eq!(y.to_bits(), z.to_bits(), "{t:?} rows {a}..{b}, value {x}");
                    }
                }
            }
        }
    }

    #[test]
    fn flash_attention_cache_types_approximate_reference_and_ignore_batching() {
        // head_dim 64: both halves of a quantized cache are Hadamard-rotated.
        let h = Heads::new(4, 2, 64);
        let (d, dkv, n) = (h.nh * h.hd, h.nkv * h.hd, 300);
        let q: Vec<f32> = noise(n * d, 1).iter().map(|x| 2.0 * x).collect();
        let (k, v) = (noise(n * dkv, 2), noise(n * dkv, 3));
        let want = reference(&q, &k, &v, &h, KvType::F32);
        let pairs = [
            (KvType::F32, KvType::F16, 2e-3),
            (KvType::BF16, KvType::BF16, 2e-2),
            (KvType::F16, KvType::Q8_0, 2e-2),
            (KvType::Q8_0, KvType::F16, 2e-2),
            (KvType::Q8_0, KvType::Q8_0, 2e-2),
            (KvType::Q5_1, KvType::Q5_0, 8e-2),
            (KvType::Q4_1, KvType::IQ4_NL, 0.35),
            (KvType::Q4_0, KvType::Q4_0, 0.35),
        ];
        for (tk, tv, bound) in pairs {
            let mut kv = LayerKv::new(tk, tv, h.nkv, h.hd);
            assert!(kv.fa.is_some());
            kv.push(&k, &v);
            let mut batch = q.clone();
            attention_with(AttnKernel::detect(h.hd), &mut batch, 0, &kv, &h);
            let worst = batch
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < bound, "{tk}/{tv}: worst error {worst}");
            let mut kv = LayerKv::new(tk, tv, h.nkv, h.hd);
            for (a, b) in [(0, 100), (100, 101), (101, 240), (240, 300)] {
                kv.push(&k[a * dkv..b * dkv], &v[a * dkv..b * dkv]);
                let mut part = q[a * d..b * d].to_vec();
                attention_with(AttnKernel::detect(h.hd), &mut part, a, &kv, &h);
                for (x, (y, z)) in part.iter().zip(&batch[a * d..b * d]).enumerate() {
                    assert_eq!(
                        y.to_bits(),
                        z.to_bits(),
                        "{tk}/{tv} rows {a}..{b}, value {x}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_is_accurate_on_softmax_range() {
        if AttnKernel::detect(16) != AttnKernel::Avx512 {
            eprintln!("SKIP: no AVX-512 on this CPU");
            return;
        }
        let mut x = 0.0f32;
        while x >= -90.0 {
            let xs: Vec<f32> = (0..16).map(|i| x - 0.0007 * i as f32).collect();
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F (with FMA, F16C, AVX2) was detected just above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(got.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(xs.as_ptr())));
            }
            for (&g, &x) in got.iter().zip(&xs) {
                let want = (x as f64).exp();
                assert!(
                    (g as f64 - want).abs() <= 4e-7 * want + 1e-38,
                    "exp({x}) = {g}, want {want}"
                );
            }
            x -= 0.013;
        }
    }

    #[test]
    fn swiglu_matches_f64_and_handles_tails() {
        // Values across SiLU's range, including large |x| where e^(-x) saturates, and a length
        // that leaves a 7-value scalar tail after the 16-wide lanes.
        let n = 16 * 9 + 7;
        let g0: Vec<f32> = (0..n).map(|i| (i as f32 - 75.0) * 0.37).collect();
        let u: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
        let mut g = g0.clone();
        super::swiglu(&mut g, &u);
        for i in 0..n {
            let x = g0[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            let got = g[i] as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "i {i}: x {x}, got {got}, want {want}"
            );
        }
    }

    #[test]
    fn exp_neg_is_accurate_on_softmax_range() {
        let mut x = 0.0f32;
        while x >= -87.0 {
            let (got, want) = (exp_neg(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want + 1e-38,
                "exp({x}) = {got}, want {want}"
            );
            x -= 0.013;
        }
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
    }
}
