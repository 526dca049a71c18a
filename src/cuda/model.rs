//! The Llama forward pass on one GPU, behind the same [`Evaluator`] interface as the CPU path.
//!
//! Weights are uploaded once in their stored GGUF type; before a layer runs, its seven matrices
//! are dequantized to f16 in a scratch buffer and every product is a cuBLAS f16 × f16 → f32
//! tensor-core GEMM. The chunk goes through the model layer by layer, token tile by token tile,
//! as on the CPU: only one layer's K/V cache exists (f16, `[kv_head][pos][dim]`), so memory is
//! O(n). Attention, per block of queries and per KV head (its whole query group in one batched
//! product): scores `S = Q Kᵀ / √d` for the keys up to the block's end (f32), a causal softmax to
//! f16 probabilities `P`, and `O = P V` written straight into the attention output. Scoring runs
//! where the logits are: [`Evaluator::eval_nll`] brings back one f64 per position.
//!
//! Numerics against the CPU path: weights and the inputs of every product are rounded to f16
//! (the CPU quantizes activations to 8 bits instead), sums are f32 on tensor cores; RMSNorm,
//! RoPE (the same cos/sin table), SwiGLU and the log-softmax follow the CPU's arithmetic.
use super::gpu::{CudaError, DevMem, Dt, Gpu, Mat};
use crate::model::forward::RopeTable;
use crate::model::weights::Weight;
use crate::model::{
    BaseRecord, Decoder, DeviceScore, EvalOptions, Evaluator, InputSink, KvType, LlamaConfig,
    Model, ModelError, SavedScore,
};
use longquant_formats::gguf::GgufFile;
use longquant_quants::BlockFormat;
use rayon::prelude::*;
use std::sync::Mutex;

/// Tokens per tile of the projections and the FFN.
const TILE: usize = 2048;
/// Queries per attention block (bounds the score buffer to `group × TQ × n` f32).
const TQ: usize = 512;
/// Positions per output-head tile (bounds the logits buffer to `TH × n_vocab` f32).
const TH: usize = 512;

/// A weight matrix on the device, in its stored type.
struct DevWeight {
    mem: DevMem,
    /// The dequantizing kernel (`dq_q4_k`, ...).
    kernel: &'static str,
    /// Already f16: multiplied in place.
    is_f16: bool,
    rows: usize,
    cols: usize,
}

impl DevWeight {
    fn elems(&self) -> usize {
        self.rows * self.cols
    }
}

struct DevLayer {
    attn_norm: DevMem,
    ffn_norm: DevMem,
    /// q, k, v, o, gate, up, down.
    w: [DevWeight; 7],
}

/// A Llama model resident on one GPU.
pub struct CudaModel<'a> {
    host: Model<'a>,
    gpu: Mutex<Gpu>,
    layers: Vec<DevLayer>,
    output_norm: DevMem,
    output: DevWeight,
    name: String,
    /// The CUDA device.
    ordinal: usize,
    /// Bytes of weights on the device.
    pub weight_bytes: usize,
}

fn kernel_for(f: BlockFormat) -> Option<&'static str> {
    use BlockFormat as F;
    Some(match f {
        F::F32 => "dq_f32",
        F::F16 => "dq_f16",
        F::BF16 => "dq_bf16",
        F::Q4_0 => "dq_q4_0",
        F::Q4_1 => "dq_q4_1",
        F::Q5_0 => "dq_q5_0",
        F::Q5_1 => "dq_q5_1",
        F::Q8_0 => "dq_q8_0",
        F::Q2_K => "dq_q2_k",
        F::Q3_K => "dq_q3_k",
        F::Q4_K => "dq_q4_k",
        F::Q5_K => "dq_q5_k",
        F::Q6_K => "dq_q6_k",
        F::IQ4_NL => "dq_iq4_nl",
        F::IQ4_XS => "dq_iq4_xs",
        _ => return None,
    })
}

fn dev(e: CudaError) -> ModelError {
    ModelError::Device(e.to_string())
}

