//! Hugging Face ↔ GGUF tensor names for Llama, and the q/k row permutation between HF's rotate-half
//! rope layout and GGUF's interleaved-pair layout.
//!
//! Names follow `gguf-py/gguf/tensor_mapping.py` / `constants.py` (MODEL_ARCH.LLAMA). The permutation
//! follows `LlamaModel.permute` in llama.cpp's `conversion/llama.py`: per head, rows are viewed as
//! `(2, head_dim/2)` and the two axes are swapped, so HF's halves `[x0..x_{d/2}, y0..y_{d/2}]`
//! become GGUF's pairs `[x0, y0, x1, y1, ...]`.

/// What a tensor is, independent of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `token_embd.weight` (`model.embed_tokens.weight`).
    TokenEmbd,
    /// `output_norm.weight` (`model.norm.weight`).
    OutputNorm,
    /// `output.weight` (`lm_head.weight`).
    Output,
    /// `rope_freqs.weight` (generated from Llama-3.1 rope scaling; no HF tensor).
    RopeFreqs,
    /// `blk.N.attn_norm.weight` (`input_layernorm`).
    AttnNorm,
    /// `blk.N.attn_q.weight` (`self_attn.q_proj`), permuted.
    AttnQ,
    /// `blk.N.attn_k.weight` (`self_attn.k_proj`), permuted with the KV head count.
    AttnK,
    /// `blk.N.attn_v.weight` (`self_attn.v_proj`).
    AttnV,
    /// `blk.N.attn_output.weight` (`self_attn.o_proj`).
    AttnOutput,
    /// `blk.N.ffn_norm.weight` (`post_attention_layernorm`).
    FfnNorm,
    /// `blk.N.ffn_gate.weight` (`mlp.gate_proj`).
    FfnGate,
    /// `blk.N.ffn_up.weight` (`mlp.up_proj`).
    FfnUp,
    /// `blk.N.ffn_down.weight` (`mlp.down_proj`).
    FfnDown,
}

/// Per-block roles: (HF suffix after `model.layers.N.`, GGUF suffix after `blk.N.`, role).
const BLOCK: &[(&str, &str, Role)] = &[
    ("input_layernorm.weight", "attn_norm.weight", Role::AttnNorm),
    ("self_attn.q_proj.weight", "attn_q.weight", Role::AttnQ),
    ("self_attn.k_proj.weight", "attn_k.weight", Role::AttnK),
    ("self_attn.v_proj.weight", "attn_v.weight", Role::AttnV),
    (
        "self_attn.o_proj.weight",
        "attn_output.weight",
        Role::AttnOutput,
    ),
    (
        "post_attention_layernorm.weight",
        "ffn_norm.weight",
        Role::FfnNorm,
    ),
    ("mlp.gate_proj.weight", "ffn_gate.weight", Role::FfnGate),
    ("mlp.up_proj.weight", "ffn_up.weight", Role::FfnUp),
    ("mlp.down_proj.weight", "ffn_down.weight", Role::FfnDown),
];

/// Whole-model roles: (HF name, GGUF name, role).
const GLOBAL: &[(&str, &str, Role)] = &[
    (
        "model.embed_tokens.weight",
        "token_embd.weight",
        Role::TokenEmbd,
    ),
    ("model.norm.weight", "output_norm.weight", Role::OutputNorm),
    ("lm_head.weight", "output.weight", Role::Output),
];

/// The GGUF name of the Llama-3.1 rope factor tensor.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// A source tensor's place in the GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// GGUF name.
    pub gguf: String,
    /// What the tensor is.
    pub role: Role,
    /// Block index, for per-block tensors.
    pub layer: Option<u64>,
}

/// Result of looking up an HF tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HfName {
    /// A tensor that goes into the GGUF.
    Tensor(Mapped),
    /// A buffer llama.cpp does not need (`rotary_emb.inv_freq`, attention masks); skipped as
    /// convert_hf_to_gguf.py skips it.
    Skip,
    /// Not a Llama tensor this converter knows, or a block index ≥ the block count.
    Unknown,
}

/// Map an HF tensor name for a model with `n_layer` blocks.
pub fn map_hf_name(hf: &str, n_layer: u64) -> HfName {
    if hf.ends_with(".rotary_emb.inv_freq")
        || hf.ends_with(".attention.masked_bias")
        || hf.ends_with(".attention.bias")
    {
        return HfName::Skip;
    }
    if let Some((_, g, role)) = GLOBAL.iter().find(|(h, _, _)| *h == hf) {
        return HfName::Tensor(Mapped {
            gguf: (*g).to_string(),
            role: *role,
            layer: None,
        });
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return HfName::Unknown;
    };
    let Some((idx, suffix)) = rest.split_once('.') else {
        return HfName::Unknown;
    };
    // Decimal digits only, no sign or leading '+' (Rust's parse would accept "+3").
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return HfName::Unknown;
    }
    let Ok(layer) = idx.parse::<u64>() else {
        return HfName::Unknown;
    };
    if layer >= n_layer || (idx.len() > 1 && idx.starts_with('0')) {
        return HfName::Unknown;
    }
    match BLOCK.iter().find(|(h, _, _)| *h == suffix) {
        Some((_, g, role)) => HfName::Tensor(Mapped {
            gguf: format!("blk.{layer}.{g}"),
            role: *role,
            layer: Some(layer),
        }),
        None if suffix.ends_with("rotary_emb.inv_freq") => HfName::Skip,
        None => HfName::Unknown,
    }
}

