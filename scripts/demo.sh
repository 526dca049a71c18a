#!/usr/bin/env bash
# The main job end to end on the embedded default, the real SmolLM2-135M-Instruct model:
#   fixture GGUF --export-hf--> HF folder --convert--> Q4_K_M GGUF (one pass)
#   --inspect --check-against--> the long-context facts agree with config.json
#   --perplexity / --compare--> what the quantization cost, against the unquantized F32 model;
#   --recall--> long-context retrieval on tiny-recall, Q4_K_M beside F32.
# Outputs go to target/demo/ (re-running replaces them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash fixtures/fetch.sh
cargo build --release --locked --bin longquant
lq=target/release/longquant
smol=fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf
text=fixtures/cache/text/licenses.txt
out=target/demo
mkdir -p "$out"

echo "== 1. export the SmolLM2 fixture to a Hugging Face folder"
"$lq" export-hf "$smol" "$out/smollm2-hf" --force
echo "== 2. convert the HF folder to Q4_K_M in one pass (and to F32, the unquantized reference)"
"$lq" convert "$out/smollm2-hf" -o "$out/smollm2.Q4_K_M.gguf" --type Q4_K_M --force
"$lq" convert "$out/smollm2-hf" -o "$out/smollm2.F32.gguf" --type F32 --force
echo "== 3. check what carries long-context ability against config.json"
"$lq" inspect "$out/smollm2.Q4_K_M.gguf" --check-against "$out/smollm2-hf" | tail -n 20
echo "== 4. perplexity of the Q4_K_M file (llama.cpp's method, ctx 512)"
"$lq" perplexity "$out/smollm2.Q4_K_M.gguf" --file "$text" --ctx 512 --chunks 8
echo "== 5. KL divergence of Q4_K_M against the F32 reference"
"$lq" compare --base "$out/smollm2.F32.gguf" --model "$out/smollm2.Q4_K_M.gguf" --file "$text" --ctx 512 --chunks 8
echo "== 6. long-context recall at 1K tokens on tiny-recall (SmolLM2 cannot retrieve; this model can), F32 and Q4_K_M"
"$lq" convert fixtures/tiny-recall -o "$out/tiny-recall.F32.gguf" --type F32 --force >/dev/null
"$lq" convert fixtures/tiny-recall -o "$out/tiny-recall.Q4_K_M.gguf" --type Q4_K_M --force >/dev/null
"$lq" recall "$out/tiny-recall.Q4_K_M.gguf" --base "$out/tiny-recall.F32.gguf" --lengths 1024 --depths 0,0.5,1 --samples 1 --plot "$out/recall.svg"
