//! AVX-512 VNNI kernels: weight rows packed sixteen at a time so that one `vpdpbusd` multiplies four
//! consecutive weights of sixteen rows by the same four activation bytes (broadcast), an outer-product
//! micro-kernel in the manner of a GEMM. Each zmm lane is one output value, and each lane's arithmetic is
//! exactly the scalar reference's for that value (same integers, the same f32 operations in the same order),
//! so these kernels agree with [`crate::kquant`] / [`crate::q32`] bit for bit, and so with every other
//! kernel that does (which is what keeps served batches invariant when the kernel depends on the batch size).
//!
//! Packing: a group of sixteen weight rows is unpacked once per call into unsigned bytes laid out
//! `[4-value group][row][4 bytes]` plus per-row scales, and every activation row is then multiplied with it,
//! [`MT`] rows at a time. Unsigned weights are what `vpdpbusd` wants (u8 × i8); formats whose values are
//! signed are stored with an offset `off` and corrected with the activation sums, exactly in integers.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use crate::format::{BlockFormat, QK, QK_K};
use crate::q8::{Q8Acts, Q8KActs};

/// Weight rows per packed panel (the zmm lanes).
pub const LANES: usize = 16;
/// Activation rows per register tile.
pub const MT: usize = 4;

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Sixteen weight rows of one format, unpacked for the micro-kernels. Lanes past the real rows are zero.
#[derive(Default)]
struct Panel {
    /// `[block][4-value group][lane]` as little-endian u32 (four unsigned weights).
    u: Vec<u32>,
    /// K-quants: `[block][scale group][lane]` integer scales; 32-formats: unused.
    sc: Vec<i32>,
    /// K-quants: `[block][pair of 16-groups][lane]` the (m, m) i16 pairs, then the (sc, sc) pairs.
    mpair: Vec<u32>,
    scpair: Vec<u32>,
    /// `[block][lane]`: K-quants `d`, `dmin`; 32-formats `d`, `m`.
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Panel {
    /// Sizes the buffers; `zero` clears them (needed when fewer than [`LANES`] rows fill the panel,
    /// otherwise every entry is overwritten).
    fn reset(&mut self, nb: usize, groups: usize, scale_groups: usize, zero: bool) {
        fn size<T: Copy + Default>(v: &mut Vec<T>, n: usize, zero: bool) {
            if zero {
                v.clear();
            }
            v.resize(n, T::default());
        }
        // The (m, sc) pairs are K-quants' only (`scale_groups` > 0).
        let pairs = if scale_groups > 0 { nb * 8 * LANES } else { 0 };
        size(&mut self.u, nb * groups * LANES, zero);
        size(&mut self.mpair, pairs, zero);
        size(&mut self.scpair, pairs, zero);
        size(&mut self.sc, nb * scale_groups * LANES, zero);
        size(&mut self.d, nb * LANES, zero);
        size(&mut self.dmin, nb * LANES, zero);
    }
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
}

/// Values per integer scale in the packed K-quant form: Q4_K/Q5_K share one scale per 32 values.
fn k_scale_group(format: BlockFormat) -> usize {
    match format {
        BlockFormat::Q4K | BlockFormat::Q5K => 32,
        _ => 16,
    }
}

/// The offset added to make a 32-format's weights unsigned.
fn q32_offset(format: BlockFormat) -> i32 {
    match format {
        BlockFormat::Q4_0 => 8,
        BlockFormat::Q5_0 => 16,
        BlockFormat::Q8_0 => 128,
        _ => 0,
    }
}

fn pack_k(format: BlockFormat, rows: &[&[u8]], p: &mut Panel) -> i32 {
    let bb = format.block_bytes();
    let nb = rows[0].len() / bb;
    let gs = k_scale_group(format);
    let ng = QK_K / gs;
    p.reset(nb, QK_K / 4, ng, rows.len() < LANES);
    // SAFETY: `available()` was checked by the caller; every row holds `nb` whole blocks.
    unsafe { pack_k_impl(format, rows, nb, bb, ng, gs, p) }
}

/// Per super-block: each row unpacked to 256 unsigned bytes (and its scales), then the 16 rows transposed in
/// registers 32 values at a time into the panel's `[4-value group][row]` order. Returns the format's offset.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pack_k_impl(
    format: BlockFormat,
    rows: &[&[u8]],
    nb: usize,
    bb: usize,
    ng: usize,
    gs: usize,
    p: &mut Panel,
) -> i32 {
    let mut off = 0;
    let mut buf = [[0u8; QK_K]; LANES];
    let pair = |a: i16, b: i16| (a as u16 as u32) | ((b as u16 as u32) << 16);
    for b in 0..nb {
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * bb..(b + 1) * bb];
            let (d, dmin, sc, m, o) = crate::avx2::unpack_k_bytes(format, blk, &mut buf[r]);
            off = o as i32;
            for g in 0..ng {
                p.sc[(b * ng + g) * LANES + r] = sc[g * gs / 16] as i32;
            }
            for q in 0..8 {
                p.mpair[(b * 8 + q) * LANES + r] = pair(m[2 * q], m[2 * q + 1]);
                p.scpair[(b * 8 + q) * LANES + r] = pair(sc[2 * q], sc[2 * q + 1]);
            }
            p.d[b * LANES + r] = d;
            p.dmin[b * LANES + r] = dmin;
        }
        let u = p.u.as_mut_ptr().add(b * (QK_K / 4) * LANES);
        for c in 0..QK_K / 32 {
            let v: [__m256i; LANES] = std::array::from_fn(|r| {
                if r < rows.len() {
                    _mm256_loadu_si256(buf[r].as_ptr().add(32 * c) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                }
            });
            store_transposed(u.add(c * 8 * LANES), &v);
        }
    }
    off
}

