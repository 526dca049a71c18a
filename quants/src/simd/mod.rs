//! Run-time kernel dispatch.
//!
//! One portable binary carries every kernel variant; [`kernels`] picks a table of plain function
//! pointers once per process, from what the CPU reports. [`crate::tensor`] calls only through
//! that table, so the converter and the forward pass never name an instruction set.
//!
//! Contract for every non-scalar table (tests in `tests/api.rs` and the SIMD files enforce it
//! against [`scalar_kernels`] on every variant the host supports, see [`available`]):
//! - `quantize_*` and `dequantize_*` entries produce **bit-identical** output to the scalar
//!   reference, so a GGUF file's bytes never depend on the machine that wrote it;
//! - `vec_dot_*` entries may reorder the f32 accumulation (lanes, FMA) and so differ from the
//!   reference by rounding only.
//!
//! Adding a table (as `avx2.rs` does): build a `pub(crate) static KERNELS: Kernels` from
//! [`scalar::SCALAR`] with struct-update syntax, wrap each `#[target_feature]` function in a safe
//! `fn` whose `// SAFETY:` line points at the run-time detection here, and return the table from
//! a detection function listed in [`available`], best first.
//!
//! `LONGQUANT_FORCE_SCALAR=1` in the environment forces the scalar table (read once).

use std::sync::OnceLock;

use half::{bf16, f16};

use crate::block::iq4_nl::BlockIQ4NL;
use crate::block::iq4_xs::BlockIQ4XS;
use crate::block::q2_k::BlockQ2K;
use crate::block::q3_k::BlockQ3K;
use crate::block::q4_0::BlockQ4_0;
use crate::block::q4_1::BlockQ4_1;
use crate::block::q4_k::BlockQ4K;
use crate::block::q5_0::BlockQ5_0;
use crate::block::q5_1::BlockQ5_1;
use crate::block::q5_k::BlockQ5K;
use crate::block::q6_k::BlockQ6K;
use crate::block::q8_0::BlockQ8_0;
use crate::block::q8_1::BlockQ8_1;
use crate::block::q8_k::BlockQ8K;

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod cpu;
pub mod scalar;

/// Environment variable that, when set to `1`, makes [`kernels`] return the scalar table.
pub const FORCE_SCALAR_ENV: &str = "LONGQUANT_FORCE_SCALAR";

/// A row quantizer: `src.len() == dst.len() * BLOCK_SIZE`.
pub type QuantizeFn<B> = fn(&[f32], &mut [B]);
/// An importance-weighted row quantizer: `(row, blocks, importance)`, importance as long as the
/// row. The row must be a whole matrix row: ggml's weighting uses the row's mean square.
pub type QuantizeImatrixFn<B> = fn(&[f32], &mut [B], &[f32]);
/// A row dequantizer: `dst.len() == src.len() * BLOCK_SIZE`.
pub type DequantizeFn<B> = fn(&[B], &mut [f32]);
/// A dot product of a weight row with an activation row of the same length in weights.
pub type VecDotFn<W, A> = fn(&[W], &[A]) -> f32;

/// One function pointer per (format, operation). Slices passed in have matching lengths (the
/// checked wrappers in [`crate::tensor`] guarantee it); entries need not re-check.
#[derive(Debug)]
pub struct Kernels {
    /// Short name of the instruction set ("scalar", "avx2").
    pub name: &'static str,

    /// f32 → f16, round to nearest even.
    pub f32_to_f16_row: fn(&[f32], &mut [f16]),
    /// f16 → f32.
    pub f16_to_f32_row: fn(&[f16], &mut [f32]),
    /// f32 → bf16, round to nearest even (ggml's rule).
    pub f32_to_bf16_row: fn(&[f32], &mut [bf16]),
    /// bf16 → f32.
    pub bf16_to_f32_row: fn(&[bf16], &mut [f32]),
    /// F32 weights · F32 activations.
    pub vec_dot_f32: VecDotFn<f32, f32>,
    /// F16 weights · F32 activations.
    pub vec_dot_f16_f32: VecDotFn<f16, f32>,
    /// BF16 weights · F32 activations.
    pub vec_dot_bf16_f32: VecDotFn<bf16, f32>,

    /// Q4_0 reference quantizer.
    pub quantize_row_q4_0: QuantizeFn<BlockQ4_0>,
    /// Q4_0 importance-weighted quantizer.
    pub quantize_row_q4_0_imatrix: QuantizeImatrixFn<BlockQ4_0>,
    /// Q4_0 dequantizer.
    pub dequantize_row_q4_0: DequantizeFn<BlockQ4_0>,
    /// Q4_0 · Q8_0.
    pub vec_dot_q4_0_q8_0: VecDotFn<BlockQ4_0, BlockQ8_0>,

