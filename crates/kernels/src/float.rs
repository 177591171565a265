//! Float weights (F32, F16, BF16) × f32 activations, read in place from the file's memory map: no f32 copy
//! of an F16 model (half the memory and half the bytes streamed per decoded token).
//!
//! Every output is one dot product in a fixed order, whatever the batch: sixteen lane sums, lane `j` taking
//! columns `j, j+16, …` with fused multiply-adds (columns past the end count as 0·0), then the lanes are added
//! pairwise (`j + j+8`, `j + j+4`, `j + j+2`, `0 + 1`). [`dot_ref`] is that order in scalar code; the
//! AVX-512 kernel computes the same bits (tested), so results do not depend on the kernel or on which other
//! rows share the call (batch invariance).

use rayon::prelude::*;

use crate::format::KernelError;
use crate::matmul::{Isa, SendPtr};

/// How a float weight row is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatFormat {
    F32,
    F16,
    BF16,
}

impl FloatFormat {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            FloatFormat::F32 => 4,
            FloatFormat::F16 | FloatFormat::BF16 => 2,
        }
    }

    /// Value `i` of a row.
    #[inline]
    pub fn value(self, row: &[u8], i: usize) -> f32 {
        match self {
            FloatFormat::F32 => {
                f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
            }
            FloatFormat::F16 => half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
            FloatFormat::BF16 => half::bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
        }
    }

    /// A whole row as f32.
    pub fn row_values(self, row: &[u8]) -> Vec<f32> {
        (0..row.len() / self.bytes())
            .map(|i| self.value(row, i))
            .collect()
    }
}

/// Lanes of the fixed summation order.
const LANES: usize = 16;

/// The reference dot product of one weight row with `x` (see the module docs for the order).
pub fn dot_ref(format: FloatFormat, wrow: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let padded = x.len().next_multiple_of(LANES);
    for c in 0..padded {
        let (xv, wv) = if c < x.len() {
            (x[c], format.value(wrow, c))
        } else {
            (0.0, 0.0)
        };
        lanes[c % LANES] = xv.mul_add(wv, lanes[c % LANES]);
    }
    for j in 0..8 {
        lanes[j] += lanes[j + 8];
    }
    for j in 0..4 {
        lanes[j] += lanes[j + 4];
    }
    for j in 0..2 {
        lanes[j] += lanes[j + 2];
    }
    lanes[0] + lanes[1]
}

/// Whether the SIMD float kernel runs on this CPU (AVX-512 F/BW/VL) and is not turned off by
/// `BAIMO_KERNELS=scalar|avx2`. Without it, callers keep float weights in their own f32 path: the scalar
/// reference is for tests, not speed.
pub fn float_kernels_fast() -> bool {
    Isa::detect() == Isa::Avx512Vnni && avx512_available()
}

/// Whether float weights should be multiplied in place by this module rather than copied to f32 for candle:
/// on AVX-512 and on AVX2 + FMA + F16C CPUs (unless `BAIMO_KERNELS=scalar`). Decoding streams half the bytes
/// of an f32 copy; the AVX2 kernel is the simpler one, so batched prefill may trail candle's f32 GEMM there.
pub fn float_weights_in_place() -> bool {
    matches!(simd_for(Isa::detect()), Simd::Avx512 | Simd::Avx2)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
    None,
}

/// The kernel `isa` asks for, on this CPU (`Avx512Vnni` → AVX-512 if present, else AVX2; `Avx2` → AVX2).
fn simd_for(isa: Isa) -> Simd {
    match isa {
        Isa::Avx512Vnni if avx512_available() => Simd::Avx512,
        Isa::Avx512Vnni | Isa::Avx2 if Isa::supported(Isa::Avx2) => Simd::Avx2,
        _ => Simd::None,
    }
}

pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[t][r] = Σ_c W[r][c] · x[t][c]` for `x` of `n` rows × `cols` and `W` of `rows` × `cols` stored as
/// `format`. Returns `n × rows` values, row-major.
pub fn float_matmul(
    format: FloatFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    float_matmul_with(Isa::detect(), format, w, rows, cols, x)
}

/// [`float_matmul`] with a chosen implementation (`Isa::Avx512Vnni`: the AVX-512 kernel, `Isa::Avx2`: the
/// AVX2 one, `Isa::Scalar`: the reference; a kernel the CPU lacks falls back to the next; tests compare them).
pub fn float_matmul_with(
    isa: Isa,
    format: FloatFormat,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let row_bytes = cols * format.bytes();
    if w.len() != rows * row_bytes {
        return Err(KernelError::FloatWeightSize {
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
    let n = x.len() / cols;
    let mut out = vec![0f32; n * rows];
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    let kind = simd_for(isa);
    let simd = kind == Simd::Avx512;
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance the threads; whole groups of four rows.
    let chunk = rows.div_ceil(threads * 8).clamp(4, 64).next_multiple_of(4);
    let dst = SendPtr(out.as_mut_ptr());
    w.par_chunks(chunk * row_bytes)
        .enumerate()
        .for_each(|(ci, wchunk)| {
            let r0 = ci * chunk;
            let wrows: Vec<&[u8]> = wchunk.chunks_exact(row_bytes).collect();
            #[cfg(target_arch = "x86_64")]
            if simd && n > avx512::TT {
                // Batches bigger than one register tile: the loop order that keeps activations in L1.
                // SAFETY: AVX-512 F/BW/VL were detected; every row of `wrows` holds `cols` values in `format`;
                // `x` holds `n` rows of `cols` values.
                unsafe {
                    avx512::panel(format, &wrows, x, cols, n, |t, r, vals| {
                        // SAFETY: as below (the values are weight rows r0 + r.. of the chunk).
                        dst.write_slice(t * rows + r0 + r, vals)
                    })
                };
                return;
            }
            // Activation rows in blocks that stay in cache while every row group of the chunk passes over them.
            for tb in (0..n).step_by(64) {
                let tend = (tb + 64).min(n);
                let groups: Vec<&[&[u8]]> = wrows.chunks(4).collect();
                for (g, &group) in groups.iter().enumerate() {
                    let next: &[&[u8]] = groups.get(g + 1).copied().unwrap_or(&[]);
                    let mut res = [[0f32; 4]; 64];
                    let res = &mut res[..tend - tb];
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: AVX-512 F/BW/VL were detected; `group` holds 1..=4 rows of `cols` values in
                        // `format`; `x` holds rows tb..tend of `cols` values.
                        unsafe { avx512::block(format, group, next, x, cols, tb, res) };
                    }
                    #[cfg(target_arch = "x86_64")]
                    if kind == Simd::Avx2 {
                        // SAFETY: AVX2, FMA and F16C were detected; as for the AVX-512 call.
                        unsafe { avx2f::block(format, group, x, cols, tb, res) };
                    }
                    if kind == Simd::None {
                        for (i, b) in res.iter_mut().enumerate() {
                            let xr = &x[(tb + i) * cols..(tb + i + 1) * cols];
                            for (r, wr) in group.iter().enumerate() {
                                b[r] = dot_ref(format, wr, xr);
                            }
                        }
                    }
                    for (i, vals) in res.iter().enumerate() {
                        for (r, v) in vals[..group.len()].iter().enumerate() {
                            // SAFETY: chunks cover disjoint weight rows, so each (t, r) is written by one task
                            // only, and (tb+i)·rows + r0 + 4g + r < n·rows.
                            unsafe { dst.write((tb + i) * rows + r0 + 4 * g + r, *v) };
                        }
                    }
                }
            }
        });
    Ok(out)
}

/// `out = g · w` for f32 matrices `g` (`n` × `k`) and `w` (`k` × `cols`), both row-major, without a
/// transposed copy of `w`: the input gradient of a frozen projection (`grad_y · W` with W (out, in) as
/// stored), which candle would hand to its AVX2 GEMM. Each output is a sequential sum over `k` of fused
/// multiply-adds (the order of [`matmul_nn_ref`]), whatever the kernel or the thread count.
pub fn float_matmul_nn(
    g: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    cols: usize,
) -> Result<Vec<f32>, KernelError> {
    float_matmul_nn_with(Isa::detect(), g, n, k, w, cols)
}

/// [`float_matmul_nn`] with a chosen implementation (`Isa::Avx512Vnni`: the AVX-512 kernel where the CPU
/// has it; anything else: the scalar reference, the same bits).
pub fn float_matmul_nn_with(
    isa: Isa,
    g: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    cols: usize,
) -> Result<Vec<f32>, KernelError> {
    check_nn(&[(g.len(), n, k), (w.len(), k, cols)])?;
    #[cfg(target_arch = "x86_64")]
    if simd_for(isa) == Simd::Avx512 && n > 0 && cols > 0 && k > 0 {
        // SAFETY: AVX-512 F was detected; the shapes were checked; a fresh product writes every output (it
        // has at least one term: k > 0).
        return Ok(filled(n * cols, |dst| unsafe {
            nn_avx512(dst, true, g, n, k, w, cols)
        }));
    }
    let mut out = vec![0f32; n * cols];
    nn_into(isa, &mut out, g, n, k, w, cols);
    Ok(out)
}

/// `out += g · w`, as [`float_matmul_nn`] computes it (each output's sum starts from its value in `out`):
/// for a gradient that has another term already (a LoRA update's), without a second buffer and an addition.
pub fn float_matmul_nn_add(
    out: &mut [f32],
    g: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    cols: usize,
) -> Result<(), KernelError> {
    check_nn(&[(g.len(), n, k), (w.len(), k, cols), (out.len(), n, cols)])?;
    nn_into(Isa::detect(), out, g, n, k, w, cols);
    Ok(())
}

/// `out = x · wᵀ` for f32 matrices `x` (`n` × `k`) and `w` (`rows` × `k`), both row-major: a frozen f32
/// projection's forward in training. Each output is a sequential sum over `k` of fused multiply-adds (the
/// order of [`matmul_nn_ref`] with `wᵀ`), so it is [`float_matmul_nn`]'s product with `w` transposed: the
/// AVX-512 kernel is the NN one, fed panels of `wᵀ` (512 × 64 values) that each task transposes once (16 × 16
/// squares in registers) and reuses for all its activation rows. It runs about 1.4× faster than
/// [`float_matmul`]'s dot-product kernel on training's shapes (`examples/train_speed`); unlike [`float_matmul`] its results are not
/// batch-invariant bit for bit (serving does not use it).
pub fn float_matmul_nt(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    rows: usize,
) -> Result<Vec<f32>, KernelError> {
    float_matmul_nt_with(Isa::detect(), x, n, k, w, rows)
}

/// [`float_matmul_nt`] with a chosen implementation (`Isa::Avx512Vnni`: the AVX-512 kernel where the CPU
/// has it; anything else: the scalar reference, the same bits).
pub fn float_matmul_nt_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    rows: usize,
) -> Result<Vec<f32>, KernelError> {
    check_nn(&[(x.len(), n, k), (w.len(), rows, k)])?;
    if n == 0 || rows == 0 || k == 0 {
        return Ok(vec![0f32; n * rows]);
    }
    #[cfg(target_arch = "x86_64")]
    if simd_for(isa) == Simd::Avx512 {
        // Every output written (each has at least one term), so none needs zeroing first.
        return Ok(filled(n * rows, |dst| {
            in_tasks(n, k, rows, |(b, rows_t)| {
                // SAFETY: AVX-512 F was detected; the shapes were checked; each task writes every output
                // of its own rows of its own column block, and only those.
                unsafe { avx512::nt_block(x, rows_t, k, w, rows, b * avx512::NN_COLS, dst) }
            })
        }));
    }
    let _ = isa;
    let mut out = vec![0f32; n * rows];
    out.par_chunks_mut(rows).enumerate().for_each(|(t, row)| {
        let xr = &x[t * k..(t + 1) * k];
        for (o, wr) in row.iter_mut().zip(w.chunks_exact(k)) {
            *o = xr
                .iter()
                .zip(wr)
                .fold(0f32, |acc, (&a, &b)| a.mul_add(b, acc));
        }
    });
    Ok(out)
}

/// A matrix `w` (`rows` × `k`, row-major) packed once as [`float_matmul_nt`] reads it, for products with
/// several `x` (attention's query blocks against one head's keys): `wᵀ` in column blocks of 64, each block
/// its `k` rows of 64 values (zero past `rows`). [`float_matmul_nt`] transposes the same blocks into a
/// panel for every call.
pub struct NtPanels {
    k: usize,
    rows: usize,
    data: Vec<f32>,
}

/// Columns per block of [`NtPanels`] (the NN kernel's block width).
const PANEL_COLS: usize = 64;

impl NtPanels {
    pub fn new(w: &[f32], rows: usize, k: usize) -> Result<NtPanels, KernelError> {
        check_nn(&[(w.len(), rows, k)])?;
        if k == 0 {
            return Ok(NtPanels {
                k,
                rows,
                data: Vec::new(),
            });
        }
        let blocks = rows.div_ceil(PANEL_COLS);
        let mut data = vec![0f32; blocks * k * PANEL_COLS];
        let squares = simd_for(Isa::detect()) == Simd::Avx512;
        for (b, panel) in data.chunks_exact_mut(k * PANEL_COLS).enumerate() {
            let width = PANEL_COLS.min(rows - b * PANEL_COLS);
            // SAFETY: rows b·64.. b·64 + width of `w` (k values each) are read; the panel holds k rows of 64
            // values, of which the first `width` of each are written; squares only where AVX-512 F was
            // detected.
            unsafe {
                transpose_into(
                    w.as_ptr().add(b * PANEL_COLS * k),
                    k,
                    (width, k),
                    panel.as_mut_ptr(),
                    PANEL_COLS,
                    squares,
                )
            };
        }
        Ok(NtPanels { k, rows, data })
    }

    fn block(&self, b: usize) -> &[f32] {
        &self.data[b * self.k * PANEL_COLS..(b + 1) * self.k * PANEL_COLS]
    }
}

/// The first `cols` columns of [`float_matmul_nt`]`(x, n, k, w, rows)` for `w` packed in `panels`: the same
/// values, bit for bit, without transposing `w` again.
pub fn float_matmul_nt_packed(
    x: &[f32],
    n: usize,
    k: usize,
    panels: &NtPanels,
    cols: usize,
) -> Result<Vec<f32>, KernelError> {
    float_matmul_nt_packed_with(Isa::detect(), x, n, k, panels, cols)
}

/// [`float_matmul_nt_packed`] with a chosen implementation (as [`float_matmul_nt_with`]).
pub fn float_matmul_nt_packed_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    k: usize,
    panels: &NtPanels,
    cols: usize,
) -> Result<Vec<f32>, KernelError> {
    check_nn(&[(x.len(), n, k)])?;
    if k != panels.k || cols > panels.rows {
        return Err(KernelError::PanelShape {
            rows: panels.rows,
            k: panels.k,
            cols,
            want_k: k,
        });
    }
    if n == 0 || cols == 0 || k == 0 {
        return Ok(vec![0f32; n * cols]);
    }
    #[cfg(target_arch = "x86_64")]
    if simd_for(isa) == Simd::Avx512 {
        return Ok(filled(n * cols, |dst| {
            in_tasks(n, k, cols, |(b, rows_t)| {
                // SAFETY: AVX-512 F was detected; the shapes were checked; each task writes every output
                // of its own rows of its own column block, and only those.
                unsafe {
                    avx512::nt_packed_block(
                        x,
                        rows_t,
                        k,
                        panels.block(b),
                        cols,
                        b * avx512::NN_COLS,
                        dst,
                    )
                }
            })
        }));
    }
    let _ = isa;
    let mut out = vec![0f32; n * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(t, row)| {
        let xr = &x[t * k..(t + 1) * k];
        for (c, o) in row.iter_mut().enumerate() {
            let panel = panels.block(c / PANEL_COLS);
            *o = xr.iter().enumerate().fold(0f32, |acc, (r, &a)| {
                a.mul_add(panel[r * PANEL_COLS + c % PANEL_COLS], acc)
            });
        }
    });
    Ok(out)
}

/// `m` (`rows` × `cols`, row-major) transposed: 16 × 16 squares through registers on AVX-512, the edges (and
/// other CPUs) one value at a time.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>, KernelError> {
    check_nn(&[(m.len(), rows, cols)])?;
    let squares = simd_for(Isa::detect()) == Simd::Avx512;
    // SAFETY: `m` holds rows × cols values and the output as many, written once each; squares only where
    // AVX-512 F was detected.
    Ok(filled(m.len(), |dst| unsafe {
        transpose_into(m.as_ptr(), cols, (rows, cols), dst.0, rows, squares)
    }))
}

/// `dst[c · dst_stride + r] = src[r · src_stride + c]` for `r < rows`, `c < cols`: with `squares`, the whole
/// 16 × 16 squares through registers ([`avx512::transpose16`]), the edges one value at a time.
///
/// # Safety
/// Those positions readable in `src` and writable in `dst`; `squares` only where AVX-512 F is present.
unsafe fn transpose_into(
    src: *const f32,
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    squares: bool,
) {
    let (sq_rows, sq_cols) = if squares {
        (rows / 16 * 16, cols / 16 * 16)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    for r in (0..sq_rows).step_by(16) {
        for c in (0..sq_cols).step_by(16) {
            avx512::transpose16(
                src.add(r * src_stride + c),
                src_stride,
                dst.add(c * dst_stride + r),
                dst_stride,
            );
        }
    }
    for r in 0..rows {
        let from = if r < sq_rows { sq_cols } else { 0 };
        for c in from..cols {
            *dst.add(c * dst_stride + r) = *src.add(r * src_stride + c);
        }
    }
}

/// Products of fewer multiply-adds than this run on the calling thread (a training step's attention makes
/// thousands of len × len × head products, each a few microseconds of work: splitting them among the
/// threads cost more than it saved, and the caller runs many of them in parallel already).
const SERIAL_FMAS: usize = 1 << 19;

/// Runs `f` on each of the NN products' tasks ([`nn_tasks`]) for an `n` × `k` by `k` × `cols` product: in
/// parallel, or one after the other on this thread for a small product.
#[cfg(target_arch = "x86_64")]
fn in_tasks(n: usize, k: usize, cols: usize, f: impl Fn((usize, (usize, usize))) + Sync + Send) {
    if n * k * cols < SERIAL_FMAS {
        nn_tasks(n, cols, 1).into_iter().for_each(f);
    } else {
        let threads = rayon::current_num_threads().max(1);
        nn_tasks(n, cols, threads).into_par_iter().for_each(f);
    }
}

/// The NN products' tasks: (column block, activation rows), column blocks of [`avx512::NN_COLS`], and row
/// blocks too when there are too few column blocks to balance `threads` threads.
#[cfg(target_arch = "x86_64")]
fn nn_tasks(n: usize, cols: usize, threads: usize) -> Vec<(usize, (usize, usize))> {
    let blocks = cols.div_ceil(avx512::NN_COLS);
    let want = if threads > 1 { 4 * threads } else { 1 };
    let max_row_blocks = n.div_ceil(avx512::TT);
    let mut row_blocks = want.div_ceil(blocks).clamp(1, max_row_blocks);
    // Tasks of one size in a multiple of the thread count when there are few of them: 9 column blocks (576
    // columns, a small model's width) on 2 threads were 5 tasks against 4, a tenth of the product idle.
    while blocks * row_blocks < 8 * threads
        && !(blocks * row_blocks).is_multiple_of(threads)
        && row_blocks < max_row_blocks
    {
        row_blocks += 1;
    }
    let rows_per = n.div_ceil(row_blocks).next_multiple_of(avx512::TT);
    (0..blocks)
        .flat_map(|b| {
            (0..n)
                .step_by(rows_per)
                .map(move |t0| (b, (t0, (t0 + rows_per).min(n))))
        })
        .collect()
}

/// Each (values held, rows, columns) of the NN products' matrices must agree.
fn check_nn(matrices: &[(usize, usize, usize)]) -> Result<(), KernelError> {
    for &(len, rows, cols) in matrices {
        if len != rows * cols {
            return Err(KernelError::MatrixSize { len, rows, cols });
        }
    }
    Ok(())
}

fn nn_into(isa: Isa, out: &mut [f32], g: &[f32], n: usize, k: usize, w: &[f32], cols: usize) {
    if n == 0 || cols == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd_for(isa) == Simd::Avx512 {
        // SAFETY: AVX-512 F was detected; the shapes were checked by the callers.
        unsafe { nn_avx512(SendPtr(out.as_mut_ptr()), false, g, n, k, w, cols) };
        return;
    }
    let _ = isa;
    out.par_chunks_mut(cols).enumerate().for_each(|(t, row)| {
        matmul_nn_ref_row(&g[t * k..(t + 1) * k], w, cols, row);
    });
}

/// `out = g · w` (`fresh`: whatever `out` held is never read) or `out += g · w` on the AVX-512 kernel.
///
/// # Safety
/// AVX-512 F present; `g` holds `n` × `k` values, `w` `k` × `cols`, `out` points at `n` × `cols` values
/// (initialised unless `fresh`) that nothing else touches meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn nn_avx512(
    out: SendPtr,
    fresh: bool,
    g: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    cols: usize,
) {
    in_tasks(n, k, cols, |(b, rows)| {
        // SAFETY: as the caller promised; each task writes every output of its own rows of its own column
        // block, and only those.
        unsafe { avx512::nn_block(g, rows, k, w, cols, b * avx512::NN_COLS, out, fresh) }
    });
}

/// A vector of `len` values, every one of which `fill` writes through the pointer (and reads none before).
fn filled(len: usize, fill: impl FnOnce(SendPtr)) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { v.set_len(len) };
    fill(SendPtr(v.as_mut_ptr() as *mut f32));
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `fill` wrote every value; MaybeUninit<f32> has f32's layout; the buffer is moved, not copied.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity()) }
}

/// One output row of the reference: `row[c] = Σ_r g[r]·w[r][c]`, r ascending, one fused multiply-add each.
fn matmul_nn_ref_row(g: &[f32], w: &[f32], cols: usize, row: &mut [f32]) {
    for (r, &gv) in g.iter().enumerate() {
        let wr = &w[r * cols..(r + 1) * cols];
        for (o, &wv) in row.iter_mut().zip(wr) {
            *o = gv.mul_add(wv, *o);
        }
    }
}

/// The scalar reference of [`float_matmul_nn`] (tests compare the kernels against it bit for bit).
pub fn matmul_nn_ref(g: &[f32], n: usize, k: usize, w: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * cols];
    for t in 0..n {
        matmul_nn_ref_row(
            &g[t * k..(t + 1) * k],
            w,
            cols,
            &mut out[t * cols..(t + 1) * cols],
        );
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::FloatFormat;

    const F32: u8 = 0;
    const F16: u8 = 1;
    const BF16: u8 = 2;

    /// Sixteen values of a row from `p`, lanes past `mask` zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load<const FMT: u8>(p: *const u8, mask: __mmask16) -> __m512 {
        match FMT {
            F32 => _mm512_maskz_loadu_ps(mask, p as *const f32),
            F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16)),
            _ => {
                let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
        }
    }

    /// The reference's lane reduction: `j + j+8`, `j + j+4`, `j + j+2`, `0 + 1`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn reduce(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        _mm_cvtss_f32(s1)
    }

    /// Columns `c0..c1` (`c0` a multiple of 16) of `NT` activation rows (from `t`) × `NR` weight rows, added to
    /// the lane sums in `acc` in the reference's order (the masked tail when `c1` is the row end).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn kernel<const FMT: u8, const NT: usize, const NR: usize, const PF: bool>(
        w: &[&[u8]],
        x: &[f32],
        cols: usize,
        t: usize,
        (c0, c1): (usize, usize),
        state: &mut [[__m512; 4]; TT],
        next: &[&[u8]],
    ) {
        let es = if FMT == F32 { 4 } else { 2 };
        let wp: [*const u8; NR] = std::array::from_fn(|r| w[r].as_ptr());
        // Decode streams each weight once: fetch the next row group while this one is multiplied (rows of
        // a few KB are too short for the hardware prefetcher to ramp up on its own).
        let pf: [*const u8; 4] =
            std::array::from_fn(|r| next.get(r).map_or(std::ptr::null(), |row| row.as_ptr()));
        let xp: [*const f32; NT] = std::array::from_fn(|i| x.as_ptr().add((t + i) * cols));
        let mut acc: [[__m512; NR]; NT] =
            std::array::from_fn(|i| std::array::from_fn(|r| state[i][r]));
        let full = (c1 - c0) / 16;
        for b in 0..full {
            let c = c0 + b * 16;
            let wv: [__m512; NR] = std::array::from_fn(|r| load::<FMT>(wp[r].add(c * es), !0));
            for p in pf {
                if PF && !p.is_null() {
                    _mm_prefetch::<_MM_HINT_T0>(p.add(c * es) as *const i8);
                }
            }
            for i in 0..NT {
                let xv = _mm512_loadu_ps(xp[i].add(c));
                for r in 0..NR {
                    acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
                }
            }
        }
        let rest = c1 - c0 - full * 16;
        if rest > 0 {
            let c = c0 + full * 16;
            let mask: __mmask16 = ((1u32 << rest) - 1) as __mmask16;
            let wv: [__m512; NR] = std::array::from_fn(|r| load::<FMT>(wp[r].add(c * es), mask));
            for i in 0..NT {
                let xv = _mm512_maskz_loadu_ps(mask, xp[i].add(c));
                for r in 0..NR {
                    acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
                }
            }
        }
        for i in 0..NT {
            for r in 0..NR {
                state[i][r] = acc[i][r];
            }
        }
    }

    /// [`kernel`] for a tile of `nt` activation rows (1..=6) and the 1..=4 weight rows of `w`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        format: FloatFormat,
        nt: usize,
        w: &[&[u8]],
        x: &[f32],
        cols: usize,
        t: usize,
        (c0, c1): (usize, usize),
        st: &mut [[__m512; 4]; TT],
        next: &[&[u8]],
    ) {
        macro_rules! by_shape {
            ($fmt:expr, $pf:expr) => {
                match (nt, w.len()) {
                    (1, 1) => kernel::<$fmt, 1, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (1, 2) => kernel::<$fmt, 1, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (1, 3) => kernel::<$fmt, 1, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (1, _) => kernel::<$fmt, 1, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (2, 1) => kernel::<$fmt, 2, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (2, 2) => kernel::<$fmt, 2, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (2, 3) => kernel::<$fmt, 2, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (2, _) => kernel::<$fmt, 2, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (3, 1) => kernel::<$fmt, 3, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (3, 2) => kernel::<$fmt, 3, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (3, 3) => kernel::<$fmt, 3, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (3, _) => kernel::<$fmt, 3, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (4, 1) => kernel::<$fmt, 4, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (4, 2) => kernel::<$fmt, 4, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (4, 3) => kernel::<$fmt, 4, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (4, _) => kernel::<$fmt, 4, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (5, 1) => kernel::<$fmt, 5, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (5, 2) => kernel::<$fmt, 5, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (5, 3) => kernel::<$fmt, 5, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (5, _) => kernel::<$fmt, 5, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (_, 1) => kernel::<$fmt, 6, 1, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (_, 2) => kernel::<$fmt, 6, 2, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (_, 3) => kernel::<$fmt, 6, 3, $pf>(w, x, cols, t, (c0, c1), st, next),
                    (_, _) => kernel::<$fmt, 6, 4, $pf>(w, x, cols, t, (c0, c1), st, next),
                }
            };
        }
        match format {
            FloatFormat::F32 if next.is_empty() => by_shape!(F32, false),
            FloatFormat::F16 if next.is_empty() => by_shape!(F16, false),
            FloatFormat::BF16 if next.is_empty() => by_shape!(BF16, false),
            FloatFormat::F32 => by_shape!(F32, true),
            FloatFormat::F16 => by_shape!(F16, true),
            FloatFormat::BF16 => by_shape!(BF16, true),
        }
    }

    /// Columns per pass in [`panel`]: an activation tile's slice (6 rows × 1,024 f32 = 24 KiB) stays in L1
    /// while every row group of the panel passes over it.
    const PANEL_KC: usize = 1024;

    /// Activation rows `0..n` × every row of `w` (a chunk of weight rows), the results passed to
    /// `out(t, r, values)` (weight rows `r..r + values.len()` of activation row `t`), for batches (more than one tile of activation rows).
    ///
    /// [`block`] takes one group of four weight rows past all the activation tiles, so the activations
    /// (six rows per tile, f32) stream from L2 for every group while the compact weights sit in L1; here each
    /// activation tile (a column block of it) stays in L1 while all the groups stream past it. The lane sums
    /// of the tile's groups (a few KiB, also in L1) carry over between column blocks, so each output keeps
    /// the reference's order.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL present; every row of `w` holds `cols` values in `format`; `x` holds `n` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn panel(
        format: FloatFormat,
        w: &[&[u8]],
        x: &[f32],
        cols: usize,
        n: usize,
        mut out: impl FnMut(usize, usize, &[f32]),
    ) {
        let groups: Vec<&[&[u8]]> = w.chunks(4).collect();
        let mut state = vec![[[_mm512_setzero_ps(); 4]; TT]; groups.len()];
        for t in (0..n).step_by(TT) {
            let nt = TT.min(n - t);
            state.fill([[_mm512_setzero_ps(); 4]; TT]);
            let mut c0 = 0;
            while c0 < cols {
                let c1 = (c0 + PANEL_KC).min(cols);
                for (group, st) in groups.iter().zip(state.iter_mut()) {
                    tile(format, nt, group, x, cols, t, (c0, c1), st, &[]);
                }
                c0 = c1;
            }
            // Sixteen weight rows (four groups) of one activation row at a time, reduced together.
            for (b, quad) in state.chunks(4).enumerate() {
                let count = (w.len() - 16 * b).min(16);
                for i in 0..nt {
                    let mut sums = [_mm512_setzero_ps(); 16];
                    for (g, st) in quad.iter().enumerate() {
                        sums[4 * g..4 * g + 4].copy_from_slice(&st[i]);
                    }
                    let mut vals = [0f32; 16];
                    _mm512_storeu_ps(vals.as_mut_ptr(), reduce16(&sums));
                    out(t + i, 16 * b, &vals[..count]);
                }
            }
        }
    }

    /// [`reduce`] of sixteen vectors at once: lane `v` of the result is `reduce(v[v])`, bit for bit (the same
    /// additions, done on four pairs of half vectors per instruction instead of one).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
        // `j + j+8`: two vectors per add, [a₀..₇ + a₈..₁₅, b₀..₇ + b₈..₁₅].
        let s8: [__m512; 8] = std::array::from_fn(|k| {
            let (a, b) = (v[2 * k], v[2 * k + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // `j + j+4`: four vectors per add, one per 128-bit lane.
        let s4: [__m512; 4] = std::array::from_fn(|k| {
            let (p, q) = (s8[2 * k], s8[2 * k + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(p, q),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(p, q),
            )
        });
        // `j + j+2`: lane k holds [X₀ + X₂, X₁ + X₃, Y₀ + Y₂, Y₁ + Y₃] for X = vector k, Y = vector 4 + k
        // (of the eight in the pair).
        let s2: [__m512; 2] = std::array::from_fn(|k| {
            let (r, s) = (_mm512_castps_pd(s4[2 * k]), _mm512_castps_pd(s4[2 * k + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(r, s)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(r, s)),
            )
        });
        // `0 + 1`: lane k, element m holds vector 4m + k.
        let s1 = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(s2[0], s2[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(s2[0], s2[1]),
        );
        // Back to vector order: vector v = 4m + k sits at 4k + m.
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(idx, s1)
    }

    /// Output columns per task of [`nn_block`] (four vectors).
    pub(super) const NN_COLS: usize = 64;
    /// Rows of `w` per pass of [`nn_block`]: the block's slice of `w` (512 × 64 f32 = 128 KiB) stays in L2
    /// while every tile of `g` rows passes over it.
    const NN_KC: usize = 512;

    /// The masks of a 64-column block's four vectors when `width` of its columns exist.
    fn col_masks(width: usize) -> [__mmask16; 4] {
        std::array::from_fn(|j| {
            let lanes = width.saturating_sub(16 * j).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        })
    }

    /// Bytes of `w` above which [`nn_block`] copies each block of it into a contiguous panel before the
    /// passes over it. A `w` that stays in L2 between tasks is read in place; a bigger one comes from L3 or
    /// memory for each task's block, in strips of 64 values a row apart. Timed alternately in one process
    /// (2 threads, 210 rows), the packed passes took 0.83–0.87× the time of the in-place ones for the down
    /// projection's 576 × 1536 input gradient and an 80-row product with a 49152 × 576 output head, and
    /// 0.97× for 1536 × 576; copying a `w` that stays in L2 cost 1.16–1.2× (192 × 576) or nothing (576 × 576).
    const NN_PACK_BYTES: usize = 2 << 20;

    /// The calling thread's panel buffer (room for [`NN_KC`] × [`NN_COLS`] values) for `f`. Never read
    /// outside the rows and columns a pass has written (the loads are masked), so it is never zeroed.
    fn with_panel<R>(f: impl FnOnce(&mut [f32]) -> R) -> R {
        thread_local! {
            static PANEL: std::cell::RefCell<Vec<f32>> =
                std::cell::RefCell::new(vec![0f32; NN_KC * NN_COLS]);
        }
        PANEL.with(|p| f(&mut p.borrow_mut()))
    }

    /// Rows `t_start..t_end`, columns `c0..c0 + 64` (fewer at the right edge) of `g · w` added to `out`
    /// (`n` × `cols`, row-major), or, when `fresh`, written there (what it held is never read). A `w` of
    /// more than [`NN_PACK_BYTES`] is read through a packed copy of each block.
    ///
    /// # Safety
    /// AVX-512 F present; `g` holds `n` × `k` values, `w` `k` × `cols`; `out` points at `n` × `cols` values
    /// (initialised unless `fresh`) of which no other thread writes these columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn nn_block(
        g: &[f32],
        rows: (usize, usize),
        k: usize,
        w: &[f32],
        cols: usize,
        c0: usize,
        out: crate::matmul::SendPtr,
        fresh: bool,
    ) {
        let width = NN_COLS.min(cols - c0);
        let masks = col_masks(width);
        let outs = (out, cols, c0, fresh);
        if std::mem::size_of_val(w) <= NN_PACK_BYTES {
            nn_passes(g, rows, k, masks, outs, (w, cols, c0), None, |_, _, _| {});
            return;
        }
        with_panel(|panel| {
            // panel[r - r0] = w[r][c0..c0 + width]: one copy of the block, then every pass reads it.
            let fill = |panel: &mut [f32], r0: usize, r1: usize| {
                for (i, prow) in panel.chunks_exact_mut(NN_COLS).take(r1 - r0).enumerate() {
                    let start = (r0 + i) * cols + c0;
                    prow[..width].copy_from_slice(w.get_unchecked(start..start + width));
                }
            };
            nn_passes(g, rows, k, masks, outs, (w, cols, c0), Some(panel), fill)
        })
    }

    /// The passes of [`nn_block`] and [`nt_block`]: for each block of [`NN_KC`] rows `r0..r1` of the
    /// product's right-hand matrix, every tile of activation rows passes over columns `c0..c0 + 64` of them
    /// in `w` (rows `cols` apart) or, given a `panel`, over what `fill(panel, r0, r1)` wrote there (the
    /// block's rows, 64 values apart).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn nn_passes(
        g: &[f32],
        (t_start, t_end): (usize, usize),
        k: usize,
        masks: [__mmask16; 4],
        (out, ocols, oc0, fresh): (crate::matmul::SendPtr, usize, usize, bool),
        (w, cols, c0): (&[f32], usize, usize),
        mut panel: Option<&mut [f32]>,
        mut fill: impl FnMut(&mut [f32], usize, usize),
    ) {
        let mut r0 = 0;
        while r0 < k {
            let r1 = (r0 + NN_KC).min(k);
            let w = match panel.as_deref_mut() {
                Some(p) => {
                    fill(p, r0, r1);
                    (&*p, NN_COLS, 0, r0)
                }
                None => (w, cols, c0, 0),
            };
            let mut t = t_start;
            while t < t_end {
                let nt = TT.min(t_end - t);
                macro_rules! run {
                    ($nt:literal) => {
                        nn_tile::<$nt>(
                            g,
                            k,
                            w,
                            (r0, r1),
                            t,
                            masks,
                            (out, ocols, oc0, fresh && r0 == 0),
                        )
                    };
                }
                match nt {
                    1 => run!(1),
                    2 => run!(2),
                    3 => run!(3),
                    4 => run!(4),
                    5 => run!(5),
                    _ => run!(6),
                }
                t += nt;
            }
            r0 = r1;
        }
    }

    /// Rows `t_start..t_end`, columns `c0..c0 + 64` (fewer at the right edge) of `x · wᵀ` for `w` (`rows` ×
    /// `k`), into `out` (`n` × `rows`, row-major; what it held is never read): [`nn_block`]'s passes over
    /// panels of `wᵀ` (rows `r0..r1` of it, 64 values each) transposed into the thread's panel buffer.
    ///
    /// # Safety
    /// AVX-512 F present; `x` holds `n` × `k` values, `w` `rows` × `k`; `out` points at `n` × `rows` values
    /// (initialised or not) of which no other thread writes these columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn nt_block(
        x: &[f32],
        t_rows: (usize, usize),
        k: usize,
        w: &[f32],
        rows: usize,
        c0: usize,
        out: crate::matmul::SendPtr,
    ) {
        let width = NN_COLS.min(rows - c0);
        let masks = col_masks(width);
        with_panel(|panel| {
            // panel[r - r0][j] = w[c0 + j][r]: the block (width rows of w, r0..r1 of each) transposed.
            let fill = |panel: &mut [f32], r0: usize, r1: usize| {
                let src = w.as_ptr().add(c0 * k + r0);
                let dst = panel.as_mut_ptr();
                super::transpose_into(src, k, (width, r1 - r0), dst, NN_COLS, true)
            };
            let outs = (out, rows, c0, true);
            nn_passes(x, t_rows, k, masks, outs, (w, rows, c0), Some(panel), fill)
        })
    }

    /// Rows `t_rows` of `x · wᵀ`'s columns `c0..c0 + 64` (fewer at `cols`) into `out` (`n` × `cols`; what it
    /// held is never read), from `panel`, that column block of `wᵀ` packed by [`super::NtPanels`]: the
    /// passes of [`nt_block`] without the transposition.
    ///
    /// # Safety
    /// AVX-512 F present; `x` holds `n` × `k` values, `panel` `k` × 64; `out` points at `n` × `cols` values of
    /// which no other thread writes these columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn nt_packed_block(
        x: &[f32],
        t_rows: (usize, usize),
        k: usize,
        panel: &[f32],
        cols: usize,
        c0: usize,
        out: crate::matmul::SendPtr,
    ) {
        let masks = col_masks(NN_COLS.min(cols - c0));
        let outs = (out, cols, c0, true);
        nn_passes(
            x,
            t_rows,
            k,
            masks,
            outs,
            (panel, NN_COLS, 0),
            None,
            |_, _, _| {},
        )
    }

    /// `dst[i][j] = src[j][i]` for a 16 × 16 square: `src` rows `src_stride` values apart, `dst` rows
    /// `dst_stride` apart. Sixteen loads, four rounds of shuffles (pairs of values, 4 × 4 blocks within
    /// 128-bit lanes, then the lanes), sixteen stores.
    ///
    /// # Safety
    /// AVX-512 F present; the 16 rows of 16 values at `src` readable, at `dst` writable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let r: [__m512; 16] = std::array::from_fn(|q| _mm512_loadu_ps(src.add(q * src_stride)));
        // Rows 2m, 2m+1 interleaved: per 128-bit lane, [a0 b0 a1 b1] and [a2 b2 a3 b3].
        let t: [__m512; 16] = std::array::from_fn(|q| {
            let (a, b) = (r[q / 2 * 2], r[q / 2 * 2 + 1]);
            if q % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Four rows' columns within each lane: u[4m + c] holds column c (of the lane's four) of rows
        // 4m..4m+4.
        let u: [__m512; 16] = std::array::from_fn(|q| {
            let (m, c) = (q / 4, q % 4);
            let (a, b) = (t[4 * m + c / 2], t[4 * m + 2 + c / 2]);
            if c % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        // 128-bit lanes, in two rounds: lanes 0 and 2 of each pair of `u`, and 1 and 3, then the same across
        // the halves of the square; column q ends in o[q] (the NT product's test checks every position).
        let v: [__m512; 16] = std::array::from_fn(|q| {
            let (h, e, c) = (q / 8, (q / 4) % 2, q % 4);
            let (a, b) = (u[8 * h + c], u[8 * h + 4 + c]);
            if e == 0 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        let o: [__m512; 16] = std::array::from_fn(|q| {
            let (a, b) = (v[q % 8], v[8 + q % 8]);
            if q < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        for (q, row) in o.iter().enumerate() {
            _mm512_storeu_ps(dst.add(q * dst_stride), *row);
        }
    }

    /// `NT` rows of `g` from `t` × rows `r0..r1` of `w` (columns `wc0..`, rows `wcols` apart, its first row
    /// being row `wr0` of the product's right-hand matrix), added to the
    /// outputs (columns `oc0..`, rows `ocols` apart; they hold the sums over the rows before `r0`): 4 × `NT`
    /// accumulators, `g` broadcast, `w` loaded a row at a time.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn nn_tile<const NT: usize>(
        g: &[f32],
        k: usize,
        (w, wcols, wc0, wr0): (&[f32], usize, usize, usize),
        (r0, r1): (usize, usize),
        t: usize,
        masks: [__mmask16; 4],
        (out, ocols, oc0, fresh): (crate::matmul::SendPtr, usize, usize, bool),
    ) {
        let op = |i: usize, j: usize| out.0.add((t + i) * ocols + oc0 + 16 * j);
        let mut acc: [[__m512; 4]; NT] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                if fresh {
                    _mm512_setzero_ps()
                } else {
                    _mm512_maskz_loadu_ps(masks[j], op(i, j))
                }
            })
        });
        let gp: [*const f32; NT] = std::array::from_fn(|i| g.as_ptr().add((t + i) * k));
        for r in r0..r1 {
            let wp = w.as_ptr().add((r - wr0) * wcols + wc0);
            let wv: [__m512; 4] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(masks[j], wp.add(16 * j)));
            for i in 0..NT {
                let gv = _mm512_set1_ps(*gp[i].add(r));
                for j in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(gv, wv[j], acc[i][j]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for j in 0..4 {
                _mm512_mask_storeu_ps(op(i, j), masks[j], a[j]);
            }
        }
    }

    /// Activation rows per register tile (× 4 weight rows: 24 accumulators).
    pub(super) const TT: usize = 6;

    /// Activation rows `tb..tb + res.len()` (at most one tile, [`TT`]: decode and small batches) × the 1..=4
    /// weight rows of `w` into `res[t - tb][r]`, whole rows at a time; `next`: the rows the caller multiplies
    /// next (prefetched: each row is streamed once). Bigger batches take [`panel`].
    ///
    /// # Safety
    /// AVX-512 F/BW/VL present; `w` holds 1..=4 rows of `cols` values in `format`; `x` holds the rows;
    /// `res.len() <= TT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn block(
        format: FloatFormat,
        w: &[&[u8]],
        next: &[&[u8]],
        x: &[f32],
        cols: usize,
        tb: usize,
        res: &mut [[f32; 4]],
    ) {
        let n = res.len();
        debug_assert!(n <= TT);
        let mut st = [[_mm512_setzero_ps(); 4]; TT];
        tile(format, n, w, x, cols, tb, (0, cols), &mut st, next);
        for (i, out) in res.iter_mut().enumerate() {
            for r in 0..w.len() {
                out[r] = reduce(st[i][r]);
            }
        }
    }
}

