//! AVX2 + FMA (+ F16C) tile kernels. Each computes exactly what its scalar reference in `kquant` / `q32`
//! computes, bit for bit: the same integers and the same f32 operations in the same order, so results do
//! not depend on which kernel (scalar, AVX2, AVX-512 VNNI) a batch of a given size runs on.
//!
//! A weight block is unpacked to registers once per tile and multiplied with every activation row of the
//! tile; each activation row has its own accumulators, so results do not depend on the tile's size.

use std::arch::x86_64::*;

use crate::format::{BlockFormat, QK, QK_K};
use crate::kquant::{self, combine};
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

/// The eight 6-bit scales and mins of a Q4_K / Q5_K super-block ([`kquant::scale_min_k4`] for all `j` at once, with
/// ggml's 32-bit mask arithmetic).
#[inline]
fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
    let mn_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
    let join = |lo: u32, hi: u32| (lo as u64 | ((hi as u64) << 32)).to_le_bytes();
    (join(u0 & K1, sc_hi), join(u1 & K1, mn_hi))
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
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    for (j, &v) in sc.iter().enumerate() {
        r.sc[j] = _mm256_set1_epi16(v as i16);
    }
    // Each min twice (one per 16-value group).
    let m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
    r.m = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
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
    // One copy per format, so the block unpack inlines into the loop.
    match format {
        BlockFormat::Q4K => tile_k_impl::<K_Q4>(format, wrow, acts, t0, out),
        BlockFormat::Q5K => tile_k_impl::<K_Q5>(format, wrow, acts, t0, out),
        BlockFormat::Q6K => tile_k_impl::<K_Q6>(format, wrow, acts, t0, out),
        _ => tile_k_impl::<K_OTHER>(format, wrow, acts, t0, out),
    }
}

const K_Q4: u8 = 0;
const K_Q5: u8 = 1;
const K_Q6: u8 = 2;
const K_OTHER: u8 = 3;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_k_impl<const F: u8>(
    format: BlockFormat,
    wrow: &[u8],
    acts: &Q8KActs,
    t0: usize,
    out: &mut [f32],
) {
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
        let r = match F {
            K_Q4 => unpack_q45k(blk, false),
            K_Q5 => unpack_q45k(blk, true),
            K_Q6 => unpack_q6k(blk),
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
pub(crate) unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(t, 4), m), _mm_and_si128(t, m))
}

/// The 32-element formats as const-generic tags, so each kernel is compiled (and its block loads inlined)
/// per format.
pub(crate) const F_Q4_0: u8 = 0;
pub(crate) const F_Q4_1: u8 = 1;
pub(crate) const F_Q5_0: u8 = 2;
pub(crate) const F_Q5_1: u8 = 3;
pub(crate) const F_Q8_0: u8 = 4;

pub(crate) fn tag(format: BlockFormat) -> u8 {
    match format {
        BlockFormat::Q4_0 => F_Q4_0,
        BlockFormat::Q4_1 => F_Q4_1,
        BlockFormat::Q5_0 => F_Q5_0,
        BlockFormat::Q5_1 => F_Q5_1,
        BlockFormat::Q8_0 => F_Q8_0,
        _ => unreachable!("a 32-element kernel called for the K-quant {format:?}"),
    }
}

/// fp16 at `p` → f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One 32-element block at `p`: (d, m, quants): signed for the `_0` formats, unsigned for the `_1` ones.
///
/// # Safety
/// `p` points at one whole block of format `F`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load_32<const F: u8>(p: *const u8) -> (f32, f32, __m256i) {
    let u32_at = |i: usize| std::ptr::read_unaligned(p.add(i) as *const u32);
    match F {
        F_Q8_0 => (f16_ptr(p), 0.0, load(p.add(2))),
        F_Q4_0 => (
            f16_ptr(p),
            0.0,
            _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)),
        ),
        F_Q4_1 => (f16_ptr(p), f16_ptr(p.add(2)), nibbles(p.add(4))),
        F_Q5_0 => {
            let hi = _mm256_andnot_si256(bytes_from_bits_32(u32_at(2)), _mm256_set1_epi8(-16));
            (f16_ptr(p), 0.0, _mm256_or_si256(nibbles(p.add(6)), hi))
        }
        _ => {
            let hi = _mm256_and_si256(bytes_from_bits_32(u32_at(4)), _mm256_set1_epi8(0x10));
            (
                f16_ptr(p),
                f16_ptr(p.add(2)),
                _mm256_or_si256(nibbles(p.add(8)), hi),
            )
        }
    }
}

/// Up to eight 32-element-format weight rows × one activation row `t`: `out[k] = wrows[k] · x[t]`.
///
/// Lanes are weight rows: per block, the eight rows' integer sums are reduced into one vector and each lane
/// takes the scalar reference's f32 steps (`o += sumi·(d_w·d_x)`, then `o += m_w·s_x`) block after block.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `format` is a 32-element format, `wrows` holds 1..=8 whole rows of
/// it and `out` as many values.
pub unsafe fn rows_32(
    format: BlockFormat,
    wrows: &[&[u8]],
    acts: &Q8Acts,
    t: usize,
    out: &mut [f32],
) {
    match tag(format) {
        F_Q4_0 => rows_32_impl::<F_Q4_0>(wrows, acts, t, out),
        F_Q4_1 => rows_32_impl::<F_Q4_1>(wrows, acts, t, out),
        F_Q5_0 => rows_32_impl::<F_Q5_0>(wrows, acts, t, out),
        F_Q5_1 => rows_32_impl::<F_Q5_1>(wrows, acts, t, out),
        _ => rows_32_impl::<F_Q8_0>(wrows, acts, t, out),
    }
}