impl<'a> CudaModel<'a> {
    /// Checks and borrows the model in `file` (as [`Model::load`]) and uploads it to CUDA
    /// device `ordinal`.
    pub fn load(file: &'a GgufFile, ordinal: usize) -> Result<Self, ModelError> {
        let host = Model::load(file)?;
        let gpu = Gpu::open(ordinal).map_err(dev)?;
        let name = gpu.name.clone();
        let mut weight_bytes = 0usize;
        let mut up_w = |w: &Weight<'_>, what: &str| -> Result<DevWeight, ModelError> {
            let f = w.format();
            let kernel = kernel_for(f).ok_or_else(|| {
                ModelError::UnsupportedFeature(format!("{f:?} weights on the CUDA backend"))
            })?;
            let bytes = w.bytes();
            weight_bytes += bytes.len();
            Ok(DevWeight {
                mem: gpu.upload_new(bytes, what).map_err(dev)?,
                kernel,
                is_f16: f == BlockFormat::F16,
                rows: w.rows,
                cols: w.cols,
            })
        };
        let mut layers = Vec::with_capacity(host.weights.layers.len());
        for (il, l) in host.weights.layers.iter().enumerate() {
            let what = format!("layer {il}'s weights");
            let w = [
                up_w(&l.wq, &what)?,
                up_w(&l.wk, &what)?,
                up_w(&l.wv, &what)?,
                up_w(&l.wo, &what)?,
                up_w(&l.gate, &what)?,
                up_w(&l.up, &what)?,
                up_w(&l.down, &what)?,
            ];
            layers.push(DevLayer {
                attn_norm: gpu.upload_new(&l.attn_norm, &what).map_err(dev)?,
                ffn_norm: gpu.upload_new(&l.ffn_norm, &what).map_err(dev)?,
                w,
            });
        }
        let output = up_w(&host.weights.output, "the output head")?;
        let output_norm = gpu
            .upload_new(&host.weights.output_norm, "the output norm")
            .map_err(dev)?;
        Ok(Self {
            host,
            gpu: Mutex::new(gpu),
            layers,
            output_norm,
            output,
            name,
            ordinal,
            weight_bytes,
        })
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), ModelError> {
        self.gpu.lock().unwrap().mem_info().map_err(dev)
    }

    /// Dequantizes `w` into `scratch` unless it is f16 already; returns the f16 address.
    fn f16_of(gpu: &Gpu, w: &DevWeight, scratch: &DevMem) -> Result<u64, CudaError> {
        if w.is_f16 {
            return Ok(w.mem.ptr);
        }
        let n = w.elems() as i64;
        gpu.launch_n(w.kernel, w.elems(), &[&w.mem.ptr, &scratch.ptr, &n])?;
        Ok(scratch.ptr)
    }

    /// `y (nt × rows, f32) = x (nt × cols, f16) · Wᵀ`.
    fn matmul(
        gpu: &Gpu,
        w16: u64,
        w: &DevWeight,
        x: u64,
        nt: usize,
        y: u64,
    ) -> Result<(), CudaError> {
        gpu.gemm(
            nt,
            w.rows,
            w.cols,
            1.0,
            Mat {
                ptr: x,
                ld: w.cols,
                stride: 0,
                dt: Dt::F16,
            },
            false,
            Mat {
                ptr: w16,
                ld: w.cols,
                stride: 0,
                dt: Dt::F16,
            },
            true,
            0.0,
            Mat {
                ptr: y,
                ld: w.rows,
                stride: 0,
                dt: Dt::F32,
            },
            1,
        )
    }

    /// Runs `tokens` at positions `pos0..` through every layer and returns the residual stream
    /// after the last one (`n × n_embd` f32). `kv` says where K and V go; `sums` (the
    /// [`SumLayout`] of this model) receives the per-column sums of squares of every product's
    /// input.
    fn forward(
        &self,
        gpu: &Gpu,
        tokens: &[u32],
        pos0: usize,
        kv: Kv<'_>,
        sums: Option<&DevMem>,
    ) -> Result<DevMem, CudaError> {
        let cfg = &self.host.config;
        let n = tokens.len();
        let (d, dkv, ff) = (cfg.n_embd, cfg.n_embd_kv(), cfg.n_ff);
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
        let group = nh / nkv;
        let eps = cfg.rms_eps;
        let scale = 1.0f32 / (hd as f32).sqrt();

        // The residual stream starts as the embeddings, looked up on the host.
        let mut xh = vec![0.0f32; n * d];
        let embd = &self.host.weights.token_embd;
        xh.par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, row)| embd.dequantize_row(tokens[i] as usize, row));
        let x = gpu.upload_new(&xh, "the residual stream")?;
        drop(xh);
        let rope = RopeTable::new(cfg, self.host.weights.rope_freqs.as_deref(), pos0, n).flat();
        let cs = gpu.upload_new(&rope, "the RoPE table")?;
        drop(rope);

        let tile = n.min(TILE);
        let fused = attention_kernel(hd);
        let xn = gpu.alloc(tile * d * 2, "normed activations")?;
        let qf = gpu.alloc(tile * d * 4, "queries")?;
        let kf = gpu.alloc(tile * dkv * 4, "keys")?;
        let vf = gpu.alloc(tile * dkv * 4, "values")?;
        let qh = gpu.alloc(tile * d * 2, "queries")?;
        let ao = gpu.alloc(tile * d * 2, "attention output")?;
        let of = gpu.alloc(tile * d * 4, "projection output")?;
        let gf = gpu.alloc(tile * ff * 4, "FFN gate")?;
        let uf = gpu.alloc(tile * ff * 4, "FFN up")?;
        let hh = gpu.alloc(tile * ff * 2, "FFN hidden")?;
        // A chunk from position 0 needs one layer's cache, reused by every layer.
        let scratch_kv = match kv {
            Kv::Scratch => Some((
                gpu.alloc(nkv * n * hd * 2, "the K cache")?,
                gpu.alloc(nkv * n * hd * 2, "the V cache")?,
            )),
            Kv::Session { .. } => None,
        };
        let cap = match kv {
            Kv::Scratch => n,
            Kv::Session { cap, .. } => cap,
        };
        // The unfused attention's score and probability buffers.
        let tq = tile.min(TQ);
        let ld_max = (pos0 + n).next_multiple_of(8);
        let (sc, pr) = if fused.is_none() {
            (
                Some(gpu.alloc(group * tq * ld_max * 4, "attention scores")?),
                Some(gpu.alloc(group * tq * ld_max * 2, "attention probabilities")?),
            )
        } else {
            (None, None)
        };
        let max_w = self
            .layers
            .iter()
            .flat_map(|l| l.w.iter().map(|w| w.elems()))
            .max()
            .unwrap_or(0);
        // One scratch per matrix of a layer, so each is dequantized once per layer.
        let scratch: Vec<DevMem> = (0..7)
            .map(|i| {
                let m = self
                    .layers
                    .iter()
                    .filter(|l| !l.w[i].is_f16)
                    .map(|l| l.w[i].elems())
                    .max()
                    .unwrap_or(0);
                gpu.alloc(m.min(max_w) * 2, "dequantized weights")
            })
            .collect::<Result<_, _>>()?;

        let layout = self.sum_layout();
        let layer_sums = |il: usize, slot: usize| -> Option<u64> {
            sums.map(|m| m.at(layout.offset(il, slot) * 8))
        };
        let (i_nh, i_nkv, i_hd, i_rot) = (nh as i32, nkv as i32, hd as i32, cfg.n_rot as i32);
        for (il, l) in self.layers.iter().enumerate() {
            let (kc, vc) = match (&kv, &scratch_kv) {
                (Kv::Session { k, v, .. }, _) => (k[il].ptr, v[il].ptr),
                (Kv::Scratch, Some((k, v))) => (k.ptr, v.ptr),
                (Kv::Scratch, None) => unreachable!("a scratch cache is allocated above"),
            };
            let mut w16 = [0u64; 7];
            for (i, w) in l.w.iter().enumerate() {
                w16[i] = Self::f16_of(gpu, w, &scratch[i])?;
            }
            for t0 in (0..n).step_by(tile) {
                let nt = tile.min(n - t0);
                let xt = x.at(t0 * d * 4);
                let di = d as i32;
                gpu.launch(
                    "rms_norm_f16",
                    nt as u32,
                    256,
                    &[&xt, &l.attn_norm.ptr, &xn.ptr, &di, &eps],
                )?;
                if let Some(acc) = layer_sums(il, 0) {
                    gpu.col_sumsq(xn.ptr, nt, d, acc)?;
                }
                Self::matmul(gpu, w16[0], &l.w[0], xn.ptr, nt, qf.ptr)?;
                Self::matmul(gpu, w16[1], &l.w[1], xn.ptr, nt, kf.ptr)?;
                Self::matmul(gpu, w16[2], &l.w[2], xn.ptr, nt, vf.ptr)?;
                // Absolute position of the tile's first token; the RoPE table starts at pos0.
                let p_tile = pos0 + t0;
                let (nt_i, p_i, cs0, cap_i) = (nt as i32, p_tile as i32, pos0 as i32, cap as i64);
                gpu.launch_n(
                    "rope_store",
                    nt * (nh + nkv) * (hd / 2),
                    &[
                        &qf.ptr, &kf.ptr, &vf.ptr, &cs.ptr, &qh.ptr, &kc, &vc, &nt_i, &p_i, &cs0,
                        &i_nh, &i_nkv, &i_hd, &i_rot, &cap_i,
                    ],
                )?;
                match fused {
                    Some(kernel) => {
                        gpu.launch_grid(
                            kernel,
                            (nt.div_ceil(FA_BM) as u32, nh as u32),
                            128,
                            &[
                                &qh.ptr, &kc, &vc, &ao.ptr, &nt_i, &p_i, &i_nh, &i_nkv, &cap_i,
                                &scale,
                            ],
                        )?;
                    }
                    None => {
                        let (sc, pr) = (sc.as_ref().unwrap(), pr.as_ref().unwrap());
                        Self::attention_unfused(
                            gpu, &qh, &ao, kc, vc, sc, pr, p_tile, nt, tq, cap, nh, nkv, hd, scale,
                        )?;
                    }
                }
                let ne = (nt * d) as i64;
                if let Some(acc) = layer_sums(il, 1) {
                    gpu.col_sumsq(ao.ptr, nt, layout.widths[1], acc)?;
                }
                Self::matmul(gpu, w16[3], &l.w[3], ao.ptr, nt, of.ptr)?;
                gpu.launch_n("add_in_place", nt * d, &[&xt, &of.ptr, &ne])?;
                gpu.launch(
                    "rms_norm_f16",
                    nt as u32,
                    256,
                    &[&xt, &l.ffn_norm.ptr, &xn.ptr, &di, &eps],
                )?;
                if let Some(acc) = layer_sums(il, 2) {
                    gpu.col_sumsq(xn.ptr, nt, d, acc)?;
                }
                Self::matmul(gpu, w16[4], &l.w[4], xn.ptr, nt, gf.ptr)?;
                Self::matmul(gpu, w16[5], &l.w[5], xn.ptr, nt, uf.ptr)?;
                let nf = (nt * ff) as i64;
                gpu.launch_n("swiglu_f16", nt * ff, &[&gf.ptr, &uf.ptr, &hh.ptr, &nf])?;
                if let Some(acc) = layer_sums(il, 3) {
                    gpu.col_sumsq(hh.ptr, nt, ff, acc)?;
                }
                Self::matmul(gpu, w16[6], &l.w[6], hh.ptr, nt, of.ptr)?;
                gpu.launch_n("add_in_place", nt * d, &[&xt, &of.ptr, &ne])?;
            }
        }
        // Everything queued reads buffers dropped here.
        gpu.sync()?;
        Ok(x)
    }

    /// Attention of the `nt` queries in `qh` (positions `p_tile..`) by cuBLAS products: per
    /// block of `tq` queries and per KV head, scores for the keys up to the block's end, a
    /// causal softmax to f16, and `P V` into `ao`. For head sizes the fused kernel lacks.
    #[allow(clippy::too_many_arguments)]
    fn attention_unfused(
        gpu: &Gpu,
        qh: &DevMem,
        ao: &DevMem,
        kc: u64,
        vc: u64,
        sc: &DevMem,
        pr: &DevMem,
        p_tile: usize,
        nt: usize,
        tq: usize,
        cap: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
        scale: f32,
    ) -> Result<(), CudaError> {
        let group = nh / nkv;
        for qb0 in (0..nt).step_by(tq) {
            let nq = tq.min(nt - qb0);
            let q_pos = p_tile + qb0;
            let nk = q_pos + nq;
            let ld = nk.next_multiple_of(8);
            for g in 0..nkv {
                let q_at = qh.at((qb0 * nh + g * group) * hd * 2);
                gpu.gemm(
                    nq,
                    nk,
                    hd,
                    scale,
                    Mat {
                        ptr: q_at,
                        ld: nh * hd,
                        stride: hd,
                        dt: Dt::F16,
                    },
                    false,
                    Mat {
                        ptr: kc + (g * cap * hd * 2) as u64,
                        ld: hd,
                        stride: 0,
                        dt: Dt::F16,
                    },
                    true,
                    0.0,
                    Mat {
                        ptr: sc.ptr,
                        ld,
                        stride: nq * ld,
                        dt: Dt::F32,
                    },
                    group,
                )?;
                let (ld_i, nq_i, q0_i, nk_i) = (ld as i64, nq as i32, q_pos as i32, nk as i32);
                gpu.launch(
                    "softmax_causal",
                    (group * nq) as u32,
                    256,
                    &[&sc.ptr, &pr.ptr, &ld_i, &nq_i, &q0_i, &nk_i],
                )?;
                let o_at = ao.at((qb0 * nh + g * group) * hd * 2);
                gpu.gemm(
                    nq,
                    hd,
                    nk,
                    1.0,
                    Mat {
                        ptr: pr.ptr,
                        ld,
                        stride: nq * ld,
                        dt: Dt::F16,
                    },
                    false,
                    Mat {
                        ptr: vc + (g * cap * hd * 2) as u64,
                        ld: hd,
                        stride: 0,
                        dt: Dt::F16,
                    },
                    false,
                    0.0,
                    Mat {
                        ptr: o_at,
                        ld: nh * hd,
                        stride: hd,
                        dt: Dt::F16,
                    },
                    group,
                )?;
            }
        }
        Ok(())
    }

    /// Where each product's importance sums live in one flat f64 buffer: per layer the inputs
    /// of (q, k, v), o, (gate, up), down; the head's after every layer's.
    fn sum_layout(&self) -> SumLayout {
        let cfg = &self.host.config;
        let widths = [cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_embd, cfg.n_ff];
        SumLayout {
            widths,
            per_layer: widths.iter().sum(),
            n_layers: self.layers.len(),
            n_embd: cfg.n_embd,
        }
    }

    /// Prepares the output head: its f16 weights and buffers for `th` positions.
    fn head_begin(&self, gpu: &Gpu, th: usize) -> Result<HeadBuffers, CudaError> {
        let (d, nv) = (self.host.config.n_embd, self.host.config.n_vocab);
        let dequant = if self.output.is_f16 {
            None
        } else {
            Some(gpu.alloc(self.output.elems() * 2, "the dequantized output head")?)
        };
        let w16 = match &dequant {
            Some(m) => Self::f16_of(gpu, &self.output, m)?,
            None => self.output.mem.ptr,
        };
        Ok(HeadBuffers {
            _dequant: dequant,
            w16,
            logits: gpu.alloc(th * nv * 4, "logits")?,
            xn: gpu.alloc(th * d * 2, "normed activations")?,
        })
    }

    /// Final norm and output head for positions `r0..r0 + np` of the residual stream `x`
    /// (row `i` is position `i`); the logits land in `hb.logits` (`np × n_vocab` f32).
    fn head_tile(
        &self,
        gpu: &Gpu,
        hb: &HeadBuffers,
        x: &DevMem,
        r0: usize,
        np: usize,
        sums: Option<&DevMem>,
    ) -> Result<(), CudaError> {
        let cfg = &self.host.config;
        let (d, eps) = (cfg.n_embd, cfg.rms_eps);
        let di = d as i32;
        let xr = x.at(r0 * d * 4);
        gpu.launch(
            "rms_norm_f16",
            np as u32,
            256,
            &[&xr, &self.output_norm.ptr, &hb.xn.ptr, &di, &eps],
        )?;
        if let Some(m) = sums {
            gpu.col_sumsq(hb.xn.ptr, np, d, m.at(self.sum_layout().head_offset() * 8))?;
        }
        Self::matmul(gpu, hb.w16, &self.output, hb.xn.ptr, np, hb.logits.ptr)
    }

    fn run(
        &self,
        tokens: &[u32],
        from: usize,
        head: Head<'_>,
        sink: Option<&mut dyn InputSink>,
    ) -> Result<(), CudaError> {
        let cfg = &self.host.config;
        let gpu = self.gpu.lock().unwrap();
        let n = tokens.len();
        let layout = self.sum_layout();
        let sums = match sink {
            Some(_) => {
                let m = gpu.alloc(layout.total() * 8, "importance sums")?;
                gpu.zero(m.ptr, layout.total() * 8)?;
                Some(m)
            }
            None => None,
        };
        let x = self.forward(&gpu, tokens, 0, Kv::Scratch, sums.as_ref())?;

        // Output head, TH positions at a time; scoring on the device.
        let nv = cfg.n_vocab;
        let end = match &head {
            Head::Logits(_) => n,
            Head::Nll { targets, .. } => (from + targets.len()).min(n),
        };
        if from < end {
            let th = TH.min(end - from);
            let hb = self.head_begin(&gpu, th)?;
            let tg = gpu.alloc(th * 4, "targets")?;
            let nl = gpu.alloc(th * 8, "NLL values")?;
            let mut host_logits = match &head {
                Head::Logits(_) => vec![0.0f32; th * nv],
                Head::Nll { .. } => Vec::new(),
            };
            let mut host_nll = vec![0.0f64; th];
            let mut head = head;
            let nv_i = nv as i32;
            for r0 in (from..end).step_by(th) {
                let np = th.min(end - r0);
                self.head_tile(&gpu, &hb, &x, r0, np, sums.as_ref())?;
                match &mut head {
                    Head::Logits(f) => {
                        gpu.download(&mut host_logits[..np * nv], hb.logits.ptr)?;
                        for (i, row) in host_logits[..np * nv].chunks(nv).enumerate() {
                            f(r0 + i, row);
                        }
                    }
                    Head::Nll { targets, on } => {
                        gpu.upload(tg.ptr, &targets[r0 - from..r0 - from + np])?;
                        gpu.launch(
                            "nll_rows",
                            np as u32,
                            256,
                            &[&hb.logits.ptr, &tg.ptr, &nl.ptr, &nv_i],
                        )?;
                        gpu.download(&mut host_nll[..np], nl.ptr)?;
                        for (i, &v) in host_nll[..np].iter().enumerate() {
                            on(r0 + i, v);
                        }
                    }
                }
            }
        }
        if let (Some(m), Some(sink)) = (&sums, sink) {
            let mut host = vec![0.0f64; layout.total()];
            gpu.download(&mut host, m.ptr)?;
            let names: [&[&str]; 4] = [
                &["attn_q", "attn_k", "attn_v"],
                &["attn_output"],
                &["ffn_gate", "ffn_up"],
                &["ffn_down"],
            ];
            for il in 0..self.layers.len() {
                for (slot, group) in names.iter().enumerate() {
                    let off = layout.offset(il, slot);
                    let v = &host[off..off + layout.widths[slot]];
                    for nm in group.iter() {
                        sink.sums(&format!("blk.{il}.{nm}.weight"), v, n as u64);
                    }
                }
            }
            if end > from && !self.host.weights.tied_output {
                let off = layout.head_offset();
                sink.sums(
                    "output.weight",
                    &host[off..off + cfg.n_embd],
                    (end - from) as u64,
                );
            }
        }
        gpu.sync()
    }

    /// Scores this model against `base` on one chunk, both on the GPU: each runs the chunk
    /// through its layers, then tile by tile both heads run and `kld_rows` compares the two
    /// logit rows of every position `from..from + targets.len()` where they are.
    fn compare_run(
        &self,
        base: &CudaModel<'_>,
        tokens: &[u32],
        from: usize,
        targets: &[u32],
        on: &mut dyn FnMut(usize, DeviceScore),
    ) -> Result<(), CudaError> {
        let n = tokens.len();
        let end = (from + targets.len()).min(n);
        let bgpu = base.gpu.lock().unwrap();
        let xb = base.forward(&bgpu, tokens, 0, Kv::Scratch, None)?;
        let gpu = self.gpu.lock().unwrap();
        let xm = self.forward(&gpu, tokens, 0, Kv::Scratch, None)?;
        if from >= end {
            return Ok(());
        }
        let nv = self.host.config.n_vocab;
        let th = TH.min(end - from);
        let hbb = base.head_begin(&bgpu, th)?;
        let hbm = self.head_begin(&gpu, th)?;
        let tg = gpu.alloc(th * 4, "targets")?;
        let res = gpu.alloc(th * 4 * 8, "KLD values")?;
        let mut host = vec![0.0f64; th * 4];
        let nv_i = nv as i32;
        for r0 in (from..end).step_by(th) {
            let np = th.min(end - r0);
            base.head_tile(&bgpu, &hbb, &xb, r0, np, None)?;
            // The model's stream reads the base's logits: they must be complete.
            bgpu.sync()?;
            self.head_tile(&gpu, &hbm, &xm, r0, np, None)?;
            gpu.upload(tg.ptr, &targets[r0 - from..r0 - from + np])?;
            gpu.launch(
                "kld_rows",
                np as u32,
                512,
                &[&hbb.logits.ptr, &hbm.logits.ptr, &tg.ptr, &res.ptr, &nv_i],
            )?;
            gpu.download(&mut host[..np * 4], res.ptr)?;
            for (i, r) in host[..np * 4].chunks(4).enumerate() {
                on(
                    r0 + i,
                    DeviceScore {
                        nll: r[0],
                        nll_base: r[1],
                        kld: r[2],
                        same_top: r[3] != 0.0,
                    },
                );
            }
        }
        gpu.sync()?;
        bgpu.sync()
    }

    /// Scores this model against saved base records on one chunk: per head tile the records
    /// go to the device and `kld_saved_rows` scores them against the logits there.
    fn saved_run(
        &self,
        tokens: &[u32],
        from: usize,
        targets: &[u32],
        next: &mut dyn FnMut(usize, &mut BaseRecord) -> bool,
        on: &mut dyn FnMut(usize, SavedScore),
    ) -> Result<(), CudaError> {
        let n = tokens.len();
        let end = (from + targets.len()).min(n);
        let gpu = self.gpu.lock().unwrap();
        let x = self.forward(&gpu, tokens, 0, Kv::Scratch, None)?;
        if from >= end {
            return Ok(());
        }
        let nv = self.host.config.n_vocab;
        let th = TH.min(end - from);
        let hb = self.head_begin(&gpu, th)?;
        let mut rec = BaseRecord::default();
        // The record size is the file's k; it is known once the first record is read.
        let mut k = None::<usize>;
        let mut bufs: Option<[DevMem; 6]> = None;
        let out = gpu.alloc(th * 8 * 8, "KLD values")?;
        let mut host_out = vec![0.0f64; th * 8];
        let (mut meta, mut tid, mut tlp, mut sid, mut slp) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r0 in (from..end).step_by(th) {
            let np = th.min(end - r0);
            meta.clear();
            tid.clear();
            tlp.clear();
            sid.clear();
            slp.clear();
            for pos in r0..r0 + np {
                if !next(pos, &mut rec) {
                    return Ok(()); // the caller holds the reader's error
                }
                let kk = *k.get_or_insert(rec.top.len());
                meta.extend([rec.target_logp, rec.tail_mass, rec.tail_plogp]);
                for j in 0..kk {
                    let (i, l) = rec
                        .top
                        .get(j)
                        .copied()
                        .unwrap_or((u32::MAX, f32::NEG_INFINITY));
                    tid.push(i);
                    tlp.push(l);
                    let (i, l) = rec.samples.get(j).copied().unwrap_or((u32::MAX, 0.0));
                    sid.push(i);
                    slp.push(l);
                }
            }
            let kk = k.unwrap_or(0);
            if bufs.is_none() {
                let m = |b: usize| gpu.alloc(b.max(4), "saved base records");
                bufs = Some([
                    m(th * 3 * 4)?,
                    m(th * kk * 4)?,
                    m(th * kk * 4)?,
                    m(th * kk * 4)?,
                    m(th * kk * 4)?,
                    m(th * 4)?,
                ]);
            }
            let b = bufs.as_ref().unwrap();
            gpu.upload(b[0].ptr, &meta)?;
            gpu.upload(b[1].ptr, &tid)?;
            gpu.upload(b[2].ptr, &tlp)?;
            gpu.upload(b[3].ptr, &sid)?;
            gpu.upload(b[4].ptr, &slp)?;
            gpu.upload(b[5].ptr, &targets[r0 - from..r0 - from + np])?;
            self.head_tile(&gpu, &hb, &x, r0, np, None)?;
            let (nv_i, k_i) = (nv as i32, kk as i32);
            gpu.launch(
                "kld_saved_rows",
                np as u32,
                512,
                &[
                    &hb.logits.ptr,
                    &b[0].ptr,
                    &b[1].ptr,
                    &b[2].ptr,
                    &b[3].ptr,
                    &b[4].ptr,
                    &b[5].ptr,
                    &out.ptr,
                    &nv_i,
                    &k_i,
                ],
            )?;
            gpu.download(&mut host_out[..np * 8], out.ptr)?;
            for (i, r) in host_out[..np * 8].chunks(8).enumerate() {
                on(
                    r0 + i,
                    SavedScore {
                        nll: r[0],
                        nll_base: r[1],
                        kld: r[2],
                        kld_lower: r[3],
                        kld_upper: r[4],
                        tail_var: r[5],
                        same_top: r[6] != 0.0,
                        tail_mass: r[7],
                    },
                );
            }
        }
        gpu.sync()
    }

    /// Grows a session's caches to hold `need` positions (keeping the first `len`).
    fn grow_cache(&self, gpu: &Gpu, s: &mut SessionCache, need: usize) -> Result<(), CudaError> {
        if need <= s.cap {
            return Ok(());
        }
        let cfg = &self.host.config;
        let cap = need
            .max(s.cap * 2)
            .max(1024)
            .min(cfg.context_length.max(need));
        let (nkv, hd) = (cfg.n_head_kv, cfg.head_dim);
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for il in 0..self.layers.len() {
            let nk = gpu.alloc(nkv * cap * hd * 2, "the K cache")?;
            let nv = gpu.alloc(nkv * cap * hd * 2, "the V cache")?;
            if s.len > 0 {
                for g in 0..nkv {
                    let bytes = s.len * hd * 2;
                    gpu.copy(
                        nk.at(g * cap * hd * 2),
                        s.k[il].at(g * s.cap * hd * 2),
                        bytes,
                    )?;
                    gpu.copy(
                        nv.at(g * cap * hd * 2),
                        s.v[il].at(g * s.cap * hd * 2),
                        bytes,
                    )?;
                }
            }
            k.push(nk);
            v.push(nv);
        }
        gpu.sync()?;
        s.k = k;
        s.v = v;
        s.cap = cap;
        Ok(())
    }

    /// Feeds `tokens` to a session at positions `s.len..` and returns the last one's logits.
    fn session_feed(&self, s: &mut SessionCache, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.host.check_tokens(tokens, s.len)?;
        let gpu = self.gpu.lock().unwrap();
        let n = tokens.len();
        let run = |s: &mut SessionCache| -> Result<Vec<f32>, CudaError> {
            self.grow_cache(&gpu, s, s.len + n)?;
            let x = self.forward(
                &gpu,
                tokens,
                s.len,
                Kv::Session {
                    k: &s.k,
                    v: &s.v,
                    cap: s.cap,
                },
                None,
            )?;
            let hb = self.head_begin(&gpu, 1)?;
            self.head_tile(&gpu, &hb, &x, n - 1, 1, None)?;
            let mut out = vec![0.0f32; self.host.config.n_vocab];
            gpu.download(&mut out, hb.logits.ptr)?;
            Ok(out)
        };
        let out = run(s).map_err(dev)?;
        s.len += n;
        Ok(out)
    }

    fn check(&self, tokens: &[u32], opts: &EvalOptions) -> Result<(), ModelError> {
        if opts.cache_type_k != KvType::F16 || opts.cache_type_v != KvType::F16 {
            return Err(kv_unsupported(opts));
        }
        self.host.check_tokens(tokens, 0)
    }
}

