#!/usr/bin/env bash
# The GPU tests (issue 13), for a machine with an NVIDIA GPU (compute capability >= 8.0) and its
# driver, NVRTC and cuBLAS libraries. CI has no GPU: it builds `--features cuda` (a compile
# check) and runs everything else; run this by hand and record the result in BENCHMARKS.md.
#
#   scripts/test-cuda.sh [BIN [WORKDIR]]
#
# BIN: a longquant built with `cargo build --release --features cuda` (default: builds it);
# WORKDIR: where models are made (default /tmp/lq-cuda); SKIP_SYNTH=1 leaves out the synthetic
# models (for a machine without the Llama-3 tokenizer). Needs python3 (to read the JSON) and,
# beside BIN or on PATH, synth_checkpoint (examples/synth_checkpoint). Models: the synthetic
# tiny preset (F32, Q8_0, Q4_K_M, Q2_K, IQ4_XS), and TINY_NATURAL (default
# fixtures/tiny-natural; a HF folder or a GGUF) in the types it can be made in.
#
# Checks, each printed as PASS/FAIL (exit 1 if any fails):
# 1. `devices --check`: every block format's GPU dequantization equals the CPU's (f16 bits);
# 2. GPU against CPU, `compare --base-device cpu --device cuda` (the GPU's logits brought to
#    the host): mean KLD <= 1e-4 and PPL within 0.1 %, at ctx 512 and 8192 (CTXS; a context past
#    the model's is skipped; the text must hold 2 chunks: TEXT=licenses.txt x 20 for 8192);
# 3. `perplexity --device cuda` (the NLL computed on the GPU) within 0.1 % of the CPU's;
# 4. `imatrix --device cuda` (sums of squares on the GPU) against the CPU's: same entries and
#    counts, every value within 1 % (the GPU sees f16-rounded activations, the CPU f32 ones).
# 5. the fused attention kernel against the cuBLAS attention (`LONGQUANT_CUDA_ATTN=gemm`):
#    perplexity within 0.05 % (both f16 inputs, f32 sums; only the order of sums and where P
#    is normalized differ);
# 6. `compare` with both models on the GPU (KLD scored there, per-position numbers to the host)
#    against the same comparison scored on the host (`LONGQUANT_CUDA_COMPARE=host`): mean KLD
#    within 1e-3 relative (+1e-7), PPLs within 1e-6 relative, same-top within 0.1 points; the
#    same for `compare --base-results` (saved top-k records scored on the GPU);
# 7. `recall --device cuda` (cached decoding on the GPU) on TINY_RECALL (default
#    fixtures/tiny-recall; a HF folder or a GGUF) against `--device cpu` on the model's F32
#    twin: accuracy within 0.1 and >= 0.9 for the F32 model at 1K and 4K.
# The CPU reference of a quantized model is its F32 twin (`quantize --type F32`: the same
# weights, dequantized), because the CPU rounds every product's activations to 8 bits
# (Q8_0/Q8_1/Q8_K, as llama.cpp's CPU does) and the GPU does not (f16): the twin measures the
# GPU's own arithmetic. The same-file CPU comparison is printed too, as INFO.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-}
W=${2:-/tmp/lq-cuda}
mkdir -p "$W"
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release --features cuda --example synth_checkpoint) || exit 1
  (cd "$ROOT" && cargo build --release --features cuda) || exit 1
  BIN=$ROOT/target/release/longquant
  SYNTH=$ROOT/target/release/examples/synth_checkpoint
else
  SYNTH=${SYNTH:-$(dirname "$BIN")/synth_checkpoint}
fi
TOK=${LLAMA3_TOKENIZER:-$ROOT/fixtures/cache/llama3-tokenizer}
TEXT=${TEXT:-$ROOT/fixtures/cache/text/licenses.txt}
TINY_NATURAL=${TINY_NATURAL:-$ROOT/fixtures/tiny-natural}
fail=0
pass() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fail=1; }

echo "== devices --check"
if "$BIN" devices --check --json >"$W/devices.json"; then
  pass "dequantization of every block format equals the CPU's"
else
  bad "dequantization differs from the CPU's: $(cat "$W/devices.json")"
fi
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [print("  ", x["device"], x["total_mib"], "MiB") for x in d["devices"]]' "$W/devices.json"

models=()
if [ "${SKIP_SYNTH:-0}" = 1 ]; then
  echo "SKIP the synthetic tiny models (SKIP_SYNTH=1)"
