//! The model's tensors, borrowed from the memory-mapped GGUF in their stored type.
//!
//! Every tensor is checked once here (present, shape equal to what the hyperparameters imply,
//! a type the forward pass computes with, data aligned for its block type); afterwards the
//! forward pass indexes plain typed slices whose lengths are known to be right.
use super::{LlamaConfig, ModelError};
use half::{bf16, f16};
use longquant_formats::gguf::{GgufFile, TensorInfo};
use longquant_formats::GgmlType;
use longquant_quants::block::{
    cast_blocks, iq4_nl::BlockIQ4NL, iq4_xs::BlockIQ4XS, q2_k::BlockQ2K, q3_k::BlockQ3K,
    q4_0::BlockQ4_0, q4_1::BlockQ4_1, q4_k::BlockQ4K, q5_0::BlockQ5_0, q5_1::BlockQ5_1,
    q5_k::BlockQ5K, q6_k::BlockQ6K, q8_0::BlockQ8_0, Block,
};

/// A weight matrix's data in its stored type, as a slice of blocks (rows back to back).
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE halves.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// Q4_0 blocks.
    Q4_0(&'a [BlockQ4_0]),
    /// Q4_1 blocks.
    Q4_1(&'a [BlockQ4_1]),
    /// Q5_0 blocks.
    Q5_0(&'a [BlockQ5_0]),
    /// Q5_1 blocks.
    Q5_1(&'a [BlockQ5_1]),
    /// Q8_0 blocks.
    Q8_0(&'a [BlockQ8_0]),
    /// Q4_K super-blocks.
    Q4K(&'a [BlockQ4K]),
    /// Q5_K super-blocks.
    Q5K(&'a [BlockQ5K]),
    /// Q6_K super-blocks.
    Q6K(&'a [BlockQ6K]),
    /// Q2_K super-blocks.
    Q2K(&'a [BlockQ2K]),
    /// Q3_K super-blocks.
    Q3K(&'a [BlockQ3K]),
    /// IQ4_NL blocks.
    IQ4NL(&'a [BlockIQ4NL]),
    /// IQ4_XS super-blocks.
    IQ4XS(&'a [BlockIQ4XS]),
}

/// A 2-D weight: `rows` output features of `cols` inputs each (GGUF dims `[cols, rows]`).
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    /// The data.
    pub data: WeightData<'a>,
    /// Row length (inputs).
    pub cols: usize,
    /// Number of rows (outputs).
    pub rows: usize,
}

impl Weight<'_> {
    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.format().block_size()
    }

    /// The quants crate's format of the stored blocks.
    pub fn format(&self) -> longquant_quants::BlockFormat {
        use longquant_quants::BlockFormat as F;
        match self.data {
            WeightData::F32(_) => F::F32,
            WeightData::F16(_) => F::F16,
            WeightData::BF16(_) => F::BF16,
            WeightData::Q4_0(_) => F::Q4_0,
            WeightData::Q4_1(_) => F::Q4_1,
            WeightData::Q5_0(_) => F::Q5_0,
            WeightData::Q5_1(_) => F::Q5_1,
            WeightData::Q8_0(_) => F::Q8_0,
            WeightData::Q4K(_) => F::Q4_K,
            WeightData::Q5K(_) => F::Q5_K,
            WeightData::Q6K(_) => F::Q6_K,
            WeightData::Q2K(_) => F::Q2_K,
            WeightData::Q3K(_) => F::Q3_K,
            WeightData::IQ4NL(_) => F::IQ4_NL,
            WeightData::IQ4XS(_) => F::IQ4_XS,
        }
    }

    /// The stored bytes (rows back to back, in the stored block type).
    pub fn bytes(&self) -> &[u8] {
        fn raw<T>(s: &[T]) -> &[u8] {
            // SAFETY: every block type here is plain old data (`Block`: repr(C), no padding
            // invariants, any bit pattern valid to read as bytes).
            unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
        }
        match self.data {
            WeightData::F32(d) => raw(d),
            WeightData::F16(d) => raw(d),
            WeightData::BF16(d) => raw(d),
            WeightData::Q4_0(d) => raw(d),
            WeightData::Q4_1(d) => raw(d),
            WeightData::Q5_0(d) => raw(d),
            WeightData::Q5_1(d) => raw(d),
            WeightData::Q8_0(d) => raw(d),
            WeightData::Q4K(d) => raw(d),
            WeightData::Q5K(d) => raw(d),
            WeightData::Q6K(d) => raw(d),
            WeightData::Q2K(d) => raw(d),
            WeightData::Q3K(d) => raw(d),
            WeightData::IQ4NL(d) => raw(d),
            WeightData::IQ4XS(d) => raw(d),
        }
    }

    /// Dequantizes row `r` into `out` (`out.len() == cols`). `r < rows` is the caller's
    /// invariant (token ids are range-checked before lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let k = longquant_quants::simd::kernels();
        let bpr = self.blocks_per_row();
        let span = r * bpr..(r + 1) * bpr;
        match self.data {
            WeightData::F32(d) => out.copy_from_slice(&d[span]),
            WeightData::F16(d) => (k.f16_to_f32_row)(&d[span], out),
            WeightData::BF16(d) => (k.bf16_to_f32_row)(&d[span], out),
            WeightData::Q4_0(d) => (k.dequantize_row_q4_0)(&d[span], out),
            WeightData::Q4_1(d) => (k.dequantize_row_q4_1)(&d[span], out),
            WeightData::Q5_0(d) => (k.dequantize_row_q5_0)(&d[span], out),
            WeightData::Q5_1(d) => (k.dequantize_row_q5_1)(&d[span], out),
            WeightData::Q8_0(d) => (k.dequantize_row_q8_0)(&d[span], out),
            WeightData::Q4K(d) => (k.dequantize_row_q4_k)(&d[span], out),
            WeightData::Q5K(d) => (k.dequantize_row_q5_k)(&d[span], out),
            WeightData::Q6K(d) => (k.dequantize_row_q6_k)(&d[span], out),
            WeightData::Q2K(d) => (k.dequantize_row_q2_k)(&d[span], out),
            WeightData::Q3K(d) => (k.dequantize_row_q3_k)(&d[span], out),
            WeightData::IQ4NL(d) => (k.dequantize_row_iq4_nl)(&d[span], out),
            WeightData::IQ4XS(d) => (k.dequantize_row_iq4_xs)(&d[span], out),
        }
    }
}

/// One transformer block's tensors.
#[derive(Debug)]
pub struct LayerWeights<'a> {
    /// RMSNorm gain before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection (`n_embd` → `n_embd`).
    pub wq: Weight<'a>,
    /// Key projection (`n_embd` → `n_embd_kv`).
    pub wk: Weight<'a>,
    /// Value projection (`n_embd` → `n_embd_kv`).
    pub wv: Weight<'a>,
    /// Attention output projection.
    pub wo: Weight<'a>,
    /// RMSNorm gain before the FFN.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate (`n_embd` → `n_ff`).
    pub gate: Weight<'a>,
    /// SwiGLU up (`n_embd` → `n_ff`).
    pub up: Weight<'a>,
    /// FFN down (`n_ff` → `n_embd`).
    pub down: Weight<'a>,
}

/// All tensors of a Llama model.
#[derive(Debug)]
pub struct Weights<'a> {
    /// Token embeddings (`n_vocab` rows of `n_embd`).
    pub token_embd: Weight<'a>,
    /// Transformer blocks.
    pub layers: Vec<LayerWeights<'a>>,
    /// Final RMSNorm gain.
    pub output_norm: Vec<f32>,
    /// Output head; the embedding matrix itself when the file has no `output.weight` (tied).
    pub output: Weight<'a>,
    /// Whether `output` is the tied embedding matrix.
    pub tied_output: bool,
    /// `rope_freqs.weight`: per-pair divisors of the RoPE frequencies (Llama-3.1 style scaling).
    pub rope_freqs: Option<Vec<f32>>,
}

fn cast<'a, T: Block>(name: &str, bytes: &'a [u8]) -> Result<&'a [T], ModelError> {
    cast_blocks::<T>(bytes).ok_or_else(|| ModelError::Misaligned(name.to_string()))
}

fn info<'f>(file: &'f GgufFile, name: &str) -> Result<&'f TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn check_shape(t: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    if t.dims != expected {
        return Err(ModelError::ShapeMismatch {
            tensor: t.name.clone(),
            expected: expected.to_vec(),
            got: t.dims.clone(),
        });
    }
    Ok(())
}

