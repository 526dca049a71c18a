#!/usr/bin/env bash
# Makes tests/data/imatrix/: llama.cpp's importance matrix of the SmolLM2 fixture on 3 chunks of 128 tokens
# of the fixture text, in both of llama-imatrix's formats, and gguf-py's reading of the GGUF one
# (smollm2_c128x3.gguf-py.json) for tests/imatrix_formats.rs. Needs fixtures/fetch.sh and llama.cpp's tools
# (LLAMA_CPP_BIN, default: the llama-cpp-python 0.3.36 sdist build); run from anywhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LLAMA_CPP_BIN:-/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
cd "$root"
for fmt in gguf dat; do
  "$bin/llama-imatrix" -m fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf -f fixtures/cache/text/licenses.txt \
    -c 128 --chunks 3 -t 2 --output-format $fmt -o tests/data/imatrix/smollm2_c128x3.imatrix.$fmt >/dev/null 2>&1
done
python3 scripts/imatrix/gguf_py_oracle.py tests/data/imatrix/smollm2_c128x3.imatrix.gguf \
  > tests/data/imatrix/smollm2_c128x3.gguf-py.json