else
  "$SYNTH" --preset tiny --out "$W/synth-tiny" --tokenizer "$TOK" >/dev/null || bad "synth_checkpoint"
  for t in F32 Q8_0 Q4_K_M Q2_K IQ4_XS; do
    "$BIN" convert "$W/synth-tiny" -o "$W/synth-tiny.$t.gguf" --type $t --force >/dev/null && models+=("$W/synth-tiny.$t.gguf")
  done
fi
if [ -d "$TINY_NATURAL" ]; then
  for t in F16 Q8_0 Q4_K_M; do
    "$BIN" convert "$TINY_NATURAL" -o "$W/tiny-natural.$t.gguf" --type $t --force >/dev/null && models+=("$W/tiny-natural.$t.gguf")
  done
elif [ -f "$TINY_NATURAL" ]; then
  models+=("$TINY_NATURAL")
  for t in F16 Q4_K_M; do
    "$BIN" quantize "$TINY_NATURAL" "$W/tiny-natural.$t.gguf" --type $t --allow-requantize --force >/dev/null && models+=("$W/tiny-natural.$t.gguf")
  done
fi

# SmolLM2 (the fixture's Q4_1 file, requantized to F32, Q8_0 and Q4_K_M) when it is here.
SMOLLM2=${SMOLLM2:-$ROOT/fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$SMOLLM2" ]; then
  for t in F32 Q8_0 Q4_K_M; do
    "$BIN" quantize "$SMOLLM2" "$W/smollm2.$t.gguf" --type $t --allow-requantize --force >/dev/null && models+=("$W/smollm2.$t.gguf")
  done
else
  echo "SKIP SmolLM2 (no $SMOLLM2)"
fi

twin() { # the CPU reference of model $1
  case "$1" in *F32.gguf|*F16.gguf) echo "$1";; *)
    local t="${1%.gguf}.twin-F32.gguf"
    [ -f "$t" ] || "$BIN" quantize "$1" "$t" --type F32 --allow-requantize --force >/dev/null
    echo "$t";;
  esac
}
cmp_line() { # JSON -> "ok|no summary"
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rel = abs(d["ppl_model"] / d["ppl_base"] - 1)
ok = d["kld_mean"] <= 1e-4 and rel <= 1e-3
print(("ok" if ok else "no"), "KLD %.3g  PPL gpu %.5f cpu %.5f (rel %.2e)  same top %.2f%%" % (d["kld_mean"], d["ppl_model"], d["ppl_base"], rel, d["same_top_p"]))
PY
}
for m in "${models[@]}"; do
  ref=$(twin "$m")
  for c in ${CTXS:-512 8192}; do
    name="$(basename "$m") ctx $c"
    if ! "$BIN" compare --base "$ref" --model "$m" --base-device cpu --device cuda -f "$TEXT" --ctx $c --chunks 2 --json >"$W/cmp.json" 2>"$W/cmp.err"; then
      if grep -q "exceeds\|too long\|context length" "$W/cmp.err"; then echo "SKIP $name: $(tail -1 "$W/cmp.err")"; continue; fi
      bad "$name: compare failed: $(tail -2 "$W/cmp.err")"; continue
    fi
    r=$(cmp_line "$W/cmp.json")
    case "$r" in ok*) pass "$name GPU vs CPU ($(basename "$ref")): ${r#ok }";; *) bad "$name GPU vs CPU ($(basename "$ref")): ${r#no }";; esac
    if [ "$ref" != "$m" ] && "$BIN" compare --base "$m" --model "$m" --base-device cpu --device cuda -f "$TEXT" --ctx $c --chunks 2 --json >"$W/cmp.json" 2>/dev/null; then
      r=$(cmp_line "$W/cmp.json"); echo "INFO $name GPU vs CPU on the same file (CPU activations in 8 bits): ${r#* }"
    fi
  done
  g=$("$BIN" perplexity "$m" -f "$TEXT" --ctx 512 --chunks 4 --device cuda --json 2>"$W/ppl.err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  c=$("$BIN" perplexity "$ref" -f "$TEXT" --ctx 512 --chunks 4 --device cpu --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if python3 -c "import sys; g,c=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(g/c-1)<=1e-3 else 1)" "$g" "$c" 2>/dev/null; then
    pass "$(basename "$m") perplexity --device cuda $g, cpu $c"
  else
    bad "$(basename "$m") perplexity --device cuda '$g' ($(tail -1 "$W/ppl.err")), cpu $c"
  fi
