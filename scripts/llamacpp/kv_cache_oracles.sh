#!/usr/bin/env bash
# llama.cpp's perplexity with each K/V cache type (issue 17), for tests/kv_cache_types.rs.
#   scripts/llamacpp/kv_cache_oracles.sh LLAMA_CPP_BUILD_BIN
# The build is the avx2 class of tests/data/llamacpp/README.md (GGML_NATIVE=OFF, AVX2/FMA/F16C/BMI2
# on, every AVX-512 option off). The model is our converter's Q8_0 of fixtures/tiny-natural
# (`longquant convert fixtures/tiny-natural --type Q8_0`; the test makes the same bytes and checks
# the recorded sha256); the text is fixtures/cache/text/licenses.txt (fixtures/fetch.sh).
# Writes tests/data/llamacpp/avx2/kv_cache/tiny_q8_0_ctk_K_ctv_V.json per cache pair
# (`llama-perplexity -c 512 -b 512 --chunks 4 -t 2 -fa on -ctk K -ctv V`), and variation.json:
# the same runs with weight repacking off (-nr) and, for the F16 cache, flash attention off
# (llama.cpp against itself, the basis of the test's tolerance).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:?llama.cpp build bin directory}
out=$root/tests/data/llamacpp/avx2/kv_cache
mkdir -p "$out"
lq=${LONGQUANT:-$root/target/release/longquant}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
model=$work/tiny-natural.Q8_0.gguf
"$lq" convert "$root/fixtures/tiny-natural" -o "$model" --type Q8_0 >/dev/null
text=$root/fixtures/cache/text/licenses.txt
sha=$(sha256sum "$model" | cut -d" " -f1)
run() { # NAME ARGS... -> writes $NAME.json
  local dest=$1; shift
  local log; log=$(mktemp)
  "$bin/llama-perplexity" -m "$model" -f "$text" -c 512 -b 512 --chunks 4 -t 2 "$@" >"$log" 2>&1 || { tail -20 "$log"; exit 1; }
  python3 - "$log" "$dest" "llama-perplexity -m tiny-natural.Q8_0.gguf -f fixtures/cache/text/licenses.txt -c 512 -b 512 --chunks 4 -t 2 $*" "$sha" <<'PY'
import json, re, sys
log = open(sys.argv[1]).read()
final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", log)]
rot = re.findall(r"attn_rot_([kv]) = (\d)", log)
doc = {"command": sys.argv[3], "llama_cpp": "llama-cpp-python 0.3.36 sdist (vendor/llama.cpp), avx2 class build",
       "ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)), "running_ppl": running,
       "attn_rot": {k: int(v) for k, v in rot}, "model_sha256": sys.argv[4]}
open(sys.argv[2], "w").write(json.dumps(doc, indent=1) + "\n")
print(sys.argv[2], doc["ppl"], doc["attn_rot"])
PY
  rm -f "$log"
}
pairs="f16:f16 f32:f32 bf16:bf16 q8_0:q8_0 q5_1:q5_1 q5_0:q5_0 q4_1:q4_1 q4_0:q4_0 iq4_nl:iq4_nl q8_0:f16 f16:q8_0 q8_0:q4_0"
var=$work/var; mkdir -p "$var/no_repack" "$var/fa_off"
for p in $pairs; do
  k=${p%:*}; v=${p#*:}
  name=tiny_q8_0_ctk_${k}_ctv_${v}.json
  run "$out/$name" -fa on -ctk "$k" -ctv "$v"
  run "$var/no_repack/$name" -fa on -ctk "$k" -ctv "$v" -nr
done
run "$var/fa_off/tiny_q8_0_ctk_f16_ctv_f16.json" -fa off -ctk f16 -ctv f16
python3 - "$var" "$out/variation.json" <<'PY'
import json, pathlib, sys
var = pathlib.Path(sys.argv[1])
doc = {"what": "llama-perplexity against itself: the oracles beside this file re-run by the same build on "
               "the same file and text with weight repacking off (no_repack) and, for the F16 cache, "
               "flash attention off (fa_off)", "class": "avx2", "runs": {}}
for kind in ("no_repack", "fa_off"):
    doc["runs"][kind] = {p.name: {k: json.loads(p.read_text())[k] for k in ("command", "ppl", "model_sha256")}
                         for p in sorted((var / kind).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(doc, indent=1) + "\n")
PY
echo "wrote $out"
