//! Quantized weights × f32 activations: validation, activation quantization (once per call), and the
//! parallel tiled loop that calls a tile kernel (scalar or SIMD).
//!
//! Work is split over chunks of weight rows (rayon); inside a chunk, activation rows are taken [`TILE`] at a
//! time and every weight row of the chunk is multiplied with the whole tile, so a weight block is unpacked
//! once per tile and the chunk's weights stay in cache across tiles. Each output value is computed by the
//! same sequence of operations whatever the tile holds, so a row's result never depends on which other rows
//! are in the batch (batch invariance; tested).

use rayon::prelude::*;

use crate::format::{BlockFormat, KernelError};
use crate::q8::{Q8Acts, Q8KActs};
use crate::{kquant, q32};

/// Activation rows multiplied per weight-block unpack.
pub const TILE: usize = 8;

/// Which kernel implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 with VNNI (x86-64): packed outer-product kernels ([`crate::vnni`]).
    Avx512Vnni,
}

impl Isa {
    /// The best implementation this CPU runs; `BAIMO_KERNELS=scalar` forces the reference and
    /// `BAIMO_KERNELS=avx2` the AVX2 kernels on an AVX-512 CPU.
    pub fn detect() -> Isa {
        let forced = std::env::var("BAIMO_KERNELS").ok();
        if forced.as_deref() == Some("scalar") {
            return Isa::Scalar;
        }
        if forced.as_deref() != Some("avx2") && vnni_available() {
            return Isa::Avx512Vnni;
        }
        if avx2_available() {
            return Isa::Avx2;
        }
        Isa::Scalar
    }

    /// Whether this CPU runs `isa` (a request for one it does not run falls back to the next best).
    pub fn supported(isa: Isa) -> bool {
        match isa {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_available(),
            Isa::Avx512Vnni => vnni_available(),
        }
    }
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::vnni::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activation rows from which the packed VNNI kernels beat the direct ones (measured with
/// `examples/matmul_speed.rs`: the direct kernels reuse an unpacked block across up to four rows (32-element
/// formats) or eight (K-quants); `BAIMO_VNNI_MIN_ROWS` overrides it for such measurements). Every kernel
/// gives the same bits, so this choice never changes a result.
fn vnni_min_rows() -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    FORCED
        .get_or_init(|| env_usize("BAIMO_VNNI_MIN_ROWS"))
        .unwrap_or(8)
}

/// A numeric override from the environment (measurement knobs; read once by the caller).
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Quantized activations in the form the weight format pairs with.
pub enum Acts {
    Q8(Q8Acts),
    Q8K(Q8KActs),
}

/// `out[t][r] = Σ_c W[r][c] · x[t][c]` for `x` of `n` rows × `cols`, `W` of `rows` × `cols` in `format`.
/// Returns `n × rows` values, row-major. Uses the best kernel for this CPU.
pub fn quant_matmul(
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    quant_matmul_with(Isa::detect(), format, w, rows, cols, x)
}

/// [`quant_matmul`] with a chosen implementation (tests compare them).
pub fn quant_matmul_with(
    isa: Isa,
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let isa = resolve(isa);
    let row_bytes = check(format, w, rows, cols, x)?;
    let n = x.len() / cols;
    let acts = if format.is_k() {
        Acts::Q8K(Q8KActs::quantize(x, cols))
    } else {
        Acts::Q8(Q8Acts::quantize(x, cols))
    };
    let mut out = vec![0f32; n * rows];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && n >= vnni_min_rows() {
        match &acts {
            Acts::Q8K(a) => crate::vnni::matmul_k(format, w, rows, row_bytes, a, &mut out),
            Acts::Q8(a) => crate::vnni::matmul_32(format, w, rows, row_bytes, a, &mut out),
        }
        return Ok(out);
    }
    let direct = Direct::new(isa, format, rows, row_bytes, n, &acts);
    let chunk = direct.chunk_rows();
    let dst = SendPtr(out.as_mut_ptr());
    w.par_chunks(chunk * row_bytes)
        .enumerate()
        .for_each(|(ci, wchunk)| direct.run(wchunk, ci * chunk, dst));
    Ok(out)
}

/// A weight matrix unpacked once for the batched kernels (AVX-512 VNNI CPUs), so that repeated products over
/// several activation rows (a server's decode steps) skip the per-call unpacking that otherwise takes about a
/// third of their time. Costs about 1.25–1.5 bytes per weight beside the file's blocks; the results are the
/// same bits as [`quant_matmul`]'s.
pub struct PackedWeights {
    #[cfg(target_arch = "x86_64")]
    inner: crate::vnni::Packed,
    format: BlockFormat,
    rows: usize,
    cols: usize,
}

impl PackedWeights {
    /// Packs `w` (`rows` × `cols` in `format`); `None` where this CPU has no packed kernels (the plain ones
    /// then run) or the shapes are wrong.
    pub fn new(format: BlockFormat, w: &[u8], rows: usize, cols: usize) -> Option<PackedWeights> {
        if resolve(Isa::detect()) != Isa::Avx512Vnni {
            return None;
        }
        let row_bytes = check(format, w, rows, cols, &[]).ok()?;
        #[cfg(target_arch = "x86_64")]
        {
            Some(PackedWeights {
                inner: crate::vnni::Packed::new(format, w, rows, row_bytes),
                format,
                rows,
                cols,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = row_bytes;
            None
        }
    }

    /// Heap bytes the packed form holds.
    pub fn bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            self.inner.bytes()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0
        }
    }

