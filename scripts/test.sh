#!/usr/bin/env bash
# Run every test from a fresh machine: install the Python oracles (gguf-py, numpy), fetch and verify
# the real fixtures, then run the whole Rust workspace's tests (they include the Python interop tests).
# CI calls this through .ci/run with CI=true, where a missing fixture or oracle is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
bash fixtures/fetch.sh
# The CUDA backend cannot run here (no GPU): compile it, so it cannot rot (scripts/test-cuda.sh
# runs it on a CUDA machine).
cargo check --release --locked --features cuda --all-targets
cargo test --workspace --release --locked "$@"