/// Every 2-D tensor of a GGUF file dequantized to f32: the "unquantized" version of a quantized
/// model, run through the same forward pass (the reference our quantized results are compared
/// with, and what llama.cpp computes for an F32 GGUF made from the same file).
#[derive(Debug, Default)]
pub struct DequantizedTensors {
    map: std::collections::HashMap<String, Vec<f32>>,
}

impl DequantizedTensors {
    /// Dequantizes the 2-D tensors of `file` that [`Weights::load`] would use.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let mut map = std::collections::HashMap::new();
        for t in file.tensors() {
            let [c, r] = t.dims.as_slice() else { continue };
            let (cols, rows) = (*c as usize, *r as usize);
            if cols == 0 || rows == 0 {
                // An empty tensor has no rows to dequantize (and `chunks_mut(0)` would panic).
                continue;
            }
            let w = matrix_from_file(file, &t.name, cols, rows)?;
            let mut out = vec![0.0f32; cols * rows];
            for (i, row) in out.chunks_mut(cols).enumerate() {
                w.dequantize_row(i, row);
            }
            map.insert(t.name.clone(), out);
        }
        Ok(Self { map })
    }
}

fn matrix<'a>(
    file: &'a GgufFile,
    f32s: Option<&'a DequantizedTensors>,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<Weight<'a>, ModelError> {
    let t = info(file, name)?;
    check_shape(t, &[cols as u64, rows as u64])?;
    if let Some(d) = f32s.and_then(|s| s.map.get(name)) {
        return Ok(Weight {
            data: WeightData::F32(d),
            cols,
            rows,
        });
    }
    matrix_from_file(file, name, cols, rows)
}