    /// Whether a product of `n` activation rows uses the packed form: from two rows (`examples/matmul_speed`
    /// with `SPEED_SIMD_ONLY=1`: two rows of the FFN-down shape 102–117 GFLOP/s packed, 50–62 direct); a single
    /// row stays on the direct kernels, which read the file's smaller blocks (decode is bandwidth-bound).
    /// `BAIMO_PACKED_MIN_ROWS` overrides it for such measurements.
    pub fn used_for(n: usize) -> bool {
        static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        let min = FORCED.get_or_init(|| env_usize("BAIMO_PACKED_MIN_ROWS"));
        n >= min.unwrap_or(2).max(1)
    }
}

/// [`quant_matmul`] of the matrix `w` with its packed form `packed` (made from `w`): the packed kernels for
/// batches, the direct ones on `w` for fewer rows. Same bits as [`quant_matmul`].
pub fn quant_matmul_packed(
    packed: &PackedWeights,
    w: &[u8],
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let (format, rows, cols) = (packed.format, packed.rows, packed.cols);
    check(format, w, rows, cols, x)?;
    let n = x.len() / cols;
    if !PackedWeights::used_for(n) {
        return quant_matmul(format, w, rows, cols, x);
    }
    let mut out = vec![0f32; n * rows];
    #[cfg(target_arch = "x86_64")]
    if format.is_k() {
        crate::vnni::matmul_k_packed(&packed.inner, &Q8KActs::quantize(x, cols), &mut out);
    } else {
        crate::vnni::matmul_32_packed(&packed.inner, &Q8Acts::quantize(x, cols), &mut out);
    }
    Ok(out)
}

/// One weight matrix of a [`quant_matmul_many`] call: `rows` rows of the call's `cols` values in `format`.
#[derive(Clone, Copy)]
pub struct QuantMatrix<'a> {
    pub format: BlockFormat,
    pub data: &'a [u8],
    pub rows: usize,
    /// Its packed form, when the caller keeps one ([`PackedWeights`]).
    pub packed: Option<&'a PackedWeights>,
}

