#!/usr/bin/env python3
"""Build the golden quantization vectors in quants/tests/golden/ with llama.cpp itself.

What it does (see PROVENANCE.md for the why):
  1. builds deterministic F32 test matrices (numpy Generator, fixed seed), one GGUF tensor per
     data category (gaussian, heavy-tailed, zero/constant, tiny, huge, mixed signs, scale
     spread, rounding ties);
  2. writes them into a minimal llama-architecture F32 GGUF (gguf-py GGUFWriter);
  3. quantizes that file with llama.cpp's own `llama_model_quantize` (through the
     llama-cpp-python ctypes binding, 1 thread, `pure`, so every 2-D tensor gets exactly the
     requested type) for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS, and again with a synthetic
     importance matrix (passed as `llama_model_quantize_params.imatrix`) for Q4_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS;
  4. reads every output with gguf-py's GGUFReader, checks every tensor has the requested type
     and stores the raw blocks, row-major, in the category order of the input;
  5. dequantizes those blocks with gguf-py (`gguf.quants.dequantize`) and stores an FNV-1a-64
     hash of every dequantized row, so the Rust test can check our dequantizer bit for bit
     without committing megabytes of floats;
  6. writes manifest.json (shapes, file list, sha256 of every file, llama.cpp commit, command).

Run from the repository root:
  LLAMA_CPP_LIB_PATH=/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
      python3 scripts/golden/make_golden.py
The output is a pure function of the seed and the llama.cpp build (re-running it must
reproduce identical files; `--check` verifies that against the committed manifest).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 0x5EED_601D
ROW_LEN = 1024  # four Q*_K super-blocks, 32 Q*_0/Q*_1/Q8_0 blocks per row
ROWS_PER_CATEGORY = 28
CATEGORIES = [
    "gaussian",
    "heavy_tailed",
    "zero_const",
    "tiny",
    "huge",
    "mixed_signs",
    "scale_spread",
    "rounding_ties",
]
# Each category becomes one 2-D tensor; the names only have to look like a llama model.
TENSOR_NAMES = [
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.ffn_gate.weight",
    "blk.0.ffn_up.weight",
    "blk.1.attn_q.weight",
    "blk.1.attn_k.weight",
    "blk.1.ffn_gate.weight",
    "blk.1.ffn_up.weight",
]

# (golden name, ggml type name, llama_ftype value, use imatrix)
# llama_ftype values from include/llama.h; Q4_K/Q5_K use the *_S ftypes, which with
# `pure` put every tensor in the base type.
TARGETS = [
    ("Q4_0", "Q4_0", 2, False),
    ("Q4_1", "Q4_1", 3, False),
    ("Q5_0", "Q5_0", 8, False),
    ("Q5_1", "Q5_1", 9, False),
    ("Q8_0", "Q8_0", 7, False),
    ("Q4_K", "Q4_K", 14, False),  # LLAMA_FTYPE_MOSTLY_Q4_K_S
    ("Q5_K", "Q5_K", 16, False),  # LLAMA_FTYPE_MOSTLY_Q5_K_S
    ("Q6_K", "Q6_K", 18, False),
    ("Q4_0.imatrix", "Q4_0", 2, True),
    ("Q4_K.imatrix", "Q4_K", 14, True),
    ("Q5_K.imatrix", "Q5_K", 16, True),
    ("Q6_K.imatrix", "Q6_K", 18, True),
    # Added for issue 14 (the sets above were not regenerated: same seed, same bytes).
    ("Q2_K", "Q2_K", 10, False),  # LLAMA_FTYPE_MOSTLY_Q2_K
    ("Q3_K", "Q3_K", 11, False),  # LLAMA_FTYPE_MOSTLY_Q3_K_S
    ("IQ4_NL", "IQ4_NL", 25, False),
    ("IQ4_XS", "IQ4_XS", 30, False),
    ("Q2_K.imatrix", "Q2_K", 10, True),
    ("Q3_K.imatrix", "Q3_K", 11, True),
    ("IQ4_NL.imatrix", "IQ4_NL", 25, True),
    ("IQ4_XS.imatrix", "IQ4_XS", 30, True),
]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64-bit, over raw bytes (the Rust test implements the same ten lines)."""
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


