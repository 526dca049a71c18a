//! How one matrix product `out[t·rows + r] = w[r] · a[t]` is cut into parallel tasks: the one
//! scheduler every weight format's matmul goes through (each format supplies only its tile
//! kernel, the closure given to [`run`]).
//!
//! A task is a rectangle of output rows × tokens ([`Task`]). Its kernel reads the task's weight
//! rows once (unpacking each block once) and serves every token of the task from them, so the
//! whole weight matrix is read once per *token tile*, not once per task. The plan therefore:
//! 1. makes token tiles as wide as the activations allow (at most [`MAX_TILE`] tokens and about
//!    [`act_tile_bytes`] of activations, which a task streams once per small group of weight
//!    rows and so should stay in the core's L2): the fewest passes over the weights;
//! 2. cuts the output rows into chunks (multiples of [`ROW_BLOCK`]) only when the token tiles
//!    alone do not give every thread an even share, aiming at [`SLACK`] tasks per thread so
//!    rayon can balance uneven cores. One token (decoding) is thus split over rows on all
//!    threads, and one thread never splits at all.
//!
//! The kernels compute every (row, token) output with the same arithmetic wherever it falls
//! in a task, so results do not depend on the plan (the per-format tests check batch against
//! one token at a time and one thread against several).
use rayon::prelude::*;
use std::cell::Cell;

/// Output rows per row block: the unit of row chunks (a multiple of every kernel's row tile;
/// 16 rows of a 4096-wide Q4_K matrix are 36 KiB, about L1 size).
pub(crate) const ROW_BLOCK: usize = 16;
/// Most tokens per task.
pub(crate) const MAX_TILE: usize = 256;
/// Tasks per thread aimed at when rows are split (load balance over uneven cores).
pub(crate) const SLACK: usize = 4;
/// Default activation bytes of a token tile: half of a 2 MiB L2.
const ACT_TILE_BYTES: usize = 1 << 20;
/// Environment variable overriding [`ACT_TILE_BYTES`] (bytes; for tuning on other hosts: the
/// results do not depend on it, only the speed).
const ACT_TILE_ENV: &str = "LONGQUANT_MM_TILE_BYTES";

/// Activation bytes a token tile may hold: [`ACT_TILE_ENV`] if set to a positive number, else
/// [`ACT_TILE_BYTES`]. Read once.
pub(crate) fn act_tile_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var(ACT_TILE_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&b| b > 0)
            .unwrap_or(ACT_TILE_BYTES)
    })
}

/// The shape of one product, as the scheduler needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Output rows (weight rows).
    pub rows: usize,
    /// Tokens (activation rows).
    pub n_tok: usize,
    /// Bytes of one token's activation row in the kernel's input format.
    pub act_bytes: usize,
    /// The kernel's token tile: token tiles are made multiples of it where they can be.
    pub tok_align: usize,
}

/// One task: output rows `r0..r1` of tokens `t0..t0 + nt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Task {
    /// First token.
    pub t0: usize,
    /// Tokens.
    pub nt: usize,
    /// First output row.
    pub r0: usize,
    /// One past the last output row.
    pub r1: usize,
}

/// The split of one product: token tiles of `tok_tile` tokens × row chunks of `row_chunk` rows
/// (the last tile and chunk may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Tokens per token tile.
    pub tok_tile: usize,
    /// Rows per row chunk.
    pub row_chunk: usize,
    rows: usize,
    n_tok: usize,
}

impl Plan {
    /// Number of token tiles (passes over the weights).
    #[cfg(test)]
    pub(crate) fn n_tok_tiles(&self) -> usize {
        self.n_tok.div_ceil(self.tok_tile)
    }

    /// Number of row chunks.
    pub(crate) fn n_row_chunks(&self) -> usize {
        self.rows.div_ceil(self.row_chunk)
    }

    /// Every task, row chunk by row chunk, token tiles inside (the order [`run`] hands them
    /// out in).
    #[cfg(test)]
    pub(crate) fn tasks(&self) -> impl Iterator<Item = Task> + '_ {
        (0..self.n_row_chunks()).flat_map(move |c| {
            let r0 = c * self.row_chunk;
            let r1 = (r0 + self.row_chunk).min(self.rows);
            (0..self.n_tok_tiles()).map(move |ti| {
                let t0 = ti * self.tok_tile;
                Task {
                    t0,
                    nt: self.tok_tile.min(self.n_tok - t0),
                    r0,
                    r1,
                }
            })
        })
    }
}

