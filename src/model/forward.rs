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
//! RoPE angles come from the same running f32 product `θ·base^(-2/n_rot)` as ggml's rope cache;
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

/// How K and V are kept during attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// IEEE half, like llama.cpp's default KV cache (`-ctk f16 -ctv f16`); needed to match its numbers.
    #[default]
    F16,
    /// Full precision.
    F32,
}

/// Options for [`Model::eval`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalOptions {
    /// K/V storage type.
    pub kv_type: KvType,
}

/// Tokens per tile for the projections and the FFN (bounds the FFN temporaries to
/// `TOKEN_TILE × n_ff` while keeping each weight block reused across many tokens).
const TOKEN_TILE: usize = 512;
/// Positions per output-head tile (bounds the logits buffer to `LOGIT_TILE × n_vocab`).
const LOGIT_TILE: usize = 32;
/// Query rows per attention task.
const BQ: usize = 32;
/// Keys per attention block.
const BK: usize = 64;

/// A Llama model ready to run: hyperparameters plus weights borrowed from the GGUF map.
#[derive(Debug)]
pub struct Model<'a> {
    /// Hyperparameters.
    pub config: LlamaConfig,
    /// Tensors.
    pub weights: Weights<'a>,
}

/// One layer's K or V rows (`n_embd_kv` values per position), in the cache type.
#[derive(Debug)]
enum KvBuf {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvBuf {
    fn new(t: KvType) -> Self {
        match t {
            KvType::F16 => KvBuf::F16(Vec::new()),
            KvType::F32 => KvBuf::F32(Vec::new()),
        }
    }

    fn clear(&mut self) {
        match self {
            KvBuf::F16(b) => b.clear(),
            KvBuf::F32(b) => b.clear(),
        }
    }

    /// Appends `src` (rounded to f16 for an F16 cache, as ggml's `set_rows` into the cache does).
    fn push(&mut self, src: &[f32]) {
        match self {
            KvBuf::F16(b) => {
                let at = b.len();
                b.resize(at + src.len(), f16::ZERO);
                let conv = kernels().f32_to_f16_row;
                b[at..]
                    .par_chunks_mut(4096)
                    .zip(src.par_chunks(4096))
                    .for_each(|(d, s)| conv(s, d));
            }
            KvBuf::F32(b) => b.extend_from_slice(src),
        }
    }

    /// Copies `dst.len()` elements starting at `at` into `dst` as f32.
    #[inline]
    fn load(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvBuf::F16(b) => (kernels().f16_to_f32_row)(&b[at..at + dst.len()], dst),
            KvBuf::F32(b) => dst.copy_from_slice(&b[at..at + dst.len()]),
        }
    }
}

/// K and V of one layer for every position evaluated so far.
#[derive(Debug)]
struct LayerKv {
    k: KvBuf,
    v: KvBuf,
}

impl LayerKv {
    fn new(t: KvType) -> Self {
        Self {
            k: KvBuf::new(t),
            v: KvBuf::new(t),
        }
    }
}

/// RMSNorm of each `d`-wide row of `x` into `y`, times `gain`.
fn rms_norm(x: &[f32], gain: &[f32], eps: f32, y: &mut [f32]) {
    let d = gain.len();
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
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
    /// K/V storage type of the cache.
    pub kv_type: KvType,
}