# ---------------------------------------------------------------------------------------------
# Test data. Every category is (ROWS_PER_CATEGORY, ROW_LEN) float32 and finite.
# ---------------------------------------------------------------------------------------------

def _blocks(a: np.ndarray, width: int) -> np.ndarray:
    """View (rows, ROW_LEN) as (rows, ROW_LEN // width, width)."""
    return a.reshape(a.shape[0], a.shape[1] // width, width)


def cat_gaussian(rng: np.random.Generator) -> np.ndarray:
    # Weight-like: unit normal scaled per row by 0.005..0.1, like trained projection rows.
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN))
    x *= rng.uniform(0.005, 0.1, size=(ROWS_PER_CATEGORY, 1))
    return x


def cat_heavy_tailed(rng: np.random.Generator) -> np.ndarray:
    # Student-t with 3 degrees of freedom, plus rare isolated outliers (20..100x) and two
    # "outlier channels" (columns scaled 30x), the pattern LLM weights show.
    x = rng.standard_t(3.0, size=(ROWS_PER_CATEGORY, ROW_LEN)) * 0.02
    mask = rng.random(x.shape) < 2e-3
    x[mask] *= rng.uniform(20.0, 100.0, size=int(mask.sum())) * rng.choice([-1.0, 1.0], size=int(mask.sum()))
    cols = rng.choice(ROW_LEN, size=2, replace=False)
    x[:, cols] *= 30.0
    return x


def cat_zero_const(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN)) * 0.05
    x[0:4] = 0.0  # whole rows of zeros
    for r, v in zip(range(4, 8), [1.0, -0.5, 3e-3, -7.25]):
        x[r] = v  # whole constant rows
    # Rows 8..17: edge cases at super-block (256) granularity; rows 18..27 at 32 granularity.
    for r in range(8, ROWS_PER_CATEGORY):
        width = 256 if r < 18 else 32
        blk = _blocks(x[r:r + 1], width)[0]
        for b in range(blk.shape[0]):
            kind = rng.integers(0, 6)
            if kind == 0:
                blk[b] = 0.0
            elif kind == 1:
                blk[b] = rng.choice([0.25, -0.125, 1.5, -3.0, 1e-3])
            elif kind == 2:  # a single non-zero
                blk[b] = 0.0
                blk[b, rng.integers(0, width)] = rng.choice([1.0, -1.0]) * rng.uniform(0.01, 2.0)
            elif kind == 3:  # two distinct values only
                blk[b] = np.where(rng.random(width) < 0.5, 0.3, -0.1)
            # kinds 4, 5: keep the gaussian
    return x


def cat_tiny(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN))
    blk = _blocks(x, 32)
    for r in range(ROWS_PER_CATEGORY):
        for b in range(blk.shape[1]):
            kind = rng.integers(0, 5)
            if kind == 0:  # 1e-30..1e-20: every f16 scale underflows to zero
                blk[r, b] *= 10.0 ** rng.uniform(-30, -20)
            elif kind == 1:  # 1e-7..1e-5: f16 scales land in the subnormal range
                blk[r, b] *= 10.0 ** rng.uniform(-7, -5)
            elif kind == 2:  # f32 subnormal inputs
                blk[r, b] *= 10.0 ** rng.uniform(-44, -39)
            elif kind == 3:  # one normal value among tiny ones
                blk[r, b] *= 1e-25
                blk[r, b, rng.integers(0, 32)] = rng.uniform(1e-4, 1e-2)
            else:  # 1e-12..1e-8
                blk[r, b] *= 10.0 ** rng.uniform(-12, -8)
    return x


