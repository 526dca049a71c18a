//! The one place that asks the CPU which instruction sets it has.
//!
//! Every kernel choice in the workspace (the quants crate's table, the forward pass's tile
//! kernels, attention, SwiGLU) reads [`features`] instead of calling `is_x86_feature_detected!`
//! itself, so one override changes the arithmetic class of the whole process:
//! `LONGQUANT_ISA=avx2` hides every AVX-512 extension (and AMX), so an AVX-512 host computes
//! exactly what an AVX2-only host computes, and can be checked against the AVX2-class oracles
//! (`tests/data/llamacpp/avx2/`). Any other value, or none, uses what the CPU reports.

use std::sync::OnceLock;

/// Environment variable selecting the instruction-set ceiling (`avx2`), read once.
pub const ISA_ENV: &str = "LONGQUANT_ISA";

/// The instruction-set extensions the kernels may use (after [`ISA_ENV`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// AVX2.
    pub avx2: bool,
    /// FMA3.
    pub fma: bool,
    /// F16C (f16 ↔ f32 conversion).
    pub f16c: bool,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512 byte/word.
    pub avx512bw: bool,
    /// AVX-512 vector length (128/256-bit forms).
    pub avx512vl: bool,
    /// AVX-512 VNNI (`vpdpbusd`).
    pub avx512vnni: bool,
}

impl Features {
    /// AVX2 + FMA + F16C, the baseline of every SIMD kernel here.
    pub fn avx2_fma_f16c(&self) -> bool {
        self.avx2 && self.fma && self.f16c
    }

    /// AVX-512 F/BW/VL on top of the baseline.
    pub fn avx512_f_bw_vl(&self) -> bool {
        self.avx2_fma_f16c() && self.avx512f && self.avx512bw && self.avx512vl
    }

    /// AVX-512 F/BW/VL/VNNI on top of the baseline: the class the AVX-512 oracles were made on.
    pub fn avx512_vnni(&self) -> bool {
        self.avx512_f_bw_vl() && self.avx512vnni
    }

    /// The arithmetic class these features put the process in (see [`ArithClass`]).
    pub fn class(&self) -> ArithClass {
        if self.avx512_vnni() {
            ArithClass::Avx512Vnni
        } else if self.avx2_fma_f16c() {
            ArithClass::Avx2
        } else {
            ArithClass::Other
        }
    }
}

/// Which family of kernels the process runs; results are bit-reproducible within a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithClass {
    /// AVX-512 F/BW/VL/VNNI + FMA + F16C.
    Avx512Vnni,
    /// AVX2 + FMA + F16C without (or with hidden) AVX-512.
    Avx2,
    /// Anything else (scalar or other architectures).
    Other,
}

/// What this CPU reports, masked by [`ISA_ENV`]. Detected once per process.
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| mask(detect(), std::env::var(ISA_ENV).ok().as_deref()))
}

fn mask(mut f: Features, ceiling: Option<&str>) -> Features {
    if ceiling.is_some_and(|v| v.trim().eq_ignore_ascii_case("avx2")) {
        f.avx512f = false;
        f.avx512bw = false;
        f.avx512vl = false;
        f.avx512vnni = false;
    }
    f
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    Features {
        avx2: has!("avx2"),
        fma: has!("fma"),
        f16c: has!("f16c"),
        avx512f: has!("avx512f"),
        avx512bw: has!("avx512bw"),
        avx512vl: has!("avx512vl"),
        avx512vnni: has!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_ceiling_hides_avx512_only() {
        let all = Features {
            avx2: true,
            fma: true,
            f16c: true,
            avx512f: true,
            avx512bw: true,
            avx512vl: true,
            avx512vnni: true,
        };
        assert_eq!(mask(all, None).class(), ArithClass::Avx512Vnni);
        assert_eq!(mask(all, Some("other")).class(), ArithClass::Avx512Vnni);
        let m = mask(all, Some(" AVX2 "));
        assert_eq!(m.class(), ArithClass::Avx2);
        assert!(m.avx2_fma_f16c() && !m.avx512f && !m.avx512vnni);
        let none = Features::default();
        assert_eq!(mask(none, None).class(), ArithClass::Other);
    }
}
