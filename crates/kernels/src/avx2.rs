//! AVX2 + FMA (+ F16C) tile kernels. Each computes exactly what its scalar reference in `kquant` / `q32`
//! computes; the K-quant ones bit for bit (same integers, same f32 expression), the 32-element ones up to
//! the order of the f32 sums (8 lanes, as ggml's AVX2 `ggml_vec_dot_q*_q8_*` accumulates them).
//!
//! A weight block is unpacked to registers once per tile and multiplied with every activation row of the
//! tile; each activation row has its own accumulators, so results do not depend on the tile's size.

use std::arch::x86_64::*;

use crate::format::{BlockFormat, QK, QK_K};
use crate::kquant::{self, combine, scale_min_k4};
use crate::matmul::TILE;
use crate::q8::{Q8Acts, Q8KActs};

/// fp16 → f32 through F16C (exact, like `half`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// ggml's `hsum_float_8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_ps(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// A K-quant super-block in registers: `u` per 32 values, `sc` the i16 scale of each maddubs lane, `osc`
/// and `m` the per-16 offset·scale and min that multiply `bsums`.
struct KRegs {
    u: [__m256i; 8],
    sc: [__m256i; 8],
    osc: __m256i,
    m: __m256i,
    d: f32,
    dmin: f32,
}

/// Lanes 0..7 (values 0..15 of a 32-chunk) get `a`, lanes 8..15 get `b`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sc_pair(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q45k(b: &[u8], five: bool) -> KRegs {
    let mask = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let zero = _mm256_setzero_si256();
    let mut r = KRegs {
        u: [zero; 8],
        sc: [zero; 8],
        osc: zero,
        m: zero,
        d: f16_at(b, 0),
        dmin: f16_at(b, 2),
    };
    let mut m = [0i16; 16];
    for j in 0..8 {
        let (s, mm) = scale_min_k4(j, &b[4..16]);
        r.sc[j] = _mm256_set1_epi16(s as i16);
        m[2 * j] = mm as i16;
        m[2 * j + 1] = mm as i16;
    }
    r.m = load(m.as_ptr() as *const u8);
    if five {
        let qh = load(b.as_ptr().add(16));
        let qs = b.as_ptr().add(48);
        for c in 0..4 {
            let v = load(qs.add(32 * c));
            let h0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), one);
            let h1 = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                one,
            );
            r.u[2 * c] = _mm256_or_si256(_mm256_and_si256(v, mask), _mm256_slli_epi16(h0, 4));
            r.u[2 * c + 1] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                _mm256_slli_epi16(h1, 4),
            );
        }
    } else {
        let qs = b.as_ptr().add(16);
        for c in 0..4 {
            let v = load(qs.add(32 * c));
            r.u[2 * c] = _mm256_and_si256(v, mask);
            r.u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
        }
    }
    r
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6k(b: &[u8]) -> KRegs {
    let mask = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let zero = _mm256_setzero_si256();
    let s = &b[192..208];
    let mut r = KRegs {
        u: [zero; 8],
        sc: [zero; 8],
        osc: _mm256_slli_epi16(
            _mm256_cvtepi8_epi16(_mm_loadu_si128(s.as_ptr() as *const __m128i)),
            5,
        ),
        m: zero,
        d: f16_at(b, 208),
        dmin: 0.0,
    };
    for c in 0..8 {
        r.sc[c] = sc_pair(s[2 * c] as i8 as i16, s[2 * c + 1] as i8 as i16);
    }
    for h in 0..2 {
        let ql0 = load(b.as_ptr().add(64 * h));
        let ql1 = load(b.as_ptr().add(64 * h + 32));
        let qh = load(b.as_ptr().add(128 + 32 * h));
        let lo0 = _mm256_and_si256(ql0, mask);
        let lo1 = _mm256_and_si256(ql1, mask);
        let hi0 = _mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask);
        let hi1 = _mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask);
        r.u[4 * h] = _mm256_or_si256(lo0, q6_high(qh, 0, three));
        r.u[4 * h + 1] = _mm256_or_si256(lo1, q6_high(qh, 2, three));
        r.u[4 * h + 2] = _mm256_or_si256(hi0, q6_high(qh, 4, three));
        r.u[4 * h + 3] = _mm256_or_si256(hi1, q6_high(qh, 6, three));
    }
    r
}

/// Bits `shift..shift+2` of each byte of `qh`, moved to bits 4..5.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q6_high(qh: __m256i, shift: i32, three: __m256i) -> __m256i {
    let v = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), three);
    _mm256_slli_epi16(v, 4)
}

/// Q2_K / Q3_K: the scalar unpack, loaded into registers.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_generic(format: BlockFormat, b: &[u8]) -> KRegs {
    let k = kquant::unpack_k(format, b);
    let zero = _mm256_setzero_si256();
    let mut r = KRegs {
        u: [zero; 8],
        sc: [zero; 8],
        osc: _mm256_mullo_epi16(load(k.sc.as_ptr() as *const u8), _mm256_set1_epi16(k.off)),
        m: load(k.m.as_ptr() as *const u8),
        d: k.d,
        dmin: k.dmin,
    };
    for c in 0..8 {
        r.u[c] = load(k.u.as_ptr().add(32 * c));
        r.sc[c] = sc_pair(k.sc[2 * c], k.sc[2 * c + 1]);
    }
    r
}