/// Queries per block of the fused attention kernel.
const FA_BM: usize = 64;

/// The fused attention kernel for a head size, if there is one (`LONGQUANT_CUDA_ATTN=gemm`
/// forces the cuBLAS path, for comparison).
fn attention_kernel(head_dim: usize) -> Option<&'static str> {
    if std::env::var("LONGQUANT_CUDA_ATTN").is_ok_and(|v| v == "gemm") {
        return None;
    }
    match head_dim {
        64 => Some("flash_attn_64"),
        128 => Some("flash_attn_128"),
        _ => None,
    }
}

/// Where a forward pass keeps K and V.
enum Kv<'c> {
    /// One layer's cache for a chunk from position 0, reused by every layer.
    Scratch,
    /// A session's caches, one per layer, `cap` positions each.
    Session {
        k: &'c [DevMem],
        v: &'c [DevMem],
        cap: usize,
    },
}

/// Offsets of the importance sums in one flat f64 buffer.
struct SumLayout {
    /// Input widths of the four product groups of a layer: (q, k, v), o, (gate, up), down.
    widths: [usize; 4],
    per_layer: usize,
    n_layers: usize,
    n_embd: usize,
}

impl SumLayout {
    fn offset(&self, layer: usize, slot: usize) -> usize {
        layer * self.per_layer + self.widths[..slot].iter().sum::<usize>()
    }
    fn head_offset(&self) -> usize {
        self.per_layer * self.n_layers
    }
    fn total(&self) -> usize {
        self.head_offset() + self.n_embd
    }
}

