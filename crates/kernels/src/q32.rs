//! The 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) × Q8_0 / Q8_1 activations: the scalar
//! reference. Each output is `Σ_blocks d_w·d_x·Σ(q_w·q_x) [+ m_w·s_x]`, as `ggml_vec_dot_q*_q8_*` computes
//! it.

use crate::format::{f16_at, BlockFormat, QK};

/// One weight block unpacked to signed integers: value = d·q (+ m).
pub struct Unpacked {
    pub d: f32,
    pub m: f32,
    pub q: [i8; QK],
}

pub fn unpack(format: BlockFormat, b: &[u8]) -> Unpacked {
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
        _ => unreachable!("q32::unpack called for the K-quant {format:?}"),
    }
    Unpacked { d, m, q }
}

/// Scalar tile kernel: `out[i] = row · activation row (t0 + i)`, summed per block as ggml's generic
/// `ggml_vec_dot_q*_q8_*` does (`Σ sumi·(d_w·d_x) [+ m_w·s_x]`).
pub fn tile_scalar(
    format: BlockFormat,
    wrow: &[u8],
    acts: &crate::q8::Q8Acts,
    t0: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let with_min = format.has_min();
    for (bi, blk) in wrow.chunks_exact(format.block_bytes()).enumerate() {
        let wb = unpack(format, blk);
        for (i, o) in out.iter_mut().enumerate() {
            let (d, s, q) = acts.row(t0 + i);
            let sumi: i32 =
                wb.q.iter()
                    .zip(&q[bi * QK..(bi + 1) * QK])
                    .map(|(&x, &y)| x as i32 * y as i32)
                    .sum();
            *o += sumi as f32 * (wb.d * d[bi]);
            if with_min {
                *o += wb.m * s[bi];
            }
        }
    }
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
