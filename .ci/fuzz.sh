#!/usr/bin/env bash
# Fuzzes each baimo-formats parser for a bounded time; exits non-zero on the first crash, panic,
# timeout or over-sized allocation (libFuzzer writes the input to fuzz/artifacts/<target>/).
#
#   .ci/fuzz.sh                 # every target, FUZZ_SECS (default 30) seconds each
#   FUZZ_SECS=300 .ci/fuzz.sh gguf
#
# cargo-fuzz needs nightly-only rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
# AddressSanitizer is used when its runtime is available (FUZZ_SANITIZER=none to skip it): the
# parsers are safe Rust apart from the mmap, so ASan mostly guards against surprises in deps.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors llama2c)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzz $t for ${secs}s (sanitizer: $sanitizer)"
    start=$(date +%s)
    # corpus/$t collects new inputs (git-ignored); seeds/$t is read-only input.
    # -malloc_limit_mb catches any single allocation sized from an untrusted count.
    cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -max_len=65536 -print_final_stats=1
    echo "== $t: ok after $(( $(date +%s) - start ))s (including build)"
done
