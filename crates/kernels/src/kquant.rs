//! K-quant super-blocks (Q2_K..Q6_K, 256 values) × Q8_K activations: the scalar reference.
//!
//! Every K-quant value can be written `d·sc[g]·(u − off) − dmin·m[g]` with `u` unsigned, `g = i/16` the
//! 16-value group, and integer `sc`, `m`. The dot product of one super-block with a Q8_K super-block
//! (`q`, `bsums`, `dx`) is then the integer pair
//! `sumi = Σ_g sc[g]·(Σ_{i∈g} u_i·q_i − off·bsums[g])`, `summ = Σ_g m[g]·bsums[g]`
//! (exact, as in ggml's `ggml_vec_dot_q*_K_q8_K`), and `(d·dx)·sumi − (dmin·dx)·summ` in f32. The SIMD
//! kernels compute the same integers and the same float expression, so they agree with this reference
//! bit for bit.

use crate::format::{f16_at, BlockFormat, QK_K};

/// One K-quant super-block in the common form above.
pub struct KBlock {
    pub d: f32,
    pub dmin: f32,
    pub u: [u8; QK_K],
    pub sc: [i16; 16],
    pub m: [i16; 16],
    pub off: i16,
}

/// ggml-quants.c `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (of 8) in Q4_K / Q5_K.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q3_K's sixteen 6-bit scales, minus 32 (ggml `ggml_vec_dot_q3_K_q8_K`'s `aux` shuffle).
pub fn q3k_scales(s: &[u8]) -> [i16; 16] {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a0, a1, tmp) = (w(0), w(4), w(8));
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let aux = [
        (a0 & K2) | ((tmp & K1) << 4),
        (a1 & K2) | (((tmp >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((tmp >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((tmp >> 6) & K1) << 4),
    ];
    let mut out = [0i16; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((aux[i / 4] >> (8 * (i % 4))) & 0xFF) as i16 - 32;
    }
    out
}

/// Unpacks one super-block of `format` (a K-quant) from its ggml-common.h layout.
pub fn unpack_k(format: BlockFormat, b: &[u8]) -> KBlock {
    let mut k = KBlock {
        d: 0.0,
        dmin: 0.0,
        u: [0; QK_K],
        sc: [0; 16],
        m: [0; 16],
        off: 0,
    };
    match format {
        BlockFormat::Q2K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            k.d = f16_at(b, 80);
            k.dmin = f16_at(b, 82);
            for (g, &s) in scales.iter().enumerate() {
                k.sc[g] = (s & 0xF) as i16;
                k.m[g] = (s >> 4) as i16;
            }
            for i in 0..QK_K {
                let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
                k.u[i] = (qs[32 * n + l] >> (2 * j)) & 3;
            }
        }
        BlockFormat::Q3K => {
            let (hm, qs) = (&b[0..32], &b[32..96]);
            k.sc = q3k_scales(&b[96..108]);
            k.d = f16_at(b, 108);
            k.off = 4;
            for i in 0..QK_K {
                let (n, j, l) = (i / 128, (i % 128) / 32, i % 32);
                let high = (hm[l] >> (4 * n + j)) & 1;
                k.u[i] = ((qs[32 * n + l] >> (2 * j)) & 3) | (high << 2);
            }
        }
        BlockFormat::Q4K | BlockFormat::Q5K => {
            k.d = f16_at(b, 0);
            k.dmin = f16_at(b, 2);
            let scales = &b[4..16];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, scales);
                k.sc[2 * j] = s as i16;
                k.sc[2 * j + 1] = s as i16;
                k.m[2 * j] = m as i16;
                k.m[2 * j + 1] = m as i16;
            }
            let (qh, qs) = if format == BlockFormat::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                for l in 0..32 {
                    let v = qs[32 * c + l];
                    let (h0, h1) = match qh {
                        Some(qh) => (
                            ((qh[l] >> (2 * c)) & 1) << 4,
                            ((qh[l] >> (2 * c + 1)) & 1) << 4,
                        ),
                        None => (0, 0),
                    };
                    k.u[64 * c + l] = (v & 0xF) | h0;
                    k.u[64 * c + 32 + l] = (v >> 4) | h1;
                }
            }
        }
        BlockFormat::Q6K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            k.d = f16_at(b, 208);
            k.off = 32;
            for (sc, &s) in k.sc.iter_mut().zip(scales) {
                *sc = s as i8 as i16;
            }
            for h in 0..2 {
                let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
                let u = &mut k.u[128 * h..];
                for l in 0..32 {
                    u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    u[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("unpack_k called for the 32-element format {format:?}"),
    }
    k
}

/// The integer pair (sumi, summ) of one unpacked super-block with one Q8_K super-block.
#[inline]
pub fn block_dot(k: &KBlock, q: &[i8], bsums: &[i16]) -> (i32, i32) {
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for g in 0..16 {
        let dot: i32 = k.u[16 * g..16 * g + 16]
            .iter()
            .zip(&q[16 * g..16 * g + 16])
            .map(|(&u, &x)| u as i32 * x as i32)
            .sum();
        let bs = bsums[g] as i32;
        sumi += k.sc[g] as i32 * (dot - k.off as i32 * bs);
        summ += k.m[g] as i32 * bs;
    }
    (sumi, summ)
}

/// How one super-block's integers enter the f32 sum; shared by every K kernel so they agree exactly.
#[inline(always)]
pub fn combine(sum: f32, d: f32, dmin: f32, dx: f32, sumi: i32, summ: i32) -> f32 {
    sum + ((d * dx) * sumi as f32 - (dmin * dx) * summ as f32)
}

/// Scalar tile kernel: `out[i] = row · activation row (t0 + i)` for `i < out.len()`.
pub fn tile_scalar(
    format: BlockFormat,
    wrow: &[u8],
    acts: &crate::q8::Q8KActs,
    t0: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    for (b, blk) in wrow.chunks_exact(format.block_bytes()).enumerate() {
        let k = unpack_k(format, blk);
        for (i, o) in out.iter_mut().enumerate() {
            let (dx, q, bs) = acts.row(t0 + i);
            let (sumi, summ) =
                block_dot(&k, &q[b * QK_K..(b + 1) * QK_K], &bs[b * 16..(b + 1) * 16]);
            *o = combine(*o, k.d, k.dmin, dx[b], sumi, summ);
        }
    }
}

/// Dequantizes one row (float reference for the tests).
pub fn dequantize_row(format: BlockFormat, row: &[u8]) -> Vec<f32> {
    row.chunks_exact(format.block_bytes())
        .flat_map(|b| {
            let k = unpack_k(format, b);
            (0..QK_K)
                .map(|i| {
                    let g = i / 16;
                    k.d * k.sc[g] as f32 * (k.u[i] as i16 - k.off) as f32 - k.dmin * k.m[g] as f32
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