fn pack_32(format: BlockFormat, rows: &[&[u8]], p: &mut Panel) {
    use crate::avx2::{tag, F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1};
    let bb = format.block_bytes();
    let nb = rows[0].len() / bb;
    p.reset(nb, QK / 4, 0, rows.len() < LANES);
    let off = q32_offset(format);
    // SAFETY: `available()` was checked by the caller; every row holds `nb` whole blocks.
    unsafe {
        match tag(format) {
            F_Q4_0 => pack_32_impl::<F_Q4_0>(rows, nb, bb, off, p),
            F_Q4_1 => pack_32_impl::<F_Q4_1>(rows, nb, bb, off, p),
            F_Q5_0 => pack_32_impl::<F_Q5_0>(rows, nb, bb, off, p),
            F_Q5_1 => pack_32_impl::<F_Q5_1>(rows, nb, bb, off, p),
            _ => pack_32_impl::<{ crate::avx2::F_Q8_0 }>(rows, nb, bb, off, p),
        }
    }
}

/// Per block: each row's 32 values unpacked into a ymm (offset to unsigned), then the 16 rows × 8 dwords
/// transposed in registers into the panel's `[4-value group][row]` order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pack_32_impl<const F: u8>(rows: &[&[u8]], nb: usize, bb: usize, off: i32, p: &mut Panel) {
    let offv = _mm256_set1_epi8(off as u8 as i8);
    let u = p.u.as_mut_ptr();
    for b in 0..nb {
        let mut v = [_mm256_setzero_si256(); LANES];
        for (r, row) in rows.iter().enumerate() {
            let (d, m, w) = crate::avx2::load_32::<F>(row.as_ptr().add(b * bb));
            v[r] = _mm256_add_epi8(w, offv);
            p.d[b * LANES + r] = d;
            p.dmin[b * LANES + r] = m;
        }
        store_transposed(u.add(b * (QK / 4) * LANES), &v);
    }
}

/// `v[r]` holds row r's eight dwords; writes the eight zmm `[g][r] = v[r][g]` to `dst` (128 u32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store_transposed(dst: *mut u32, v: &[__m256i; LANES]) {
    let lo = transpose8(&v[..8]);
    let hi = transpose8(&v[8..]);
    for g in 0..8 {
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo[g]), hi[g], 1);
        _mm512_storeu_si512(dst.add(g * LANES) as *mut _, z);
    }
}