    /// Q4_1 reference quantizer.
    pub quantize_row_q4_1: QuantizeFn<BlockQ4_1>,
    /// Q4_1 importance-weighted quantizer.
    pub quantize_row_q4_1_imatrix: QuantizeImatrixFn<BlockQ4_1>,
    /// Q4_1 dequantizer.
    pub dequantize_row_q4_1: DequantizeFn<BlockQ4_1>,
    /// Q4_1 · Q8_0.
    pub vec_dot_q4_1_q8_0: VecDotFn<BlockQ4_1, BlockQ8_0>,

    /// Q5_0 reference quantizer.
    pub quantize_row_q5_0: QuantizeFn<BlockQ5_0>,
    /// Q5_0 importance-weighted quantizer.
    pub quantize_row_q5_0_imatrix: QuantizeImatrixFn<BlockQ5_0>,
    /// Q5_0 dequantizer.
    pub dequantize_row_q5_0: DequantizeFn<BlockQ5_0>,
    /// Q5_0 · Q8_0.
    pub vec_dot_q5_0_q8_0: VecDotFn<BlockQ5_0, BlockQ8_0>,

    /// Q5_1 reference quantizer.
    pub quantize_row_q5_1: QuantizeFn<BlockQ5_1>,
    /// Q5_1 importance-weighted quantizer.
    pub quantize_row_q5_1_imatrix: QuantizeImatrixFn<BlockQ5_1>,
    /// Q5_1 dequantizer.
    pub dequantize_row_q5_1: DequantizeFn<BlockQ5_1>,
    /// Q5_1 · Q8_0.
    pub vec_dot_q5_1_q8_0: VecDotFn<BlockQ5_1, BlockQ8_0>,

    /// Q8_0 quantizer (weights and activations; ggml ignores importance for Q8_0).
    pub quantize_row_q8_0: QuantizeFn<BlockQ8_0>,
    /// Q8_0 dequantizer.
    pub dequantize_row_q8_0: DequantizeFn<BlockQ8_0>,
    /// Q8_0 · Q8_0.
    pub vec_dot_q8_0_q8_0: VecDotFn<BlockQ8_0, BlockQ8_0>,

    /// Q8_1 activation quantizer (ggml's x86 `quantize_row_q8_1`; not a file format).
    pub quantize_row_q8_1: QuantizeFn<BlockQ8_1>,
    /// Q4_1 · Q8_1, ggml's pairing for Q4_1 weights (exact llama.cpp agreement).
    pub vec_dot_q4_1_q8_1: VecDotFn<BlockQ4_1, BlockQ8_1>,
    /// Q5_1 · Q8_1, ggml's pairing for Q5_1 weights.
    pub vec_dot_q5_1_q8_1: VecDotFn<BlockQ5_1, BlockQ8_1>,

    /// Q8_K activation quantizer.
    pub quantize_row_q8_k: QuantizeFn<BlockQ8K>,
    /// Q8_K dequantizer.
    pub dequantize_row_q8_k: DequantizeFn<BlockQ8K>,

    /// Q2_K reference quantizer.
    pub quantize_row_q2_k: QuantizeFn<BlockQ2K>,
    /// Q2_K importance-weighted quantizer.
    pub quantize_row_q2_k_imatrix: QuantizeImatrixFn<BlockQ2K>,
    /// Q2_K dequantizer.
    pub dequantize_row_q2_k: DequantizeFn<BlockQ2K>,
    /// Q2_K · Q8_K.
    pub vec_dot_q2_k_q8_k: VecDotFn<BlockQ2K, BlockQ8K>,

    /// Q3_K reference quantizer.
    pub quantize_row_q3_k: QuantizeFn<BlockQ3K>,
    /// Q3_K importance-weighted quantizer.
    pub quantize_row_q3_k_imatrix: QuantizeImatrixFn<BlockQ3K>,
    /// Q3_K dequantizer.
    pub dequantize_row_q3_k: DequantizeFn<BlockQ3K>,
    /// Q3_K · Q8_K.
    pub vec_dot_q3_k_q8_k: VecDotFn<BlockQ3K, BlockQ8K>,

    /// Q4_K reference quantizer.
    pub quantize_row_q4_k: QuantizeFn<BlockQ4K>,
    /// Q4_K importance-weighted quantizer.
    pub quantize_row_q4_k_imatrix: QuantizeImatrixFn<BlockQ4K>,
    /// Q4_K dequantizer.
    pub dequantize_row_q4_k: DequantizeFn<BlockQ4K>,
    /// Q4_K · Q8_K.
    pub vec_dot_q4_k_q8_k: VecDotFn<BlockQ4K, BlockQ8K>,

