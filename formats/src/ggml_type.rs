//! ggml tensor types: ids as stored in GGUF files, names, and block geometry.
//!
//! Mirrors `enum ggml_type` in `ggml/include/ggml.h` and the `type_traits` table in `ggml/src/ggml.c`.
//! Ids whose support ggml removed (4 and 5, the old Q4_2/Q4_3; 31-33 and 36-38, the repacked
//! Q4_0_x_y / IQ4_NL_x_y layouts) are not representable and are rejected by [`GgmlType::from_id`].

/// A ggml tensor element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit, 32 per block, f16 scale.
    Q4_0,
    /// 4-bit, 32 per block, f16 scale and minimum.
    Q4_1,
    /// 5-bit, 32 per block, f16 scale.
    Q5_0,
    /// 5-bit, 32 per block, f16 scale and minimum.
    Q5_1,
    /// 8-bit, 32 per block, f16 scale.
    Q8_0,
    /// 8-bit, 32 per block, f16 scale and f16 sum (activations).
    Q8_1,
    /// 2-bit k-quant, 256 per super-block.
    Q2_K,
    /// 3-bit k-quant, 256 per super-block.
    Q3_K,
    /// 4-bit k-quant, 256 per super-block.
    Q4_K,
    /// 5-bit k-quant, 256 per super-block.
    Q5_K,
    /// 6-bit k-quant, 256 per super-block.
    Q6_K,
    /// 8-bit k-quant with f32 scale and block sums (activations).
    Q8_K,
    /// i-quant, ~2.06 bits per weight.
    IQ2_XXS,
    /// i-quant, ~2.31 bits per weight.
    IQ2_XS,
    /// i-quant, ~3.06 bits per weight.
    IQ3_XXS,
    /// i-quant, ~1.56 bits per weight.
    IQ1_S,
    /// 4-bit non-linear, 32 per block.
    IQ4_NL,
    /// i-quant, ~3.44 bits per weight.
    IQ3_S,
    /// i-quant, ~2.5 bits per weight.
    IQ2_S,
    /// 4-bit non-linear, 256 per super-block.
    IQ4_XS,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 64-bit IEEE float.
    F64,
    /// i-quant, ~1.75 bits per weight.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// ternary, ~1.69 bits per weight.
    TQ1_0,
    /// ternary, 2.06 bits per weight.
    TQ2_0,
    /// MX FP4 (E2M1 values, E8M0 shared scale), 32 per block.
    MXFP4,
    /// NV FP4 (E2M1 values, four E4M3 scales), 64 per block.
    NVFP4,
    /// 1-bit, 128 per block.
    Q1_0,
    /// 2-bit, 64 per block.
    Q2_0,
}