fn matrix_from_file<'a>(
    file: &'a GgufFile,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<Weight<'a>, ModelError> {
    let t = info(file, name)?;
    let bytes = file.tensor_data(t);
    let data = match t.ggml_type {
        GgmlType::F32 => WeightData::F32(cast(name, bytes)?),
        GgmlType::F16 => WeightData::F16(cast(name, bytes)?),
        GgmlType::BF16 => WeightData::BF16(cast(name, bytes)?),
        GgmlType::Q4_0 => WeightData::Q4_0(cast(name, bytes)?),
        GgmlType::Q4_1 => WeightData::Q4_1(cast(name, bytes)?),
        GgmlType::Q5_0 => WeightData::Q5_0(cast(name, bytes)?),
        GgmlType::Q5_1 => WeightData::Q5_1(cast(name, bytes)?),
        GgmlType::Q8_0 => WeightData::Q8_0(cast(name, bytes)?),
        GgmlType::Q4_K => WeightData::Q4K(cast(name, bytes)?),
        GgmlType::Q5_K => WeightData::Q5K(cast(name, bytes)?),
        GgmlType::Q6_K => WeightData::Q6K(cast(name, bytes)?),
        GgmlType::Q2_K => WeightData::Q2K(cast(name, bytes)?),
        GgmlType::Q3_K => WeightData::Q3K(cast(name, bytes)?),
        GgmlType::IQ4_NL => WeightData::IQ4NL(cast(name, bytes)?),
        GgmlType::IQ4_XS => WeightData::IQ4XS(cast(name, bytes)?),
        ty => {
            return Err(ModelError::UnsupportedType {
                tensor: name.to_string(),
                ty,
            })
        }
    };
    let w = Weight { data, cols, rows };
    // The reader validated n_bytes against the type and shape; this re-check keeps the forward
    // pass's slicing provably in bounds even if that contract changes.
    let fmt = w.format();
    if !cols.is_multiple_of(fmt.block_size())
        || fmt.row_size(cols).map(|s| s * rows) != Some(bytes.len())
    {
        return Err(ModelError::ShapeMismatch {
            tensor: name.to_string(),
            expected: vec![cols as u64, rows as u64],
            got: t.dims.clone(),
        });
    }
    Ok(w)
}

