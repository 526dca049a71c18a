#!/usr/bin/env bash
# llama.cpp's perplexity on the SmolLM2 fixture, for tests/forward_perplexity.rs and BENCHMARKS.md.
#   scripts/llamacpp/perplexity.sh CTX CHUNKS [THREADS] [MODEL] [TAG]
# Writes tests/data/llamacpp/smollm2_ppl[_TAG]_ctx${CTX}_c${CHUNKS}.json with the command, the final PPL and
# error, the per-chunk running PPL and llama.cpp's prompt-eval throughput. Defaults: 2 threads, the Q4_1
# fixture; llama-perplexity from the llama-cpp-python 0.3.36 sdist build, default settings otherwise
# (F16 KV cache, flash attention auto = on for CPU, batch = ctx).
# Models made by our converter (tests/forward_perplexity.rs makes the same bytes and checks the
# recorded sha256): longquant quantize --type F32 --allow-requantize FIXTURE smol-f32.gguf, then
# --type Q8_0 / Q4_K_M from smol-f32.gguf; scripts/llamacpp/perplexity.sh 512 24 2 smol-q8_0.gguf q8_0.
# The older F32 oracle: llama-quantize --allow-requantize fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf
#   /tmp/smol-f32.gguf F32, then scripts/llamacpp/perplexity.sh 512 1 2 /tmp/smol-f32.gguf f32
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LLAMA_CPP_BIN:-/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
ctx=${1:?ctx}; chunks=${2:?chunks}; threads=${3:-2}
model=${4:-$root/fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf}
text=$root/fixtures/cache/text/licenses.txt
tag=${5:+_$5}
out=$root/tests/data/llamacpp/smollm2_ppl${tag}_ctx${ctx}_c${chunks}.json
cmd=(llama-perplexity -m "$(basename "$model")" -f fixtures/cache/text/licenses.txt -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$threads")
log=$(mktemp)
"$bin/llama-perplexity" -m "$model" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$threads" >"$log" 2>&1
sha=$(sha256sum "$model" | cut -d" " -f1)
python3 - "$log" "$out" "${cmd[*]}" "$sha" "$(basename "$(dirname "$bin")")/$(basename "$bin")" <<'PY'
import json, re, sys
log = open(sys.argv[1]).read()
final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", log)]
spp = re.search(r"([0-9.]+) seconds per pass", log)
ctx = int(re.search(r"-c (\d+)", sys.argv[3]).group(1))
fa = re.search(r"flash_attn\s*=\s*(\S+)", log)
doc = {"command": sys.argv[3], "llama_cpp": "llama-cpp-python 0.3.36 sdist (vendor/llama.cpp), " + sys.argv[5],
       "ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)), "running_ppl": running,
       "seconds_per_pass": float(spp.group(1)) if spp else None,
       "tokens_per_second_first_pass": ctx / float(spp.group(1)) if spp else None,
       "flash_attn": fa.group(1) if fa else None, "model_sha256": sys.argv[4]}
open(sys.argv[2], "w").write(json.dumps(doc, indent=1) + "\n")
print(json.dumps(doc))
PY
rm -f "$log"