/// (type, GGUF id, name as ggml prints it, elements per block, bytes per block).
/// Block byte sizes follow the `block_*` structs in `ggml/src/ggml-common.h` (QK_K = 256).
const TABLE: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "f32", 1, 4),
    (GgmlType::F16, 1, "f16", 1, 2),
    (GgmlType::Q4_0, 2, "q4_0", 32, 2 + 16),
    (GgmlType::Q4_1, 3, "q4_1", 32, 2 + 2 + 16),
    (GgmlType::Q5_0, 6, "q5_0", 32, 2 + 4 + 16),
    (GgmlType::Q5_1, 7, "q5_1", 32, 2 + 2 + 4 + 16),
    (GgmlType::Q8_0, 8, "q8_0", 32, 2 + 32),
    (GgmlType::Q8_1, 9, "q8_1", 32, 2 + 2 + 32),
    (GgmlType::Q2_K, 10, "q2_K", 256, 2 + 2 + 256 / 16 + 256 / 4),
    (GgmlType::Q3_K, 11, "q3_K", 256, 2 + 256 / 4 + 256 / 8 + 12),
    (GgmlType::Q4_K, 12, "q4_K", 256, 2 + 2 + 12 + 256 / 2),
    (
        GgmlType::Q5_K,
        13,
        "q5_K",
        256,
        2 + 2 + 12 + 256 / 8 + 256 / 2,
    ),
    (
        GgmlType::Q6_K,
        14,
        "q6_K",
        256,
        256 / 2 + 256 / 4 + 256 / 16 + 2,
    ),
    (GgmlType::Q8_K, 15, "q8_K", 256, 4 + 256 + 2 * (256 / 16)),
    (GgmlType::IQ2_XXS, 16, "iq2_xxs", 256, 2 + 256 / 4),
    (GgmlType::IQ2_XS, 17, "iq2_xs", 256, 2 + 256 / 4 + 256 / 32),
    (GgmlType::IQ3_XXS, 18, "iq3_xxs", 256, 2 + 256 / 4 + 256 / 8),
    (GgmlType::IQ1_S, 19, "iq1_s", 256, 2 + 256 / 8 + 256 / 16),
    (GgmlType::IQ4_NL, 20, "iq4_nl", 32, 2 + 16),
    (
        GgmlType::IQ3_S,
        21,
        "iq3_s",
        256,
        2 + 256 / 4 + 256 / 8 + 256 / 32 + 4,
    ),
    (GgmlType::IQ2_S, 22, "iq2_s", 256, 2 + 256 / 4 + 256 / 16),
    (
        GgmlType::IQ4_XS,
        23,
        "iq4_xs",
        256,
        2 + 2 + 256 / 64 + 256 / 2,
    ),
    (GgmlType::I8, 24, "i8", 1, 1),
    (GgmlType::I16, 25, "i16", 1, 2),
    (GgmlType::I32, 26, "i32", 1, 4),
    (GgmlType::I64, 27, "i64", 1, 8),
    (GgmlType::F64, 28, "f64", 1, 8),
    (
        GgmlType::IQ1_M,
        29,
        "iq1_m",
        256,
        256 / 8 + 256 / 16 + 256 / 32,
    ),
    (GgmlType::BF16, 30, "bf16", 1, 2),
    (GgmlType::TQ1_0, 34, "tq1_0", 256, 2 + 4 * 13),
    (GgmlType::TQ2_0, 35, "tq2_0", 256, 2 + 64),
    (GgmlType::MXFP4, 39, "mxfp4", 32, 1 + 16),
    (GgmlType::NVFP4, 40, "nvfp4", 64, 4 + 32),
    (GgmlType::Q1_0, 41, "q1_0", 128, 2 + 16),
    (GgmlType::Q2_0, 42, "q2_0", 64, 2 + 16),
];

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    fn row(self) -> (GgmlType, u32, &'static str, u64, u64) {
        // `ALL` and `TABLE` list the same types in the same order (checked by a unit test), so the
        // position in `ALL` indexes `TABLE`; the fallback is unreachable but keeps this total.
        let idx = GgmlType::ALL.iter().position(|t| *t == self).unwrap_or(0);
        TABLE.get(idx).copied().unwrap_or(TABLE[0])
    }

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The type with GGUF id `id`, or `None` for unknown and removed ids.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// ggml's name for the type (`"f32"`, `"q4_K"`, ...).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// The type named `name`, case-insensitively (`"Q4_K"`, `"q4_k"` and `"q4_K"` all work).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TABLE
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name))
            .map(|r| r.0)
    }

    /// Elements per block (1 for plain scalar types).
    pub fn block_size(self) -> u64 {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.row().4
    }

    /// Whether the type is a block-quantized format (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks or the size
    /// overflows `u64`.
    pub fn row_size(self, n: u64) -> Option<u64> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_all_agree() {
        assert_eq!(TABLE.len(), GgmlType::ALL.len());
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(TABLE[i].0, *t);
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
        }
    }

    #[test]
    fn removed_and_unknown_ids_rejected() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn block_geometry_matches_ggml_common_h() {
        // Sizes of the block structs as stated in DESIGN.md §3 and ggml-common.h's static asserts.
        assert_eq!(
            (GgmlType::Q8_0.block_size(), GgmlType::Q8_0.type_size()),
            (32, 34)
        );
        assert_eq!(
            (GgmlType::Q4_K.block_size(), GgmlType::Q4_K.type_size()),
            (256, 144)
        );
        assert_eq!(
            (GgmlType::Q5_K.block_size(), GgmlType::Q5_K.type_size()),
            (256, 176)
        );
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
        assert_eq!(
            (GgmlType::Q8_K.block_size(), GgmlType::Q8_K.type_size()),
            (256, 292)
        );
        assert_eq!(GgmlType::Q4_1.type_size(), 20);
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(GgmlType::MXFP4.id(), 39);
    }

    #[test]
    fn row_size_checks() {
        assert_eq!(GgmlType::Q4_K.row_size(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_size(576), None);
        assert_eq!(GgmlType::F32.row_size(u64::MAX), None);
        assert_eq!(GgmlType::F32.row_size(0), Some(0));
    }
}
