#!/usr/bin/env bash
# Prompt throughput of `longquant perplexity` beside llama.cpp's `llama-perplexity`, same model file,
# text, context, chunk count and threads, run back to back (ours first, then llama.cpp) under
# `nice -n -10` so that other work on a shared machine disturbs both alike.
#   scripts/llamacpp/bench_throughput.sh CTX CHUNKS MODEL.gguf [THREADS]
# Prints one line per tool: PPL, tokens/s = n_ctx·chunks / seconds of evaluation (loading and
# tokenizing excluded in both: ours from `--json`, llama.cpp's from its log timestamps).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LLAMA_CPP_BIN:-/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
ctx=${1:?ctx}; chunks=${2:?chunks}; model=${3:?model}; threads=${4:-2}
text=$root/fixtures/cache/text/licenses.txt
ours=${LONGQUANT:-$root/target/release/longquant}
nice -n -10 "$ours" perplexity "$model" -f "$text" --ctx "$ctx" --chunks "$chunks" -t "$threads" --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print("longquant  PPL %.4f  %.1f tokens/s" % (d["ppl"], d["tokens_per_second"]))'
log=$(mktemp)
nice -n -10 "$bin/llama-perplexity" -m "$model" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$threads" >"$log" 2>&1
python3 - "$log" "$ctx" "$chunks" <<'PY'
import re, sys
log = open(sys.argv[1]).read()
ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1)
# Evaluation time: from "calculating perplexity" to "Final estimate" (log timestamps M.SS.mmm.uuu).
def ts(pat):
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I " + pat, log, re.M)
    return int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
secs = ts(r"Final estimate") - ts(r"perplexity: calculating perplexity")
tps = int(sys.argv[2]) * int(sys.argv[3]) / secs
print(f"llama.cpp  PPL {ppl}  {tps:.1f} tokens/s")
PY
rm -f "$log"