/// The HF name of a GGUF Llama tensor (for export back to HF); `None` for `rope_freqs.weight` and
/// unknown names.
pub fn gguf_to_hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _, _)) = GLOBAL.iter().find(|(_, g, _)| *g == gguf) {
        return Some((*h).to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, _, _) = BLOCK.iter().find(|(_, g, _)| *g == suffix)?;
    Some(format!("model.layers.{idx}.{h}"))
}

/// The GGUF name and role for a role in block `layer` (or a global role with `layer = None`).
pub fn gguf_name(role: Role, layer: Option<u64>) -> String {
    if role == Role::RopeFreqs {
        return ROPE_FREQS.to_string();
    }
    if let Some((_, g, _)) = GLOBAL.iter().find(|(_, _, r)| *r == role) {
        return (*g).to_string();
    }
    let suffix = BLOCK
        .iter()
        .find(|(_, _, r)| *r == role)
        .map(|(_, g, _)| *g)
        .unwrap_or("unknown");
    format!("blk.{}.{suffix}", layer.unwrap_or(0))
}

/// Why a q/k permutation cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot permute {rows} rows for rope: not a whole number of heads of even size ({n_head} heads)")]
pub struct PermuteError {
    /// Rows of the tensor.
    pub rows: u64,
    /// Heads the rows should split into.
    pub n_head: u64,
}

/// For q/k permutation: which source row feeds output row `out_row` of a `rows`-row tensor split into
/// `n_head` heads (HF rotate-half → GGUF interleaved). Rows stay inside their head.
pub fn permuted_source_row(out_row: u64, rows: u64, n_head: u64) -> Result<u64, PermuteError> {
    let head_dim = head_rows(rows, n_head)?;
    let half = head_dim / 2;
    let (head, r) = (out_row / head_dim, out_row % head_dim);
    // Output row r = 2·i + j within a head takes source row j·half + i.
    Ok(head * head_dim + (r % 2) * half + r / 2)
}

fn head_rows(rows: u64, n_head: u64) -> Result<u64, PermuteError> {
    let err = PermuteError { rows, n_head };
    if n_head == 0 || !rows.is_multiple_of(n_head) {
        return Err(err);
    }
    let head_dim = rows / n_head;
    if !head_dim.is_multiple_of(2) || head_dim == 0 {
        return Err(err);
    }
    Ok(head_dim)
}

/// Rows per head for a q/k tensor (the unit a row-sliced permutation must respect).
pub fn rows_per_head(rows: u64, n_head: u64) -> Result<u64, PermuteError> {
    head_rows(rows, n_head)
}

/// Permute whole heads of a q/k weight from HF's layout to GGUF's. `src` holds `src.len() / row_len`
/// rows that are a whole number of heads of `head_dim` rows each (a slice of the full tensor that
/// starts at a head boundary); `dst` receives the same rows, reordered.
pub fn permute_heads<T: Copy>(
    src: &[T],
    dst: &mut [T],
    row_len: usize,
    head_dim: usize,
) -> Result<(), PermuteError> {
    reorder_heads(src, dst, row_len, head_dim, false)
}

/// The inverse of [`permute_heads`]: GGUF interleaved layout back to HF rotate-half.
pub fn unpermute_heads<T: Copy>(
    src: &[T],
    dst: &mut [T],
    row_len: usize,
    head_dim: usize,
) -> Result<(), PermuteError> {
    reorder_heads(src, dst, row_len, head_dim, true)
}