/// Several weight matrices over the same activations (a layer's q, k and v; gate and up): `out[i]` is
/// [`quant_matmul`] of `ws[i]`, bit for bit. For few activation rows (decode) the activations are quantized
/// once per kind and every product runs in one parallel region, so the threads meet once instead of once per
/// matrix; batches (the packed kernels) run matrix after matrix.
pub fn quant_matmul_many(
    ws: &[QuantMatrix],
    cols: usize,
    x: &[f32],
) -> Result<Vec<Vec<f32>>, KernelError> {
    let isa = resolve(Isa::detect());
    let mut row_bytes = Vec::with_capacity(ws.len());
    for m in ws {
        row_bytes.push(check(m.format, m.data, m.rows, cols, x)?);
    }
    let n = x.len() / cols;
    let all_packed = isa == Isa::Avx512Vnni
        && PackedWeights::used_for(n)
        && ws.iter().all(|m| m.packed.is_some());
    if isa == Isa::Avx512Vnni && n >= vnni_min_rows() || ws.len() < 2 || all_packed {
        return ws
            .iter()
            .map(|m| match m.packed {
                Some(p) if isa == Isa::Avx512Vnni => quant_matmul_packed(p, m.data, x),
                _ => quant_matmul_with(isa, m.format, m.data, m.rows, cols, x),
            })
            .collect();
    }
    let q8 = ws
        .iter()
        .any(|m| !m.format.is_k())
        .then(|| Acts::Q8(Q8Acts::quantize(x, cols)));
    let q8k = ws
        .iter()
        .any(|m| m.format.is_k())
        .then(|| Acts::Q8K(Q8KActs::quantize(x, cols)));
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|m| vec![0f32; n * m.rows]).collect();
    let mut tasks = Vec::new();
    let mut directs = Vec::with_capacity(ws.len());
    for (i, m) in ws.iter().enumerate() {
        let Some(acts) = (if m.format.is_k() { &q8k } else { &q8 }) else {
            unreachable!("quantized above for every kind present")
        };
        let d = Direct::new(isa, m.format, m.rows, row_bytes[i], n, acts);
        let chunk = d.chunk_rows();
        tasks.extend((0..m.rows.div_ceil(chunk)).map(|c| (i, c * chunk, chunk)));
        directs.push(d);
    }
    let dsts: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    tasks.par_iter().for_each(|&(i, r0, chunk)| {
        let rb = row_bytes[i];
        let data = ws[i].data;
        let wchunk = &data[r0 * rb..((r0 + chunk) * rb).min(data.len())];
        directs[i].run(wchunk, r0, dsts[i]);
    });
    Ok(outs)
}

/// Falls back from a kernel this CPU lacks to the next best.
fn resolve(isa: Isa) -> Isa {
    let isa = match isa {
        Isa::Avx512Vnni if !vnni_available() => Isa::Avx2,
        other => other,
    };
    if isa == Isa::Avx2 && !avx2_available() {
        Isa::Scalar
    } else {
        isa
    }
}

/// Validates a product's shapes; returns the bytes per weight row.
fn check(
    format: BlockFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<usize, KernelError> {
    let block = format.block_len();
    if !cols.is_multiple_of(block) {
        return Err(KernelError::RaggedRow {
            cols,
            block,
            format,
        });
    }
    let row_bytes = cols / block * format.block_bytes();
    if w.len() != rows * row_bytes {
        return Err(KernelError::WeightSize {
            len: w.len(),
            expected: rows * row_bytes,
            rows,
            cols,
            format,
        });
    }
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(KernelError::ActivationSize { len: x.len(), cols });
    }
    Ok(row_bytes)
}

/// The direct (unpacked) kernels over one weight matrix: few activation rows, each weight block unpacked once
/// for up to four rows (VNNI) or a [`TILE`].
struct Direct<'a> {
    isa: Isa,
    /// The VNNI row kernels for 32-element formats (AVX-512 CPUs); else `isa`'s.
    vnni: bool,
    format: BlockFormat,
    rows: usize,
    row_bytes: usize,
    n: usize,
    acts: &'a Acts,
    /// Per-block activation sums the VNNI kernels of some formats need.
    isum: Vec<i32>,
}

