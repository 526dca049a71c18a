//! Prompt and generation speed at a context depth, measured as `llama-bench` measures it, so the
//! two can be put side by side (`longquant bench`).
//!
//! A *prompt* test feeds `n_prompt` tokens at once to a decoder already holding `depth` tokens;
//! a *generation* test feeds `n_gen` tokens one at a time after `depth` tokens (the work of
//! recall's answer decoding, and of `llama-bench -n N -d D`). The tokens are pseudo-random
//! vocabulary ids from a fixed seed: speed does not depend on them. The `depth` tokens are fed
//! as one batch before the clock starts. Each test runs once untimed (warm-up: page faults,
//! caches, allocations) and then `repetitions` timed times from a fresh decoder.
use crate::model::{EvalOptions, Evaluator, ModelError};
use std::time::Instant;

/// What [`run`] measures.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Prompt lengths (`llama-bench -p`); 0 entries are skipped.
    pub n_prompt: Vec<usize>,
    /// Generation lengths (`llama-bench -n`); 0 entries are skipped.
    pub n_gen: Vec<usize>,
    /// Context depths (`llama-bench -d`): tokens in the cache before each test.
    pub depths: Vec<usize>,
    /// Timed runs per test (`llama-bench -r`), at least 1.
    pub repetitions: usize,
    /// Run each test once untimed first.
    pub warmup: bool,
    /// Cache types and other evaluation options.
    pub opts: EvalOptions,
}

/// Prompt processing or token generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestKind {
    /// `n` tokens in one batch.
    Prompt,
    /// `n` tokens one at a time.
    Generation,
}

impl TestKind {
    /// `pp` or `tg`, as llama-bench names its tests.
    pub fn tag(self) -> &'static str {
        match self {
            TestKind::Prompt => "pp",
            TestKind::Generation => "tg",
        }
    }
}

/// One measured test.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// What was measured.
    pub kind: TestKind,
    /// Tokens per timed run.
    pub n_tokens: usize,
    /// Tokens in the cache before the timed tokens.
    pub depth: usize,
    /// Wall seconds of each timed run.
    pub seconds: Vec<f64>,
}

impl BenchRow {
    /// llama-bench's test name: `pp512`, `tg128`, with `@ d8192` for a depth.
    pub fn name(&self) -> String {
        let mut s = format!("{}{}", self.kind.tag(), self.n_tokens);
        if self.depth > 0 {
            s.push_str(&format!(" @ d{}", self.depth));
        }
        s
    }

    /// Tokens per second of each run.
    pub fn rates(&self) -> Vec<f64> {
        self.seconds
            .iter()
            .map(|&s| self.n_tokens as f64 / s.max(1e-12))
            .collect()
    }

    /// Mean and sample standard deviation of the per-run rates (llama-bench's `avg ± stdev`).
    pub fn rate_mean_sd(&self) -> (f64, f64) {
        let r = self.rates();
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let sd = if r.len() > 1 {
            (r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (mean, sd)
    }
}

/// Deterministic pseudo-random token ids below `n_vocab` (xorshift64*).
pub fn bench_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as u32 % n_vocab.max(1) as u32
        })
        .collect()
}

/// Runs every (depth, test) of `spec` on `model`, depths outermost, calling `on_row` as each
/// test finishes.
pub fn run(
    model: &dyn Evaluator,
    spec: &BenchSpec,
    on_row: &mut dyn FnMut(&BenchRow),
) -> Result<Vec<BenchRow>, ModelError> {
    let cfg = model.config();
    let tests: Vec<(TestKind, usize)> = spec
        .n_prompt
        .iter()
        .map(|&n| (TestKind::Prompt, n))
        .chain(spec.n_gen.iter().map(|&n| (TestKind::Generation, n)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let mut rows = Vec::new();
    for &depth in &spec.depths {
        let prefix = bench_tokens(depth, cfg.n_vocab, 0x5eed ^ depth as u64);
        for &(kind, n) in &tests {
            let tokens = bench_tokens(n, cfg.n_vocab, 0xbe7c ^ n as u64);
            let runs = spec.repetitions.max(1) + usize::from(spec.warmup);
            let mut seconds = Vec::new();
            for run in 0..runs {
                let mut dec = model.decoder(&spec.opts)?;
                if depth > 0 {
                    dec.feed(&prefix)?;
                }
                let t = Instant::now();
                match kind {
                    TestKind::Prompt => {
                        dec.feed(&tokens)?;
                    }
                    TestKind::Generation => {
                        for tok in &tokens {
                            dec.feed(std::slice::from_ref(tok))?;
                        }
                    }
                }
                let s = t.elapsed().as_secs_f64();
                debug_assert_eq!(dec.len(), depth + n);
                if run >= usize::from(spec.warmup) {
                    seconds.push(s);
                }
            }
            let row = BenchRow {
                kind,
                n_tokens: n,
                depth,
                seconds,
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_in_range_and_repeatable() {
        let a = bench_tokens(1000, 49152, 7);
        assert_eq!(a, bench_tokens(1000, 49152, 7));
        assert!(a.iter().all(|&t| t < 49152));
        // Not a constant sequence.
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 900, "{} distinct ids", distinct.len());
    }

    #[test]
    fn rates_and_names() {
        let r = BenchRow {
            kind: TestKind::Generation,
            n_tokens: 128,
            depth: 8192,
            seconds: vec![1.0, 2.0],
        };
        assert_eq!(r.name(), "tg128 @ d8192");
        assert_eq!(r.rates(), vec![128.0, 64.0]);
        let (m, sd) = r.rate_mean_sd();
        assert_eq!(m, 96.0);
        assert!((sd - 45.254833995939045).abs() < 1e-9);
    }
}