fn reorder_heads<T: Copy>(
    src: &[T],
    dst: &mut [T],
    row_len: usize,
    head_dim: usize,
    inverse: bool,
) -> Result<(), PermuteError> {
    let rows = src.len().checked_div(row_len).unwrap_or(0);
    let err = PermuteError {
        rows: rows as u64,
        n_head: rows.checked_div(head_dim).unwrap_or(0) as u64,
    };
    if row_len == 0
        || head_dim == 0
        || !head_dim.is_multiple_of(2)
        || !src.len().is_multiple_of(row_len)
        || !rows.is_multiple_of(head_dim)
        || dst.len() != src.len()
    {
        return Err(err);
    }
    let half = head_dim / 2;
    for (s_head, d_head) in src
        .chunks_exact(head_dim * row_len)
        .zip(dst.chunks_exact_mut(head_dim * row_len))
    {
        for r in 0..head_dim {
            // Interleaved row r = 2·i + j  <->  rotate-half row j·half + i.
            let rotate_half = (r % 2) * half + r / 2;
            let (from, to) = if inverse {
                (r, rotate_half)
            } else {
                (rotate_half, r)
            };
            d_head[to * row_len..(to + 1) * row_len]
                .copy_from_slice(&s_head[from * row_len..(from + 1) * row_len]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let cases = [
            (
                "model.embed_tokens.weight",
                "token_embd.weight",
                Role::TokenEmbd,
            ),
            ("model.norm.weight", "output_norm.weight", Role::OutputNorm),
            ("lm_head.weight", "output.weight", Role::Output),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
                Role::AttnNorm,
            ),
            (
                "model.layers.15.self_attn.q_proj.weight",
                "blk.15.attn_q.weight",
                Role::AttnQ,
            ),
            (
                "model.layers.3.self_attn.k_proj.weight",
                "blk.3.attn_k.weight",
                Role::AttnK,
            ),
            (
                "model.layers.3.self_attn.v_proj.weight",
                "blk.3.attn_v.weight",
                Role::AttnV,
            ),
            (
                "model.layers.3.self_attn.o_proj.weight",
                "blk.3.attn_output.weight",
                Role::AttnOutput,
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.ffn_norm.weight",
                Role::FfnNorm,
            ),
            (
                "model.layers.3.mlp.gate_proj.weight",
                "blk.3.ffn_gate.weight",
                Role::FfnGate,
            ),
            (
                "model.layers.3.mlp.up_proj.weight",
                "blk.3.ffn_up.weight",
                Role::FfnUp,
            ),
            (
                "model.layers.3.mlp.down_proj.weight",
                "blk.3.ffn_down.weight",
                Role::FfnDown,
            ),
        ];
        for (hf, gguf, role) in cases {
            let HfName::Tensor(m) = map_hf_name(hf, 16) else {
                panic!("{hf} not mapped")
            };
            assert_eq!((m.gguf.as_str(), m.role), (gguf, role));
            assert_eq!(gguf_to_hf_name(gguf).as_deref(), Some(hf));
            assert_eq!(gguf_name(role, m.layer), gguf);
        }
        assert_eq!(
            map_hf_name("model.layers.16.mlp.up_proj.weight", 16),
            HfName::Unknown
        );
        assert_eq!(
            map_hf_name("model.layers.+1.mlp.up_proj.weight", 16),
            HfName::Unknown
        );
        assert_eq!(
            map_hf_name("model.layers.01.mlp.up_proj.weight", 16),
            HfName::Unknown
        );
        assert_eq!(
            map_hf_name("model.layers.1.self_attn.q_proj.bias", 16),
            HfName::Unknown
        );
        assert_eq!(
            map_hf_name("model.layers.1.self_attn.rotary_emb.inv_freq", 16),
            HfName::Skip
        );
        assert_eq!(gguf_to_hf_name(ROPE_FREQS), None);
    }

    /// The permutation written the way numpy does it: reshape (n_head, 2, hd/2, in), swap axes 1 and 2.
    fn numpy_permute(w: &[u32], rows: usize, cols: usize, n_head: usize) -> Vec<u32> {
        let hd = rows / n_head;
        let half = hd / 2;
        let mut out = vec![0; w.len()];
        // out[h, i, j, c] = w[h, j, i, c] with out viewed as (n_head, half, 2, cols).
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    for c in 0..cols {
                        out[((h * half + i) * 2 + j) * cols + c] =
                            w[((h * 2 + j) * half + i) * cols + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn permutation_matches_reshape_swapaxes_and_inverts() {
        for (rows, cols, n_head) in [(8usize, 3usize, 2usize), (24, 5, 3), (64, 4, 1), (12, 2, 6)] {
            let w: Vec<u32> = (0..(rows * cols) as u32).collect();
            let want = numpy_permute(&w, rows, cols, n_head);
            let mut got = vec![0; w.len()];
            permute_heads(&w, &mut got, cols, rows / n_head).unwrap();
            assert_eq!(got, want, "rows {rows} heads {n_head}");
            for out_row in 0..rows {
                let s = permuted_source_row(out_row as u64, rows as u64, n_head as u64).unwrap()
                    as usize;
                assert_eq!(
                    got[out_row * cols..(out_row + 1) * cols],
                    w[s * cols..(s + 1) * cols]
                );
            }
            let mut back = vec![0; w.len()];
            unpermute_heads(&got, &mut back, cols, rows / n_head).unwrap();
            assert_eq!(back, w);
        }
    }

    #[test]
    fn permutation_refuses_bad_shapes() {
        let w = [0u8; 30];
        let mut d = [0u8; 30];
        assert!(
            permute_heads(&w, &mut d, 5, 4).is_err(),
            "6 rows are not whole heads of 4"
        );
        assert!(permute_heads(&w, &mut d, 5, 3).is_err(), "odd head size");
        assert!(permuted_source_row(0, 10, 4).is_err());
        assert!(rows_per_head(4096, 32).is_ok());
    }
}
