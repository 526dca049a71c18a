#!/usr/bin/env bash
# CPU benchmark and AVX-512 bit-identity check on a many-core machine without Rust or registries
# (the lent 16-core AVX-512/AMX server): everything it needs travels in DIR.
#   scripts/bench/device_cpu.sh DIR OUTDIR
# DIR holds: longquant-new and longquant-old (stripped release binaries of the two commits
# compared), synth_checkpoint (examples/synth_checkpoint, release), llama-src.tar.xz (the
# llama.cpp tree of the llama-cpp-python 0.3.36 sdist: CMakeLists.txt cmake ggml src include
# common tools vendor), llama3-tokenizer/ (fixtures/cache/llama3-tokenizer) and licenses.txt
# (fixtures/cache/text/licenses.txt).
# It
# 1. builds llama-perplexity twice, CPU only: GGML_NATIVE=ON (what a user of that machine runs:
#    AMX, AVX-512 VNNI/BF16) and with the AVX-512 oracle host's flags without AMX;
# 2. makes an 8B-shaped model (ProLong's shapes, 4 of 32 layers; random weights) in Q4_K_M and
#    Q8_0, and the tiny preset in F32/Q8_0/Q4_K_M, with our converter;
# 3. bit identity: the new and old binaries' per-chunk NLLs on every model (must be equal: the
#    old binary reproduces llama.cpp's AVX-512 arithmetic), and llama.cpp's PPL beside ours;
# 4. speed: ctx 512 × 4 chunks at 16 threads, new/old/llama.cpp alternated twice; thread scaling
#    1..16 at ctx 512 × 1 chunk; ctx 8192 × 1 chunk at 16 threads.
# Every result goes to OUTDIR/results.txt. SKIP_OLD=1 leaves the old binary out.
set -uo pipefail
D=$(cd "${1:?DIR}" && pwd); O=${2:?OUTDIR}; mkdir -p "$O"
R=$O/results.txt
T=$D/licenses.txt
W=/tmp/lqbench; mkdir -p $W
log() { echo "$@" | tee -a "$R"; }
log "host: $(nproc) cpus; $(grep -m1 'model name' /proc/cpuinfo); flags: $(grep -o -w 'avx512f\|avx512_vnni\|amx_int8\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"

mkdir -p $W/ll && tar xJf "$D/llama-src.tar.xz" -C $W/ll
common=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_CUDA=OFF)
(cd $W/ll && cmake -B bn "${common[@]}" -DGGML_NATIVE=ON && cmake --build bn -j8 --target llama-perplexity) >"$O/build-native.log" 2>&1 &
(cd $W/ll && cmake -B bz "${common[@]}" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON \
  && cmake --build bz -j8 --target llama-perplexity) >"$O/build-zen4.log" 2>&1 &

NEW=$D/longquant-new; OLD=$D/longquant-old
"$D/synth_checkpoint" --preset prolong-8b-64k --layers 4 --out $W/m8 --tokenizer "$D/llama3-tokenizer" >/dev/null
"$D/synth_checkpoint" --preset tiny --out $W/mt --tokenizer "$D/llama3-tokenizer" >/dev/null
for t in Q4_K_M Q8_0; do "$NEW" convert $W/m8 -o $W/m8.$t.gguf --type $t --threads 8 >/dev/null; done
for t in F32 Q8_0 Q4_K_M; do "$NEW" convert $W/mt -o $W/mt.$t.gguf --type $t >/dev/null; done
rm -rf $W/m8 $W/mt
wait
LN=$W/ll/bn/bin/llama-perplexity; LZ=$W/ll/bz/bin/llama-perplexity
[ -x $LN ] || log "native llama.cpp build failed: $(tail -3 $O/build-native.log)"
[ -x $LZ ] || log "AVX-512 (no AMX) llama.cpp build failed: $(tail -3 $O/build-zen4.log)"

ours() { # BIN MODEL CTX CHUNKS THREADS -> "ppl tokens/s nll1,nll2,..."
  "$1" perplexity "$2" -f "$T" --ctx "$3" --chunks "$4" -t "$5" --json | python3 -c '
import json,sys; d=json.load(sys.stdin)
print("%.6f %.2f %s" % (d["ppl"], d["tokens_per_second"], ",".join(repr(c) for c in d["chunks"])))'
}
llama() { # BIN MODEL CTX CHUNKS THREADS -> "ppl tokens/s"
  local lg; lg=$(mktemp)
  "$1" -m "$2" -f "$T" -c "$3" -b "$3" --chunks "$4" -t "$5" -ngl 0 >"$lg" 2>&1
  python3 - "$lg" "$3" "$4" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"Final estimate: PPL = ([0-9.]+)", t)
def ts(p):
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I " + p, t, re.M)
    return int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
try:
    secs = ts(r"Final estimate") - ts(r"perplexity: calculating perplexity")
    print(m.group(1), "%.2f" % (int(sys.argv[2]) * int(sys.argv[3]) / secs))
except Exception as e:
    print("failed", e, t[-300:].replace("\n", " | "))
PY
  rm -f "$lg"
}

log "== bit identity (AVX-512 class): new vs old per-chunk NLL, ctx 512, 2 chunks, 16 threads; llama.cpp (AVX-512, no AMX) beside"
for m in $W/mt.F32.gguf $W/mt.Q8_0.gguf $W/mt.Q4_K_M.gguf $W/m8.Q4_K_M.gguf $W/m8.Q8_0.gguf; do
  a=$(ours "$NEW" $m 512 2 16); b=$([ -z "${SKIP_OLD:-}" ] && ours "$OLD" $m 512 2 16)
  same=no; [ "${a##* }" = "${b##* }" ] && same=yes
  l=$([ -x $LZ ] && llama $LZ $m 512 2 16)
  log "$(basename $m): new PPL ${a%% *}  old PPL ${b%% *}  identical NLLs: $same   llama.cpp-avx512 PPL ${l%% *}"
done

log "== speed: ctx 512, 4 chunks, 16 threads, alternated (tokens/s)"
for m in $W/m8.Q4_K_M.gguf $W/m8.Q8_0.gguf; do
  for rep in 1 2; do
    n=$(ours "$NEW" $m 512 4 16); o=$([ -z "${SKIP_OLD:-}" ] && ours "$OLD" $m 512 4 16); l=$([ -x $LN ] && llama $LN $m 512 4 16)
    log "$(basename $m) rep $rep: new $(echo $n | cut -d' ' -f2)  old $(echo $o | cut -d' ' -f2)  llama.cpp-native $(echo $l | cut -d' ' -f2)"
  done
done

log "== thread scaling, ctx 512, 1 chunk (tokens/s: new, llama.cpp-native)"
for t in 1 2 4 8 16; do
  n=$(ours "$NEW" $W/m8.Q4_K_M.gguf 512 1 $t); l=$([ -x $LN ] && llama $LN $W/m8.Q4_K_M.gguf 512 1 $t)
  log "Q4_K_M threads $t: new $(echo $n | cut -d' ' -f2)  llama.cpp-native $(echo $l | cut -d' ' -f2)"
done

log "== ctx 8192, 1 chunk, 16 threads (tokens/s)"
for m in $W/m8.Q4_K_M.gguf; do
  n=$(ours "$NEW" $m 8192 1 16); l=$([ -x $LN ] && llama $LN $m 8192 1 16)
  log "$(basename $m): new $(echo $n | cut -d' ' -f2)  llama.cpp-native $(echo $l | cut -d' ' -f2)"
done
log "done"
