#!/usr/bin/env python3
"""Check our block layouts against gguf-py: dequantize raw blocks with gguf.quants and compare,
bit for bit, with the f32 values our Rust dequantizer produced from the same blocks.

Usage: python3 scripts/golden/dequant_check.py DIR

DIR holds, for each type X, `X.bin` (raw blocks, as they would sit in a GGUF) and `X.f32`
(our dequantization of them, little-endian f32). X is a ggml type name (Q4_0, Q4_K, F16,
BF16, ...). Written by quants/tests/gguf_py_layout.rs (or quants/examples/dump_blocks.rs).

gguf-py 0.19 has no Q8_K dequantizer (Q8_K is an activation-only type that never appears in
files). For Q8_K this script decodes the layout documented in ggml-common.h itself (f32 d,
256 x i8, 16 x i16 group sums) and additionally checks that every group sum equals the sum of
its 16 quants; that line says `(own decoder)`.

Output: one line per type, `OK <type> values=<n>` or `MISMATCH <type> ...` with the first
differing index; exit status 0 when every type matched, 1 on any mismatch, 2 on bad input,
3 when gguf-py cannot be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover - environment dependent
    print(f"NO_GGUF cannot import gguf-py: {e}")
    sys.exit(3)

QK_K = 256


def dequant_q8_k(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Decode Q8_K blocks (292 bytes each) and check their group sums."""
    type_size = 4 + QK_K + 2 * (QK_K // 16)
    if raw.size % type_size:
        raise ValueError(f"{raw.size} bytes is not a whole number of {type_size}-byte Q8_K blocks")
    blocks = raw.reshape(-1, type_size)
    d = blocks[:, :4].copy().view("<f4")
    qs = blocks[:, 4:4 + QK_K].copy().view(np.int8)
    bsums = blocks[:, 4 + QK_K:].copy().view("<i2")
    problems = []
    want = qs.astype(np.int32).reshape(-1, QK_K // 16, 16).sum(axis=-1)
    bad = np.argwhere(want != bsums.astype(np.int32))
    if bad.size:
        b, g = bad[0]
        problems.append(f"bsums block={b} group={g} stored={int(bsums[b, g])} sum(qs)={int(want[b, g])}")
    return (d * qs.astype(np.float32)).reshape(-1), problems


def check(directory: Path) -> int:
    bins = sorted(directory.glob("*.bin"))
    if not bins:
        print(f"ERROR no *.bin files in {directory}")
        return 2
    failures = 0
    for bin_path in bins:
        name = bin_path.stem
        ours_path = bin_path.with_suffix(".f32")
        if not ours_path.exists():
            print(f"ERROR {name}: {ours_path.name} missing")
            return 2
        raw = np.fromfile(bin_path, dtype=np.uint8)
        ours = np.fromfile(ours_path, dtype="<f4")
        note = ""
        problems: list[str] = []
        if name == "Q8_K":
            theirs, problems = dequant_q8_k(raw)
            block_size = QK_K
            note = " (own decoder)"
        else:
            try:
                qtype = gguf.GGMLQuantizationType[name]
            except KeyError:
                print(f"ERROR {name}: not a ggml type name")
                return 2
            block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            if raw.size % type_size:
                print(f"ERROR {name}: {raw.size} bytes is not a whole number of {type_size}-byte blocks")
                return 2
            # One "row" per block keeps gguf-py's row grouping trivially valid.
            theirs = dequantize(raw.reshape(-1, type_size), qtype).reshape(-1).astype(np.float32)
        if theirs.size != ours.size:
            print(f"MISMATCH {name}: gguf-py gives {theirs.size} values, ours {ours.size}")
            failures += 1
            continue
        a = ours.view(np.uint32)
        b = np.ascontiguousarray(theirs).view(np.uint32)
        diff = np.flatnonzero(a != b)
        if diff.size or problems:
            failures += 1
            if diff.size:
                i = int(diff[0])
                print(f"MISMATCH {name}{note}: {diff.size} of {a.size} values differ; first index {i} "
                      f"(block {i // block_size}) "
                      f"ours={ours[i]!r} (0x{int(a[i]):08x}) gguf-py={theirs[i]!r} (0x{int(b[i]):08x})")
            for p in problems:
                print(f"MISMATCH {name}{note}: {p}")
            continue
        print(f"OK {name} values={a.size}{note}")
    return 1 if failures else 0


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    directory = Path(sys.argv[1])
    if not directory.is_dir():
        print(f"ERROR {directory} is not a directory")
        return 2
    return check(directory)


if __name__ == "__main__":
    sys.exit(main())
