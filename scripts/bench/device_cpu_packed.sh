#!/usr/bin/env bash
# Many-core CPU benchmark of the packed AVX-512 K-quant kernels and of decoding, on a machine
# without Rust or registries (the lent 16-core AVX-512/AMX server): everything travels in DIR.
#   PHASE=a scripts/bench/device_cpu_packed.sh DIR OUT    then, within 30 s,
#   PHASE=b scripts/bench/device_cpu_packed.sh DIR OUT
# DIR holds: longquant (release, stripped), synth_checkpoint (examples/synth_checkpoint,
# release), llama-src.tar.xz (the llama.cpp tree of the llama-cpp-python 0.3.36 sdist),
# llama3-tokenizer/ and licenses.txt (fixtures/cache/...).
# PHASE=a: builds llama-perplexity and llama-bench (CPU only, GGML_NATIVE=ON: AMX, repacking)
# in the background, makes the 8B-shaped model (ProLong's shapes and head, 4 of 32 layers,
# random weights) in Q4_K_M and Q8_0, checks that the packed kernels give the tile kernels' bits
# (per-chunk NLLs, `LONGQUANT_KQUANT_PACK=off` is the tile kernels in the same binary), then
# ctx 512 x 8 chunks at 16 threads: packed, tile, llama.cpp alternated.
# PHASE=b: decode and prompt speed, `longquant bench` beside `llama-bench` (-p 512 -n 128 at
# depths 0, 1024, 8192); thread scaling at ctx 512 x 1; ctx 8192 x 1 at 16 threads.
# PHASE=c: both in one call, shortened (no tile rerun at ctx 512, 32K chunk only if time is left
# of the call's 10 minutes, counted from START, default the script's start).
# Results: OUT/results_{a,b,c}.txt.
set -uo pipefail
PHASE=${PHASE:-a}
START=${START:-$(date +%s)}
D=$(cd "${1:?DIR}" && pwd); O=${2:?OUT}; mkdir -p "$O"
W=/tmp/lqcpu; mkdir -p $W
R=$O/results_$PHASE.txt
log() { echo "$@" | tee -a "$R"; }
T=$D/licenses.txt
LQ=$D/longquant
LP=$W/ll/bn/bin/llama-perplexity; LB=$W/ll/bn/bin/llama-bench

