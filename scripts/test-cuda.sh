#!/usr/bin/env bash
# The GPU tests (issue 13), for a machine with an NVIDIA GPU (compute capability >= 8.0) and its
# driver, NVRTC and cuBLAS libraries. CI has no GPU: it builds `--features cuda` (a compile
# check) and runs everything else; run this by hand and record the result in BENCHMARKS.md.
#
#   scripts/test-cuda.sh [BIN [WORKDIR]]
#
# BIN: a longquant built with `cargo build --release --features cuda` (default: builds it);
# WORKDIR: where models are made (default /tmp/lq-cuda). Needs python3 (to read the JSON) and,
# beside BIN or on PATH, synth_checkpoint (examples/synth_checkpoint). Models: the synthetic
# tiny preset (F32, Q8_0, Q4_K_M, Q2_K, IQ4_XS), and TINY_NATURAL (default
# fixtures/tiny-natural; a HF folder or a GGUF) in the types it can be made in.
#
# Checks, each printed as PASS/FAIL (exit 1 if any fails):
# 1. `devices --check`: every block format's GPU dequantization equals the CPU's (f16 bits);
# 2. GPU against CPU, `compare --base-device cpu --device cuda` (the GPU's logits brought to
#    the host): mean KLD <= 1e-4 and PPL within 0.1 %, at ctx 512 and 2048;
# 3. `perplexity --device cuda` (the NLL computed on the GPU) within 0.1 % of the CPU's;
# 4. `imatrix --device cuda` (sums of squares on the GPU) against the CPU's: same entries and
#    counts, every value within 1 % (the GPU sees f16-rounded activations, the CPU f32 ones).
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
"$SYNTH" --preset tiny --out "$W/synth-tiny" --tokenizer "$TOK" >/dev/null || bad "synth_checkpoint"
for t in F32 Q8_0 Q4_K_M Q2_K IQ4_XS; do
  "$BIN" convert "$W/synth-tiny" -o "$W/synth-tiny.$t.gguf" --type $t --force >/dev/null && models+=("$W/synth-tiny.$t.gguf")
done
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
  for c in 512 2048; do
    name="$(basename "$m") ctx $c"
    if ! "$BIN" compare --base "$ref" --model "$m" --base-device cpu --device cuda -f "$TEXT" --ctx $c --chunks 2 --json >"$W/cmp.json" 2>"$W/cmp.err"; then
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
