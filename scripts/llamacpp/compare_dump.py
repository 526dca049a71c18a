"""Pairs llama.cpp's intermediates (dump_tensors.py) with ours (examples/dump_acts.rs) and reports,
tensor by tensor in evaluation order, how many values differ and by how much.

Run (from the repository root), for MODEL.gguf:
    export LLAMA_CPP_LIB_PATH=/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    python3 scripts/llamacpp/dump_tensors.py MODEL.gguf /tmp/ll --text fixtures/cache/text/licenses.txt
    cargo run --release --features trace --example dump_acts -- MODEL.gguf /tmp/ll/tokens.json /tmp/us
    python3 scripts/llamacpp/compare_dump.py /tmp/ll /tmp/us [--layers N]

(With `--features trace`, also the intermediates named as in llama.cpp's graph.)
Our dump holds the input of every matrix product, so the pairs are: attn_q input = attn_norm-L,
attn_output input = kqv_out-L, ffn_gate input = ffn_norm-L, ffn_down input = ffn_swiglu-L,
output input = result_norm, logits = result_output. Columns: elements differing, max |diff| in
units of the last place of llama.cpp's value, max |diff|, max |value|.
"""
import argparse
import json
import signal
from pathlib import Path

import numpy as np

PAIRS = {"attn_q": "attn_norm-{}", "attn_output": "kqv_out-{}", "ffn_gate": "ffn_norm-{}",
         "ffn_down": "ffn_swiglu-{}"}


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    ap = argparse.ArgumentParser()
    ap.add_argument("ll")
    ap.add_argument("us")
    ap.add_argument("--layers", type=int, default=99)
    args = ap.parse_args()
    ll, us = Path(args.ll), Path(args.us)
    lidx = json.load(open(ll / "index.json"))
    last = {}
    for k, name, op, _ty, ne, fname in lidx:
        last[name] = (fname, ne)  # the final node of that name (after RESHAPE etc.)
        if op == "MUL_MAT" and name.split("-")[0] in ("Qcur", "Kcur"):
            last[name.replace("cur-", "cur_mm-")] = (fname, ne)  # before RoPE
    n_tok = len(json.load(open(ll / "tokens.json")))
    rows = []
    for fname, name, nval in json.load(open(us / "index.json")):
        parts = name.split(".")
        if parts[0] == "blk":
            il, kind = int(parts[1]), parts[2]
            if il >= args.layers or kind not in PAIRS:
                continue
            lname = PAIRS[kind].format(il)
        elif parts[0] == "output":
            lname = "result_norm"
        elif "-" in name:  # traced intermediates (--features trace) carry llama.cpp's names
            if int(name.split("-")[1]) >= args.layers:
                continue
            lname = name
        else:
            continue
        v = np.fromfile(us / fname, dtype="<f4")
        if rows and rows[-1][0] == name:  # one tensor shown in several token tiles
            rows[-1] = (name, lname, np.concatenate([rows[-1][2], v]))
        else:
            rows.append((name, lname, v))
    logits = np.fromfile(us / "logits.f32", dtype="<f4")
    rows.append(("logits", "result_output", logits))
    for name, lname, ours in rows:
        if lname not in last:
            print(f"{name:28s} -> {lname}: missing in llama.cpp dump")
            continue
        theirs = np.load(ll / last[lname][0]).reshape(-1)
        if theirs.size != ours.size:
            # llama.cpp may compute the last layer only for output rows
            print(f"{name:28s} -> {lname}: size {ours.size} vs {theirs.size}")
            continue
        diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        ulp = np.spacing(np.abs(theirs)).astype(np.float64)
        ndiff = int((ours != theirs).sum())
        print(f"{name:28s} {lname:16s} differ {ndiff:7d}/{ours.size:<8d} max_ulp {np.max(diff / ulp):10.1f} "
              f"max_abs {diff.max():.3e} max_val {np.abs(theirs).max():.3e}")


if __name__ == "__main__":
    main()
