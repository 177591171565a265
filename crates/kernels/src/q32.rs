//! Quantized matrix × activations for the 32-element block formats.
//!
//! Weights stay in their GGUF block layout (ggml-common.h): each row of `cols` values is `cols/32` blocks.
//! Activations are quantized once per matmul to Q8_0 (or Q8_1 for the formats with a minimum, `m`), then each
//! output is `Σ_blocks d_w·d_x·Σ(q_w·q_x) [+ m_w·s_x]`, as `ggml_vec_dot_q*_q8_*` computes it.

use half::f16;
use rayon::prelude::*;

pub const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl BlockFormat {
    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
        }
    }
    /// Formats with a per-block minimum pair with Q8_1 activations.
    fn has_min(self) -> bool {
        matches!(self, BlockFormat::Q4_1 | BlockFormat::Q5_1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("row length {cols} is not a multiple of the block size 32")]
    RaggedRow { cols: usize },
    #[error("weight data is {len} bytes, expected {expected} for {rows}×{cols} {format:?}")]
    WeightSize {
        len: usize,
        expected: usize,
        rows: usize,
        cols: usize,
        format: BlockFormat,
    },
    #[error("activations hold {len} values, not a multiple of the row length {cols}")]
    ActivationSize { len: usize, cols: usize },
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One weight block unpacked to signed integers: value = d·q (+ m).
struct Unpacked {
    d: f32,
    m: f32,
    q: [i8; QK],
}

fn unpack(format: BlockFormat, b: &[u8]) -> Unpacked {
    let mut q = [0i8; QK];
    let d = f16_at(b, 0);
    let mut m = 0.0;
    match format {
        BlockFormat::Q8_0 => {
            for (j, v) in q.iter_mut().enumerate() {
                *v = b[2 + j] as i8;
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let (qs, off) = if format == BlockFormat::Q4_1 {
                m = f16_at(b, 2);
                (&b[4..20], 0i8)
            } else {
                (&b[2..18], 8i8)
            };
            for j in 0..QK / 2 {
                q[j] = (qs[j] & 0x0F) as i8 - off;
                q[j + QK / 2] = (qs[j] >> 4) as i8 - off;
            }
        }
        BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
            let (qh, qs, off) = if format == BlockFormat::Q5_1 {
                m = f16_at(b, 2);
                (u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24], 0i8)
            } else {
                (
                    u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                    &b[6..22],
                    16i8,
                )
            };
            for j in 0..QK / 2 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = ((qs[j] & 0x0F) | h0) as i8 - off;
                q[j + QK / 2] = ((qs[j] >> 4) | h1) as i8 - off;
            }
        }
    }
    Unpacked { d, m, q }
}

/// Activations of one row quantized to Q8 blocks: per block d (as stored, fp16-rounded), s = fp16(d·Σq).
struct Q8Row {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
}

/// ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1`.
fn quantize_row(x: &[f32]) -> Q8Row {
    let nb = x.len() / QK;
    let mut row = Q8Row {
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        q: vec![0; x.len()],
    };
    for (bi, block) in x.chunks_exact(QK).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (j, v) in block.iter().enumerate() {
            let qv = (v * id).round_ties_even() as i32;
            row.q[bi * QK + j] = qv as i8;
            sum += qv;
        }
        let d16 = f16::from_f32(d);
        row.d.push(d16.to_f32());
        row.s.push(f16::from_f32(d * sum as f32).to_f32());
    }
    row
}

