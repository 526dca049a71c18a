#!/bin/bash
# CUDA benchmark on a GPU machine without Rust or registries (the lent H200): everything it needs
# travels in DIR.
#   scripts/bench/device_cuda.sh DIR OUT
# DIR holds: longquant (release, --features cuda, stripped), synth_checkpoint
# (examples/synth_checkpoint, release), llama-src.tar.xz (the llama.cpp tree of the
# llama-cpp-python 0.3.36 sdist), llama3-tokenizer/ and licenses.txt (fixtures/cache/...).
# It builds llama-perplexity with CUDA in the background, makes the 32-layer synthetic ProLong-8B
# in Q4_K_M, F16 and Q8_0, times ours (peak GPU memory sampled), then alternates llama.cpp and
# ours at ctx 8192 x 4 and 65536 x 1. The device's 10-minute limit per call splits this in two
# calls in practice: PHASE=b (build, models, ours) then, within 30 s, PHASE=c (the rest).
# Results: OUT/results_b.txt, OUT/results_c.txt.
set -uo pipefail
PHASE=${PHASE:-all}
D=$(cd "${1:?DIR}" && pwd); O=${2:?OUT}; mkdir -p "$O"
W=/tmp/lq; mkdir -p $W
if [ "$PHASE" = all ] || [ "$PHASE" = b ]; then
R=$O/results_b.txt; log() { echo "$@" | tee -a $R; }
mkdir -p $W/ll && tar xJf $D/llama-src.tar.xz -C $W/ll
(cd $W/ll && cmake -B bc -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON \
  && setsid nohup cmake --build bc -j10 --target llama-perplexity) >$W/build.log 2>&1 &