/// What the eight-row kernels read: row pointers (a short group repeats its last row), block count and
/// size, and activation row `t`'s (d, s, q).
pub(crate) struct Rows8<'a> {
    pub rows: [*const u8; 8],
    pub nr: usize,
    pub nb: usize,
    pub bb: usize,
    pub dx: &'a [f32],
    pub sx: &'a [f32],
    pub q: &'a [i8],
}

impl<'a> Rows8<'a> {
    /// Panics unless `wrows` holds 1..=8 whole rows of format `F` as wide as activation row `t`.
    pub fn new<const F: u8>(wrows: &[&[u8]], acts: &'a Q8Acts, t: usize) -> Rows8<'a> {
        let nr = wrows.len().min(8);
        assert!(nr > 0, "no weight rows");
        let (dx, sx, q) = acts.row(t);
        let bb = [18, 20, 22, 24, 34][F as usize];
        let nb = wrows[0].len() / bb;
        assert!(
            q.len() == nb * QK && dx.len() == nb && sx.len() == nb,
            "activation row length"
        );
        assert!(
            wrows[..nr].iter().all(|r| r.len() == nb * bb),
            "weight row length"
        );
        Rows8 {
            rows: std::array::from_fn(|k| wrows[k.min(nr - 1)].as_ptr()),
            nr,
            nb,
            bb,
            dx,
            sx,
            q,
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_32_impl<const F: u8>(wrows: &[&[u8]], acts: &Q8Acts, t: usize, out: &mut [f32]) {
    let Rows8 {
        rows,
        nr,
        nb,
        bb,
        dx,
        sx,
        q,
    } = Rows8::new::<F>(wrows, acts, t);
    let ones = _mm256_set1_epi16(1);
    let with_min = F == F_Q4_1 || F == F_Q5_1;
    let mut o = _mm256_setzero_ps();
    for b in 0..nb {
        let x = load(q.as_ptr().add(b * QK) as *const u8);
        let mut v = [_mm256_setzero_si256(); 8];
        let mut d = [0f32; 8];
        let mut m = [0f32; 8];
        for k in 0..8 {
            // The rows stream from memory at decode and are short (a few hundred bytes): fetch the next
            // group of eight rows at the same offset (a hint; never faults).
            _mm_prefetch::<_MM_HINT_T0>(rows[k].wrapping_add((8 * nb + b) * bb) as *const i8);
            let (dk, mk, w) = load_32::<F>(rows[k].add(b * bb));
            let p = if with_min {
                _mm256_maddubs_epi16(w, x)
            } else {
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
            };
            v[k] = _mm256_madd_epi16(p, ones);
            d[k] = dk;
            m[k] = mk;
        }
        // Lane k ← Σ v[k] (exact integers; the order of the additions does not matter).
        let h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let h4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        let sumi = _mm256_add_epi32(
            _mm256_permute2x128_si256(h0123, h4567, 0x20),
            _mm256_permute2x128_si256(h0123, h4567, 0x31),
        );
        let dd = _mm256_mul_ps(
            _mm256_loadu_ps(d.as_ptr()),
            _mm256_set1_ps(*dx.get_unchecked(b)),
        );
        o = _mm256_add_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dd));
        if with_min {
            let ms = _mm256_mul_ps(
                _mm256_loadu_ps(m.as_ptr()),
                _mm256_set1_ps(*sx.get_unchecked(b)),
            );
            o = _mm256_add_ps(o, ms);
        }
    }
    let mut all = [0f32; 8];
    _mm256_storeu_ps(all.as_mut_ptr(), o);
    out[..nr].copy_from_slice(&all[..nr]);
}

/// One K-quant super-block unpacked to the common form (as [`kquant::unpack_k`], which stays the reference):
/// the 256 unsigned values go to `u`; returns (d, dmin, sc, m, off). Q4_K, Q5_K and Q6_K unpack in
/// registers; Q2_K and Q3_K through the scalar code.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `format` is a K-quant and `b` one whole block of it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn unpack_k_bytes(
    format: BlockFormat,
    b: &[u8],
    u: &mut [u8; QK_K],
) -> (f32, f32, [i16; 16], [i16; 16], i16) {
    let (regs, sc, m, off) = match format {
        BlockFormat::Q4K | BlockFormat::Q5K => {
            let r = unpack_q45k(b, format == BlockFormat::Q5K);
            let (s8, m8) = scales_mins_k4(&b[4..16]);
            let sc = std::array::from_fn(|g| s8[g / 2] as i16);
            let m = std::array::from_fn(|g| m8[g / 2] as i16);
            (r, sc, m, 0)
        }
        BlockFormat::Q6K => {
            let r = unpack_q6k(b);
            let mut sc = [0i16; 16];
            for (o, &s) in sc.iter_mut().zip(&b[192..208]) {
                *o = s as i8 as i16;
            }
            (r, sc, [0; 16], 32)
        }
        _ => {
            let k = kquant::unpack_k(format, b);
            u.copy_from_slice(&k.u);
            return (k.d, k.dmin, k.sc, k.m, k.off);
        }
    };
    for (c, v) in regs.u.iter().enumerate() {
        _mm256_storeu_si256(u.as_mut_ptr().add(32 * c) as *mut __m256i, *v);
    }
    (regs.d, regs.dmin, sc, m, off)
}
