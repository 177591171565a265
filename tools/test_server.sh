#!/usr/bin/env bash
# The OpenAI-compatible server's end-to-end tests: builds `baimo`, then runs tests/openai (pytest) against
# `baimo serve` on the tiny fixture model with the official `openai` package.
#
#   BAIMO_PY=/path/to/python tools/test_server.sh [pytest args...]
#
# The python ($BAIMO_PY, default python3) needs `openai` and `pytest`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${BAIMO_PY:-python3}"
if ! "$PY" -c 'import openai, pytest' 2>/dev/null; then
    echo "test_server.sh: $PY lacks openai or pytest (pip install openai pytest), or set BAIMO_PY" >&2
    exit 1
fi
if [ -z "${BAIMO_BIN:-}" ]; then
    cargo build -p baimo
fi
export BAIMO_BIN="${BAIMO_BIN:-$PWD/target/debug/baimo}"
exec "$PY" -m pytest tests/openai -q "$@"