/// Incremental decoding state: a K/V cache for every layer of every position fed so far.
///
/// [`Session::feed`] appends tokens (a whole prompt at once, then one token at a time, or any
/// mix) and runs exactly the kernels [`Model::eval`] runs, so feeding a sequence in pieces
/// gives the logits of evaluating it whole (up to the order of f32 sums in attention).
#[derive(Debug)]
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
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
            kv: (0..self.config.n_layer)
                .map(|_| LayerKv::new(opts.kv_type))
                .collect(),
            len: 0,
        }
    }

    /// Checks that `tokens` can be appended at position `p0`.
    fn check_tokens(&self, tokens: &[u32], p0: usize) -> Result<(), ModelError> {
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
        let mut kv = [LayerKv::new(opts.kv_type)];
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
        let mut kv = [LayerKv::new(opts.kv_type)];
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
        mut observe: Option<&mut dyn FnMut(&str, &[f32])>,
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
        x.par_chunks_mut(d)
            .zip(tokens.par_iter())
            .for_each(|(row, &id)| {
                w.token_embd.dequantize_row(id as usize, row);
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
                c.k.clear();
                c.v.clear();
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
                rope.apply(qs, t0, cfg.n_head, cfg.head_dim);
                rope.apply(&mut kt[..nt * dkv], t0, cfg.n_head_kv, cfg.head_dim);
                cache.k.push(&kt[..nt * dkv]);
                cache.v.push(&vt[..nt * dkv]);
            }
            // Attention output overwrites the queries.
            attention(&mut q, p0, &cache.k, &cache.v, cfg);
            // Output projection, residual, FFN, residual — tile by tile.
            for t0 in (0..n).step_by(tile) {
                let nt = tile.min(n - t0);
                let os = &mut o[..nt * d];
                show(Some(il), &["attn_output"], &q[t0 * d..(t0 + nt) * d]);
                ActCache::new(&q[t0 * d..(t0 + nt) * d], d).matmul(&lw.wo, os);
                let xs = &mut x[t0 * d..(t0 + nt) * d];
                xs.par_iter_mut()
                    .zip(os.par_iter())
                    .for_each(|(x, o)| *x += o);
                let xn = &mut xn[..nt * d];
                rms_norm(xs, &lw.ffn_norm, cfg.rms_eps, xn);
                show(Some(il), &["ffn_gate", "ffn_up"], xn);
                let (gs, us) = (&mut g[..nt * cfg.n_ff], &mut u[..nt * cfg.n_ff]);
                let mut acts = ActCache::new(xn, d);
                acts.matmul(&lw.gate, gs);
                acts.matmul(&lw.up, us);
                gs.par_chunks_mut(4096)
                    .zip(us.par_chunks(4096))
                    .for_each(|(g, u)| {
                        for (g, &u) in g.iter_mut().zip(u) {
                            *g = *g / (1.0 + (-*g).exp()) * u;
                        }
                    });
                show(Some(il), &["ffn_down"], gs);
                ActCache::new(gs, cfg.n_ff).matmul(&lw.down, os);
                xs.par_iter_mut()
                    .zip(os.par_iter())
                    .for_each(|(x, o)| *x += o);
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
struct RopeTable {
    half: usize,
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    fn new(cfg: &LlamaConfig, freqs: Option<&[f32]>, p0: usize, n: usize) -> Self {
        let half = cfg.n_rot / 2;
        let theta_scale = cfg.rope_freq_base.powf(-2.0 / cfg.n_rot as f32);
        let mut cs = vec![(0.0f32, 0.0f32); n * half];
        cs.par_chunks_mut(half.max(1))
            .enumerate()
            .for_each(|(r, row)| {
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

    /// Rotates adjacent pairs (2i, 2i+1) of the first `n_rot` dims of every head of every row;
    /// row `r` of `x` is table row `r0 + r`.
    fn apply(&self, x: &mut [f32], r0: usize, n_heads: usize, head_dim: usize) {
        let half = self.half;
        if half == 0 {
            return;
        }
        x.par_chunks_mut(n_heads * head_dim)
            .enumerate()
            .for_each(|(r, row)| {
                let cs = &self.cs[(r0 + r) * half..(r0 + r + 1) * half];
                for head in row.chunks_mut(head_dim) {
                    for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
            });
    }
}

/// Causal grouped-query attention, in place: row `i` of `q` (n × n_head·head_dim, position
/// `p0 + i`) is replaced by its attention output over keys `0..=p0 + i` of `k`/`v`. Tasks own
/// blocks of [`BQ`] query rows; for each KV head, key/value blocks of [`BK`] rows are widened
/// to f32 once and used by every query head of the group, with a running max and sum per query
/// (online softmax), so memory stays O(BQ·BK) per task.
fn attention(q: &mut [f32], p0: usize, k: &KvBuf, v: &KvBuf, cfg: &LlamaConfig) {
    let (hd, nh) = (cfg.head_dim, cfg.n_head);
    let d = nh * hd;
    let n = q.len() / d;
    // Few queries (decoding): smaller blocks so both threads get work.
    let threads = rayon::current_num_threads().max(1);
    let bq = BQ.min(n.div_ceil(threads)).max(1);
    #[cfg(target_arch = "x86_64")]
    let use_avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    q.par_chunks_mut(bq * d).enumerate().for_each(|(bi, qblk)| {
        let i0 = p0 + bi * bq;
        #[cfg(target_arch = "x86_64")]
        if use_avx2 {
            // SAFETY: AVX2 and FMA were detected at run time just above.
            unsafe { attention_block_avx2(qblk, i0, k, v, cfg) };
            return;
        }
        attention_block(qblk, i0, k, v, cfg);
    });
}

/// [`attention_block`] compiled for AVX2+FMA (the dot products and row updates vectorize to
/// 8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_block_avx2(
    qblk: &mut [f32],
    i0: usize,
    k: &KvBuf,
    v: &KvBuf,
    cfg: &LlamaConfig,
) {
    attention_block(qblk, i0, k, v, cfg)
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

/// Attention for one block of query rows at positions `i0..i0 + rows`.
///
/// Per KV head and block of [`BK`] keys: K is widened to f32 and transposed (`kt[dim][key]`) so
/// that one query's scores against the whole block are [`BK`]-wide vector FMAs over the head
/// dimension; V is widened row-major so the weighted sum is head-width vector FMAs per key.
#[inline(always)]
fn attention_block(qblk: &mut [f32], i0: usize, k: &KvBuf, v: &KvBuf, cfg: &LlamaConfig) {
    let (hd, nh, nkv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
    let d = nh * hd;
    let dkv = nkv * hd;
    let group = nh / nkv;
    let scale = 1.0f32 / (hd as f32).sqrt();
    let nq = qblk.len() / d;
    let kend = i0 + nq;
    let mut krow = vec![0.0f32; hd];
    let mut kt = vec![0.0f32; hd * BK];
    let mut vf = vec![0.0f32; BK * hd];
    let mut qf = vec![0.0f32; group * nq * hd];
    let mut acc = vec![0.0f32; group * nq * hd];
    let mut m = vec![f32::NEG_INFINITY; group * nq];
    let mut l = vec![0.0f32; group * nq];
    let mut s = [0.0f32; BK];
    for gk in 0..nkv {
        // Gather this group's queries: qf[(h, qi)] = q[qi, (gk·group + h)].
        for h in 0..group {
            let head = gk * group + h;
            for qi in 0..nq {
                let src = &qblk[qi * d + head * hd..qi * d + (head + 1) * hd];
                let dst = &mut qf[(h * nq + qi) * hd..(h * nq + qi + 1) * hd];
                dst.copy_from_slice(src);
            }
        }
        acc.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        for j0 in (0..kend).step_by(BK) {
            let jn = BK.min(kend - j0);
            for j in 0..jn {
                let at = (j0 + j) * dkv + gk * hd;
                k.load(at, &mut krow);
                for (c, &x) in krow.iter().enumerate() {
                    kt[c * BK + j] = x;
                }
                v.load(at, &mut vf[j * hd..(j + 1) * hd]);
            }
            for j in jn..BK {
                for c in 0..hd {
                    kt[c * BK + j] = 0.0;
                }
            }
            for h in 0..group {
                for qi in 0..nq {
                    let i = i0 + qi;
                    if i < j0 {
                        continue;
                    }
                    let lim = jn.min(i + 1 - j0);
                    let qrow = &qf[(h * nq + qi) * hd..(h * nq + qi + 1) * hd];
                    s.fill(0.0);
                    for (c, &qc) in qrow.iter().enumerate() {
                        let kc = &kt[c * BK..(c + 1) * BK];
                        for (sj, &kv) in s.iter_mut().zip(kc) {
                            *sj += qc * kv;
                        }
                    }
                    let mut mx = f32::NEG_INFINITY;
                    for sj in s.iter_mut().take(lim) {
                        *sj *= scale;
                        mx = mx.max(*sj);
                    }
                    let idx = h * nq + qi;
                    let arow = &mut acc[idx * hd..(idx + 1) * hd];
                    let m_new = m[idx].max(mx);
                    if m_new > m[idx] {
                        let c = exp_neg(m[idx] - m_new);
                        l[idx] *= c;
                        for a in arow.iter_mut() {
                            *a *= c;
                        }
                        m[idx] = m_new;
                    }
                    let mut sum = 0.0f32;
                    for sj in s.iter_mut().take(lim) {
                        *sj = exp_neg(*sj - m_new);
                        sum += *sj;
                    }
                    l[idx] += sum;
                    for (j, &p) in s.iter().enumerate().take(lim) {
                        for (a, &vv) in arow.iter_mut().zip(&vf[j * hd..(j + 1) * hd]) {
                            *a += p * vv;
                        }
                    }
                }
            }
        }
        for h in 0..group {
            let head = gk * group + h;
            for qi in 0..nq {
                let idx = h * nq + qi;
                let inv = 1.0 / l[idx];
                let dst = &mut qblk[qi * d + head * hd..qi * d + (head + 1) * hd];
                for (d, &a) in dst.iter_mut().zip(&acc[idx * hd..(idx + 1) * hd]) {
                    *d = a * inv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

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