done
echo "== fused attention vs cuBLAS attention"
for m in "${models[@]}"; do
  f=$("$BIN" perplexity "$m" -f "$TEXT" --ctx 2048 --chunks 2 --device cuda --json 2>"$W/ppl.err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  g=$(LONGQUANT_CUDA_ATTN=gemm "$BIN" perplexity "$m" -f "$TEXT" --ctx 2048 --chunks 2 --device cuda --json 2>>"$W/ppl.err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if python3 -c "import sys; f,g=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(f/g-1)<=5e-4 else 1)" "$f" "$g" 2>/dev/null; then
    pass "$(basename "$m") ctx 2048 fused $f, cuBLAS $g"
  else
    bad "$(basename "$m") ctx 2048 fused '$f', cuBLAS '$g' ($(tail -1 "$W/ppl.err"))"
  fi
done
echo "== compare scored on the GPU vs on the host"
for m in "${models[@]}"; do
  ref=$(twin "$m")
  a=$("$BIN" compare --base "$ref" --model "$m" --base-device cuda --device cuda -f "$TEXT" --ctx 1024 --chunks 2 --json 2>"$W/cmp.err")
  b=$(LONGQUANT_CUDA_COMPARE=host "$BIN" compare --base "$ref" --model "$m" --base-device cuda --device cuda -f "$TEXT" --ctx 1024 --chunks 2 --json 2>>"$W/cmp.err")
  r=$(python3 - "$a" "$b" <<'PY'
import json, sys
try:
    d, h = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except Exception as e:
    print("no", "no JSON:", e); sys.exit()
ok = abs(d["kld_mean"] - h["kld_mean"]) <= 1e-3 * h["kld_mean"] + 1e-7
ok &= abs(d["ppl_model"] / h["ppl_model"] - 1) <= 1e-6 and abs(d["ppl_base"] / h["ppl_base"] - 1) <= 1e-6
ok &= abs(d["same_top_p"] - h["same_top_p"]) <= 0.1
print(("ok" if ok else "no"), "KLD gpu %.6g host %.6g, PPL %.6f/%.6f vs %.6f/%.6f, same top %.2f/%.2f" % (d["kld_mean"], h["kld_mean"], d["ppl_model"], d["ppl_base"], h["ppl_model"], h["ppl_base"], d["same_top_p"], h["same_top_p"]))
PY
)
  case "$r" in ok*) pass "$(basename "$m") compare on the GPU: ${r#ok }";; *) bad "$(basename "$m") compare on the GPU: ${r#no } $(tail -1 "$W/cmp.err")";; esac
  # Against saved base results: the records go to the GPU and are scored there.
  "$BIN" compare --base "$ref" --model "$m" --base-device cuda --device cuda -f "$TEXT" --ctx 1024 --chunks 2 --save-base "$W/base.bin" --json >/dev/null 2>"$W/cmp.err" || bad "$(basename "$m") compare --save-base: $(tail -1 "$W/cmp.err")"
  a=$("$BIN" compare --base-results "$W/base.bin" --model "$m" --device cuda --json 2>"$W/cmp.err")
  b=$(LONGQUANT_CUDA_COMPARE=host "$BIN" compare --base-results "$W/base.bin" --model "$m" --device cuda --json 2>>"$W/cmp.err")
  r=$(python3 - "$a" "$b" <<'PY'
import json, sys
try:
    d, h = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except Exception as e:
    print("no", "no JSON:", e); sys.exit()
da, ha = d.get("approximate") or {}, h.get("approximate") or {}
pairs = [(d["kld_mean"], h["kld_mean"])] + [(da.get(k), ha.get(k)) for k in ("kld_lower_mean", "kld_upper_mean", "tail_mass_mean", "kld_sampling_stderr")]
ok = bool(da) and all(x is not None and y is not None and abs(x - y) <= 1e-3 * abs(y) + 1e-7 for x, y in pairs)
ok &= abs(d["ppl_model"] / h["ppl_model"] - 1) <= 1e-6 and abs(d["same_top_p"] - h["same_top_p"]) <= 0.1
print(("ok" if ok else "no"), "saved base: KLD gpu %.6g host %.6g, PPL %.6f vs %.6f" % (d["kld_mean"], h["kld_mean"], d["ppl_model"], h["ppl_model"]))
PY
)
  case "$r" in ok*) pass "$(basename "$m") ${r#ok }";; *) bad "$(basename "$m") ${r#no } $(tail -1 "$W/cmp.err")";; esac