/// The same order with AVX2: each of the 16 lanes is a lane of one of two 8-wide accumulators (lanes 0–7 and
/// 8–15), the tail padded with zeros through a stack copy (AVX2 has no 16-bit masked loads).
#[cfg(target_arch = "x86_64")]
mod avx2f {
    use std::arch::x86_64::*;

    use super::FloatFormat;

    const F32: u8 = 0;
    const F16: u8 = 1;
    const BF16: u8 = 2;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const FMT: u8>(p: *const u8) -> __m256 {
        match FMT {
            F32 => _mm256_loadu_ps(p as *const f32),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            )),
        }
    }

    /// The reference's lane reduction of lanes `lo` (0–7) and `hi` (8–15).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce(lo: __m256, hi: __m256) -> f32 {
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        _mm_cvtss_f32(s1)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<const FMT: u8, const NT: usize, const NR: usize>(
        w: &[&[u8]],
        x: &[f32],
        cols: usize,
        t: usize,
        out: &mut [[f32; 4]],
    ) {
        let es = if FMT == F32 { 4 } else { 2 };
        let zero = _mm256_setzero_ps();
        let mut acc = [[(zero, zero); NR]; NT];
        let step =
            |acc: &mut [[(__m256, __m256); NR]; NT], wp: [*const u8; NR], xp: [*const f32; NT]| {
                let wv: [(__m256, __m256); NR] =
                    std::array::from_fn(|r| (load8::<FMT>(wp[r]), load8::<FMT>(wp[r].add(8 * es))));
                for i in 0..NT {
                    let (xl, xh) = (_mm256_loadu_ps(xp[i]), _mm256_loadu_ps(xp[i].add(8)));
                    for r in 0..NR {
                        acc[i][r].0 = _mm256_fmadd_ps(xl, wv[r].0, acc[i][r].0);
                        acc[i][r].1 = _mm256_fmadd_ps(xh, wv[r].1, acc[i][r].1);
                    }
                }
            };
        let full = cols / 16;
        for b in 0..full {
            let c = b * 16;
            step(
                &mut acc,
                std::array::from_fn(|r| w[r].as_ptr().add(c * es)),
                std::array::from_fn(|i| x.as_ptr().add((t + i) * cols + c)),
            );
        }
        let rest = cols - full * 16;
        if rest > 0 {
            let c = full * 16;
            let mut wbuf = [[0u8; 64]; NR];
            let mut xbuf = [[0f32; 16]; NT];
            for r in 0..NR {
                wbuf[r][..rest * es].copy_from_slice(&w[r][c * es..(c + rest) * es]);
            }
            for i in 0..NT {
                xbuf[i][..rest].copy_from_slice(&x[(t + i) * cols + c..(t + i) * cols + c + rest]);
            }
            step(
                &mut acc,
                std::array::from_fn(|r| wbuf[r].as_ptr()),
                std::array::from_fn(|i| xbuf[i].as_ptr()),
            );
        }
        for i in 0..NT {
            for r in 0..NR {
                out[t + i][r] = reduce(acc[i][r].0, acc[i][r].1);
            }
        }
    }

    /// Activation rows `tb..tb + res.len()` × the 1..=4 weight rows of `w` into `res[t - tb][r]`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C present; `w` holds 1..=4 rows of `cols` values in `format`; `x` holds the rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block(
        format: FloatFormat,
        w: &[&[u8]],
        x: &[f32],
        cols: usize,
        tb: usize,
        res: &mut [[f32; 4]],
    ) {
        // `kernel` indexes `out` from the block's first row.
        let x = &x[tb * cols..];
        let n = res.len();
        for r0 in (0..w.len()).step_by(2) {
            let pair = &w[r0..(r0 + 2).min(w.len())];
            let mut part = vec![[0f32; 4]; n];
            let mut t = 0;
            while t < n {
                macro_rules! run {
                    ($fmt:expr) => {
                        match (n - t >= 2, pair.len()) {
                            (true, 2) => kernel::<$fmt, 2, 2>(pair, x, cols, t, &mut part),
                            (true, _) => kernel::<$fmt, 2, 1>(pair, x, cols, t, &mut part),
                            (false, 2) => kernel::<$fmt, 1, 2>(pair, x, cols, t, &mut part),
                            (false, _) => kernel::<$fmt, 1, 1>(pair, x, cols, t, &mut part),
                        }
                    };
                }
                match format {
                    FloatFormat::F32 => run!(F32),
                    FloatFormat::F16 => run!(F16),
                    FloatFormat::BF16 => run!(BF16),
                }
                t += 2.min(n - t);
            }
            for (dst, src) in res.iter_mut().zip(&part) {
                dst[r0..r0 + pair.len()].copy_from_slice(&src[..pair.len()]);
            }
        }
    }
}
