//! Per-tensor target types for a file type, chosen exactly as llama.cpp's `llama-quantize` chooses
//! them (`src/llama-quant.cpp`: `tensor_allows_quantization`, `llama_tensor_get_type_impl`,
//! `tensor_type_fallback`, and the counters set up by `init_quantize_state_counters`), restricted to
//! the Llama architecture and the file types this converter writes.
//!
//! Two details decide the result and are easy to get wrong:
//! - llama-quantize visits tensors sorted by block index (non-block tensors first) and then by name,
//!   and the `attn_v` / `ffn_down` counters advance in that order; [`plan_mix`] sorts the same way,
//!   whatever order the caller writes the tensors in.
//! - a model without `output.weight` (tied embeddings) quantizes `token_embd` with the output rules.

use longquant_formats::GgmlType;

use super::controls::{first_match, Controls, TensorTypeRule};

/// A llama.cpp file type (`enum llama_ftype`), i.e. a quantization mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum FileType {
    /// Everything F32 (`LLAMA_FTYPE_ALL_F32` = 0).
    F32,
    /// 2-D tensors F16 (1).
    F16,
    /// 2-D tensors BF16 (32).
    BF16,
    /// Q4_0 (2).
    Q4_0,
    /// Q4_1 (3).
    Q4_1,
    /// Q5_0 (8).
    Q5_0,
    /// Q5_1 (9).
    Q5_1,
    /// Q8_0 (7).
    Q8_0,
    /// Q2_K with `attn_v` at Q3_K/Q4_K and `ffn_down`, `attn_output` at Q3_K (10).
    Q2_K,
    /// Q2_K with a few early `ffn_down` at Q4_K; needs an importance matrix (21).
    Q2_K_S,
    /// Q3_K everywhere but output (11).
    Q3_K_S,
    /// Q3_K with `attn_v`, `attn_output`, `ffn_down` at Q4_K/Q5_K (12).
    Q3_K_M,
    /// Q3_K with `attn_v`, `attn_output`, `ffn_down` at Q5_K (13).
    Q3_K_L,
    /// IQ4_NL (25).
    IQ4_NL,
    /// IQ4_XS (30).
    IQ4_XS,
    /// Q4_K with a few early `attn_v` / `ffn_down` at Q5_K (14).
    Q4_K_S,
    /// Q4_K with `use_more_bits` layers of `attn_v` / `ffn_down` at Q6_K (15).
    Q4_K_M,
    /// Q5_K everywhere but output (16).
    Q5_K_S,
    /// Q5_K with `use_more_bits` layers of `attn_v` / `ffn_down` at Q6_K (17).
    Q5_K_M,
    /// Q6_K (18).
    Q6_K,
}