done
echo "== recall (cached decoding on the GPU)"
TINY_RECALL=${TINY_RECALL:-$ROOT/fixtures/tiny-recall}
rmodels=()
if [ -d "$TINY_RECALL" ]; then
  for t in F32 Q8_0 Q4_K_M; do
    "$BIN" convert "$TINY_RECALL" -o "$W/tiny-recall.$t.gguf" --type $t --force >/dev/null && rmodels+=("$W/tiny-recall.$t.gguf")
  done
elif [ -f "$TINY_RECALL" ]; then
  rmodels+=("$TINY_RECALL")
  "$BIN" quantize "$TINY_RECALL" "$W/tiny-recall.Q4_K_M.gguf" --type Q4_K_M --allow-requantize --force >/dev/null && rmodels+=("$W/tiny-recall.Q4_K_M.gguf")
else
  bad "no TINY_RECALL at $TINY_RECALL"
fi
for m in "${rmodels[@]}"; do
  ref=$(twin "$m")
  args=(--lengths 1024,4096 --depths 0,0.5,1 --samples 2 --json)
  "$BIN" recall "$m" "${args[@]}" --device cuda >"$W/rg.json" 2>"$W/rg.err" || { bad "$(basename "$m") recall --device cuda: $(tail -1 "$W/rg.err")"; continue; }
  "$BIN" recall "$ref" "${args[@]}" --device cpu >"$W/rc.json" 2>"$W/rc.err" || { bad "$(basename "$m") recall --device cpu: $(tail -1 "$W/rc.err")"; continue; }
  r=$(python3 - "$W/rg.json" "$W/rc.json" "$m" <<'PY'
import json, sys
g, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ok = abs(g["accuracy"] - c["accuracy"]) <= 0.1
if "F32" in sys.argv[3]: ok &= g["accuracy"] >= 0.9
print(("ok" if ok else "no"), "accuracy gpu %.3f cpu %.3f; decode gpu %.1f tokens/s, cpu %.1f; prompt gpu %.0f tokens/s, cpu %.0f" % (g["accuracy"], c["accuracy"], g["decode_tokens_per_second"], c["decode_tokens_per_second"], g["prompt_tokens_per_second"], c["prompt_tokens_per_second"]))
PY
)
  case "$r" in ok*) pass "$(basename "$m") recall: ${r#ok }";; *) bad "$(basename "$m") recall: ${r#no }";; esac
done
echo "== imatrix"
for m in "${models[@]}"; do
  "$BIN" imatrix "$(twin "$m")" -f "$TEXT" --ctx 512 --chunks 2 --process-output --legacy-dat -o "$W/im.cpu.dat" --device cpu --force >/dev/null 2>"$W/im.err" || bad "$(basename "$m") imatrix --device cpu: $(tail -1 "$W/im.err")"
  "$BIN" imatrix "$m" -f "$TEXT" --ctx 512 --chunks 2 --process-output --legacy-dat -o "$W/im.cuda.dat" --device cuda --force >/dev/null 2>"$W/im.err" || bad "$(basename "$m") imatrix --device cuda: $(tail -1 "$W/im.err")"
  r=$(python3 - "$W/im.cpu.dat" "$W/im.cuda.dat" <<'PY'
import struct, sys
def read(p):
    b = open(p, "rb").read(); o = 0; out = {}
    (n,) = struct.unpack_from("<i", b, o); o += 4
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", b, o); o += 4
        name = b[o:o + ln].decode(); o += ln
        ncall, nval = struct.unpack_from("<ii", b, o); o += 8
        out[name] = (ncall, struct.unpack_from("<%df" % nval, b, o)); o += 4 * nval
    return out
a, g = read(sys.argv[1]), read(sys.argv[2])
worst = 0.0
ok = a.keys() == g.keys()
for k in a:
    if k not in g: continue
    ok &= a[k][0] == g[k][0] and len(a[k][1]) == len(g[k][1])
    # Relative to the value, or to a thousandth of the entry's mean for values near zero
    # (f16 flushes what the CPU keeps in f32).
    floor = 1e-3 * sum(a[k][1]) / max(len(a[k][1]), 1) + 1e-30
    for x, y in zip(a[k][1], g[k][1]):
        worst = max(worst, abs(x - y) / max(abs(x), floor))
ok &= worst <= 1e-2
print(("ok" if ok else "no"), "%d entries, worst relative difference %.2e" % (len(a), worst))
PY
)
  case "$r" in ok*) pass "$(basename "$m") imatrix GPU vs CPU: ${r#ok }";; *) bad "$(basename "$m") imatrix GPU vs CPU: ${r#no }";; esac
done
[ $fail = 0 ] && echo "ALL PASS" || echo "SOME FAILED"
exit $fail