/// The split of `s` over `threads` threads with token tiles of at most `tile_bytes` of
/// activations (see the module comment).
pub(crate) fn plan_with(s: &Shape, threads: usize, tile_bytes: usize) -> Plan {
    let threads = threads.max(1);
    let align = s.tok_align.max(1);
    let (rows, n_tok) = (s.rows.max(1), s.n_tok.max(1));
    // Widest token tile: the activation budget, at least one kernel tile, at most MAX_TILE.
    let by_bytes = tile_bytes / s.act_bytes.max(1);
    let max_tile = (by_bytes / align * align).clamp(align, MAX_TILE.max(align));
    // Fewest token tiles, then tokens spread evenly over them (rounded up to the kernel tile).
    let n_tt = n_tok.div_ceil(max_tile);
    let tok_tile = n_tok
        .div_ceil(n_tt)
        .next_multiple_of(align)
        .min(max_tile)
        .min(n_tok);
    let n_tt = n_tok.div_ceil(tok_tile);
    // Row chunks only if the token tiles do not share evenly over the threads.
    let row_blocks = rows.div_ceil(ROW_BLOCK);
    let n_rc = if n_tt % threads == 0 {
        1
    } else {
        (SLACK * threads).div_ceil(n_tt).clamp(1, row_blocks)
    };
    // Whole row blocks per chunk, rounded down so there are at least `n_rc` chunks.
    let row_chunk = ((row_blocks / n_rc).max(1) * ROW_BLOCK).min(rows);
    Plan {
        tok_tile,
        row_chunk,
        rows,
        n_tok,
    }
}

/// The split of `s` over `threads` threads (see the module comment).
pub(crate) fn plan(s: &Shape, threads: usize) -> Plan {
    plan_with(s, threads, act_tile_bytes())
}