/// 8×8 transpose of dwords: `out[g]` lane r = `v[r]` lane g.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(v: &[__m256i]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256(u0, u4, 0x20),
        _mm256_permute2x128_si256(u1, u5, 0x20),
        _mm256_permute2x128_si256(u2, u6, 0x20),
        _mm256_permute2x128_si256(u3, u7, 0x20),
        _mm256_permute2x128_si256(u0, u4, 0x31),
        _mm256_permute2x128_si256(u1, u5, 0x31),
        _mm256_permute2x128_si256(u2, u6, 0x31),
        _mm256_permute2x128_si256(u3, u7, 0x31),
    ]
}

/// Σq of every activation block (all rows), for the offset corrections (exact integers).
pub fn block_sums(acts: &Q8Acts) -> Vec<i32> {
    acts.q
        .chunks_exact(QK)
        .map(|b| b.iter().map(|&v| v as i32).sum())
        .collect()
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Panel `g`'s first row, row count and rows.
fn panel_rows(w: &[u8], rows: usize, row_bytes: usize, g: usize) -> (usize, usize, Vec<&[u8]>) {
    let r0 = g * LANES;
    let lanes = LANES.min(rows - r0);
    let wrows = (r0..r0 + lanes)
        .map(|r| &w[r * row_bytes..(r + 1) * row_bytes])
        .collect();
    (r0, lanes, wrows)
}

/// `out[t][r] = W[r] · x[t]` for K-quant weights `w` (`rows` rows of `row_bytes`) and Q8_K activations.
pub fn matmul_k(
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    acts: &Q8KActs,
    out: &mut [f32],
) {
    run_k(format, rows, acts, out, |g, body| {
        let (_, _, wrows) = panel_rows(w, rows, row_bytes, g);
        PANEL.with(|cell| {
            let mut p = cell.borrow_mut();
            let off = pack_k(format, &wrows, &mut p);
            body(&p, off)
        })
    });
}

/// [`matmul_k`] over panels packed beforehand.
pub fn matmul_k_packed(pk: &Packed, acts: &Q8KActs, out: &mut [f32]) {
    run_k(pk.format, pk.rows, acts, out, |g, body| {
        body(&pk.panels[g], pk.off)
    });
}

/// The parallel loop of the K-quant products: `panel(g, body)` calls `body` with panel `g` and its offset.
fn run_k(
    format: BlockFormat,
    rows: usize,
    acts: &Q8KActs,
    out: &mut [f32],
    panel: impl Fn(usize, &mut dyn FnMut(&Panel, i32)) + Sync,
) {
    let n = acts.q.len() / acts.cols.max(1);
    let dst = SendPtr(out.as_mut_ptr());
    let gs = k_scale_group(format);
    (0..rows.div_ceil(LANES)).into_par_iter().for_each(|g| {
        let r0 = g * LANES;
        let lanes = LANES.min(rows - r0);
        panel(g, &mut |p, off| {
            let mut t0 = 0;
            while t0 < n {
                let mt = MT.min(n - t0);
                // SAFETY: `available()` was checked by the caller; the panel matches the activations' width;
                // lanes r0..r0+lanes of rows t0..t0+mt are written by this task only.
                unsafe {
                    let o = dst.get().add(t0 * rows + r0);
                    match mt {
                        4 => tile_k::<4>(p, acts, t0, off, gs, o, rows, lanes),
                        3 => tile_k::<3>(p, acts, t0, off, gs, o, rows, lanes),
                        2 => tile_k::<2>(p, acts, t0, off, gs, o, rows, lanes),
                        _ => tile_k::<1>(p, acts, t0, off, gs, o, rows, lanes),
                    }
                }
                t0 += mt;
            }
        });
    });
}

/// `out[t][r] = W[r] · x[t]` for 32-element-format weights and Q8_0/Q8_1 activations.
pub fn matmul_32(
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    acts: &Q8Acts,
    out: &mut [f32],
) {
    run_32(format, rows, acts, out, |g, body| {
        let (_, _, wrows) = panel_rows(w, rows, row_bytes, g);
        PANEL.with(|cell| {
            let mut p = cell.borrow_mut();
            pack_32(format, &wrows, &mut p);
            body(&p)
        })
    });
}

/// [`matmul_32`] over panels packed beforehand.
pub fn matmul_32_packed(pk: &Packed, acts: &Q8Acts, out: &mut [f32]) {
    run_32(pk.format, pk.rows, acts, out, |g, body| body(&pk.panels[g]));
}

/// The parallel loop of the 32-element-format products.
fn run_32(
    format: BlockFormat,
    rows: usize,
    acts: &Q8Acts,
    out: &mut [f32],
    panel: impl Fn(usize, &mut dyn FnMut(&Panel)) + Sync,
) {
    let n = acts.q.len() / acts.cols.max(1);
    let off = q32_offset(format);
    let nb = acts.cols / QK;
    let isum = if off != 0 {
        block_sums(acts)
    } else {
        Vec::new()
    };
    let with_min = format.has_min();
    let dst = SendPtr(out.as_mut_ptr());
    (0..rows.div_ceil(LANES)).into_par_iter().for_each(|g| {
        let r0 = g * LANES;
        let lanes = LANES.min(rows - r0);
        panel(g, &mut |p| {
            let mut t0 = 0;
            while t0 < n {
                let mt = MT.min(n - t0);
                let is = if off != 0 { &isum[t0 * nb..] } else { &[][..] };
                // SAFETY: as in `run_k`.
                unsafe {
                    let o = dst.get().add(t0 * rows + r0);
                    match mt {
                        4 => tile_32::<4>(p, acts, t0, off, with_min, is, o, rows, lanes),
                        3 => tile_32::<3>(p, acts, t0, off, with_min, is, o, rows, lanes),
                        2 => tile_32::<2>(p, acts, t0, off, with_min, is, o, rows, lanes),
                        _ => tile_32::<1>(p, acts, t0, off, with_min, is, o, rows, lanes),
                    }
                }
                t0 += mt;
            }
        });
    });
}

/// A whole weight matrix unpacked into panels once, for repeated batched products (the server's decode
/// steps): about 1.25–1.5 bytes per weight, against the 0.5–1.1 of the block formats.
pub struct Packed {
    format: BlockFormat,
    rows: usize,
    /// The K-quants' unsigned offset (0 for 32-element formats: theirs is applied by `q32_offset`).
    off: i32,
    panels: Vec<Panel>,
}

impl Packed {
    /// Packs `rows` rows of `row_bytes` bytes. The caller checked `available()` and the shapes.
    pub fn new(format: BlockFormat, w: &[u8], rows: usize, row_bytes: usize) -> Packed {
        let packed: Vec<(Panel, i32)> = (0..rows.div_ceil(LANES))
            .into_par_iter()
            .map(|g| {
                let (_, _, wrows) = panel_rows(w, rows, row_bytes, g);
                let mut p = Panel::default();
                let off = if format.is_k() {
                    pack_k(format, &wrows, &mut p)
                } else {
                    pack_32(format, &wrows, &mut p);
                    0
                };
                // A fresh panel's buffers are allocated to their exact sizes by `reset`.
                (p, off)
            })
            .collect();
        let off = packed.first().map_or(0, |(_, o)| *o);
        Packed {
            format,
            rows,
            off,
            panels: packed.into_iter().map(|(p, _)| p).collect(),
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.panels
            .iter()
            .map(|p| {
                4 * (p.u.len()
                    + p.mpair.len()
                    + p.scpair.len()
                    + p.sc.len()
                    + p.d.len()
                    + p.dmin.len())
            })
            .sum()
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn loadu(p: *const u32) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Writes lanes `0..lanes` of `v` to `o`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn store(o: *mut f32, v: __m512, lanes: usize) {
    if lanes == LANES {
        _mm512_storeu_ps(o, v);
    } else {
        _mm512_mask_storeu_ps(o, ((1u32 << lanes) - 1) as __mmask16, v);
    }
}

/// K-quant panel × activation rows `t0..t0+M`: per lane, per super-block,
/// `sumi = Σ_g sc[g]·(Σ u·q) − off·Σ_g sc[g]·bsums[g]`, `summ = Σ_g m[g]·bsums[g]`, then [`kquant::combine`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_k<const M: usize>(
    p: &Panel,
    acts: &Q8KActs,
    t0: usize,
    off: i32,
    gs: usize,
    out: *mut f32,
    stride: usize,
    lanes: usize,
) {
    let rows: [(&[f32], &[i8], &[i16]); M] = std::array::from_fn(|i| acts.row(t0 + i));
    let nb = rows[0].0.len();
    let ng = QK_K / gs;
    let per_group = gs / 4;
    let mut sums = [_mm512_setzero_ps(); M];
    let offv = _mm512_set1_epi32(off);
    for b in 0..nb {
        let up = p.u.as_ptr().add(b * (QK_K / 4) * LANES);
        let mut sumi = [_mm512_setzero_si512(); M];
        for g in 0..ng {
            let mut tmp = [_mm512_setzero_si512(); M];
            let mut tmp2 = [_mm512_setzero_si512(); M];
            for j in (0..per_group).step_by(2) {
                let w = loadu(up.add((g * per_group + j) * LANES));
                let w2 = loadu(up.add((g * per_group + j + 1) * LANES));
                for t in 0..M {
                    let q = rows[t].1.as_ptr().add(b * QK_K + 4 * (g * per_group + j));
                    tmp[t] = _mm512_dpbusd_epi32(tmp[t], w, bcast4(q));
                    tmp2[t] = _mm512_dpbusd_epi32(tmp2[t], w2, bcast4(q.add(4)));
                }
            }
            for t in 0..M {
                tmp[t] = _mm512_add_epi32(tmp[t], tmp2[t]);
            }
            let sc = _mm512_loadu_si512(p.sc.as_ptr().add((b * ng + g) * LANES) as *const _);
            for t in 0..M {
                sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(tmp[t], sc));
            }
        }
        let mut summ = [_mm512_setzero_si512(); M];
        let mut osum = [_mm512_setzero_si512(); M];
        for q in 0..8 {
            let mp = loadu(p.mpair.as_ptr().add((b * 8 + q) * LANES));
            let sp = loadu(p.scpair.as_ptr().add((b * 8 + q) * LANES));
            for t in 0..M {
                let bs = rows[t].2.as_ptr().add(b * 16 + 2 * q) as *const i8;
                let bsv = bcast4(bs);
                summ[t] = _mm512_dpwssd_epi32(summ[t], mp, bsv);
                if off != 0 {
                    osum[t] = _mm512_dpwssd_epi32(osum[t], sp, bsv);
                }
            }
        }
        let d = _mm512_loadu_ps(p.d.as_ptr().add(b * LANES));
        let dmin = _mm512_loadu_ps(p.dmin.as_ptr().add(b * LANES));
        for t in 0..M {
            let si = if off != 0 {
                _mm512_sub_epi32(sumi[t], _mm512_mullo_epi32(osum[t], offv))
            } else {
                sumi[t]
            };
            let dx = _mm512_set1_ps(rows[t].0[b]);
            // combine: sum + ((d·dx)·sumi − (dmin·dx)·summ), unfused like the scalar expression.
            let a = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(si));
            let c = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(summ[t]));
            sums[t] = _mm512_add_ps(sums[t], _mm512_sub_ps(a, c));
        }
    }
    for (t, s) in sums.iter().enumerate() {
        store(out.add(t * stride), *s, lanes);
    }
}

