#!/usr/bin/env bash
# quantize throughput: llama-quantize vs longquant, same F32 input, 2 threads, alternating;
# the last column compares the two outputs tensor by tensor (type and sha256 of the bytes)
LQ=${LQ:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/longquant}
LL=${LL:-/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build-avx2/bin/llama-quantize}
cd "${WORK:-/tmp/gq}"   # holds tables/tiny.F32.gguf and smol-f32.gguf (see BENCHMARKS.md)
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1 || echo "FAILED $*"; echo "$(date +%s.%N) - $s" | bc; }
for input in tables/tiny.F32.gguf smol-f32.gguf; do
  if [ $input = smol-f32.gguf ]; then types="Q4_K_M Q4_0 Q5_1 IQ4_XS"; else types="Q2_K Q3_K_S Q3_K_M IQ4_NL IQ4_XS"; fi
  for T in $types; do
    a=$(t nice $LL $input ll.gguf $T 2); b=$(t nice $LQ quantize $input lq.gguf --type $T --threads 2 --force)
    c=$(t nice $LL $input ll.gguf $T 2); d=$(t nice $LQ quantize $input lq.gguf --type $T --threads 2 --force)
    same=$(python3 -c "
import hashlib
from gguf import GGUFReader
h=[{t.name:(t.tensor_type.name,hashlib.sha256(t.data.tobytes()).hexdigest()) for t in GGUFReader(p).tensors} for p in ['ll.gguf','lq.gguf']]
print('same' if h[0]==h[1] else 'DIFF')")
    echo "$input $T llama-quantize $a $c longquant $b $d tensors:$same"
  done
done
