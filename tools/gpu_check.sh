#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, for a machine that has one plus the CUDA toolkit (nvcc) and cargo:
#  1. the LoRA loss, gradients and AdamW step on the GPU against PyTorch + PEFT's (peft_reference: its
#     CUDA case runs only in a build with the cuda feature on a machine with a GPU);
#  2. `baimo finetune --device cuda` end to end on a tiny model, then the same run on the CPU: both
#     adapters written, their final losses printed side by side.
# Usage: bash tools/gpu_check.sh   (CUDA_COMPUTE_CAP defaults to what nvidia-smi reports, e.g. 90)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    export CUDA_COMPUTE_CAP
fi
# CUDA 11.x's nvcc lacks compute_90a, which candle's kernels ask for at capability 90: build PTX for 80 there,
# which the driver compiles for the newer GPU when it loads it (seen with Debian's nvidia-cuda-toolkit 11.8).
if nvcc --version | grep -q "release 11\." && [ "$CUDA_COMPUTE_CAP" -ge 90 ]; then
    CUDA_COMPUTE_CAP=80
fi
echo "== compute capability $CUDA_COMPUTE_CAP; $(nvcc --version | tail -1)"

echo "== 1. PEFT reference on the GPU"
cargo test --release -p baimo-train --features cuda --test peft_reference -- --nocapture 2>&1 \
    | tee /tmp/gpu_peft.log | grep -E "on Cuda|skipped|test result"
grep -q "on Cuda" /tmp/gpu_peft.log || { echo "the GPU case did not run"; exit 1; }

echo "== 2. finetune --device cuda, then cpu"
cargo build --release -p baimo --features cuda
out=$(mktemp -d)
for dev in cuda cpu; do
    start=$(date +%s.%N)
    ./target/release/baimo finetune --model fixtures/tiny/qwen2-gqa/hf \
        --data fixtures/finetune/train.jsonl --eval-file fixtures/finetune/heldout.jsonl \
        --out "$out/$dev" --epochs 3 --eval-every 10 --lr 5e-3 --seed 1 --device "$dev" \
        --step-log "$out/$dev.jsonl" 2>"$out/$dev.err" || { cat "$out/$dev.err"; exit 1; }
    end=$(date +%s.%N)
    echo "$dev: $(grep -c . "$out/$dev.jsonl") steps in $(echo "$end - $start" | bc) s; eval: $(grep -o 'eval loss [0-9.]*' "$out/$dev.err" | tr '\n' ' ')"
    test -f "$out/$dev/adapter_model.safetensors"
done
echo "== done"
