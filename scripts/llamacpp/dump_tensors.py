"""Dumps every intermediate tensor of one llama.cpp forward pass (CPU backend), to compare our
forward pass with llama.cpp's op by op.

Run (from the repository root):
    export LLAMA_CPP_LIB_PATH=/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    python3 scripts/llamacpp/dump_tensors.py MODEL.gguf OUT_DIR [--tokens 64] [--threads 2]
        [--text fixtures/cache/text/licenses.txt] [--ids IDS.json] [--no-fa] [--no-repack]
        [--ctk TYPE] [--ctv TYPE]

It tokenizes the start of the text with the model's own BOS rule (SmolLM2 adds none), keeps the first
`--tokens` ids (or takes the ids of `--ids`, a JSON list, as they are: for prompts with special
tokens, e.g. the chat-template case of smollm2_logits.json, or to pad a prompt to another batch
size), evaluates them as one batch (n_ctx = n_batch = n_ubatch = 512, F16 K/V, flash attention
on unless --no-fa, as llama-perplexity runs) with a `cb_eval` callback, and writes:
    OUT_DIR/tokens.json            the token ids
    OUT_DIR/NNN_<name>.npy         every graph node llama.cpp computes, in evaluation order, as float32
                                   with numpy shape (ne3, ne2, ne1, ne0) (views are read through
                                   their strides; F16 tensors are widened)
    OUT_DIR/index.json             [order, name, op, ggml type, ne] for every file
Compare with ours through scripts/llamacpp/compare_dump.py (see its header).
"""
import argparse
import ctypes as C
import json
import os
from pathlib import Path

import numpy as np

from common import llama_cpp

GGML_MAX_DIMS = 4
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


class GgmlTensor(C.Structure):
    """Mirror of `struct ggml_tensor` (ggml/include/ggml.h at the vendored commit)."""
    _fields_ = [
        ("type", C.c_int),
        ("buffer", C.c_void_p),
        ("ne", C.c_int64 * GGML_MAX_DIMS),
        ("nb", C.c_size_t * GGML_MAX_DIMS),
        ("op", C.c_int),
        ("op_params", C.c_int32 * 16),
        ("flags", C.c_int32),
        ("src", C.c_void_p * 10),
        ("view_src", C.c_void_p),
        ("view_offs", C.c_size_t),
        ("data", C.c_void_p),
        ("name", C.c_char * 64),
        ("extra", C.c_void_p),
        ("padding", C.c_char * 8),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default="fixtures/cache/text/licenses.txt")
    ap.add_argument("--ids", help="JSON list of token ids to evaluate instead of tokenizing --text")
    ap.add_argument("--no-fa", action="store_true")
    ap.add_argument("--no-repack", action="store_true", help="as llama-perplexity --no-repack")
    ap.add_argument("--ctk", default="f16", help="K cache type, as llama-perplexity -ctk (issue 17)")
    ap.add_argument("--ctv", default="f16", help="V cache type, as llama-perplexity -ctv")
    args = ap.parse_args()
    lc = llama_cpp()
    libdir = os.environ["LLAMA_CPP_LIB_PATH"]
    ggml = C.CDLL(os.path.join(libdir, "libggml-base.so"))
    ggml.ggml_op_desc.restype = C.c_char_p
    ggml.ggml_op_desc.argtypes = [C.c_void_p]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.use_extra_bufts = not args.no_repack
    model = lc.llama_model_load_from_file(args.model.encode(), mp)
    vocab = lc.llama_model_get_vocab(model)
    if args.ids:
        ids = [int(t) for t in json.loads(Path(args.ids).read_text())]
    else:
        text = open(args.text, "rb").read()[: args.tokens * 16]
        buf = (lc.llama_token * (len(text) + 8))()
        n = lc.llama_tokenize(vocab, text, len(text), buf, len(buf), True, False)
        assert n >= args.tokens, n
        ids = [buf[i] for i in range(args.tokens)]
    (out / "tokens.json").write_text(json.dumps(ids) + "\n")

    index = []

    def cb(t, ask, _ud):
        if ask:
            return True
        ten = GgmlTensor.from_address(t)
        name = ten.name.decode()
        ne = list(ten.ne)
        if ten.type not in (GGML_TYPE_F32, GGML_TYPE_F16) or not ten.data:
            return True
        np_t = np.float32 if ten.type == GGML_TYPE_F32 else np.float16
        size = sum((ne[i] - 1) * ten.nb[i] for i in range(4)) + np.dtype(np_t).itemsize
        itemsize = np.dtype(np_t).itemsize
        size += (-size) % itemsize
        raw = bytes((C.c_uint8 * size).from_address(ten.data))
        base = np.frombuffer(raw, dtype=np_t)
        a = np.lib.stride_tricks.as_strided(
            base, shape=(ne[3], ne[2], ne[1], ne[0]),
            strides=(ten.nb[3], ten.nb[2], ten.nb[1], ten.nb[0]),
        ).astype(np.float32)
        k = len(index)
        fname = f"{k:04d}_{name.replace('/', '_').replace(' ', '_')}.npy"
        np.save(out / fname, a)
        index.append([k, name, ggml.ggml_op_desc(t).decode(), ten.type, ne, fname])
        return True

    cb_c = lc.ggml_backend_sched_eval_callback(cb)
    cp = lc.llama_context_default_params()
    cp.n_ctx = 512
    cp.n_batch = 512
    cp.n_ubatch = 512
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    cp.flash_attn_type = 0 if args.no_fa else 1  # LLAMA_FLASH_ATTN_TYPE_DISABLED / ENABLED
    cache_types = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
                   "iq4_nl": 20, "bf16": 30}  # ggml_type values at the vendored commit
    cp.type_k = cache_types[args.ctk]
    cp.type_v = cache_types[args.ctv]
    cp.cb_eval = cb_c
    cp.cb_eval_user_data = None
    ctx = lc.llama_init_from_model(model, cp)
    batch = lc.llama_batch_init(len(ids), 0, 1)
    for i, t in enumerate(ids):  # every position outputs logits, as in llama-perplexity
        batch.token[i] = t
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    batch.n_tokens = len(ids)
    rc = lc.llama_decode(ctx, batch)
    assert rc == 0, rc
    (out / "index.json").write_text(json.dumps(index) + "\n")
    print(f"{len(index)} tensors -> {out}")
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)


if __name__ == "__main__":
    main()
