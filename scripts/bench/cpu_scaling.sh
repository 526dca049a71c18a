#!/usr/bin/env bash
# Thread scaling of `longquant perplexity`: tokens/s of prompt evaluation at each thread count,
# same model, text, context and chunks.
#   scripts/bench/cpu_scaling.sh BINARY MODEL.gguf "1 2 4 8 16" [CTX] [CHUNKS]
# BINARY is a longquant binary (e.g. target/release/longquant). With LLAMA_PERPLEXITY set to a
# llama-perplexity binary, llama.cpp runs right after ours at each thread count (CPU only, same
# file, text, context, batch = context, chunks) and its rate is printed beside ours.
# TEXT (default fixtures/cache/text/licenses.txt) picks the text; NICE (default 0) the niceness.
# Prints one line per thread count: threads, our PPL and tokens/s[, llama.cpp's, ratio].
# tokens/s = n_ctx·chunks / seconds of evaluation (loading and tokenizing excluded: ours from
# `--json`, llama.cpp's from its log timestamps).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ours=${1:?usage: cpu_scaling.sh BINARY MODEL.gguf "THREADS..." [CTX] [CHUNKS]}
model=${2:?model}
threads_list=${3:?thread list, e.g. "1 2 4 8 16"}
ctx=${4:-512}
chunks=${5:-4}
text=${TEXT:-$root/fixtures/cache/text/licenses.txt}
nice_n=${NICE:-0}
[ -x "$ours" ] || { echo "error: $ours is not an executable" >&2; exit 2; }
[ -f "$model" ] || { echo "error: model $model not found" >&2; exit 2; }
[ -f "$text" ] || { echo "error: text $text not found" >&2; exit 2; }
llama=${LLAMA_PERPLEXITY:-}
echo "model $(basename "$model")  ctx $ctx  chunks $chunks  host $(nproc) cpus"
for t in $threads_list; do
  line=$(nice -n "$nice_n" "$ours" perplexity "$model" -f "$text" --ctx "$ctx" --chunks "$chunks" -t "$t" --json \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f %.2f" % (d["ppl"], d["tokens_per_second"]))')
  read -r ppl tps <<<"$line"
  if [ -z "$llama" ]; then
    printf 'threads %3d  longquant PPL %s  %8.2f tokens/s\n' "$t" "$ppl" "$tps"
    continue
  fi
  log=$(mktemp)
  nice -n "$nice_n" "$llama" -m "$model" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$t" \
    -ngl 0 --device none >"$log" 2>&1
  python3 - "$log" "$ctx" "$chunks" "$t" "$ppl" "$tps" <<'PY'
import re, sys
log, ctx, chunks, t, ppl, tps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
text = open(log).read()
m = re.search(r"Final estimate: PPL = ([0-9.]+)", text)
if not m:
    sys.exit(f"error: no final estimate in llama-perplexity's log {log}")
def ts(pat):
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I " + pat, text, re.M)
    if not m:
        sys.exit(f"error: no timestamped '{pat}' line in {log} (llama.cpp logs timestamps by default)")
    return int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
secs = ts(r"Final estimate") - ts(r"perplexity: calculating perplexity")
ltps = ctx * chunks / secs
print(f"threads {t:3d}  longquant PPL {ppl}  {tps:8.2f} tokens/s   llama.cpp PPL {m.group(1)}  {ltps:8.2f} tokens/s   ratio {tps / ltps:.2f}x")
PY
  rm -f "$log"
done