for i in 1 2 3 4 5; do cat $D/licenses.txt; done > $W/big.txt
t0=$(date +%s)
$D/synth_checkpoint --preset prolong-8b-64k --out /dev/shm/m8 --tokenizer $D/llama3-tokenizer >/dev/null
log "synth: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
$D/longquant convert /dev/shm/m8 -o $W/m8.Q4_K_M.gguf --type Q4_K_M --threads 6 >/dev/null
log "convert Q4_K_M: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
$D/longquant convert /dev/shm/m8 -o $W/m8.F16.gguf --type F16 --threads 6 >/dev/null
rm -rf /dev/shm/m8
$D/longquant quantize $W/m8.F16.gguf $W/m8.Q8_0.gguf --type Q8_0 --threads 6 >/dev/null
log "convert F16 + Q8_0: $(( $(date +%s) - t0 )) s"; ls -la $W/*.gguf | tee -a $R
peak() { # run "$@" while sampling GPU memory; the max MiB used goes to $W/peak.txt
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done ) > $W/mem.txt & local s=$!
  "$@"; local rc=$?; kill $s; sort -n $W/mem.txt | tail -1 > $W/peak.txt; return $rc
}
ours() { # MODEL CTX CHUNKS
  peak $D/longquant perplexity $1 -f $W/big.txt --ctx $2 --chunks $3 --device cuda --json > $W/o.json 2>$W/o.err
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("ours %s ctx %s x%s: PPL %.6f  %.1f tokens/s  %.2f s  peak GPU %s MiB" % (sys.argv[2].split("/")[-1], sys.argv[3], len(d["chunks"]), d["ppl"], d["tokens_per_second"], d["seconds"], open(sys.argv[4]).read().strip()))' $W/o.json $1 $2 $W/peak.txt | tee -a $R || log "FAILED: $(tail -2 $W/o.err)"
}
for m in Q4_K_M Q8_0 F16; do ours $W/m8.$m.gguf 8192 4; ours $W/m8.$m.gguf 65536 1; done
log "the same with the cuBLAS attention instead of the fused kernel (LONGQUANT_CUDA_ATTN=gemm):"
LONGQUANT_CUDA_ATTN=gemm ours $W/m8.Q4_K_M.gguf 65536 1
log "compare at 64K, both on the GPU (F16 base, Q4_K_M model; KLD scored on the GPU):"
t0=$(date +%s.%N)
peak $D/longquant compare --base $W/m8.F16.gguf --model $W/m8.Q4_K_M.gguf --device cuda -f $W/big.txt --ctx 65536 --chunks 1 --json > $W/c64.json 2>$W/c64.err
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("compare 64K: KLD %.4g  same top %.2f%%  %.2f s wall (%s s in the report)  peak GPU %s MiB" % (d["kld_mean"], d["same_top_p"], float(sys.argv[3]), d["seconds"], open(sys.argv[2]).read().strip()))' $W/c64.json $W/peak.txt "$(python3 -c "import time,sys; print(time.time()-float(sys.argv[1]))" $t0)" | tee -a $R || log "compare 64K FAILED: $(tail -2 $W/c64.err)"
log "GPU vs CPU, 32-layer Q4_K_M, ctx 512 x1:"
$D/longquant compare --base $W/m8.Q4_K_M.gguf --model $W/m8.Q4_K_M.gguf --base-device cpu --device cuda -f $W/big.txt --ctx 512 --chunks 1 --json > $W/c.json 2>$W/c.err
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("KLD %.3g PPL gpu %.6f cpu %.6f same top %.2f%%" % (d["kld_mean"], d["ppl_model"], d["ppl_base"], d["same_top_p"]))' $W/c.json | tee -a $R || tail -3 $W/c.err
log "llama.cpp build: $(tail -1 $W/build.log)"
fi
if [ "$PHASE" = all ] || [ "$PHASE" = c ]; then
R=$O/results_c.txt; log() { echo "$@" | tee -a $R; }
LP=$W/ll/bc/bin/llama-perplexity
for i in $(seq 1 60); do [ -x $LP ] && break; sleep 5; done
[ -x $LP ] || { log "no llama-perplexity: $(tail -5 $W/build.log)"; exit 1; }
llama() { # MODEL CTX CHUNKS [extra]
  local m=$1 c=$2 k=$3; shift 3
  $LP -m $m -f $W/big.txt -c $c --chunks $k -ngl 99 -fa on "$@" > $W/l.log 2>&1
  python3 - $W/l.log "$m" $c $k <<'PY' | tee -a $R
import re, sys
t = open(sys.argv[1]).read()
ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", t)
# Log lines start with minutes.seconds.milliseconds.microseconds since the start.
def at(pat):
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I " + pat, t, re.M)
    return m and int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
t0, t1 = at("perplexity: calculating perplexity"), at("Final estimate")
if not ppl or t0 is None or t1 is None:
    print("llama.cpp FAILED", sys.argv[2], t[-400:]); sys.exit()
secs, n = t1 - t0, int(sys.argv[3]) * int(sys.argv[4])
print("llama.cpp %s ctx %s x%s: PPL %s  %.1f tokens/s  %.2f s" % (sys.argv[2].split("/")[-1], sys.argv[3], sys.argv[4], ppl.group(1), n / secs, secs))
PY
}
ours() {
  $D/longquant perplexity $1 -f $W/big.txt --ctx $2 --chunks $3 --device cuda --json > $W/o.json 2>$W/o.err
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("ours %s ctx %s x%s: PPL %.6f  %.1f tokens/s  %.2f s" % (sys.argv[2].split("/")[-1], sys.argv[3], len(d["chunks"]), d["ppl"], d["tokens_per_second"], d["seconds"]))' $W/o.json $1 $2 | tee -a $R
}
for m in Q4_K_M Q8_0 F16; do
  for c in "8192 4" "65536 1"; do
    llama $W/m8.$m.gguf $c; ours $W/m8.$m.gguf $c; llama $W/m8.$m.gguf $c; ours $W/m8.$m.gguf $c
  done
done
log "llama.cpp CPU vs CUDA on tiny-natural Q8_0, ctx 512 x4:"
cp $D/tiny-natural.Q8_0.gguf $W/tn.gguf
$LP -m $W/tn.gguf -f $D/licenses.txt -c 512 --chunks 4 -ngl 99 -fa on 2>&1 | grep -E "Final estimate" | sed 's/^/llama.cpp cuda: /' | tee -a $R
$LP -m $W/tn.gguf -f $D/licenses.txt -c 512 --chunks 4 -ngl 0 --device none -t 16 2>&1 | grep -E "Final estimate" | sed 's/^/llama.cpp cpu: /' | tee -a $R
for d in cuda cpu; do $D/longquant perplexity $W/tn.gguf -f $D/licenses.txt --ctx 512 --chunks 4 --device $d | tail -1 | sed "s/^/ours $d: /" | tee -a $R; done
fi