impl<'a> Direct<'a> {
    fn new(
        isa: Isa,
        format: BlockFormat,
        rows: usize,
        row_bytes: usize,
        n: usize,
        acts: &'a Acts,
    ) -> Self {
        // Few activation rows do not pay for packing the weights: the direct kernels (same results) run them.
        let vnni = isa == Isa::Avx512Vnni;
        let isa = if vnni { Isa::Avx2 } else { isa };
        #[cfg(target_arch = "x86_64")]
        let isum = match acts {
            Acts::Q8(a) if vnni && crate::vnni::rows_32_needs_sums(format) => {
                crate::vnni::block_sums(a)
            }
            _ => Vec::new(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let isum = Vec::new();
        Direct {
            isa,
            vnni,
            format,
            rows,
            row_bytes,
            n,
            acts,
            isum,
        }
    }

    /// Weight rows per parallel task.
    fn chunk_rows(&self) -> usize {
        let chunk = chunk_rows(self.rows, self.n);
        if self.uses_rows_32() {
            chunk.next_multiple_of(8)
        } else {
            chunk
        }
    }

    /// Whether the eight-row kernels for 32-element formats run (AVX2, or VNNI's direct ones).
    fn uses_rows_32(&self) -> bool {
        cfg!(target_arch = "x86_64") && self.isa == Isa::Avx2 && matches!(self.acts, Acts::Q8(_))
    }

    /// Rows `r0..` of the matrix (the whole rows in `wchunk`) into `dst` (`n × rows`, row-major).
    fn run(&self, wchunk: &[u8], r0: usize, dst: SendPtr) {
        let (n, rows, format) = (self.n, self.rows, self.format);
        #[cfg(target_arch = "x86_64")]
        if let (true, Acts::Q8(a)) = (self.uses_rows_32(), self.acts) {
            // Eight weight rows per kernel call, with one activation row (AVX2) or up to four (VNNI).
            let wrows: Vec<&[u8]> = wchunk.chunks_exact(self.row_bytes).collect();
            let mut buf = [[0f32; 8]; 4];
            let step = if self.vnni { 4 } else { 1 };
            for (g, group) in wrows.chunks(8).enumerate() {
                for t0 in (0..n).step_by(step) {
                    let nt = step.min(n - t0);
                    // SAFETY: the kernel's CPU features were detected; `group` holds 1..=8 whole rows;
                    // `isum` has every row's block sums when the VNNI kernel runs.
                    unsafe {
                        if self.vnni {
                            crate::vnni::rows_32(format, group, a, &self.isum, t0, &mut buf[..nt])
                        } else {
                            crate::avx2::rows_32(format, group, a, t0, &mut buf[0])
                        }
                    };
                    for (i, vals) in buf[..nt].iter().enumerate() {
                        for (k, v) in vals[..group.len()].iter().enumerate() {
                            // SAFETY: as below; rows r0+8g+k of this chunk are written by this task only.
                            unsafe { dst.write((t0 + i) * rows + r0 + 8 * g + k, *v) };
                        }
                    }
                }
            }
            return;
        }
        let mut buf = [0f32; TILE];
        for t0 in (0..n).step_by(TILE) {
            let nt = TILE.min(n - t0);
            for (r, wrow) in wchunk.chunks_exact(self.row_bytes).enumerate() {
                tile(self.isa, format, wrow, self.acts, t0, &mut buf[..nt]);
                for (i, v) in buf[..nt].iter().enumerate() {
                    // SAFETY: chunks cover disjoint row ranges, so every (t, r) is written by exactly
                    // one task, and `(t0+i)·rows + r0 + r` < n·rows.
                    unsafe { dst.write((t0 + i) * rows + r0 + r, *v) };
                }
            }
        }
    }
}

/// Rows per parallel task: enough tasks to balance the threads, few enough that scheduling stays cheap.
fn chunk_rows(rows: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_balance = rows.div_ceil(threads * 8);
    // Large batches amortize scheduling better; small ones want whole cache-friendly chunks.
    let cap = if n >= TILE { 32 } else { 64 };
    by_balance.clamp(4, cap).min(rows.max(1))
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// # Safety
    /// `i` in bounds of the buffer and no other thread writes index `i`.
    pub(crate) unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }

    /// # Safety
    /// `i..i + vals.len()` in bounds of the buffer and no other thread writes those indices.
    pub(crate) unsafe fn write_slice(self, i: usize, vals: &[f32]) {
        std::ptr::copy_nonoverlapping(vals.as_ptr(), self.0.add(i), vals.len());
    }
}

/// One weight row × activation rows `t0..t0+out.len()`.
fn tile(isa: Isa, format: BlockFormat, wrow: &[u8], acts: &Acts, t0: usize, out: &mut [f32]) {
    match (isa, acts) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Acts::Q8K(a)) => unsafe { crate::avx2::tile_k(format, wrow, a, t0, out) },
        (_, Acts::Q8K(a)) => kquant::tile_scalar(format, wrow, a, t0, out),
        (_, Acts::Q8(a)) => q32::tile_scalar(format, wrow, a, t0, out),
    }
}

/// Dequantizes one weight row (float reference for tests and embeddings).
pub fn dequantize_row(format: BlockFormat, row: &[u8]) -> Vec<f32> {
    if format.is_k() {
        kquant::dequantize_row(format, row)
    } else {
        q32::dequantize_row(format, row)
    }
}