/// 32-format panel × activation rows `t0..t0+M`: per lane, per block,
/// `o += (Σ u·q − off·Σq) · (d_w·d_x)`, then `o += m_w·s_x` for the formats with a minimum.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_32<const M: usize>(
    p: &Panel,
    acts: &Q8Acts,
    t0: usize,
    off: i32,
    with_min: bool,
    isum: &[i32],
    out: *mut f32,
    stride: usize,
    lanes: usize,
) {
    let rows: [(&[f32], &[f32], &[i8]); M] = std::array::from_fn(|i| acts.row(t0 + i));
    let nb = rows[0].0.len();
    let mut sums = [_mm512_setzero_ps(); M];
    for b in 0..nb {
        let up = p.u.as_ptr().add(b * (QK / 4) * LANES);
        // Two accumulators per row halve the dependency chain of `vpdpbusd`s (exact integers either way).
        let mut tmp = [_mm512_setzero_si512(); M];
        let mut tmp2 = [_mm512_setzero_si512(); M];
        for j in (0..QK / 4).step_by(2) {
            let w = loadu(up.add(j * LANES));
            let w2 = loadu(up.add((j + 1) * LANES));
            for t in 0..M {
                let q = rows[t].2.as_ptr().add(b * QK + 4 * j);
                tmp[t] = _mm512_dpbusd_epi32(tmp[t], w, bcast4(q));
                tmp2[t] = _mm512_dpbusd_epi32(tmp2[t], w2, bcast4(q.add(4)));
            }
        }
        for t in 0..M {
            tmp[t] = _mm512_add_epi32(tmp[t], tmp2[t]);
        }
        let d = _mm512_loadu_ps(p.d.as_ptr().add(b * LANES));
        let m = _mm512_loadu_ps(p.dmin.as_ptr().add(b * LANES));
        for t in 0..M {
            let si = if off != 0 {
                _mm512_sub_epi32(tmp[t], _mm512_set1_epi32(off * isum[t * nb + b]))
            } else {
                tmp[t]
            };
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(rows[t].0[b]));
            sums[t] = _mm512_add_ps(sums[t], _mm512_mul_ps(_mm512_cvtepi32_ps(si), dd));
            if with_min {
                sums[t] = _mm512_add_ps(sums[t], _mm512_mul_ps(m, _mm512_set1_ps(rows[t].1[b])));
            }
        }
    }
    for (t, s) in sums.iter().enumerate() {
        store(out.add(t * stride), *s, lanes);
    }
}