def cat_huge(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN))
    blk = _blocks(x, 32)
    blk *= 10.0 ** rng.uniform(3.5, 4.3, size=(ROWS_PER_CATEGORY, blk.shape[1], 1))
    np.clip(x, -6.0e4, 6.0e4, out=x)
    f16_max = 65504.0
    x[0] = rng.uniform(6.4e4, f16_max, size=ROW_LEN) * rng.choice([-1.0, 1.0], size=ROW_LEN)
    x[1] = np.where(rng.random(ROW_LEN) < 0.5, f16_max, -f16_max)
    x[2] = 3.0e4 + rng.standard_normal(ROW_LEN) * 1.0e3  # large one-signed offset (mins)
    x[3] = -3.0e4 + rng.standard_normal(ROW_LEN) * 1.0e3
    x[4] = rng.uniform(-f16_max, f16_max, size=ROW_LEN)
    return x


def cat_mixed_signs(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN)) * 0.05
    blk = _blocks(x, 32)
    for r in range(ROWS_PER_CATEGORY):
        for b in range(blk.shape[1]):
            g = blk[r, b]
            kind = rng.integers(0, 7)
            if kind == 0:
                blk[r, b] = np.abs(g) + 0.01  # all positive
            elif kind == 1:
                blk[r, b] = -np.abs(g) - 0.01  # all negative
            elif kind == 2:
                blk[r, b] = np.abs(g) * np.tile([1.0, -1.0], 16)  # alternating
            elif kind == 3:
                blk[r, b] = 1.0 + 0.01 * g  # large offset, small spread
            elif kind == 4:  # +a and -a both present: ties in the |max| search
                a = float(np.abs(g).max()) * 1.5
                blk[r, b, rng.integers(0, 16)] = a
                blk[r, b, 16 + rng.integers(0, 16)] = -a
            elif kind == 5:  # negative extreme dominates
                blk[r, b, rng.integers(0, 32)] = -float(np.abs(g).max()) * 4.0
            # kind 6: plain gaussian
    return x


def cat_scale_spread(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS_PER_CATEGORY, ROW_LEN))
    x *= 10.0 ** rng.uniform(-8, 3, size=(ROWS_PER_CATEGORY, 1))
    # Half the rows also spread by up to 6 decades between 32-blocks inside the row.
    half = ROWS_PER_CATEGORY // 2
    blk = _blocks(x[half:], 32)
    blk *= 10.0 ** rng.uniform(-3, 3, size=(blk.shape[0], blk.shape[1], 1))
    x[half:] = blk.reshape(half, ROW_LEN)
    # Keep every f16 scale finite (llama.cpp rejects blocks with an infinite scale or min).
    np.clip(x, -6.0e4, 6.0e4, out=x)
    return x


def cat_rounding_ties(rng: np.random.Generator) -> np.ndarray:
    # Values on half-integer grids times a power of two, with the block extreme chosen so the
    # reciprocal scale is exact: x * (1/d) lands exactly on .5 and rounding ties decide.
    x = np.zeros((ROWS_PER_CATEGORY, ROW_LEN))
    blk = _blocks(x, 32)
    for r in range(ROWS_PER_CATEGORY):
        for b in range(blk.shape[1]):
            s = 2.0 ** rng.integers(-12, 4)
            kind = rng.integers(0, 4)
            if kind == 0:  # Q4_0-style: extreme -8, others half-integers in [-7.5, 7.5]
                v = rng.integers(-15, 16, size=32) * 0.5
                v[rng.integers(0, 32)] = -8.0
            elif kind == 1:  # Q8_0-style: extreme 127, others k + 0.5
                v = rng.integers(-126, 126, size=32) + 0.5
                v[rng.integers(0, 32)] = 127.0
            elif kind == 2:  # integers only (exactly representable codes)
                v = rng.integers(-8, 8, size=32).astype(np.float64)
            else:  # few repeated values
                v = rng.choice([-2.5, -0.5, 0.5, 1.5, 3.5], size=32)
            blk[r, b] = v * s
    return x


CATEGORY_FUNCS = {
    "gaussian": cat_gaussian,
    "heavy_tailed": cat_heavy_tailed,
    "zero_const": cat_zero_const,
    "tiny": cat_tiny,
    "huge": cat_huge,
    "mixed_signs": cat_mixed_signs,
    "scale_spread": cat_scale_spread,
    "rounding_ties": cat_rounding_ties,
}


