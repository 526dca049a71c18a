//! Block formats. Each submodule mirrors one ggml type: its `#[repr(C)]` block struct (size
//! checked at compile time), the scalar reference quantizer following ggml-quants.c, the
//! dequantizer, and (for weight types used by the forward pass) the reference dot product.
//!
//! Naming follows ggml so the two can be read side by side: `quantize_row_q4_k_ref` mirrors
//! `quantize_row_q4_K_ref`, `quantize_row_q4_k_imatrix` mirrors `quantize_row_q4_K_impl` with
//! `quant_weights`, `vec_dot_q4_k_q8_k_ref` mirrors `ggml_vec_dot_q4_K_q8_K_generic`.

pub mod float;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod kquant_common;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

/// A plain-old-data block type whose bytes are exactly its GGUF encoding.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no padding, and be valid for every bit pattern
/// (only integer, `[u8; N]`, `half::f16` and `f32` fields), so that a byte slice of the right
/// length and alignment can be reinterpreted as a slice of blocks.
pub unsafe trait Block: Copy + Send + Sync + 'static {
    /// Weights per block.
    const BLOCK_SIZE: usize;
}

/// Reinterpret `bytes` as blocks. `None` when the length is not a whole number of blocks or the
/// slice is not aligned for `T` (GGUF's 32-byte data alignment makes mmapped tensors aligned).
pub fn cast_blocks<T: Block>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: length is a whole number of blocks, the pointer is aligned for T, and `Block`
    // guarantees T is POD valid for any bit pattern; the lifetime is tied to `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Mutable counterpart of [`cast_blocks`].
pub fn cast_blocks_mut<T: Block>(bytes: &mut [u8]) -> Option<&mut [T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: as in `cast_blocks`; the exclusive borrow of `bytes` is moved into the result.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size)
    })
}

/// View blocks as their encoded bytes.
pub fn blocks_as_bytes<T: Block>(blocks: &[T]) -> &[u8] {
    // SAFETY: `Block` types have no padding, so every byte is initialised.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 trick.
/// Valid for |x| < 2^22, which every caller guarantees by scaling first.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The formats this crate computes on (a subset of ggml's types; the full type table with ids
/// lives in `longquant-formats`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// 32-bit float, one weight per "block".
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 weights: f16 scale + 32 × 4-bit.
    Q4_0,
    /// 32 weights: f16 scale, f16 min + 32 × 4-bit.
    Q4_1,
    /// 32 weights: f16 scale + 32 × 5-bit.
    Q5_0,
    /// 32 weights: f16 scale, f16 min + 32 × 5-bit.
    Q5_1,
    /// 32 weights: f16 scale + 32 × i8.
    Q8_0,
    /// 256 activations: f32 scale + 256 × i8 + 16 × i16 group sums.
    Q8_K,
    /// 256 weights, 2.625 bits each.
    Q2_K,
    /// 256 weights, 3.4375 bits each.
    Q3_K,
    /// 256 weights, 4.5 bits each.
    Q4_K,
    /// 256 weights, 5.5 bits each.
    Q5_K,
    /// 256 weights, 6.5625 bits each.
    Q6_K,
    /// 32 weights: f16 scale + 32 × 4-bit indices into a non-linear grid.
    IQ4_NL,
    /// 256 weights, 4.25 bits each: IQ4_NL's grid with 6-bit block scales.
    IQ4_XS,
}

impl BlockFormat {
    /// Every format, in ggml type-id order.
    pub const ALL: [BlockFormat; 16] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q8_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::IQ4_NL,
        Self::IQ4_XS,
        Self::BF16,
    ];

    /// Weights per block.
    pub const fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::IQ4_NL => 32,
            Self::Q8_K
            | Self::Q2_K
            | Self::Q3_K
            | Self::Q4_K
            | Self::Q5_K
            | Self::Q6_K
            | Self::IQ4_XS => crate::QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_K => 292,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::IQ4_NL => 18,
            Self::IQ4_XS => 136,
        }
    }

    /// ggml's name for the type ("Q4_K", "BF16", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_K => "Q8_K",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::IQ4_NL => "IQ4_NL",
            Self::IQ4_XS => "IQ4_XS",
        }
    }

    /// Bytes needed for a row of `n` weights, or `None` if `n` is not a whole number of blocks.
    pub const fn row_size(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        Some(n / self.block_size() * self.type_size())
    }
}
