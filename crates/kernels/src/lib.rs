//! CPU kernels. For now: matrix products over GGUF's 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) with activations quantized exactly as ggml's x86 path does (`quantize_row_q8_0` / `_q8_1` in
//! ggml-cpu `quants.c`: `d = amax/127`, `id = 127/amax`, round half to even, Q8_1's `s = fp16(d·Σq)`), so
//! logits agree with llama.cpp's on the same file to float-summation order.

pub mod q32;

pub use q32::{quant_matmul, BlockFormat, KernelError};