thread_local! {
    /// Reused staging buffer of [`run`] (taken while in use, so a nested call allocates its
    /// own instead of sharing it).
    static STAGING: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs the product of shape `s` on the current rayon pool: `out[t·rows + r]` for every token
/// `t < s.n_tok` and row `r < s.rows`, each task's outputs computed by `kernel(task, o, stride)`,
/// which must write row `r` of token `task.t0 + t` to `o[t·stride + r − task.r0]`.
pub(crate) fn run(s: &Shape, out: &mut [f32], kernel: impl Fn(Task, &mut [f32], usize) + Sync) {
    let (rows, n_tok) = (s.rows, s.n_tok);
    if rows == 0 || n_tok == 0 {
        return;
    }
    let p = plan(s, rayon::current_num_threads());
    let out = &mut out[..rows * n_tok];
    let tile = p.tok_tile;
    if p.n_row_chunks() == 1 {
        // Whole rows: a token tile's outputs are contiguous.
        out.par_chunks_mut(tile * rows)
            .enumerate()
            .for_each(|(ti, o)| {
                let task = Task {
                    t0: ti * tile,
                    nt: o.len() / rows,
                    r0: 0,
                    r1: rows,
                };
                kernel(task, o, rows)
            });
        return;
    }
    let rc = p.row_chunk;
    if n_tok == 1 {
        // One token: a row chunk's outputs are contiguous.
        out.par_chunks_mut(rc).enumerate().for_each(|(c, o)| {
            let task = Task {
                t0: 0,
                nt: 1,
                r0: c * rc,
                r1: c * rc + o.len(),
            };
            kernel(task, o, o.len())
        });
        return;
    }
    // Rows and tokens split: every task writes its own rectangle of a staging buffer (chunk
    // by chunk, token-major inside a chunk), scattered to `out` afterwards, token by token.
    let mut stage = STAGING.with(Cell::take);
    if stage.len() < rows * n_tok {
        stage.resize(rows * n_tok, 0.0);
    }
    let st = &mut stage[..rows * n_tok];
    st.par_chunks_mut(rc * n_tok)
        .enumerate()
        .for_each(|(c, region)| {
            let width = region.len() / n_tok;
            region
                .par_chunks_mut(tile * width)
                .enumerate()
                .for_each(|(ti, o)| {
                    let task = Task {
                        t0: ti * tile,
                        nt: o.len() / width,
                        r0: c * rc,
                        r1: c * rc + width,
                    };
                    kernel(task, o, width)
                });
        });
    let st = &stage[..rows * n_tok];
    out.par_chunks_mut(rows).enumerate().for_each(|(t, ot)| {
        for (c, region) in st.chunks(rc * n_tok).enumerate() {
            let width = region.len() / n_tok;
            ot[c * rc..c * rc + width].copy_from_slice(&region[t * width..(t + 1) * width]);
        }
    });
    STAGING.with(|s| s.set(stage));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the invariants of a plan: every output exactly once, every weight row read by
    /// exactly `n_tok_tiles` tasks, ≥ `threads` tasks when there is enough work, token tiles
    /// within the activation budget, row chunks whole row blocks.
    fn check(s: Shape, threads: usize, tile_bytes: usize) -> Plan {
        let p = plan_with(&s, threads, tile_bytes);
        let mut seen = vec![0u8; s.rows * s.n_tok];
        let mut reads = vec![0usize; s.rows];
        let mut n_tasks = 0;
        for t in p.tasks() {
            n_tasks += 1;
            assert!(t.nt > 0 && t.r1 > t.r0, "{s:?}: empty task {t:?}");
            assert!(t.r0 % ROW_BLOCK == 0, "{s:?}: chunk at {t:?}");
            for r in t.r0..t.r1 {
                reads[r] += 1;
                for tok in t.t0..t.t0 + t.nt {
                    seen[tok * s.rows + r] += 1;
                }
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "{s:?}: outputs not covered once"
        );
        let max_tile = (tile_bytes / s.act_bytes).clamp(s.tok_align, MAX_TILE);
        assert!(
            p.tok_tile <= max_tile,
            "{s:?}: tile {} > {max_tile}",
            p.tok_tile
        );
        let passes = s.n_tok.div_ceil(max_tile / s.tok_align * s.tok_align);
        assert_eq!(
            p.n_tok_tiles(),
            passes,
            "{s:?}: more weight passes than needed"
        );
        assert!(reads.iter().all(|&n| n == p.n_tok_tiles()), "{s:?}: reads");
        let blocks = s.rows.div_ceil(ROW_BLOCK);
        assert!(
            n_tasks >= threads.min(blocks * p.n_tok_tiles()),
            "{s:?}: {n_tasks} tasks for {threads} threads"
        );
        p
    }

    #[test]
    fn eight_b_ffn_on_sixteen_threads() {
        // ProLong-8B's up projection (4096 → 14336) at ctx 512, Q8_K activations
        // (16 blocks of 292 bytes per token), the AVX-512 K-quant tile of 4 tokens.
        let s = Shape {
            rows: 14336,
            n_tok: 512,
            act_bytes: 16 * 292,
            tok_align: 4,
        };
        let p = check(s, 16, ACT_TILE_BYTES);
        // 224 tokens fit the budget: 3 passes over the weights instead of one per thread.
        assert_eq!((p.tok_tile, p.n_tok_tiles()), (172, 3));
        let tasks = p.tasks().count();
        assert!(tasks >= 16 * SLACK, "{tasks} tasks");
        // The down projection's 14336-wide activations allow 64-token tiles: 8 passes.
        let down = Shape {
            rows: 4096,
            act_bytes: 56 * 292,
            ..s
        };
        assert_eq!(check(down, 16, ACT_TILE_BYTES).n_tok_tiles(), 8);
    }

    #[test]
    fn decode_splits_rows_over_every_thread() {
        for threads in [1, 2, 16, 64] {
            let s = Shape {
                rows: 128256,
                n_tok: 1,
                act_bytes: 16 * 292,
                tok_align: 4,
            };
            let p = check(s, threads, ACT_TILE_BYTES);
            let tasks = p.tasks().count();
            if threads == 1 {
                assert_eq!(tasks, 1);
            } else {
                assert!(tasks >= SLACK * threads, "{threads} threads: {tasks} tasks");
            }
        }
    }

    #[test]
    fn even_token_tiles_keep_whole_rows() {
        // SmolLM2 at ctx 512 on 2 threads: two tiles of 256 tokens, no row split (the layout
        // the formats used before this scheduler).
        let s = Shape {
            rows: 1536,
            n_tok: 512,
            act_bytes: 18 * 34,
            tok_align: 4,
        };
        let p = check(s, 2, ACT_TILE_BYTES);
        assert_eq!((p.tok_tile, p.n_row_chunks()), (256, 1));
        // One thread: one task per token tile, never a row split.
        assert_eq!(check(s, 1, ACT_TILE_BYTES).n_row_chunks(), 1);
    }

    #[test]
    fn odd_shapes_are_covered() {
        for rows in [1usize, 15, 16, 17, 100, 577] {
            for n_tok in [1usize, 2, 3, 7, 31, 64, 257, 600] {
                for threads in [1usize, 2, 3, 16] {
                    for (act_bytes, tok_align) in [(4usize, 1usize), (2304, 4), (7000, 6)] {
                        let s = Shape {
                            rows,
                            n_tok,
                            act_bytes,
                            tok_align,
                        };
                        check(s, threads, 64 * 1024);
                    }
                }
            }
        }
    }

    /// `run` writes each output from the task that covers it, whatever the split.
    #[test]
    fn run_places_every_output() {
        for (rows, n_tok, threads) in [(37, 1, 3), (37, 5, 3), (100, 64, 2), (33, 300, 4)] {
            let s = Shape {
                rows,
                n_tok,
                act_bytes: 4096,
                tok_align: 4,
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            let mut out = vec![f32::NAN; rows * n_tok];
            pool.install(|| {
                run(&s, &mut out, |task, o, stride| {
                    for t in 0..task.nt {
                        for r in task.r0..task.r1 {
                            o[t * stride + r - task.r0] = ((task.t0 + t) * 1000 + r) as f32;
                        }
                    }
                })
            });
            for t in 0..n_tok {
                for r in 0..rows {
                    assert_eq!(
                        out[t * rows + r],
                        (t * 1000 + r) as f32,
                        "{s:?} t {t} r {r}"
                    );
                }
            }
        }
    }
}