/// A 1-D tensor (norm gains, rope factors), dequantized to f32.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = info(file, name)?;
    check_shape(t, &[n as u64])?;
    let w = matrix_any_shape(file, t, n)?;
    let mut out = vec![0.0f32; n];
    w.dequantize_row(0, &mut out);
    Ok(out)
}

fn matrix_any_shape<'a>(
    file: &'a GgufFile,
    t: &TensorInfo,
    n: usize,
) -> Result<Weight<'a>, ModelError> {
    let bytes = file.tensor_data(t);
    let name = t.name.as_str();
    let data = match t.ggml_type {
        GgmlType::F32 => WeightData::F32(cast(name, bytes)?),
        GgmlType::F16 => WeightData::F16(cast(name, bytes)?),
        GgmlType::BF16 => WeightData::BF16(cast(name, bytes)?),
        ty => {
            return Err(ModelError::UnsupportedType {
                tensor: name.to_string(),
                ty,
            })
        }
    };
    let len = match data {
        WeightData::F32(d) => d.len(),
        WeightData::F16(d) => d.len(),
        WeightData::BF16(d) => d.len(),
        _ => 0,
    };
    if len != n {
        return Err(ModelError::ShapeMismatch {
            tensor: name.to_string(),
            expected: vec![n as u64],
            got: t.dims.clone(),
        });
    }
    Ok(Weight {
        data,
        cols: n,
        rows: 1,
    })
}

impl<'a> Weights<'a> {
    /// Finds, checks and borrows every tensor `cfg` calls for; matrices found in `f32s` are
    /// taken from there instead of the file.
    pub fn load(
        file: &'a GgufFile,
        cfg: &LlamaConfig,
        f32s: Option<&'a DequantizedTensors>,
    ) -> Result<Self, ModelError> {
        let (d, dkv, ff, nv) = (cfg.n_embd, cfg.n_embd_kv(), cfg.n_ff, cfg.n_vocab);
        let token_embd = matrix(file, f32s, "token_embd.weight", d, nv)?;
        let (output, tied_output) = match file.tensor("output.weight") {
            Some(_) => (matrix(file, f32s, "output.weight", d, nv)?, false),
            None => (token_embd, true),
        };
        let output_norm = vector(file, "output_norm.weight", d)?;
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(file, "rope_freqs.weight", cfg.n_rot / 2)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(file, &n("attn_norm"), d)?,
                wq: matrix(file, f32s, &n("attn_q"), d, d)?,
                wk: matrix(file, f32s, &n("attn_k"), d, dkv)?,
                wv: matrix(file, f32s, &n("attn_v"), d, dkv)?,
                wo: matrix(file, f32s, &n("attn_output"), d, d)?,
                ffn_norm: vector(file, &n("ffn_norm"), d)?,
                gate: matrix(file, f32s, &n("ffn_gate"), d, ff)?,
                up: matrix(file, f32s, &n("ffn_up"), d, ff)?,
                down: matrix(file, f32s, &n("ffn_down"), ff, d)?,
            });
        }
        Ok(Self {
            token_embd,
            layers,
            output_norm,
            output,
            tied_output,
            rope_freqs,
        })
    }
}