/// The output head's f16 weights and per-tile buffers.
struct HeadBuffers {
    /// The dequantized weights, unless they are f16 already.
    _dequant: Option<DevMem>,
    w16: u64,
    logits: DevMem,
    xn: DevMem,
}

/// A decoding session's K/V caches on the device: one per layer, `[kv_head][cap][head_dim]`.
struct SessionCache {
    k: Vec<DevMem>,
    v: Vec<DevMem>,
    cap: usize,
    len: usize,
}

/// Cached decoding on the GPU (recall): every layer's K/V stay on the device between calls.
pub struct CudaSession<'m, 'a> {
    model: &'m CudaModel<'a>,
    cache: SessionCache,
}

impl Decoder for CudaSession<'_, '_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.model.session_feed(&mut self.cache, tokens)
    }

    fn len(&self) -> usize {
        self.cache.len
    }
}

/// What the output head's results are for.
enum Head<'f> {
    /// Every position's logits, to the host.
    Logits(&'f mut dyn FnMut(usize, &[f32])),
    /// The NLL of each target, computed on the device.
    Nll {
        targets: &'f [u32],
        on: &'f mut dyn FnMut(usize, f64),
    },
}

impl Evaluator for CudaModel<'_> {
    fn config(&self) -> &LlamaConfig {
        &self.host.config
    }

    fn eval(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        self.check(tokens, opts)?;
        self.run(tokens, logits_from, Head::Logits(on_logits), None)
            .map_err(dev)
    }

    fn eval_nll(
        &self,
        tokens: &[u32],
        logits_from: usize,
        targets: &[u32],
        opts: &EvalOptions,
        on_nll: &mut dyn FnMut(usize, f64),
    ) -> Result<(), ModelError> {
        self.check(tokens, opts)?;
        self.run(
            tokens,
            logits_from,
            Head::Nll {
                targets,
                on: on_nll,
            },
            None,
        )
        .map_err(dev)
    }

    fn eval_observed(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        sink: &mut dyn InputSink,
    ) -> Result<(), ModelError> {
        self.check(tokens, opts)?;
        self.run(tokens, logits_from, Head::Logits(on_logits), Some(sink))
            .map_err(dev)
    }

    fn tied_output(&self) -> bool {
        self.host.weights.tied_output
    }

    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn as_cuda(&self) -> Option<&CudaModel<'_>> {
        Some(self)
    }

    fn compare_on_device(
        &self,
        base: &dyn Evaluator,
        tokens: &[u32],
        logits_from: usize,
        targets: &[u32],
        opts: &EvalOptions,
        on_score: &mut dyn FnMut(usize, DeviceScore),
    ) -> Result<bool, ModelError> {
        // LONGQUANT_CUDA_COMPARE=host scores on the host instead (for scripts/test-cuda.sh).
        if std::env::var("LONGQUANT_CUDA_COMPARE").is_ok_and(|v| v == "host") {
            return Ok(false);
        }
        let Some(base) = base.as_cuda() else {
            return Ok(false);
        };
        if base.ordinal != self.ordinal {
            return Ok(false);
        }
        self.check(tokens, opts)?;
        base.check(tokens, opts)?;
        self.compare_run(base, tokens, logits_from, targets, on_score)
            .map_err(dev)?;
        Ok(true)
    }

    fn compare_saved_on_device(
        &self,
        tokens: &[u32],
        logits_from: usize,
        targets: &[u32],
        opts: &EvalOptions,
        next: &mut dyn FnMut(usize, &mut BaseRecord) -> bool,
        on_score: &mut dyn FnMut(usize, SavedScore),
    ) -> Result<bool, ModelError> {
        // The kernel's shared bitmap of top-k tokens holds 2^18 ids.
        if std::env::var("LONGQUANT_CUDA_COMPARE").is_ok_and(|v| v == "host")
            || self.host.config.n_vocab > 1 << 18
        {
            return Ok(false);
        }
        self.check(tokens, opts)?;
        self.saved_run(tokens, logits_from, targets, next, on_score)
            .map_err(dev)?;
        Ok(true)
    }

    fn decoder(&self, opts: &EvalOptions) -> Result<Box<dyn Decoder + '_>, ModelError> {
        if opts.cache_type_k != KvType::F16 || opts.cache_type_v != KvType::F16 {
            return Err(kv_unsupported(opts));
        }
        Ok(Box::new(CudaSession {
            model: self,
            cache: SessionCache {
                k: Vec::new(),
                v: Vec::new(),
                cap: 0,
                len: 0,
            },
        }))
    }
}

