#!/usr/bin/env bash
# Remakes every llama.cpp oracle that depends on the arithmetic class of the build, into
# tests/data/llamacpp/CLASS/, and measures llama.cpp's variation against itself there (for the
# tolerances of hosts whose own kernels are not bit-identical to that build's).
#   scripts/llamacpp/make_class_oracles.sh CLASS LLAMA_CPP_BUILD_BIN
# CLASS is avx512 (GGML_NATIVE=ON on an AVX-512 VNNI host) or avx2 (GGML_NATIVE=OFF with
# GGML_AVX/AVX2/FMA/F16C/BMI2=ON and every AVX-512 option OFF); the cmake lines are in
# tests/data/llamacpp/README.md. Needs: target/release/longquant (cargo build --release),
# fixtures/fetch.sh, and llama-cpp-python 0.3.36 installed without its own C++ build
# (scripts/golden/README.md step 3); about 15 minutes on 2 cores.
# Writes (each JSON records the command and the model's sha256):
#   smollm2_ppl{,_f32,_q8_0,_q4_k_m}_ctx512_c24.json, smollm2_ppl_{q8_0,q4_k_m}_ctx8192_c1.json
#   smollm2_logits.json + smollm2_{q4_1,f32,q8_0,q4_k_m}_logits_{0,1}.f32, smollm2_selfdiff.json
#   smollm2_ppl_{q2_k,q3_k_m,iq4_nl,iq4_xs}_ctx512_c4.json (our quantize of the F32 file)
#   variation.json: the ctx-512 PPLs with flash attention off, and Q4_K_M's and the low-bit
#   files' with repacking off (llama.cpp against itself)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
class=${1:?class: avx512 or avx2}; bin=${2:?llama.cpp build bin directory}
out=$root/tests/data/llamacpp/$class
mkdir -p "$out"
lq=${LONGQUANT:-$root/target/release/longquant}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fix=$root/fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf
# The converter-made files of tests/common::smol_converted (the tests check their sha256).
"$lq" quantize "$fix" "$work/smol-f32.gguf" --type F32 --allow-requantize --force >/dev/null
for t in Q8_0 Q4_K_M; do
  "$lq" quantize "$work/smol-f32.gguf" "$work/smol-$(echo $t | tr A-Z a-z).gguf" --type $t --force >/dev/null
done
export LLAMA_CPP_BIN=$bin OUT_DIR=$out
ppl() { bash "$root/scripts/llamacpp/perplexity.sh" "$@"; }
ppl 512 24 2 "$fix"
for t in f32 q8_0 q4_k_m; do ppl 512 24 2 "$work/smol-$t.gguf" $t; done
for t in q8_0 q4_k_m; do ppl 8192 1 2 "$work/smol-$t.gguf" $t; done
# The issue-14 file types, ctx 512 x 4 chunks (tests/forward_perplexity.rs reads the avx2/ ones on
# every host: no class is bit-exact for them).
low_bit="Q2_K Q3_K_M IQ4_NL IQ4_XS"
for t in $low_bit; do
  l=$(echo $t | tr A-Z a-z)
  "$lq" quantize "$work/smol-f32.gguf" "$work/smol-$l.gguf" --type $t --force >/dev/null
  ppl 512 4 2 "$work/smol-$l.gguf" $l
done
export LLAMA_CPP_LIB_PATH=$bin LONGQUANT_ORACLE_CLASS=$class
(cd "$root/scripts/llamacpp" && python3 smollm2_logits.py "$work" && python3 smollm2_selfdiff.py "$work")
# llama.cpp against itself: the same runs with flash attention off, and with weight repacking off
# (its repacked Q4_K GEMM and its plain Q4_K dot sum in other float steps, as our AVX2 tiles do).
# At ctx 512 only (ctx 8192 costs four times as much on 2 cores); tests/common::ppl_tolerance
# applies a file's variation to each of its oracles.
var=$work/var; mkdir -p "$var/fa_off" "$var/no_repack"
OUT_DIR=$var/no_repack EXTRA_ARGS="-nr" ppl 512 24 2 "$work/smol-q4_k_m.gguf" q4_k_m
OUT_DIR=$var/fa_off EXTRA_ARGS="-fa off" ppl 512 24 2 "$fix"
for t in f32 q8_0 q4_k_m; do OUT_DIR=$var/fa_off EXTRA_ARGS="-fa off" ppl 512 24 2 "$work/smol-$t.gguf" $t; done
# Every low-bit file holds repackable weights on AVX2 (Q4_0, Q4_K or IQ4_NL).
for t in $low_bit; do
  l=$(echo $t | tr A-Z a-z)
  OUT_DIR=$var/fa_off EXTRA_ARGS="-fa off" ppl 512 4 2 "$work/smol-$l.gguf" $l
  OUT_DIR=$var/no_repack EXTRA_ARGS="-nr" ppl 512 4 2 "$work/smol-$l.gguf" $l
done
python3 - "$var" "$out/variation.json" "$class" <<'PY'
import json, pathlib, sys
var = pathlib.Path(sys.argv[1])
doc = {"what": "llama-perplexity against itself: the oracles beside this file re-run by the same "
               "build on the same files and text with flash attention off (fa_off) and with weight "
               "repacking off (no_repack; only files with repackable weights)",
       "class": sys.argv[3], "runs": {}}
for kind in ("fa_off", "no_repack"):
    doc["runs"][kind] = {p.name: {k: json.loads(p.read_text())[k] for k in ("command", "ppl", "model_sha256")}
                         for p in sorted((var / kind).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(doc, indent=1) + "\n")
PY
echo "wrote $out"