def make_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for cat in CATEGORIES:
        x = CATEGORY_FUNCS[cat](rng).astype(np.float32)
        assert x.shape == (ROWS_PER_CATEGORY, ROW_LEN), cat
        assert np.all(np.isfinite(x)), cat
        out.append(np.ascontiguousarray(x))
    return out


def make_imatrix(rng: np.random.Generator) -> list[np.ndarray]:
    # One vector of per-column importances per tensor, shaped like llama-imatrix output
    # (mean squared activations): log-normal, a few 1000x "outlier channels", and an isolated
    # zero every 97 columns (dead channels; never a whole 16/32-column run).
    out = []
    for _ in CATEGORIES:
        w = np.exp(rng.standard_normal(ROW_LEN) * 1.5)
        w[rng.choice(ROW_LEN, size=3, replace=False)] *= 1000.0
        w[::97] = 0.0
        out.append(w.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# GGUF + llama.cpp
# ---------------------------------------------------------------------------------------------

def write_f32_gguf(path: Path, tensors: list[np.ndarray]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("longquant-golden")
    w.add_context_length(256)
    w.add_embedding_length(ROW_LEN)
    w.add_block_count(2)
    w.add_feed_forward_length(ROW_LEN)
    w.add_head_count(8)
    w.add_head_count_kv(8)
    w.add_rope_dimension_count(ROW_LEN // 8)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(32)
    w.add_file_type(0)  # ALL_F32
    for name, t in zip(TENSOR_NAMES, tensors):
        w.add_tensor(name, t)  # numpy (rows, cols) -> GGUF ne = [cols, rows]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize_with_llama(src: Path, dst: Path, ftype: int, imatrix: list[np.ndarray] | None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 1
    params.ftype = ftype
    params.pure = True
    keep_alive = []  # ctypes buffers must outlive the call
    if imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, w) in enumerate(zip(TENSOR_NAMES, imatrix)):
            buf = (ctypes.c_float * len(w)).from_buffer_copy(w.tobytes())
            keep_alive.append(buf)
            entries[i].name = name.encode()  # ctypes keeps the bytes alive in `entries`
            entries[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            entries[i].size = len(w)
        entries[len(imatrix)].name = None  # list terminator
        keep_alive.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}, ftype={ftype}) returned {rc}")


def read_blocks(path: Path, type_name: str) -> bytes:
    import gguf

    r = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in r.tensors}
    want = gguf.GGMLQuantizationType[type_name]
    bs, ts = gguf.GGML_QUANT_SIZES[want]
    row_bytes = ROW_LEN // bs * ts
    out = bytearray()
    for name in TENSOR_NAMES:
        t = by_name[name]
        if t.tensor_type != want:
            raise SystemExit(f"{path}: {name} is {t.tensor_type.name}, expected {type_name}")
        raw = np.asarray(t.data).view(np.uint8).tobytes()
        if len(raw) != ROWS_PER_CATEGORY * row_bytes:
            raise SystemExit(f"{path}: {name} has {len(raw)} bytes, expected {ROWS_PER_CATEGORY * row_bytes}")
        out += raw
    # Every 2-D tensor of the file must be in the requested type (pure), none left F32.
    for t in r.tensors:
        if len([d for d in t.shape if d > 1]) >= 2 and t.tensor_type != want:
            raise SystemExit(f"{path}: 2-D tensor {t.name} is {t.tensor_type.name}")
    return bytes(out)


def dequant_row_hashes(blocks: bytes, type_name: str) -> list[int]:
    import gguf

    qt = gguf.GGMLQuantizationType[type_name]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    row_bytes = ROW_LEN // bs * ts
    arr = np.frombuffer(blocks, dtype=np.uint8).reshape(-1, row_bytes)
    deq = gguf.quants.dequantize(arr, qt)
    assert deq.dtype == np.float32 and deq.shape == (arr.shape[0], ROW_LEN)
    return [fnv1a64(np.ascontiguousarray(row).astype("<f4").tobytes()) for row in deq]


