//! CPU kernels: quantized weight matrices (every GGUF block format real files use: Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q2_K..Q6_K) times f32 activations, computed the way ggml's CPU backend computes them; and float
//! weights (F32, F16, BF16) read in place ([`float`]).
//!
//! Activations are quantized once per matmul exactly as ggml's x86 path does ([`q8`]), integer dot products
//! are exact, so logits agree with llama.cpp's on the same file up to float summation order. Every SIMD
//! kernel (`avx2`, and `vnni` on AVX-512 VNNI CPUs) computes each output with its scalar reference's
//! ([`q32`], [`kquant`]) integers and f32 operations in the same order; the tests compare them bit for bit.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod float;
mod format;
pub mod kquant;
mod matmul;
pub mod q32;
pub mod q8;
pub mod softmax;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use float::{
    float_kernels_fast, float_matmul, float_matmul_nn, float_matmul_nn_add, float_matmul_nn_with,
    float_matmul_nt, float_matmul_nt_packed, float_matmul_nt_packed_with, float_matmul_nt_with,
    float_matmul_with, float_weights_in_place, matmul_nn_ref, transpose, FloatFormat, NtPanels,
};
pub use format::{BlockFormat, KernelError, QK, QK_K};
pub use matmul::{
    dequantize_row, quant_matmul, quant_matmul_many, quant_matmul_packed, quant_matmul_with, Isa,
    PackedWeights, QuantMatrix, TILE,
};
pub use softmax::{softmax, softmax_ref, softmax_with};
