#!/usr/bin/env bash
# Our `longquant compare` against llama.cpp's `llama-perplexity --kl-divergence` on SmolLM2, ctx 512.
#   scripts/llamacpp/kld_check.sh [CHUNKS] [THREADS]          (defaults: 4 chunks, 2 threads)
# Needs fixtures/fetch.sh, a release build (cargo build --release) and llama.cpp's tools (LLAMA_CPP_BIN,
# default: the llama-cpp-python 0.3.36 sdist build). Work files go to $WORK (default: a temp dir, removed).
#
# Files (all from the Q4_1 fixture, made by longquant):
#   F32 base   : export-hf fixture -> HF folder -> convert --type F32
#   Q4_K_M     : convert HF folder --type Q4_K_M
#   Q4_K_M-deq : Q4_K_M -> export-hf -> convert --type F32 (the Q4_K_M weights, computed in f32)
# Pairs compared, each by both tools on the same text/ctx/chunks:
#   F32 vs Q4_K_M-deq : same weights on both sides, so this checks the KLD machinery itself
#                       (chunking, scoring, statistics); llama.cpp quantizes the base's log-probs to 16
#                       bits and drops terms below e^-16, we do not;
#   F32 vs Q4_K_M     : the real quantized file (needs forward-pass support for every tensor type of the
#                       mix; SmolLM2's 576-wide rows fall back to Q5_0/Q5_1/Q8_0). Skipped with a note
#                       when our forward pass refuses a type.
# Prints a table and exits 1 if mean KLD or same top p differ by more than 2 % relative.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LLAMA_CPP_BIN:-/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
chunks=${1:-4}; threads=${2:-2}; ctx=512
lq=$root/target/release/longquant
text=$root/fixtures/cache/text/licenses.txt
fixture=$root/fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf
work=${WORK:-$(mktemp -d)}
[ -n "${WORK:-}" ] || trap 'rm -rf "$work"' EXIT
cd "$work"
[ -f f32.gguf ] || {
  "$lq" export-hf "$fixture" hf >/dev/null
  "$lq" convert hf -o f32.gguf --type F32 >/dev/null
  "$lq" convert hf -o q4km.gguf --type Q4_K_M >/dev/null
  "$lq" export-hf q4km.gguf q4km-hf >/dev/null
  "$lq" convert q4km-hf -o q4km-deq.gguf --type F32 >/dev/null
}
"$bin/llama-perplexity" -m f32.gguf -f "$text" -c $ctx -b $ctx --chunks "$chunks" -t "$threads" \
  --kl-divergence-base base.kld >lc-base.log 2>&1
status=0
for q in q4km-deq q4km; do
  "$bin/llama-perplexity" -m $q.gguf -f "$text" -c $ctx -b $ctx --chunks "$chunks" -t "$threads" \
    --kl-divergence-base base.kld --kl-divergence >lc-$q.log 2>&1
  if ! "$lq" compare --base f32.gguf --model $q.gguf -f "$text" --ctx $ctx --chunks "$chunks" \
      --threads "$threads" --json >lq-$q.json 2>lq-$q.err; then
    echo "$q: longquant compare failed: $(tail -1 lq-$q.err)"
    continue
  fi
  python3 - "$q" lc-$q.log lq-$q.json <<'PY' || status=1
import json, re, sys
tag, log, ours = sys.argv[1], open(sys.argv[2]).read(), json.load(open(sys.argv[3]))
def grab(pat):
    m = re.search(pat, log)
    return float(m.group(1)) if m else float("nan")
theirs = {
    "ppl_model": grab(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)"),
    "ppl_base": grab(r"Mean PPL\(base\)\s*:\s*([0-9.]+)"),
    "kld_mean": grab(r"Mean    KLD:\s*([0-9.]+)"),
    "kld_p99": grab(r"99\.0%   KLD:\s*([0-9.]+)"),
    "same_top_p": grab(r"Same top p:\s*([0-9.]+)"),
    "rms_dp": grab(r"RMS Δp\s*:\s*([0-9.]+)"),
}
bad = False
print(f"== F32 vs {tag} ==")
print(f"{'quantity':<12} {'longquant':>12} {'llama.cpp':>12} {'rel diff':>9}")
for k, v in theirs.items():
    o = ours[k]
    rel = abs(o - v) / abs(v) if v else float("nan")
    flag = ""
    if k in ("kld_mean", "same_top_p") and not rel <= 0.02:
        flag, bad = "  > 2 %", True
    print(f"{k:<12} {o:>12.6f} {v:>12.6f} {100*rel:>8.3f}%{flag}")
sys.exit(1 if bad else 0)
PY
done
exit $status