fn dot_i8(a: &[i8; QK], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// `out[t][r] = Σ_c W[r][c] · x[t][c]` for `x` of `n` rows × `cols`, `W` of `rows` × `cols` in `format`.
/// Returns `n × rows` values, row-major.
pub fn quant_matmul(
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    if cols % QK != 0 {
        return Err(KernelError::RaggedRow { cols });
    }
    let nb = cols / QK;
    let row_bytes = nb * format.block_bytes();
    if w.len() != rows * row_bytes {
        return Err(KernelError::WeightSize {
            len: w.len(),
            expected: rows * row_bytes,
            rows,
            cols,
            format,
        });
    }
    if cols == 0 || x.len() % cols != 0 {
        return Err(KernelError::ActivationSize { len: x.len(), cols });
    }
    let n = x.len() / cols;
    let acts: Vec<Q8Row> = x.par_chunks_exact(cols).map(quantize_row).collect();
    let with_min = format.has_min();
    // Column-major result (rows × n) computed in parallel over weight rows, then transposed.
    let per_row: Vec<Vec<f32>> = w
        .par_chunks_exact(row_bytes)
        .map(|wrow| {
            let blocks: Vec<Unpacked> = wrow
                .chunks_exact(format.block_bytes())
                .map(|b| unpack(format, b))
                .collect();
            acts.iter()
                .map(|a| {
                    let mut sum = 0f32;
                    for (bi, wb) in blocks.iter().enumerate() {
                        let sumi = dot_i8(&wb.q, &a.q[bi * QK..(bi + 1) * QK]);
                        sum += sumi as f32 * (wb.d * a.d[bi]);
                        if with_min {
                            sum += wb.m * a.s[bi];
                        }
                    }
                    sum
                })
                .collect()
        })
        .collect();
    let mut out = vec![0f32; n * rows];
    for (r, col) in per_row.iter().enumerate() {
        for (t, v) in col.iter().enumerate() {
            out[t * rows + r] = *v;
        }
    }
    Ok(out)
}

/// Dequantizes one row (scalar reference for the tests).
pub fn dequantize_row(format: BlockFormat, row: &[u8]) -> Vec<f32> {
    row.chunks_exact(format.block_bytes())
        .flat_map(|b| {
            let u = unpack(format, b);
            u.q.map(|q| u.d * q as f32 + u.m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_blocks(format: BlockFormat, rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<u8> {
        let mut w = vec![0u8; rows * cols / QK * format.block_bytes()];
        rng.fill(&mut w[..]);
        // Keep the fp16 scales (and minimums) small and finite.
        for b in w.chunks_exact_mut(format.block_bytes()) {
            b[0..2].copy_from_slice(&f16::from_f32(rng.gen_range(0.001..0.02)).to_le_bytes());
            if format.has_min() {
                b[2..4].copy_from_slice(&f16::from_f32(rng.gen_range(-0.05..0.05)).to_le_bytes());
            }
        }
        w
    }

    /// The kernel against a float reference: dequantized weights × activations rounded as the kernel rounds
    /// them (so only summation order differs), on odd shapes.
    #[test]
    fn matches_scalar_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for format in [
            BlockFormat::Q4_0,
            BlockFormat::Q4_1,
            BlockFormat::Q5_0,
            BlockFormat::Q5_1,
            BlockFormat::Q8_0,
        ] {
            for (rows, cols, n) in [(1, 32, 1), (31, 64, 3), (33, 96, 1), (7, 4096, 2)] {
                let w = random_blocks(format, rows, cols, &mut rng);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let got = quant_matmul(format, &w, rows, cols, &x).unwrap();
                let row_bytes = cols / QK * format.block_bytes();
                for t in 0..n {
                    let a = quantize_row(&x[t * cols..(t + 1) * cols]);
                    let xq: Vec<f64> = (0..cols)
                        .map(|c| a.q[c] as f64 * a.d[c / QK] as f64)
                        .collect();
                    for r in 0..rows {
                        let wr = dequantize_row(format, &w[r * row_bytes..(r + 1) * row_bytes]);
                        let mut want = 0f64;
                        for c in 0..cols {
                            // With a minimum, ggml uses s = fp16(d·Σq) for the m-term, equal to Σ(q·d) up to
                            // that fp16 rounding, which the tolerance covers.
                            want += wr[c] as f64 * xq[c];
                        }
                        let g = got[t * rows + r] as f64;
                        let tol =
                            1e-3 * (1.0 + want.abs()) + if format.has_min() { 2e-2 } else { 0.0 };
                        assert!(
                            (g - want).abs() <= tol,
                            "{format:?} {rows}x{cols} n={n} row {r}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_activation_rounding_is_half_to_even() {
        // amax 127 → id 1: 2.5 rounds to 2, 3.5 to 4, -2.5 to -2.
        let mut x = vec![0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let r = quantize_row(&x);
        assert_eq!(&r.q[..4], &[127, 2, 4, -2]);
        assert_eq!(r.d[0], 1.0);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            quant_matmul(BlockFormat::Q8_0, &[0; 34], 1, 33, &[0.0; 33]),
            Err(KernelError::RaggedRow { .. })
        ));
        assert!(matches!(
            quant_matmul(BlockFormat::Q8_0, &[0; 33], 1, 32, &[0.0; 32]),
            Err(KernelError::WeightSize { .. })
        ));
        assert!(matches!(
            quant_matmul(BlockFormat::Q8_0, &[0; 34], 1, 32, &[0.0; 31]),
            Err(KernelError::ActivationSize { .. })
        ));
    }
}
