#!/usr/bin/env bash
# The main job end to end on the embedded default: the real SmolLM2-135M-Instruct model.
# Fetches and verifies the fixtures, builds longquant in release mode, then runs each stage that
# exists today.
set -euo pipefail
cd "$(dirname "$0")/.."
bash fixtures/fetch.sh
cargo build --release --locked --bin longquant
lq=target/release/longquant
smol=fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf
echo "== inspect $smol"
"$lq" inspect "$smol"
