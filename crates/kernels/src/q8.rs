//! Activations quantized to 8 bits, once per matmul, exactly as ggml's x86 CPU backend does it, so the
//! integer dot products (and hence the logits) agree with llama.cpp's on the same file.
//!
//! - Q8_0 / Q8_1 (32 values per block): ggml-cpu `quantize_row_q8_0` / `quantize_row_q8_1` (x86 AVX path):
//!   `d = amax/127`, `id = 127/amax`, `q = round_half_even(x·id)`, stored `d` rounded to fp16, Q8_1's
//!   `s = fp16(d·Σq)`.
//! - Q8_K (256 values): ggml-quants.c `quantize_row_q8_K_ref` (x86 calls it unchanged): `max` is the value of
//!   largest magnitude (first one on ties), `iscale = -127/max`, `q = min(127, nearest_int(iscale·x))`,
//!   `d = 1/iscale` (f32), `bsums` = sums of each 16 quants.

use half::f16;
use rayon::prelude::*;

use crate::format::{QK, QK_K};

/// ggml's `nearest_int`: round to nearest, ties to even, through the float adder (|x| ≤ 2²²).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `n` rows of Q8_0/Q8_1 blocks: per block `d` (fp16-rounded) and `s = fp16(d·Σq)`.
pub struct Q8Acts {
    pub cols: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub q: Vec<i8>,
}

impl Q8Acts {
    /// Quantizes `x` (rows of `cols`, a multiple of 32).
    pub fn quantize(x: &[f32], cols: usize) -> Q8Acts {
        let nb = x.len() / QK;
        let mut a = Q8Acts {
            cols,
            d: vec![0.0; nb],
            s: vec![0.0; nb],
            q: vec![0; x.len()],
        };
        let per_row = cols / QK;
        x.par_chunks(cols)
            .zip(a.q.par_chunks_mut(cols))
            .zip(a.d.par_chunks_mut(per_row).zip(a.s.par_chunks_mut(per_row)))
            .for_each(|((x, q), (d, s))| quantize_row_q8(x, q, d, s));
        a
    }

    /// Row `t`: (d, s, q).
    pub fn row(&self, t: usize) -> (&[f32], &[f32], &[i8]) {
        let nb = self.cols / QK;
        (
            &self.d[t * nb..(t + 1) * nb],
            &self.s[t * nb..(t + 1) * nb],
            &self.q[t * self.cols..(t + 1) * self.cols],
        )
    }
}

fn quantize_row_q8(x: &[f32], q: &mut [i8], d_out: &mut [f32], s_out: &mut [f32]) {
    for (bi, block) in x.chunks_exact(QK).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (j, v) in block.iter().enumerate() {
            // Ties to even, as `_mm256_round_ps` does; |v·id| ≤ 127, well inside `nearest_int`'s range.
            let qv = nearest_int(v * id);
            q[bi * QK + j] = qv as i8;
            sum += qv;
        }
        d_out[bi] = f16::from_f32(d).to_f32();
        s_out[bi] = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// `n` rows of Q8_K super-blocks.
pub struct Q8KActs {
    pub cols: usize,
    pub d: Vec<f32>,
    pub q: Vec<i8>,
    pub bsums: Vec<i16>,
}

impl Q8KActs {
    /// Quantizes `x` (rows of `cols`, a multiple of 256).
    pub fn quantize(x: &[f32], cols: usize) -> Q8KActs {
        let nb = x.len() / QK_K;
        let mut a = Q8KActs {
            cols,
            d: vec![0.0; nb],
            q: vec![0; x.len()],
            bsums: vec![0; nb * QK_K / 16],
        };
        let per_row = cols / QK_K;
        x.par_chunks(cols)
            .zip(a.q.par_chunks_mut(cols))
            .zip(
                a.d.par_chunks_mut(per_row)
                    .zip(a.bsums.par_chunks_mut(per_row * QK_K / 16)),
            )
            .for_each(|((x, q), (d, bs))| {
                for (b, xb) in x.chunks_exact(QK_K).enumerate() {
                    d[b] = quantize_block_q8k(
                        xb,
                        &mut q[b * QK_K..(b + 1) * QK_K],
                        &mut bs[b * 16..(b + 1) * 16],
                    );
                }
            });
        a
    }

    /// Row `t`: (d per super-block, quants, bsums).
    pub fn row(&self, t: usize) -> (&[f32], &[i8], &[i16]) {
        let nb = self.cols / QK_K;
        (
            &self.d[t * nb..(t + 1) * nb],
            &self.q[t * self.cols..(t + 1) * self.cols],
            &self.bsums[t * nb * 16..(t + 1) * nb * 16],
        )
    }
}

/// One super-block; returns `d`.
fn quantize_block_q8k(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (qv, &v) in q.iter_mut().zip(x) {
        *qv = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, g) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = g.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_activation_rounding_is_half_to_even() {
        // amax 127 → id 1: 2.5 rounds to 2, 3.5 to 4, -2.5 to -2.
        let mut x = vec![0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let a = Q8Acts::quantize(&x, QK);
        assert_eq!(&a.q[..4], &[127, 2, 4, -2]);
        assert_eq!(a.d[0], 1.0);
        assert_eq!(a.s[0], 131.0);
    }

    #[test]
    fn q8k_uses_signed_max_and_127() {
        // The largest magnitude is negative: iscale = -127/-127 = 1, d = 1.
        let mut x = vec![0f32; QK_K];
        x[5] = -127.0;
        x[6] = 127.0; // same magnitude, later: not the max
        x[7] = 2.5;
        x[8] = 3.5;
        x[20] = -1.5;
        let a = Q8KActs::quantize(&x, QK_K);
        assert_eq!(a.d[0], 1.0);
        assert_eq!(&a.q[5..9], &[-127, 127, 2, 4]);
        assert_eq!(a.bsums[0], 6);
        assert_eq!(a.bsums[1], -2);
        // A positive max flips the sign of d and of every quant.
        let y: Vec<f32> = x.iter().map(|v| -v * 0.5).collect();
        let b = Q8KActs::quantize(&y, QK_K);
        assert_eq!(b.d[0], -0.5);
        assert_eq!(&b.q[5..9], &[-127, 127, 2, 4]);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-3.5), -4);
    }
}