/// (file type, name, `llama_ftype` value, default tensor type).
const FTYPES: &[(FileType, &str, u32, GgmlType)] = &[
    (FileType::F32, "F32", 0, GgmlType::F32),
    (FileType::F16, "F16", 1, GgmlType::F16),
    (FileType::BF16, "BF16", 32, GgmlType::BF16),
    (FileType::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    (FileType::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    (FileType::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    (FileType::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
    (FileType::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    (FileType::Q2_K, "Q2_K", 10, GgmlType::Q2_K),
    (FileType::Q2_K_S, "Q2_K_S", 21, GgmlType::Q2_K),
    (FileType::Q3_K_S, "Q3_K_S", 11, GgmlType::Q3_K),
    (FileType::Q3_K_M, "Q3_K_M", 12, GgmlType::Q3_K),
    (FileType::Q3_K_L, "Q3_K_L", 13, GgmlType::Q3_K),
    (FileType::IQ4_NL, "IQ4_NL", 25, GgmlType::IQ4_NL),
    (FileType::IQ4_XS, "IQ4_XS", 30, GgmlType::IQ4_XS),
    (FileType::Q4_K_S, "Q4_K_S", 14, GgmlType::Q4_K),
    (FileType::Q4_K_M, "Q4_K_M", 15, GgmlType::Q4_K),
    (FileType::Q5_K_S, "Q5_K_S", 16, GgmlType::Q5_K),
    (FileType::Q5_K_M, "Q5_K_M", 17, GgmlType::Q5_K),
    (FileType::Q6_K, "Q6_K", 18, GgmlType::Q6_K),
];

impl FileType {
    /// Every supported file type.
    pub fn all() -> impl Iterator<Item = FileType> {
        FTYPES.iter().map(|r| r.0)
    }

    fn row(self) -> (FileType, &'static str, u32, GgmlType) {
        // Every variant has a row (checked by a test); the fallback keeps this total.
        FTYPES.iter().copied().find(|r| r.0 == self).unwrap_or((
            FileType::F32,
            "F32",
            0,
            GgmlType::F32,
        ))
    }

    /// The name users type (`"Q4_K_M"`).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Parse a name case-insensitively (`q4_k_m`, `Q4_K_M`).
    pub fn from_name(s: &str) -> Option<FileType> {
        FTYPES
            .iter()
            .find(|r| r.1.eq_ignore_ascii_case(s))
            .map(|r| r.0)
    }

    /// The value of `general.file_type`.
    pub fn llama_ftype(self) -> u32 {
        self.row().2
    }

    /// The type most tensors get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }

    /// Whether the default type is a block-quantized one (so the mix rules and fallbacks apply).
    pub fn is_quantized(self) -> bool {
        !matches!(
            self.default_type(),
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
        )
    }
}

/// The shape facts of the model that the mix rules consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Blocks (`n_layer`; llama-quantize's `n_ffn_down`).
    pub n_layer: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_head_kv: u64,
}

/// One tensor as the mix sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixTensor {
    /// GGUF name.
    pub name: String,
    /// ggml dimensions, innermost (row length) first.
    pub ne: Vec<u64>,
}

/// The type chosen for one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Whether the tensor may be quantized at all (`tensor_allows_quantization`). When not, the
    /// caller keeps the input's type and `ggml_type` is only a placeholder (F32).
    pub allowed: bool,
    /// The type the tensor is written in.
    pub ggml_type: GgmlType,
    /// When the mix wanted a type whose block does not divide the row length, that type.
    pub fallback_from: Option<GgmlType>,
}

/// Types for every tensor of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// One choice per input tensor, in the caller's order.
    pub choices: Vec<Choice>,
    /// Tensors that needed a fallback (llama-quantize's `n_fallback`).
    pub n_fallback: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

/// `tensor_get_category`: substring tests, in llama.cpp's order.
fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    let tests: [(&str, Category); 9] = [
        ("attn_qkv.weight", Category::AttnQkv),
        ("attn_kv_b.weight", Category::AttnKvB),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    tests
        .iter()
        .find(|(s, _)| name.contains(s))
        .map(|(_, c)| *c)
        .unwrap_or(Category::Other)
}

fn is_attn_v_like(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `tensor_allows_quantization`, for the names a Llama model can have (default parameters:
/// `quantize_output_tensor` on, no `only_copy`). Tensors it refuses keep their type: F32 from a
/// Hugging Face checkpoint, the input's type in llama-quantize.
pub fn allows_quantization(t: &MixTensor) -> bool {
    allows_quantization_with(t, true)
}

/// [`allows_quantization`] with llama-quantize's `quantize_output_tensor` parameter
/// (`--leave-output-tensor` turns it off).
pub fn allows_quantization_with(t: &MixTensor, quantize_output_tensor: bool) -> bool {
    let n_dims = t.ne.iter().rposition(|&d| d != 1).map_or(1, |p| p + 1);
    if n_dims < 2 {
        return false;
    }
    let n = t.name.as_str();
    n.ends_with("weight")
        && !n.contains("_norm.weight")
        && !n.contains("ffn_gate_inp.weight")
        && !n.contains("altup")
        && !n.contains("laurel")
        && !n.contains("per_layer_model_proj")
        && (quantize_output_tensor || n != "output.weight")
        && n != "position_embd.weight"
        && n != "token_types.weight"
        && !n.contains("ssm_conv1d")
        && !n.contains("attn_rel_b.weight")
}

/// `tensor_requires_imatrix`: whether llama-quantize refuses to quantize tensor `name` to `ty`
/// without an importance matrix. Of the file types here only Q2_K_S needs one (for its Q2_K
/// tensors; `token_embd` and `output` are exempt).
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: FileType) -> bool {
    if matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    ) {
        return false;
    }
    ty == GgmlType::Q2_K && ftype == FileType::Q2_K_S
}

/// `sscanf(name, "blk.%d.", &layer)`: the block index, or -1 for non-block tensors.
fn block_index(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else {
        return -1;
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    match (digits.parse::<i64>(), rest[digits.len()..].starts_with('.')) {
        (Ok(n), true) => n,
        _ => -1,
    }
}

/// `use_more_bits` in llama-quant.cpp: the first and last eighth of the layers, and every third
/// layer in between. C integer division and remainder (truncating) throughout.
pub fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

struct State {
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn_down: i64,
    i_ffn_down: i64,
    has_tied_embeddings: bool,
    is_70b: bool,
    /// `hparams.n_gqa()`: heads per KV head, 0 without KV heads.
    n_gqa: u64,
    has_imatrix: bool,
    n_fallback: usize,
    /// `--output-tensor-type`, which also reaches tied token embeddings through the output rule.
    output_tensor_type: Option<GgmlType>,
}

/// Options of [`plan_mix_with`].
#[derive(Debug, Clone, Default)]
pub struct MixOptions {
    /// An importance matrix will be used (matters only for Q4_0/Q5_0: llama.cpp then protects
    /// the first `ffn_down` layers).
    pub has_imatrix: bool,
    /// llama-quantize's `--pure`: every quantizable tensor gets the default type (the shape
    /// fallbacks still apply, as they must for the blocks to fit).
    pub pure: bool,
    /// `--tensor-type` rules (first match wins; only for quantized file types).
    pub tensor_types: Vec<TensorTypeRule>,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--leave-output-tensor`.
    pub leave_output_tensor: bool,
    /// Visit the tensors in the caller's order instead of llama-quantize's sorted one: with
    /// `--keep-split` llama-quantize sorts its tensors by (input file, offset) before choosing
    /// types, so the `attn_v`/`ffn_down` counters then advance in file order.
    pub file_order: bool,
}

impl MixOptions {
    /// The options that `controls` sets, plus the imatrix and `--pure` flags.
    pub fn from_controls(controls: &Controls, has_imatrix: bool, pure: bool) -> MixOptions {
        MixOptions {
            has_imatrix,
            pure,
            tensor_types: controls.tensor_types.clone(),
            output_tensor_type: controls.output_tensor_type,
            token_embedding_type: controls.token_embedding_type,
            leave_output_tensor: controls.leave_output_tensor,
            file_order: controls.keep_split,
        }
    }
}

/// Decide every tensor's type for `ftype`. `has_imatrix` matters only for Q4_0/Q5_0 (llama.cpp
/// protects the first `ffn_down` layers when an importance matrix is given).
pub fn plan_mix(
    ftype: FileType,
    tensors: &[MixTensor],
    shape: ModelShape,
    has_imatrix: bool,
) -> Mix {
    plan_mix_with(
        ftype,
        tensors,
        shape,
        &MixOptions {
            has_imatrix,
            ..MixOptions::default()
        },
    )
}

/// [`plan_mix`] with all of llama-quantize's options that change types (`llama_tensor_get_type`,
/// the wrapper around the mix rules).
pub fn plan_mix_with(
    ftype: FileType,
    tensors: &[MixTensor],
    shape: ModelShape,
    opts: &MixOptions,
) -> Mix {
    let has_imatrix = opts.has_imatrix;
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    // llama_model_loader::weight_name_comparer: by block index (non-block = -1 first), then by name.
    if !opts.file_order {
        order.sort_by(|&a, &b| {
            let (na, nb) = (&tensors[a].name, &tensors[b].name);
            block_index(na)
                .cmp(&block_index(nb))
                .then_with(|| na.cmp(nb))
        });
    }
    let mut st = State {
        n_attention_wv: tensors
            .iter()
            .filter(|t| is_attn_v_like(category(&t.name)))
            .count() as i64,
        i_attention_wv: 0,
        n_ffn_down: shape.n_layer as i64,
        i_ffn_down: 0,
        has_tied_embeddings: !tensors
            .iter()
            .any(|t| category(&t.name) == Category::Output),
        // llama.cpp types an 80-layer Llama with grouped-query attention as 70B.
        is_70b: shape.n_layer == 80 && shape.n_head != shape.n_head_kv,
        n_gqa: shape.n_head.checked_div(shape.n_head_kv).unwrap_or(0),
        has_imatrix,
        n_fallback: 0,
        output_tensor_type: opts.output_tensor_type,
    };
    let default = ftype.default_type();
    let mut choices = vec![
        Choice {
            allowed: false,
            ggml_type: GgmlType::F32,
            fallback_from: None
        };
        tensors.len()
    ];
    for i in order {
        let t = &tensors[i];
        if !allows_quantization_with(t, !opts.leave_output_tensor) {
            // 1-D tensors and norms stay F32, as convert_hf_to_gguf.py writes them.
            continue;
        }
        let cat = category(&t.name);
        let forced = match (opts.token_embedding_type, opts.output_tensor_type) {
            // per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it.
            (Some(ty), _)
                if cat == Category::TokenEmbd
                    && !(t.name == "per_layer_token_embd.weight"
                        && first_match(&opts.tensor_types, &t.name).is_some()) =>
            {
                Some(ty)
            }
            (_, Some(ty)) if cat == Category::Output => Some(ty),
            _ => None,
        };
        if let Some(ty) = forced {
            // Used as given: llama-quantize applies no shape fallback to these two.
            choices[i] = Choice {
                allowed: true,
                ggml_type: ty,
                fallback_from: None,
            };
            continue;
        }
        let mut ty = default;
        let mut fallback_from = None;
        if ftype.is_quantized() {
            let manual = first_match(&opts.tensor_types, &t.name);
            if let Some(m) = manual {
                ty = m;
            } else if !opts.pure {
                ty = type_impl(&mut st, ty, t, ftype);
            }
            let (fallen, changed) = fallback(&mut st, t, ty);
            if changed {
                fallback_from = Some(ty);
            }
            ty = fallen;
        }
        choices[i] = Choice {
            allowed: true,
            ggml_type: ty,
            fallback_from,
        };
    }
    Mix {
        choices,
        n_fallback: st.n_fallback,
    }
}

/// `llama_tensor_get_type_impl`, the branches reachable for a dense Llama and the file types above.
fn type_impl(st: &mut State, mut ty: GgmlType, t: &MixTensor, ftype: FileType) -> GgmlType {
    use FileType as F;
    let cat = category(&t.name);
    if cat == Category::Output || (st.has_tied_embeddings && cat == Category::TokenEmbd) {
        let nx = t.ne.first().copied().unwrap_or(0);
        if let Some(o) = st.output_tensor_type {
            ty = o;
        } else if nx % ty.block_size() != 0 {
            ty = GgmlType::Q8_0;
        } else if ty != GgmlType::Q8_0 {
            ty = GgmlType::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // No rule for these file types: token_embd keeps the default type.
    } else if is_attn_v_like(cat) {
        if ftype == F::Q2_K {
            ty = if st.n_gqa >= 4 {
                GgmlType::Q4_K
            } else {
                GgmlType::Q3_K
            };
        } else if ftype == F::Q2_K_S && st.n_gqa >= 4 {
            ty = GgmlType::Q4_K;
        } else if ftype == F::Q3_K_M {
            ty = if st.i_attention_wv < 2 {
                GgmlType::Q5_K
            } else {
                GgmlType::Q4_K
            };
        } else if ftype == F::Q3_K_L || (matches!(ftype, F::IQ4_NL | F::IQ4_XS) && st.n_gqa >= 4) {
            // Two consecutive branches of llama.cpp's chain with the same outcome.
            ty = GgmlType::Q5_K;
        } else if matches!(ftype, F::Q4_K_M | F::Q5_K_M)
            && use_more_bits(st.i_attention_wv, st.n_attention_wv)
        {
            ty = GgmlType::Q6_K;
        } else if ftype == F::Q4_K_S && st.i_attention_wv < 4 {
            ty = GgmlType::Q5_K;
        }
        if st.is_70b && matches!(ty, GgmlType::Q3_K | GgmlType::Q4_K) {
            ty = GgmlType::Q5_K;
        }
        st.i_attention_wv += 1;
    } else if cat == Category::FfnDown {
        let (i_layer, n_layer) = (st.i_ffn_down, st.n_ffn_down);
        if ftype == F::Q2_K {
            ty = GgmlType::Q3_K;
        } else if ftype == F::Q2_K_S {
            if i_layer < n_layer / 8 {
                ty = GgmlType::Q4_K;
            }
        } else if ftype == F::Q3_K_M {
            // (Falcon's Q3_K branch is not reachable for Llama.)
            ty = if i_layer < n_layer / 16 {
                GgmlType::Q5_K
            } else {
                GgmlType::Q4_K
            };
        } else if ftype == F::Q3_K_L {
            ty = GgmlType::Q5_K;
        } else if ftype == F::Q4_K_M {
            if use_more_bits(i_layer, n_layer) {
                ty = GgmlType::Q6_K;
            }
        } else if i_layer < n_layer / 8 && matches!(ftype, F::IQ4_NL | F::IQ4_XS) && !st.has_imatrix
        {
            ty = GgmlType::Q5_K;
        } else if ftype == F::Q5_K_M && use_more_bits(i_layer, n_layer) {
            ty = GgmlType::Q6_K;
        } else if ftype == F::Q4_K_S && i_layer < n_layer / 8 {
            ty = GgmlType::Q5_K;
        } else if matches!(ftype, F::Q4_0 | F::Q5_0) && st.has_imatrix && i_layer < n_layer / 8 {
            ty = if ftype == F::Q4_0 {
                GgmlType::Q4_1
            } else {
                GgmlType::Q5_1
            };
        }
        st.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        // The dense (non-expert, non-Falcon) branch.
        match ftype {
            F::Q2_K => ty = GgmlType::Q3_K,
            F::Q3_K_M => ty = GgmlType::Q4_K,
            F::Q3_K_L => ty = GgmlType::Q5_K,
            _ => {}
        }
    } else if cat == Category::AttnQkv {
        if matches!(ftype, F::Q3_K_M | F::Q3_K_L) {
            ty = GgmlType::Q4_K;
        } else if ftype == F::Q4_K_M {
            ty = GgmlType::Q5_K;
        } else if ftype == F::Q5_K_M {
            ty = GgmlType::Q6_K;
        }
    }
    ty
}

/// `tensor_type_fallback`: a type whose block does not divide the row length is replaced by one of
/// the 32-wide types, or by F16 when even that does not fit. Returns (type, whether it changed).
fn fallback(st: &mut State, t: &MixTensor, want: GgmlType) -> (GgmlType, bool) {
    let ncols = t.ne.first().copied().unwrap_or(0);
    if ncols % want.block_size() == 0 {
        return (want, false);
    }
    st.n_fallback += 1;
    let mut ty = match want {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::Q2_0 => {
            GgmlType::Q4_0
        }
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        other => other,
    };
    if ncols % ty.block_size() != 0 {
        ty = GgmlType::F16;
    }
    (ty, ty != want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensors of a dense Llama, in HF-safetensors-like order (not llama-quantize's).
    pub(crate) fn llama_tensors(
        n_layer: u64,
        hidden: u64,
        ffn: u64,
        n_head: u64,
        n_head_kv: u64,
        vocab: u64,
        tied: bool,
    ) -> Vec<MixTensor> {
        let kv = hidden / n_head * n_head_kv;
        let mut v = vec![MixTensor {
            name: "token_embd.weight".into(),
            ne: vec![hidden, vocab],
        }];
        for l in 0..n_layer {
            for (n, ne) in [
                ("attn_norm", vec![hidden]),
                ("attn_q", vec![hidden, hidden]),
                ("attn_k", vec![hidden, kv]),
                ("attn_v", vec![hidden, kv]),
                ("attn_output", vec![hidden, hidden]),
                ("ffn_norm", vec![hidden]),
                ("ffn_gate", vec![hidden, ffn]),
                ("ffn_up", vec![hidden, ffn]),
                ("ffn_down", vec![ffn, hidden]),
            ] {
                v.push(MixTensor {
                    name: format!("blk.{l}.{n}.weight"),
                    ne,
                });
            }
        }
        v.push(MixTensor {
            name: "output_norm.weight".into(),
            ne: vec![hidden],
        });
        if !tied {
            v.push(MixTensor {
                name: "output.weight".into(),
                ne: vec![hidden, vocab],
            });
        }
        v
    }

    fn type_of(tensors: &[MixTensor], mix: &Mix, name: &str) -> GgmlType {
        let i = tensors.iter().position(|t| t.name == name).unwrap();
        mix.choices[i].ggml_type
    }

    #[test]
    fn ftype_table() {
        assert_eq!(FileType::all().count(), 20);
        for f in FileType::all() {
            assert_eq!(FileType::from_name(f.name()), Some(f));
            assert_eq!(FileType::from_name(&f.name().to_lowercase()), Some(f));
        }
        assert_eq!(FileType::Q4_K_M.llama_ftype(), 15);
        assert_eq!(FileType::BF16.llama_ftype(), 32);
        assert_eq!(FileType::Q2_K_S.llama_ftype(), 21);
        assert_eq!(FileType::IQ4_XS.llama_ftype(), 30);
        assert_eq!(FileType::from_name("IQ2_XXS"), None);
    }

    #[test]
    fn use_more_bits_layers() {
        // 32 layers: 0-3, 28-31, and 4 + 3k + 2 = 6, 9, ..., 27.
        let chosen: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            chosen,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn smollm2_q4_k_m() {
        let shape = ModelShape {
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
        };
        let t = llama_tensors(30, 576, 1536, 9, 3, 49152, true);
        assert_eq!(t.len(), 272);
        let mix = plan_mix(FileType::Q4_K_M, &t, shape, false);
        // Tied: token_embd follows the output rule; 576 % 256 != 0 → Q8_0 directly (no fallback).
        assert_eq!(type_of(&t, &mix, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, &mix, "blk.0.attn_norm.weight"), GgmlType::F32);
        // 576-wide rows: Q4_K → Q5_0, Q6_K → Q8_0. ffn_down rows are 1536 wide: Q4_K/Q6_K fit.
        assert_eq!(type_of(&t, &mix, "blk.0.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&t, &mix, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, &mix, "blk.4.attn_v.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&t, &mix, "blk.0.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, &mix, "blk.4.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(type_of(&t, &mix, "blk.5.ffn_down.weight"), GgmlType::Q6_K);
        // Fallbacks: per layer q, k, v, output, gate, up = 6 × 30 = 180 (as DESIGN.md says).
        assert_eq!(mix.n_fallback, 180);
    }

    #[test]
    fn prolong_q4_k_m_and_s() {
        let shape = ModelShape {
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
        };
        let t = llama_tensors(32, 4096, 14336, 32, 8, 128256, false);
        let mix = plan_mix(FileType::Q4_K_M, &t, shape, false);
        assert_eq!(mix.n_fallback, 0);
        assert_eq!(type_of(&t, &mix, "output.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, &mix, "token_embd.weight"), GgmlType::Q4_K);
        for l in 0..32 {
            let want = if use_more_bits(l, 32) {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            };
            assert_eq!(type_of(&t, &mix, &format!("blk.{l}.attn_v.weight")), want);
            assert_eq!(type_of(&t, &mix, &format!("blk.{l}.ffn_down.weight")), want);
            assert_eq!(
                type_of(&t, &mix, &format!("blk.{l}.attn_k.weight")),
                GgmlType::Q4_K
            );
        }
        let s = plan_mix(FileType::Q4_K_S, &t, shape, false);
        for l in 0..32 {
            let want = if l < 4 {
                GgmlType::Q5_K
            } else {
                GgmlType::Q4_K
            };
            assert_eq!(type_of(&t, &s, &format!("blk.{l}.attn_v.weight")), want);
            assert_eq!(type_of(&t, &s, &format!("blk.{l}.ffn_down.weight")), want);
        }
        let q8 = plan_mix(FileType::Q8_0, &t, shape, false);
        assert!(t.iter().zip(&q8.choices).all(|(t, c)| c.ggml_type
            == if t.ne.len() == 1 {
                GgmlType::F32
            } else {
                GgmlType::Q8_0
            }));
        let f16 = plan_mix(FileType::F16, &t, shape, false);
        assert_eq!(type_of(&t, &f16, "output.weight"), GgmlType::F16);
        assert_eq!(type_of(&t, &f16, "output_norm.weight"), GgmlType::F32);
    }

    #[test]
    fn order_does_not_matter() {
        let shape = ModelShape {
            n_layer: 16,
            n_head: 4,
            n_head_kv: 2,
        };
        let t = llama_tensors(16, 256, 768, 4, 2, 49152, true);
        let mix = plan_mix(FileType::Q5_K_M, &t, shape, false);
        let mut rev = t.clone();
        rev.reverse();
        let mix_rev = plan_mix(FileType::Q5_K_M, &rev, shape, false);
        for (i, c) in mix.choices.iter().enumerate() {
            assert_eq!(*c, mix_rev.choices[t.len() - 1 - i], "{}", t[i].name);
        }
        // Layer 10 sorts before layer 2 by name, but llama.cpp sorts blocks numerically.
        assert_eq!(type_of(&t, &mix, "blk.2.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(type_of(&t, &mix, "blk.10.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, &mix, "blk.11.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(type_of(&t, &mix, "token_embd.weight"), GgmlType::Q6_K);
    }
}