    /// Q5_K reference quantizer.
    pub quantize_row_q5_k: QuantizeFn<BlockQ5K>,
    /// Q5_K importance-weighted quantizer.
    pub quantize_row_q5_k_imatrix: QuantizeImatrixFn<BlockQ5K>,
    /// Q5_K dequantizer.
    pub dequantize_row_q5_k: DequantizeFn<BlockQ5K>,
    /// Q5_K · Q8_K.
    pub vec_dot_q5_k_q8_k: VecDotFn<BlockQ5K, BlockQ8K>,

    /// Q6_K reference quantizer.
    pub quantize_row_q6_k: QuantizeFn<BlockQ6K>,
    /// Q6_K importance-weighted quantizer.
    pub quantize_row_q6_k_imatrix: QuantizeImatrixFn<BlockQ6K>,
    /// Q6_K dequantizer.
    pub dequantize_row_q6_k: DequantizeFn<BlockQ6K>,
    /// Q6_K · Q8_K.
    pub vec_dot_q6_k_q8_k: VecDotFn<BlockQ6K, BlockQ8K>,

    /// IQ4_NL quantizer (llama-quantize's `quantize_iq4_nl` without an imatrix).
    pub quantize_row_iq4_nl: QuantizeFn<BlockIQ4NL>,
    /// IQ4_NL importance-weighted quantizer.
    pub quantize_row_iq4_nl_imatrix: QuantizeImatrixFn<BlockIQ4NL>,
    /// IQ4_NL dequantizer.
    pub dequantize_row_iq4_nl: DequantizeFn<BlockIQ4NL>,
    /// IQ4_NL · Q8_0.
    pub vec_dot_iq4_nl_q8_0: VecDotFn<BlockIQ4NL, BlockQ8_0>,

    /// IQ4_XS reference quantizer.
    pub quantize_row_iq4_xs: QuantizeFn<BlockIQ4XS>,
    /// IQ4_XS importance-weighted quantizer.
    pub quantize_row_iq4_xs_imatrix: QuantizeImatrixFn<BlockIQ4XS>,
    /// IQ4_XS dequantizer.
    pub dequantize_row_iq4_xs: DequantizeFn<BlockIQ4XS>,
    /// IQ4_XS · Q8_K.
    pub vec_dot_iq4_xs_q8_k: VecDotFn<BlockIQ4XS, BlockQ8K>,
}

/// The scalar table as a `'static` value (the `const` in [`scalar`] is for struct update).
static SCALAR: Kernels = scalar::SCALAR;

static SELECTED: OnceLock<&'static Kernels> = OnceLock::new();

/// The kernel table for this process: the best variant the CPU supports, or the scalar one if
/// `LONGQUANT_FORCE_SCALAR=1`. Chosen on first call and fixed afterwards.
pub fn kernels() -> &'static Kernels {
    SELECTED.get_or_init(|| {
        if force_scalar() {
            return &SCALAR;
        }
        available().into_iter().next().map_or(&SCALAR, |(_, k)| k)
    })
}

/// The scalar reference table (always available).
pub fn scalar_kernels() -> &'static Kernels {
    &SCALAR
}

/// Every table the host can run, best first, with its name; the scalar table is always last.
/// Ignores `LONGQUANT_FORCE_SCALAR` so tests can compare all variants in one process.
pub fn available() -> Vec<(&'static str, &'static Kernels)> {
    let mut out: Vec<(&'static str, &'static Kernels)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86_64_avx2() {
        out.push((k.name, k));
    }
    out.push((SCALAR.name, &SCALAR));
    out
}

fn force_scalar() -> bool {
    std::env::var_os(FORCE_SCALAR_ENV).is_some_and(|v| v == "1")
}

/// The AVX2 + FMA + F16C table (`simd/avx2.rs`) when the CPU has all three.
#[cfg(target_arch = "x86_64")]
fn x86_64_avx2() -> Option<&'static Kernels> {
    let supported = cpu::features().avx2_fma_f16c();
    if !supported {
        return None;
    }
    Some(&avx2::KERNELS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_available_and_last() {
        let all = available();
        assert!(!all.is_empty());
        let (name, last) = all[all.len() - 1];
        assert_eq!(name, "scalar");
        assert!(std::ptr::eq(last, scalar_kernels()));
    }

    #[test]
    fn selection_is_one_of_the_available_tables() {
        let k = kernels();
        assert!(available().iter().any(|(_, t)| std::ptr::eq(*t, k)));
        // Stable across calls.
        assert!(std::ptr::eq(k, kernels()));
    }
}