/// K-quant weight row × activation rows `t0..t0+out.len()` (at most [`TILE`]).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `format` is a K-quant and `wrow` one whole row of it.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_k(format: BlockFormat, wrow: &[u8], acts: &Q8KActs, t0: usize, out: &mut [f32]) {
    let nt = out.len().min(TILE);
    let rows: [(&[f32], &[i8], &[i16]); TILE] = std::array::from_fn(|i| {
        if i < nt {
            acts.row(t0 + i)
        } else {
            (&[][..], &[][..], &[][..])
        }
    });
    let mut sums = [0f32; TILE];
    let bb = format.block_bytes();
    let nb = wrow.len() / bb;
    assert_eq!(rows[0].1.len(), nb * QK_K, "activation row length");
    for b in 0..nb {
        let blk = &wrow[b * bb..(b + 1) * bb];
        let r = match format {
            BlockFormat::Q4K => unpack_q45k(blk, false),
            BlockFormat::Q5K => unpack_q45k(blk, true),
            BlockFormat::Q6K => unpack_q6k(blk),
            _ => unpack_generic(format, blk),
        };
        for (i, &(dx, q, bs)) in rows[..nt].iter().enumerate() {
            let qp = q.as_ptr().add(b * QK_K);
            let mut acc = _mm256_setzero_si256();
            for c in 0..8 {
                let p = _mm256_maddubs_epi16(r.u[c], load(qp.add(32 * c) as *const u8));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, r.sc[c]));
            }
            let bsv = load(bs.as_ptr().add(16 * b) as *const u8);
            acc = _mm256_sub_epi32(acc, _mm256_madd_epi16(bsv, r.osc));
            let summ = hsum_i32(_mm256_madd_epi16(bsv, r.m));
            sums[i] = combine(sums[i], r.d, r.dmin, dx[b], hsum_i32(acc), summ);
        }
    }
    out[..nt].copy_from_slice(&sums[..nt]);
}

/// ggml's `bytes_from_bits_32`: byte k is 0xFF where bit k of `x` is set.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Low nibbles of 16 bytes in lanes 0..15, high nibbles in 16..31.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(t, 4), m), _mm_and_si128(t, m))
}

/// One 32-element block: (d, m, quants): signed for the `_0` formats, unsigned for the `_1` ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_32(format: BlockFormat, b: &[u8]) -> (f32, f32, __m256i) {
    let p = b.as_ptr();
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    match format {
        BlockFormat::Q8_0 => (f16_at(b, 0), 0.0, load(p.add(2))),
        BlockFormat::Q4_0 => (
            f16_at(b, 0),
            0.0,
            _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)),
        ),
        BlockFormat::Q4_1 => (f16_at(b, 0), f16_at(b, 2), nibbles(p.add(4))),
        BlockFormat::Q5_0 => {
            let hi = _mm256_andnot_si256(bytes_from_bits_32(u32_at(2)), _mm256_set1_epi8(-16));
            (f16_at(b, 0), 0.0, _mm256_or_si256(nibbles(p.add(6)), hi))
        }
        BlockFormat::Q5_1 => {
            let hi = _mm256_and_si256(bytes_from_bits_32(u32_at(4)), _mm256_set1_epi8(0x10));
            (
                f16_at(b, 0),
                f16_at(b, 2),
                _mm256_or_si256(nibbles(p.add(8)), hi),
            )
        }
        _ => unreachable!("load_32 called for the K-quant {format:?}"),
    }
}

/// 32-element-format weight row × activation rows `t0..t0+out.len()` (at most [`TILE`]).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `format` is a 32-element format and `wrow` one whole row of it.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_32(format: BlockFormat, wrow: &[u8], acts: &Q8Acts, t0: usize, out: &mut [f32]) {
    let nt = out.len().min(TILE);
    let rows: [(&[f32], &[f32], &[i8]); TILE] = std::array::from_fn(|i| {
        if i < nt {
            acts.row(t0 + i)
        } else {
            (&[][..], &[][..], &[][..])
        }
    });
    let bb = format.block_bytes();
    let nb = wrow.len() / bb;
    assert_eq!(rows[0].2.len(), nb * QK, "activation row length");
    let mut acc = [_mm256_setzero_ps(); TILE];
    let mut summs = [0f32; TILE];
    let ones = _mm256_set1_epi16(1);
    let with_min = format.has_min();
    for b in 0..nb {
        let (d, m, w) = load_32(format, &wrow[b * bb..(b + 1) * bb]);
        let aw = _mm256_sign_epi8(w, w);
        for (i, &(dx, sx, q)) in rows[..nt].iter().enumerate() {
            let x = load(q.as_ptr().add(b * QK) as *const u8);
            let p = if with_min {
                _mm256_maddubs_epi16(w, x)
            } else {
                _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w))
            };
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx[b]), s, acc[i]);
            if with_min {
                summs[i] += m * sx[b];
            }
        }
    }
    for i in 0..nt {
        out[i] = hsum_ps(acc[i]) + summs[i];
    }
}
