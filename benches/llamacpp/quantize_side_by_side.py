#!/usr/bin/env python3
"""Quantize throughput, longquant vs llama.cpp, on the same F32 GGUF, same type, same threads.

1. Writes a deterministic F32 GGUF of llama-shaped 2-D tensors (gguf-py; heavy-tailed weights with
   a per-row scale spread, like real checkpoints) of --mweights million weights.
2. Times llama.cpp's own `llama_model_quantize` (llama-cpp-python binding, `pure`, so every 2-D
   tensor gets the base type) for each type at each thread count.
3. Times `cargo bench --bench quantize_throughput` (our end-to-end equivalent: mmap read, quantize,
   streaming write, fsync, rename) on the same file.
4. Prints a Markdown table (and --json) with M weights/s and the ratio.

Needs: numpy, gguf, llama_cpp (see scripts/golden/README.md for installing the binding against
the sdist's llama.cpp build; set LLAMA_CPP_LIB_PATH). Run from the repository root:
  cargo build --release --bench quantize_throughput
  LLAMA_CPP_LIB_PATH=... python3 benches/llamacpp/quantize_side_by_side.py --mweights 134 --types Q8_0,Q4_K,Q5_K,Q6_K --threads 1,2
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# llama_ftype values (include/llama.h); with `pure`, the *_S ftypes put every 2-D tensor in the base type.
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18}


def write_f32_gguf(path: Path, mweights: int, seed: int = 1) -> int:
    import gguf

    rng = np.random.default_rng(seed)
    n_embd = 4096
    rows_total = max(1, mweights * 1_000_000 // n_embd)
    n_tensors = max(1, rows_total // 4096)
    rows = rows_total // n_tensors
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("longquant-bench")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_tensors)
    w.add_feed_forward_length(rows)
    w.add_head_count(32)
    w.add_head_count_kv(32)
    w.add_rope_dimension_count(128)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(32)
    w.add_file_type(0)
    total = 0
    for i in range(n_tensors):
        t = rng.standard_t(5, size=(rows, n_embd)).astype(np.float32)
        t *= (0.02 * np.exp(rng.normal(0, 0.5, size=(rows, 1)))).astype(np.float32)
        w.add_tensor(f"blk.{i}.ffn_up.weight", t)
        total += t.size
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return total


def time_llamacpp(src: Path, dst: Path, ftype: int, threads: int) -> float:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.pure = True
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    dt = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    return dt


def ours_binary() -> str:
    cands = sorted(glob.glob("target/release/deps/quantize_throughput-*"), key=os.path.getmtime)
    cands = [c for c in cands if os.access(c, os.X_OK) and not c.endswith(".d")]
    if not cands:
        raise SystemExit("build it first: cargo build --release --bench quantize_throughput")
    return cands[-1]


def time_ours(binary: str, src: Path, dst: Path, ty: str, threads: int) -> float:
    out = subprocess.run([binary, str(src), str(dst), ty, str(threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mweights", type=int, default=134)
    ap.add_argument("--types", default="Q8_0,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    binary = ours_binary()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        src = Path(d) / "bench-f32.gguf"
        n = write_f32_gguf(src, a.mweights)
        rows = []
        for ty in a.types.split(","):
            for th in [int(x) for x in a.threads.split(",")]:
                ll = min(time_llamacpp(src, Path(d) / "ll.gguf", FTYPES[ty], th) for _ in range(a.repeat))
                us = min(time_ours(binary, src, Path(d) / "us.gguf", ty, th) for _ in range(a.repeat))
                rows.append({"type": ty, "threads": th, "weights": n, "llamacpp_s": ll, "longquant_s": us,
                             "llamacpp_mw_s": n / ll / 1e6, "longquant_mw_s": n / us / 1e6, "ratio": ll / us})
                print(f"{ty} t={th}: llama.cpp {n/ll/1e6:.1f} MW/s, longquant {n/us/1e6:.1f} MW/s, x{ll/us:.2f}", file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"| type | threads | llama.cpp MW/s | longquant MW/s | ratio |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['type']} | {r['threads']} | {r['llamacpp_mw_s']:.1f} | {r['longquant_mw_s']:.1f} | {r['ratio']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
