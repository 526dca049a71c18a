"""Shows why llama.cpp's result for the last `n % 4` tokens of a batch depends on the batch size
when a Q4_K weight is repacked (q4_K_8x8, llama.cpp's default on AVX2/AVX-512), by redoing both of
its float recipes for one token of one Q4_K matrix product in numpy and matching each bit for bit.

llama.cpp's repacked forward_mul_mat (ggml/src/ggml-cpu/repack.cpp) hands the first
`n - n % 4` tokens to the q4_K_8x8 GEMM and each leftover token to the GEMV. Both sum the scaled
code products exactly in integers, but the GEMM folds them into the running f32 sums once per 64
weights (fma(I_64, d_w·d_a, acc), same for the mins), the GEMV once per 256-weight super-block
(fma(I_256, d_w·d_a, acc)). A token in the tail therefore rounds differently from the same token
inside a group of four. We follow the GEMM for every token (a token's result must not depend on
how many tokens are evaluated together), so we match llama.cpp everywhere except those tail tokens.

Run (from the repository root), e.g. for the 85-token prompt of smollm2_logits.json (85 % 4 = 1):
    export LLAMA_CPP_LIB_PATH=/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    python3 scripts/llamacpp/dump_tensors.py MODEL.gguf /tmp/ll85 --ids IDS85.json
    python3 scripts/llamacpp/dump_tensors.py MODEL.gguf /tmp/ll88 --ids IDS88.json  # 3 ids appended
    python3 scripts/llamacpp/q4k_gemv_tail.py MODEL.gguf /tmp/ll85 /tmp/ll88 --layer 3 --pos 84
It prints how many of the row's outputs each recipe gets exactly right (against the llama.cpp
batch whose size puts the token in the tail, and the one that puts it in a GEMM group).
"""
import argparse
import glob

import numpy as np
from gguf import GGUFReader

F32 = np.float32
Q4K_BYTES = 144  # f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit codes


def fma(a, b, c):
    """f32 fused multiply-add: the f64 product of two 24-bit significands is exact, so only the
    sum is rounded (a double rounding f64 -> f32 could differ from a true FMA in rare ties)."""
    return F32(np.float64(a) * np.float64(b) + np.float64(c))


def quantize_q8_k(x):
    """One row to Q8_K as ggml's quantize_row_q8_K_ref: per 256 values, the scale from the value of
    largest magnitude (first one wins), codes rounded half to even, 16-value code sums."""
    blocks = []
    for v in x.reshape(-1, 256):
        big = v[int(np.argmax(np.abs(v)))]
        iscale = F32(F32(-127.0) / big)
        q = np.minimum(127, np.rint((iscale * v).astype(F32))).astype(np.int64)
        blocks.append((q, F32(F32(1.0) / iscale), q.reshape(16, 16).sum(1)))
    return blocks


def scale_min(s, j):
    """Sub-block j's 6-bit scale and min from the 12 packed bytes."""
    if j < 4:
        return int(s[j] & 63), int(s[j + 4] & 63)
    return (int((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)),
            int((s[j + 4] >> 4) | ((s[j] >> 6) << 4)))


def row_dots(raw_row, act):
    """(GEMV result, GEMM result) of one weight row with one token's Q8_K activations."""
    gemv_v = gemv_m = gemm_v = gemm_m = F32(0)
    for b, (qa, da, bsums) in enumerate(act):
        blk = raw_row[b * Q4K_BYTES:(b + 1) * Q4K_BYTES]
        d = np.frombuffer(blk[0:2].tobytes(), np.float16)[0].astype(F32)
        dmin = np.frombuffer(blk[2:4].tobytes(), np.float16)[0].astype(F32)
        s = blk[4:16].astype(np.int64)
        qs = blk[16:144].astype(np.int64)
        scale_v, scale_m = F32(d * da), F32(dmin * da)
        total_v = total_m = 0
        for c in range(4):  # 64 weights: 32 low nibbles then 32 high nibbles
            lo, hi = qs[c * 32:(c + 1) * 32] & 0xF, qs[c * 32:(c + 1) * 32] >> 4
            s0, m0 = scale_min(s, 2 * c)
            s1, m1 = scale_min(s, 2 * c + 1)
            iv = s0 * int((lo * qa[64 * c:64 * c + 32]).sum()) + s1 * int((hi * qa[64 * c + 32:64 * c + 64]).sum())
            im = m0 * int(bsums[4 * c] + bsums[4 * c + 1]) + m1 * int(bsums[4 * c + 2] + bsums[4 * c + 3])
            gemm_v, gemm_m = fma(F32(iv), scale_v, gemm_v), fma(F32(im), scale_m, gemm_m)
            total_v += iv
            total_m += im
        gemv_v, gemv_m = fma(F32(total_v), scale_v, gemv_v), fma(F32(total_m), scale_m, gemv_m)
    return F32(gemv_v - gemv_m), F32(gemm_v - gemm_m)


def node(dump, name, pos):
    (path,) = glob.glob(f"{dump}/*_{name}.npy")
    t = np.load(path)
    return t.reshape(-1, t.shape[-1])[pos]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tail_dump", help="dump_tensors.py output where --pos is a leftover (GEMV) token")
    ap.add_argument("group_dump", help="dump_tensors.py output where --pos is inside a GEMM group")
    ap.add_argument("--layer", type=int, default=3, help="a layer whose ffn_down is Q4_K")
    ap.add_argument("--pos", type=int, required=True)
    args = ap.parse_args()
    name = f"blk.{args.layer}.ffn_down.weight"
    (t,) = [t for t in GGUFReader(args.model).tensors if t.name == name]
    assert t.tensor_type.name == "Q4_K", f"{name} is {t.tensor_type.name}"
    raw = np.asarray(t.data).view(np.uint8).reshape(int(t.shape[1]), -1)
    x = node(args.tail_dump, f"ffn_swiglu-{args.layer}", args.pos).astype(F32)
    assert np.array_equal(x, node(args.group_dump, f"ffn_swiglu-{args.layer}", args.pos)), \
        "the matmul inputs differ between the dumps; pick the first layer where the outputs split"
    act = quantize_q8_k(x)
    gemv, gemm = np.array([row_dots(r, act) for r in raw], dtype=F32).T
    tail = node(args.tail_dump, f"ffn_out-{args.layer}", args.pos)
    group = node(args.group_dump, f"ffn_out-{args.layer}", args.pos)
    n = len(gemv)
    print(f"{name}, position {args.pos}, {n} outputs")
    print(f"  GEMV recipe == llama.cpp tail batch : {int((gemv == tail).sum())}/{n}")
    print(f"  GEMM recipe == llama.cpp group batch: {int((gemm == group).sum())}/{n}")
    print(f"  llama.cpp tail vs group batch differ: {int((tail != group).sum())}/{n}")


if __name__ == "__main__":
    main()