/// Whether [`rows_32`] needs the activations' [`block_sums`] for `format` (the formats stored with an
/// offset; Q8_0 takes the sign trick there instead).
pub fn rows_32_needs_sums(format: BlockFormat) -> bool {
    matches!(format, BlockFormat::Q4_0 | BlockFormat::Q5_0)
}

/// Up to eight 32-element-format weight rows × activation rows `t0..t0 + nt` (`nt` ≤ [`MT`]), straight from
/// the file's layout (no packing: what decode and small batches want): [`crate::avx2::rows_32`]'s structure
/// with `vpdpbusd` on the unsigned weights (`u = q + off`, corrected by `off·Σx` per block, exact integers),
/// the 5th bits of Q5 set through a mask register, and each weight block unpacked once for all `nt` rows.
/// Bit for bit the scalar reference's results.
///
/// # Safety
/// [`available`]; `wrows` holds 1..=8 whole rows of `format` (a 32-element format), `isum` every activation
/// row's per-block sums of quants ([`block_sums`]), `out[i]` receives row `t0 + i`.
pub unsafe fn rows_32(
    format: BlockFormat,
    wrows: &[&[u8]],
    acts: &Q8Acts,
    isum: &[i32],
    t0: usize,
    out: &mut [[f32; 8]],
) {
    use crate::avx2::{tag, F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0};
    macro_rules! by_rows {
        ($f:expr) => {
            match out.len().min(MT) {
                4 => rows_32_impl::<$f, 4>(wrows, acts, isum, t0, out),
                3 => rows_32_impl::<$f, 3>(wrows, acts, isum, t0, out),
                2 => rows_32_impl::<$f, 2>(wrows, acts, isum, t0, out),
                _ => rows_32_impl::<$f, 1>(wrows, acts, isum, t0, out),
            }
        };
    }
    match tag(format) {
        F_Q4_0 => by_rows!(F_Q4_0),
        F_Q4_1 => by_rows!(F_Q4_1),
        F_Q5_0 => by_rows!(F_Q5_0),
        F_Q5_1 => by_rows!(F_Q5_1),
        _ => by_rows!(F_Q8_0),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_32_impl<const F: u8, const T: usize>(
    wrows: &[&[u8]],
    acts: &Q8Acts,
    isum: &[i32],
    t0: usize,
    out: &mut [[f32; 8]],
) {
    use crate::avx2::{nibbles, Rows8, F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0};
    let Rows8 {
        rows, nr, nb, bb, ..
    } = Rows8::new::<F>(wrows, acts, t0);
    let xs: [(&[f32], &[f32], &[i8]); T] = std::array::from_fn(|i| {
        let r = acts.row(t0 + i);
        assert!(r.2.len() == nb * QK, "activation row length");
        r
    });
    let off: i32 = match F {
        F_Q4_0 => 8,
        F_Q5_0 => 16,
        _ => 0,
    };
    assert!(off == 0 || isum.len() >= (t0 + T) * nb, "activation sums");
    assert!(out.len() >= T, "output rows");
    let with_min = F == F_Q4_1 || F == F_Q5_1;
    let sixteen = _mm256_set1_epi8(16);
    let mut o = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        // The eight rows' block, unpacked once: unsigned weights (Q8_0: |w| and w for the signs).
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ws = [_mm256_setzero_si256(); 8];
        let mut dbits = [0u16; 8];
        let mut mbits = [0u16; 8];
        for k in 0..8 {
            let p = rows[k].add(b * bb);
            // Next group of eight rows, same offset (see `avx2::rows_32`).
            _mm_prefetch::<_MM_HINT_T0>(rows[k].wrapping_add((8 * nb + b) * bb) as *const i8);
            dbits[k] = std::ptr::read_unaligned(p as *const u16);
            if with_min {
                mbits[k] = std::ptr::read_unaligned(p.add(2) as *const u16);
            }
            let high = |at: usize, qs: usize| {
                let bits = std::ptr::read_unaligned(p.add(at) as *const u32);
                let n = nibbles(p.add(qs));
                _mm256_mask_add_epi8(n, bits, n, sixteen)
            };
            w[k] = match F {
                F_Q4_0 => nibbles(p.add(2)),
                F_Q4_1 => nibbles(p.add(4)),
                F_Q5_0 => high(2, 6),
                F_Q5_1 => high(4, 8),
                _ => {
                    ws[k] = _mm256_loadu_si256(p.add(2) as *const __m256i);
                    _mm256_abs_epi8(ws[k])
                }
            };
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(dbits.as_ptr() as *const __m128i));
        let m = _mm256_cvtph_ps(_mm_loadu_si128(mbits.as_ptr() as *const __m128i));
        for t in 0..T {
            let (dx, sx, q) = xs[t];
            let x = _mm256_loadu_si256(q.as_ptr().add(b * QK) as *const __m256i);
            let v: [__m256i; 8] = std::array::from_fn(|k| {
                let xk = if F == F_Q8_0 {
                    _mm256_sign_epi8(x, ws[k])
                } else {
                    x
                };
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[k], xk)
            });
            // Lane k ← Σ v[k] (exact integers; the order of the additions does not matter).
            let h0123 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            let h4567 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
            let mut sumi = _mm256_add_epi32(
                _mm256_permute2x128_si256(h0123, h4567, 0x20),
                _mm256_permute2x128_si256(h0123, h4567, 0x31),
            );
            if off != 0 {
                let s = *isum.get_unchecked((t0 + t) * nb + b);
                sumi = _mm256_sub_epi32(sumi, _mm256_set1_epi32(off * s));
            }
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(*dx.get_unchecked(b)));
            o[t] = _mm256_add_ps(o[t], _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dd));
            if with_min {
                let ms = _mm256_mul_ps(m, _mm256_set1_ps(*sx.get_unchecked(b)));
                o[t] = _mm256_add_ps(o[t], ms);
            }
        }
    }
    for t in 0..T {
        let mut all = [0f32; 8];
        _mm256_storeu_ps(all.as_mut_ptr(), o[t]);
        out[t][..nr].copy_from_slice(&all[..nr]);
    }
}