def llama_cpp_provenance() -> dict:
    import gguf
    import llama_cpp

    root = Path(llama_cpp.__file__).resolve().parent.parent
    vendor = Path("/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp")
    commit = None
    for cand in (vendor, root / "vendor" / "llama.cpp"):
        try:
            commit = subprocess.run(["git", "-C", str(cand), "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    try:
        from importlib.metadata import version as pkg_version
        gguf_version = pkg_version("gguf")
    except Exception:  # noqa: BLE001 - provenance only
        gguf_version = "unknown"
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_commit": commit,
        "llama_cpp_lib_path": os.environ.get("LLAMA_CPP_LIB_PATH"),
        "gguf_py": gguf_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=Path, default=repo / "quants" / "tests" / "golden")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate GGUFs here")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and compare sha256s with the committed manifest")
    args = ap.parse_args()

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "golden"
            subprocess.run([sys.executable, __file__, "--out", str(fresh)], check=True)
            old = json.loads((args.out / "manifest.json").read_text())["files"]
            new = json.loads((fresh / "manifest.json").read_text())["files"]
            bad = [k for k in sorted(set(old) | set(new)) if old.get(k, {}).get("sha256") != new.get(k, {}).get("sha256")]
            for k in bad:
                print(f"DIFFERS: {k}")
            print("reproducible" if not bad else f"{len(bad)} file(s) differ")
            return 1 if bad else 0

    rng = np.random.default_rng(SEED)
    inputs = make_inputs(rng)
    imatrix = make_imatrix(rng)

    args.out.mkdir(parents=True, exist_ok=True)
    work_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)

    files: dict[str, dict] = {}

    def put(name: str, data: bytes, **meta) -> None:
        (args.out / name).write_bytes(data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **meta}

    put("input.f32", b"".join(x.astype("<f4").tobytes() for x in inputs))
    put("imatrix.f32", b"".join(w.astype("<f4").tobytes() for w in imatrix))

    src = work / "golden-f32.gguf"
    write_f32_gguf(src, inputs)

    targets = []
    for name, type_name, ftype, use_im in TARGETS:
        dst = work / f"golden-{name}.gguf"
        quantize_with_llama(src, dst, ftype, imatrix if use_im else None)
        blocks = read_blocks(dst, type_name)
        put(f"{name}.bin", blocks)
        hashes = dequant_row_hashes(blocks, type_name)
        put(f"{name}.deq_fnv1a64.u64", np.asarray(hashes, dtype="<u8").tobytes())
        targets.append({
            "name": name,
            "type": type_name,
            "llama_ftype": ftype,
            "imatrix": use_im,
            "blocks": f"{name}.bin",
            "dequant_row_hashes": f"{name}.deq_fnv1a64.u64",
        })
        print(f"{name:14s} {len(blocks):8d} bytes", flush=True)

    cmd = "LLAMA_CPP_LIB_PATH=" + shlex.quote(os.environ.get("LLAMA_CPP_LIB_PATH", "")) + \
        " python3 scripts/golden/make_golden.py"
    manifest = {
        "about": "Golden vectors made by llama.cpp's llama_model_quantize; see scripts/golden/PROVENANCE.md",
        "seed": SEED,
        "row_len": ROW_LEN,
        "rows_per_category": ROWS_PER_CATEGORY,
        "n_rows": ROWS_PER_CATEGORY * len(CATEGORIES),
        "categories": CATEGORIES,
        "tensor_names": TENSOR_NAMES,
        "input": "input.f32",
        "imatrix": "imatrix.f32",
        "imatrix_layout": "one row_len vector per category (tensor), category order; applies to every row of that category",
        "dequant_hash": "FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3) of each row's gguf-py dequantized little-endian f32 bytes",
        "targets": targets,
        "files": files,
        "command": cmd,
        "quantize_params": {"nthread": 1, "pure": True},
        "provenance": llama_cpp_provenance(),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    total = sum(f["bytes"] for f in files.values())
    print(f"wrote {len(files)} files, {total} bytes, into {args.out}")
    if work_ctx:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