fn kv_unsupported(opts: &EvalOptions) -> ModelError {
    ModelError::UnsupportedFeature(format!(
        "the CUDA backend keeps K/V in f16; --cache-type-k {} --cache-type-v {} run on the CPU \
         only (--device cpu)",
        opts.cache_type_k.name(),
        opts.cache_type_v.name()
    ))
}

/// Every block format the CUDA backend dequantizes.
pub const FORMATS: &[BlockFormat] = &[
    BlockFormat::F32,
    BlockFormat::F16,
    BlockFormat::BF16,
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
    BlockFormat::Q2_K,
    BlockFormat::Q3_K,
    BlockFormat::Q4_K,
    BlockFormat::Q5_K,
    BlockFormat::Q6_K,
    BlockFormat::IQ4_NL,
    BlockFormat::IQ4_XS,
];

/// One format's result of [`check_dequantize`].
#[derive(Debug)]
pub struct DequantCheck {
    /// The format.
    pub format: BlockFormat,
    /// Values compared.
    pub values: usize,
    /// Values whose f16 bits differ from the CPU's dequantization rounded to f16.
    pub differ: usize,
    /// Largest absolute difference.
    pub worst: f32,
}

/// Quantizes pseudo-random rows (a spread of magnitudes, some outliers) to each of
/// [`FORMATS`] on the CPU, dequantizes them on device `ordinal`, and compares with the CPU's
/// dequantization rounded to f16. For `scripts/test-cuda.sh`.
pub fn check_dequantize(ordinal: usize) -> Result<Vec<DequantCheck>, ModelError> {
    let gpu = Gpu::open(ordinal).map_err(dev)?;
    let (rows, cols) = (16usize, 1024usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let src: Vec<f32> = (0..rows * cols)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let row_scale = 0.01 * (1 + i / cols) as f64;
            let outlier = if i % 97 == 0 { 8.0 } else { 1.0 };
            (u * row_scale * outlier) as f32
        })
        .collect();
    let mut out = Vec::new();
    for &f in FORMATS {
        let kernel = kernel_for(f).expect("every listed format has a kernel");
        let rs = f
            .row_size(cols)
            .expect("1024 is a multiple of every block size");
        let mut bytes = vec![0u8; rs * rows];
        for (r, dst) in bytes.chunks_mut(rs).enumerate() {
            longquant_quants::tensor::quantize_row(f, &src[r * cols..(r + 1) * cols], None, dst)
                .map_err(|e| ModelError::InvalidConfig(e.to_string()))?;
        }
        let d_src = gpu.upload_new(&bytes, "check").map_err(dev)?;
        let n = rows * cols;
        let d_dst = gpu.alloc(n * 2, "check").map_err(dev)?;
        let ni = n as i64;
        gpu.launch_n(kernel, n, &[&d_src.ptr, &d_dst.ptr, &ni])
            .map_err(dev)?;
        let mut got = vec![0u16; n];
        gpu.download(&mut got, d_dst.ptr).map_err(dev)?;
        let mut row = vec![0.0f32; cols];
        let (mut differ, mut worst) = (0usize, 0.0f32);
        for (r, blocks) in bytes.chunks(rs).enumerate() {
            longquant_quants::tensor::dequantize_row(f, blocks, &mut row)
                .map_err(|e| ModelError::InvalidConfig(e.to_string()))?;
            for (c, &v) in row.iter().enumerate() {
                let want = half::f16::from_f32(v);
                let g = half::f16::from_bits(got[r * cols + c]);
                if g.to_bits() != want.to_bits() {
                    differ += 1;
                    worst = worst.max((g.to_f32() - want.to_f32()).abs());
                }
            }
        }
        out.push(DequantCheck {
            format: f,
            values: n,
            differ,
            worst,
        });
    }
    Ok(out)
}