ours() { # MODEL CTX CHUNKS THREADS [env...] -> "ppl tokens/s nll1,nll2,..."
  local m=$1 c=$2 k=$3 t=$4; shift 4
  env "$@" "$LQ" perplexity "$m" -f "$T" --ctx "$c" --chunks "$k" -t "$t" --json | python3 -c '
import json,sys; d=json.load(sys.stdin)
print("%.6f %.2f %s" % (d["ppl"], d["tokens_per_second"], ",".join(repr(c) for c in d["chunks"])))'
}
llama() { # MODEL CTX CHUNKS THREADS -> "ppl tokens/s"
  local lg; lg=$(mktemp)
  "$LP" -m "$1" -f "$T" -c "$2" -b "$2" --chunks "$3" -t "$4" -ngl 0 >"$lg" 2>&1
  python3 - "$lg" "$2" "$3" <<'PY'
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

build_and_models() {
  log "host: $(nproc) cpus; $(grep -m1 'model name' /proc/cpuinfo); flags: $(grep -o -w 'avx512f\|avx512_vnni\|amx_int8\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  mkdir -p $W/ll && tar xJf "$D/llama-src.tar.xz" -C $W/ll
  (cd $W/ll && cmake -B bn -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_CUDA=OFF -DGGML_NATIVE=ON && setsid nohup cmake --build bn -j12 --target llama-perplexity llama-bench) \
    >$W/build.log 2>&1 &
  t0=$(date +%s)
  "$D/synth_checkpoint" --preset prolong-8b-64k --layers 4 --out /dev/shm/m8 --tokenizer "$D/llama3-tokenizer" >/dev/null
  for t in Q4_K_M Q8_0; do "$LQ" convert /dev/shm/m8 -o $W/m8.$t.gguf --type $t --threads 4 >/dev/null; done
  rm -rf /dev/shm/m8
  log "models: $(( $(date +%s) - t0 )) s; $(ls -la $W/*.gguf | awk '{print $5, $9}' | tr '\n' ' ')"
}
wait_build() {
  for i in $(seq 1 80); do [ -x $LP ] && [ -x $LB ] && break; sleep 5; done
  [ -x $LP ] || log "llama.cpp build not done: $(tail -2 $W/build.log)"
}

if [ "$PHASE" = a ]; then
  build_and_models
  log "== bit identity: packed vs tile kernels, per-chunk NLLs, ctx 512 x 2, 16 threads"
  for m in $W/m8.Q4_K_M.gguf; do
    a=$(ours $m 512 2 16); b=$(ours $m 512 2 16 LONGQUANT_KQUANT_PACK=off)
    same=no; [ "${a##* }" = "${b##* }" ] && same=yes
    log "$(basename $m): packed PPL ${a%% *}  tile PPL ${b%% *}  identical NLLs: $same"
  done
  wait_build
  log "== ctx 512 x 8 chunks, 16 threads, tokens/s (packed, tile, llama.cpp native; alternated)"
  for m in $W/m8.Q4_K_M.gguf $W/m8.Q8_0.gguf; do
    for rep in 1 2; do
      n=$(ours $m 512 8 16); o=$(ours $m 512 8 16 LONGQUANT_KQUANT_PACK=off); l=$([ -x $LP ] && llama $m 512 8 16)
      log "$(basename $m) rep $rep: packed $(echo $n | cut -d' ' -f2)  tile $(echo $o | cut -d' ' -f2)  llama.cpp $(echo $l | cut -d' ' -f2)  (PPL $(echo $n | cut -d' ' -f1) / $(echo $l | cut -d' ' -f1))"
    done
  done
  log "done a"
fi

if [ "$PHASE" = c ]; then
  build_and_models
  wait_build
  log "build + models: $(( $(date +%s) - START )) s"
  log "== ctx 512 x 8 chunks, 16 threads, tokens/s (packed; llama.cpp native)"
  for m in $W/m8.Q4_K_M.gguf $W/m8.Q8_0.gguf; do
    n=$(ours $m 512 8 16); l=$(llama $m 512 8 16)
    log "$(basename $m): packed $(echo $n | cut -d' ' -f2)  llama.cpp $(echo $l | cut -d' ' -f2)  (PPL $(echo $n | cut -d' ' -f1) / $(echo $l | cut -d' ' -f1))"
  done
  PHASE=b
  R=$O/results_c.txt
fi

if [ "$PHASE" = b ]; then
  m=$W/m8.Q4_K_M.gguf
  log "== decode/prompt: longquant bench vs llama-bench, Q4_K_M, 16 threads"
  log "-- -p 512 -n 128 -d 0,1024 -r 2"
  "$LQ" bench $m -p 512 -n 128 -d 0,1024 -r 2 -t 16 2>&1 | tee -a "$R"
  [ -x $LB ] && "$LB" -m $m -p 512 -n 128 -d 0,1024 -r 2 -t 16 -ngl 0 2>&1 | grep -E '^\|' | tee -a "$R"
  log "-- -p 0 -n 64 -d 8192 -r 1 (one fill of the 8192-token depth each)"
  "$LQ" bench $m -p 0 -n 64 -d 8192 -r 1 --no-warmup -t 16 2>&1 | tee -a "$R"
  [ -x $LB ] && "$LB" -m $m -p 0 -n 64 -d 8192 -r 1 -t 16 -ngl 0 2>&1 | grep -E '^\|' | tee -a "$R"
  log "== thread scaling, Q4_K_M, ctx 512 x 1 (tokens/s: packed, llama.cpp)"
  for t in 1 4 16; do
    n=$(ours $m 512 1 $t); l=$(llama $m 512 1 $t)
    log "threads $t: packed $(echo $n | cut -d' ' -f2)  llama.cpp $(echo $l | cut -d' ' -f2)"
  done
  log "== ctx 8192 x 1, 16 threads"
  n=$(ours $m 8192 1 16); l=$(llama $m 8192 1 16)
  log "Q4_K_M ctx 8192: packed $(echo $n | cut -d' ' -f2)  llama.cpp $(echo $l | cut -d' ' -f2)  (PPL $(echo $n | cut -d' ' -f1) / $(echo $l | cut -d' ' -f1))"
  left=$(( 570 - ($(date +%s) - START) ))
  log "== one 32K-token chunk, 16 threads (ours capped at $(( left * 6 / 10 )) s, llama.cpp at the rest)"
  for i in 1 2 3 4 5; do cat $T; done > $W/big.txt
  n=$(timeout $(( left * 6 / 10 )) bash -c "$(declare -f ours); LQ=$LQ T=$W/big.txt ours $m 32768 1 16"); log "ours ctx 32768: ${n% *}"
  left=$(( 570 - ($(date +%s) - START) ))
  l=$(timeout $left bash -c "$(declare -f llama); LP=$LP T=$W/big.txt llama $m 32768 1 16"); log "llama.cpp ctx 32768: $l"
  log "done b"
fi
