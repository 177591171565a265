//! Softmax of one row in place, the attention's and the training loss's hot loop: `exp(x − max)` in f32, the
//! sum in f64, every value times the f32-rounded reciprocal of the sum (ggml's `soft_max` arithmetic).
//!
//! [`softmax_ref`] is the scalar reference (the C library's `expf`, a sequential f64 sum). The AVX-512 path
//! computes `exp` sixteen lanes at a time ([`exp_with`]: within 2 ulp of the exact value, tested over the
//! whole range) and adds the lanes of each vector in f32 before the f64 sum, as ggml's vector path does; so
//! its probabilities are within a few ulp of the reference's, not equal to them bit for bit. Profiles of
//! training at 1,500-token sequences had the reference's `expf` calls and its f64 addition chain at a fifth
//! of the step.

use crate::matmul::Isa;

/// `row` replaced by its softmax, on the fastest path this CPU has.
pub fn softmax(row: &mut [f32]) {
    softmax_with(Isa::detect(), row)
}

/// [`softmax`] with a chosen implementation (`Isa::Avx512Vnni`: AVX-512 where the CPU has it; anything else:
/// [`softmax_ref`]).
pub fn softmax_with(isa: Isa, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if vector(isa) {
        // SAFETY: AVX-512 F was detected.
        unsafe { avx512::softmax(row) };
        return;
    }
    let _ = isa;
    softmax_ref(row)
}

/// Whether `isa` asks for the AVX-512 path and this CPU has it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn vector(isa: Isa) -> bool {
    isa == Isa::Avx512Vnni && crate::float::avx512_available()
}

/// The scalar reference: `exp(x − max)` by the C library in f32, summed in order in f64, every value times
/// the f32-rounded reciprocal.
pub fn softmax_ref(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Each value replaced by its exponential: sixteen at a time on AVX-512 (`Isa::Avx512Vnni` where the CPU
/// has it), else the C library's `expf`.
pub fn exp_with(isa: Isa, xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if vector(isa) {
        // SAFETY: AVX-512 F was detected.
        unsafe { avx512::exp_all(xs) };
        return;
    }
    let _ = isa;
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// [`exp_with`] on the fastest path this CPU has.
pub fn exp(xs: &mut [f32]) {
    exp_with(Isa::detect(), xs)
}

/// `Σ exp(x − shift)` over `xs`, in f64: a log-sum-exp's sum. On AVX-512 the exponentials are [`exp_with`]'s
/// and each vector's lanes are added in f32 first (as in [`softmax`]); else the C library's `expf`, summed in
/// order.
pub fn sum_exp(xs: &[f32], shift: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if vector(Isa::detect()) {
        // SAFETY: AVX-512 F was detected.
        return unsafe { avx512::sum_exp(xs, shift) };
    }
    xs.iter().map(|&x| f64::from((x - shift).exp())).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// ln 2 in two parts: the first has few enough bits that `n · LN2_HI` is exact for every `n` used here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;

    /// `exp` of each lane: `2ⁿ · exp(r)` with `n = round(x · log₂e)` and `r = x − n · ln 2` (|r| ≤ ln2/2),
    /// `exp(r)` by its Taylor series to r⁷ (the first term left out is below 6e-9), `2ⁿ` applied by
    /// `scalef` (which underflows to subnormals and zero, and overflows to infinity, as `expf` does). NaN
    /// stays NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp16(x: __m512) -> __m512 {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        // Beyond these, exp is 0 (below about −103.97) or infinite (above about 88.72) anyway.
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(89.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        const C: [f32; 7] = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in C {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), nan, x)
    }

    /// The mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_all(xs: &mut [f32]) {
        for chunk in xs.chunks_mut(16) {
            let m = lanes(chunk.len());
            let p = chunk.as_mut_ptr();
            _mm512_mask_storeu_ps(p, m, exp16(_mm512_maskz_loadu_ps(m, p)));
        }
    }

    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_exp(xs: &[f32], shift: f32) -> f64 {
        let shift = _mm512_set1_ps(shift);
        let mut sum = 0f64;
        for chunk in xs.chunks(16) {
            let m = lanes(chunk.len());
            let e = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, chunk.as_ptr()),
                shift,
            ));
            sum += f64::from(_mm512_reduce_add_ps(_mm512_maskz_mov_ps(m, e)));
        }
        sum
    }

    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax(row: &mut [f32]) {
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut mv = ninf;
        for chunk in row.chunks(16) {
            let x = _mm512_mask_loadu_ps(ninf, lanes(chunk.len()), chunk.as_ptr());
            mv = _mm512_max_ps(mv, x);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
        let mut sum = 0f64;
        for chunk in row.chunks_mut(16) {
            let m = lanes(chunk.len());
            let p = chunk.as_mut_ptr();
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p), max));
            let e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(p, m, e);
            sum += f64::from(_mm512_reduce_add_ps(e));
        }
        let inv = _mm512_set1_ps((1.0 / sum) as f32);
        for chunk in row.chunks_mut(16) {
            let m = lanes(chunk.len());
            let p = chunk.as_mut_ptr();
            _mm512_mask_storeu_ps(p, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p), inv));
        }
    }
}
