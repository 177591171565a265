//! Building blocks of the decoder. Model code never branches on the tensor type: [`Linear`] hides whether
//! its weight is quantized (our `baimo-kernels`, activations quantized to Q8 blocks as ggml does, weights
//! read in place from the file's memory map) or float (candle).

use baimo_formats::SharedBytes;
use baimo_kernels::{
    dequantize_row, float_matmul, quant_matmul, quant_matmul_many, quant_matmul_packed,
    BlockFormat, FloatFormat, PackedWeights, QuantMatrix,
};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use crate::weights::{Weight, WeightSource};
use crate::{ModelError, Result};

/// How a linear layer's weight is stored and multiplied.
#[derive(Clone)]
enum LinearWeight {
    /// Float weights (and any quantized type our kernels lack) through candle's `QMatMul`.
    Candle(QMatMul),
    /// GGUF block formats, multiplied in place by our kernels with ggml-identical activation quantization.
    Blocks {
        format: BlockFormat,
        data: SharedBytes,
        /// The weights unpacked for the batched kernels, made on the first batched product when
        /// [`set_pack_weights`] is on (shared by clones of the layer).
        packed: PackedCache,
    },
    /// Float matrices read in place by our float kernel (see [`Weight::FloatRows`]).
    FloatRows {
        format: FloatFormat,
        data: SharedBytes,
    },
}

type PackedCache = std::sync::Arc<std::sync::OnceLock<Option<PackedWeights>>>;

static PACK_WEIGHTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static PACKED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Keep block-quantized weights unpacked for the batched kernels once a layer first multiplies a batch (a
/// server's decode steps): about 1.25–1.5 bytes per weight more memory for no repacking per step. Off by
/// default (a single stream never uses them); results are the same bits either way.
pub fn set_pack_weights(on: bool) {
    PACK_WEIGHTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Bytes held by packed weights so far (see [`set_pack_weights`]).
pub fn packed_weight_bytes() -> usize {
    PACKED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The packed form of a block matrix for a product over `n` activation rows, made on first use; `None` when
/// packing is off, not worth it for `n`, or unavailable on this CPU.
fn packed_for<'a>(
    cache: &'a PackedCache,
    format: BlockFormat,
    data: &[u8],
    rows: usize,
    cols: usize,
    n: usize,
) -> Option<&'a PackedWeights> {
    if !PACK_WEIGHTS.load(std::sync::atomic::Ordering::Relaxed) || !PackedWeights::used_for(n) {
        return None;
    }
    cache
        .get_or_init(|| {
            let p = PackedWeights::new(format, data, rows, cols)?;
            PACKED_BYTES.fetch_add(p.bytes(), std::sync::atomic::Ordering::Relaxed);
            Some(p)
        })
        .as_ref()
}

static DROPOUT_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Seeds the dropout masks of LoRA training (each mask then draws from the next seed in turn), so a training
/// run is reproducible.
pub fn set_dropout_seed(seed: u64) {
    DROPOUT_SEED.store(seed, std::sync::atomic::Ordering::SeqCst);
}

/// The seed the next dropout mask will use (saved in training checkpoints).
pub fn dropout_seed() -> u64 {
    DROPOUT_SEED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Inverted dropout: zeroes each element with probability `p`, scales the rest by 1/(1-p).
fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    if p >= 1.0 {
        return Ok(x.zeros_like()?);
    }
    let seed = DROPOUT_SEED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.gen::<f32>() < p { 0.0 } else { scale })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// `x Wᵀ` for small float `W`; with `invariant`, in fixed row tiles (see [`Linear::forward_invariant`]).
fn tiled_matmul_t(x: &Tensor, w: &Tensor, invariant: bool) -> Result<Tensor> {
    let wt = w.t()?;
    if !invariant {
        return Ok(x.matmul(&wt)?);
    }
    in_row_tiles(x, |tile| Ok(tile.matmul(&wt)?))
}

/// `x Wᵀ` for rows `x` (row-major, `W`'s width) by our float kernel on `W`'s f32 storage in place, where that
/// kernel is fast ([`baimo_kernels::float_kernels_fast`]); `None` otherwise (use candle).
fn kernel_matmul_t(w: &Tensor, x: &[f32]) -> Option<Result<Vec<f32>>> {
    if !baimo_kernels::float_kernels_fast() || w.rank() != 2 || w.dtype() != candle_core::DType::F32
    {
        return None;
    }
    let (out, inp) = w.dims2().ok()?;
    let (storage, layout) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return None;
    };
    let data = &data[a..b];
    // SAFETY: reading an f32 slice as its bytes (u8 has no alignment requirement).
    let bytes = unsafe {
        std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
    };
    Some(
        float_matmul(FloatFormat::F32, bytes, out, inp, x)
            .map_err(|e| ModelError::Kernel(e.to_string())),
    )
}

/// The values of a custom op's contiguous f32 input (the frozen products make their input contiguous).
pub fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(data), Some((a, b))) => Ok(&data[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: activations must be contiguous f32"
        ))),
    }
}

/// The gradient at a frozen product's input, `grad_y · W` for `W` (out, in), plus `extra` (another term of
/// the same gradient, (rows, in) values) when given: on AVX-512 CPUs our kernel multiplies `W` as stored (no
/// transposed copy; candle's GEMM runs AVX2 code) and adds into `extra` in place, else candle's matmul.
fn input_grad(grad_y: &Tensor, w: &Tensor, extra: Option<Vec<f32>>) -> candle_core::Result<Tensor> {
    let (n, _) = grad_y.dims2()?;
    let (_, inp) = w.dims2()?;
    if !baimo_kernels::float_kernels_fast()
        || grad_y.dtype() != DType::F32
        || w.dtype() != DType::F32
    {
        let y = grad_y.matmul(w)?;
        return match extra {
            Some(e) => y + Tensor::from_vec(e, (n, inp), &Device::Cpu)?,
            None => Ok(y),
        };
    }
    let out = grad_y.dim(1)?;
    let g = grad_y.contiguous()?;
    let w = w.contiguous()?;
    let mut y = extra.unwrap_or_else(|| vec![0f32; n * inp]);
    let (gv, wv) = (
        F32View::of(&g, "input-grad")?,
        F32View::of(&w, "input-grad")?,
    );
    baimo_kernels::float_matmul_nn_add(&mut y, gv.values(), n, out, wv.values(), inp)
        .map_err(kernel_err)?;
    Tensor::from_vec(y, (n, inp), &Device::Cpu)
}

/// `x Wᵀ` with `W` (out, in) a constant: differentiable with respect to `x` only. candle's matmul backward
/// computes both operands' gradients, and for a frozen base weight that is a third of a training step's GEMM
/// work plus a weight-sized gradient allocated and summed per sequence, all thrown away.
struct FrozenMatmul(Tensor);

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let xs = contiguous_f32(storage, layout, self.name())?;
        let (out, inp) = self.0.dims2()?;
        let dims = layout.dims();
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        if dims.last() == Some(&inp) && baimo_kernels::float_kernels_fast() {
            // Training's forward: the NN kernel over panels of Wᵀ (faster than the dot-product kernel
            // serving uses, which keeps its bits whatever the batch; training needs no such invariance).
            let w = self.0.contiguous()?;
            let view = F32View::of(&w, self.name())?;
            let y = baimo_kernels::float_matmul_nt(xs, xs.len() / inp, inp, view.values(), out)
                .map_err(kernel_err)?;
            return Ok((candle_core::CpuStorage::F32(y), shape.into()));
        }
        let x = Tensor::from_slice(xs, layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.0.t()?)?;
        Ok((
            candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?),
            shape.into(),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        input_grad(grad_y, &self.0, None).map(Some)
    }
}

/// `x Wᵀ` for a frozen weight kept as the file stores it (quantized blocks or F16/BF16 rows): the forward is
/// the serving kernel itself, so training sees exactly the products serving computes; the backward multiplies
/// by W dequantized for that call only (QLoRA, Dettmers et al. 2023: no f32 copy of the base is kept).
struct FrozenStored {
    weight: LinearWeight,
    out: usize,
    inp: usize,
}

impl FrozenStored {
    fn dequantized(&self) -> Result<Tensor> {
        self.weight.to_f32(self.out, self.inp)
    }
}

impl LinearWeight {
    /// The (out, in) weight as an f32 tensor on the CPU: dequantized, or converted from F16/BF16, when stored
    /// so (a copy); a dense f32 weight as it is.
    fn to_f32(&self, out: usize, inp: usize) -> Result<Tensor> {
        use rayon::prelude::*;
        let rows: Vec<f32> = match self {
            LinearWeight::Blocks { format, data, .. } => data
                .par_chunks_exact(data.len() / out.max(1))
                .flat_map_iter(|r| dequantize_row(*format, r))
                .collect(),
            LinearWeight::FloatRows { format, data } => data
                .par_chunks_exact(inp * format.bytes())
                .flat_map_iter(|r| format.row_values(r))
                .collect(),
            LinearWeight::Candle(QMatMul::QTensor(q)) => {
                return Ok(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
            }
            LinearWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                return Ok(t.to_dtype(DType::F32)?)
            }
        };
        Ok(Tensor::from_vec(rows, (out, inp), &Device::Cpu)?)
    }
}

impl candle_core::CustomOp1 for FrozenStored {
    fn name(&self) -> &'static str {
        "frozen-stored-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let y = match &self.weight {
            LinearWeight::Blocks { format, data, .. } => {
                quant_matmul(*format, data, self.out, self.inp, x)
            }
            LinearWeight::FloatRows { format, data } => {
                float_matmul(*format, data, self.out, self.inp, x)
            }
            LinearWeight::Candle(_) => {
                return Err(candle_core::Error::Msg(
                    "frozen-stored-matmul: a candle weight".into(),
                ))
            }
        }
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let rows = x.len() / self.inp.max(1);
        Ok((candle_core::CpuStorage::F32(y), (rows, self.out).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self
            .dequantized()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        input_grad(grad_y, &w, None).map(Some)
    }
}

/// A frozen base product for training: a float weight kept as an f32 tensor ([`FrozenMatmul`]) or one kept
/// as the file stores it ([`FrozenStored`]).
enum Frozen {
    Dense(FrozenMatmul),
    Stored(FrozenStored),
}

impl Frozen {
    /// The weight as an f32 (out, in) tensor (dequantized for this call when stored quantized).
    fn weight_f32(&self) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Dense(op) => Ok(op.0.clone()),
            Frozen::Stored(op) => op
                .dequantized()
                .map_err(|e| candle_core::Error::Msg(e.to_string())),
        }
    }
}

impl candle_core::CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        match self {
            Frozen::Dense(op) => op.name(),
            Frozen::Stored(op) => op.name(),
        }
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        match self {
            Frozen::Dense(op) => op.cpu_fwd(storage, layout),
            Frozen::Stored(op) => op.cpu_fwd(storage, layout),
        }
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self {
            Frozen::Dense(op) => op.bwd(x, y, grad_y),
            Frozen::Stored(op) => op.bwd(x, y, grad_y),
        }
    }
}

/// A contiguous CPU f32 tensor's values, borrowed from its storage (no copy): `G` is the storage's read guard.
pub struct F32View<G> {
    guard: G,
    range: (usize, usize),
}

impl F32View<()> {
    /// The values of `t`, which must be a contiguous f32 tensor on the CPU.
    pub fn of<'a>(
        t: &'a Tensor,
        op: &str,
    ) -> candle_core::Result<F32View<impl std::ops::Deref<Target = candle_core::Storage> + 'a>>
    {
        let (guard, layout) = t.storage_and_layout();
        match (&*guard, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_)), Some(range)) => {
                Ok(F32View { guard, range })
            }
            _ => Err(candle_core::Error::Msg(format!(
                "{op}: a contiguous f32 CPU tensor expected"
            ))),
        }
    }
}

impl<G: std::ops::Deref<Target = candle_core::Storage>> F32View<G> {
    pub fn values(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(d)) => {
                &d[self.range.0..self.range.1]
            }
            _ => &[],
        }
    }
}

/// An f32 slice as its bytes, for the float kernels' `FloatFormat::F32` weights.
fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: reading an f32 slice as its bytes (u8 has no alignment requirement).
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// `m` (rows × cols, row-major) transposed ([`baimo_kernels::transpose`]).
pub(crate) fn transposed(m: &[f32], rows: usize, cols: usize) -> candle_core::Result<Vec<f32>> {
    baimo_kernels::transpose(m, rows, cols).map_err(kernel_err)
}

pub(crate) fn kernel_err(e: baimo_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// `g · M` for `g` (n × k) and `M` (k × cols), row-major: our NN kernel where the float kernels are fast,
/// else candle's matmul.
pub(crate) fn matmul_nn(
    g: &[f32],
    n: usize,
    k: usize,
    m: &[f32],
    cols: usize,
) -> candle_core::Result<Vec<f32>> {
    if baimo_kernels::float_kernels_fast() {
        return baimo_kernels::float_matmul_nn(g, n, k, m, cols).map_err(kernel_err);
    }
    let g = Tensor::from_slice(g, (n, k), &Device::Cpu)?;
    let m = Tensor::from_slice(m, (k, cols), &Device::Cpu)?;
    g.matmul(&m)?.flatten_all()?.to_vec1::<f32>()
}

/// A training projection with its LoRA update as one autograd node: `y = x Wᵀ + bias + s·(x Aᵀ) Bᵀ`, inputs
/// `x`, `A` (r, in) and `B` (out, r), gradients for all three (W and the bias are frozen). Left to candle, the
/// same product is seven nodes (the base, two transposes, two products, the scale, the sum), and candle's
/// backward allocates, zeroes and adds a gradient buffer for each node's inputs, most of them
/// (tokens × out): on a small model that bookkeeping cost more than the arithmetic. Where our float kernels
/// are fast ([`baimo_kernels::float_kernels_fast`]) the adapter's small products run on them too, on the
/// tensors' storage in place and on every thread (candle's GEMM runs AVX2 code here, and the copies in and
/// out of tensors ran on one thread).
struct LoraLinearOp {
    base: Frozen,
    bias: Option<Vec<f32>>,
    scale: f64,
    /// `x Aᵀ` from the forward, for the backward (which runs once per forward).
    xa: std::sync::Mutex<Option<Vec<f32>>>,
}

impl LoraLinearOp {
    /// `x Aᵀ` ((rows × r)) for `x` (rows × in) and `A` (r × in) (the dot-product kernel: r outputs a row).
    fn xa(x: &[f32], a: &[f32], r: usize, inp: usize) -> candle_core::Result<Vec<f32>> {
        if baimo_kernels::float_kernels_fast() {
            return float_matmul(FloatFormat::F32, f32_bytes(a), r, inp, x).map_err(kernel_err);
        }
        let rows = x.len() / inp.max(1);
        let x = Tensor::from_slice(x, (rows, inp), &Device::Cpu)?;
        let a = Tensor::from_slice(a, (r, inp), &Device::Cpu)?;
        x.matmul(&a.t()?)?.flatten_all()?.to_vec1::<f32>()
    }
}

impl candle_core::CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        as_: &candle_core::CpuStorage,
        al: &candle_core::Layout,
        bs: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CustomOp1;
        let (ys, shape) = self.base.cpu_fwd(xs, xl)?;
        let candle_core::CpuStorage::F32(mut y) = ys else {
            return Err(candle_core::Error::Msg(
                "lora-linear: f32 base product expected".into(),
            ));
        };
        let (x, a, b) = (
            contiguous_f32(xs, xl, self.name())?,
            contiguous_f32(as_, al, self.name())?,
            contiguous_f32(bs, bl, self.name())?,
        );
        let (r, inp) = al.shape().dims2()?;
        let (out, rb) = bl.shape().dims2()?;
        if rb != r || xl.dims().last() != Some(&inp) {
            return Err(candle_core::Error::Msg(format!(
                "lora-linear: x {:?}, A {:?}, B {:?}",
                xl.dims(),
                al.dims(),
                bl.dims()
            )));
        }
        let xa = Self::xa(x, a, r, inp)?;
        let n = xa.len() / r.max(1);
        // + (s·x Aᵀ) Bᵀ, added onto the base product in place (k = r: a short sum per output).
        let xas: Vec<f32> = xa.iter().map(|v| v * self.scale as f32).collect();
        let bt = transposed(b, out, r)?;
        if baimo_kernels::float_kernels_fast() {
            baimo_kernels::float_matmul_nn_add(&mut y, &xas, n, r, &bt, out).map_err(kernel_err)?;
        } else {
            let lora = matmul_nn(&xas, n, r, &bt, out)?;
            y.iter_mut().zip(&lora).for_each(|(v, l)| *v += l);
        }
        if let Ok(mut slot) = self.xa.lock() {
            *slot = Some(xa);
        }
        if let Some(bias) = &self.bias {
            use rayon::prelude::*;
            y.par_chunks_mut(out)
                .with_min_len(16)
                .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        }
        Ok((candle_core::CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, g) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            g.contiguous()?,
        );
        let (r, inp) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let n = g.elem_count() / out.max(1);
        let name = self.name();
        let s = self.scale as f32;
        // The views (read locks on the tensors' storage) end before `input_grad` reads `g` again.
        let (grad_a, grad_b, lora) = {
            let (xv, av, bv, gv) = (
                F32View::of(&x, name)?,
                F32View::of(&a, name)?,
                F32View::of(&b, name)?,
                F32View::of(&g, name)?,
            );
            let (xv, av, bv, gv) = (xv.values(), av.values(), bv.values(), gv.values());
            // The gradient at x Aᵀ, before the scale: g B, (n × r), as x Aᵀ is made (Bᵀ's r rows as the
            // "weight rows": an output of r columns is a poor fit for the NN kernel's 64-column tiles).
            let mut gb = Self::xa(gv, &transposed(bv, out, r)?, r, out)?;
            let cached = self.xa.lock().ok().and_then(|mut slot| slot.take());
            let xa = match cached {
                Some(xa) => xa,
                None => Self::xa(xv, av, r, inp)?,
            };
            // dA = s·(g B)ᵀ x, (r × in).
            let mut grad_a = matmul_nn(&transposed(&gb, n, r)?, r, n, xv, inp)?;
            grad_a.iter_mut().for_each(|v| *v *= s);
            // dB = s·gᵀ (x Aᵀ) = s·((x Aᵀ)ᵀ g)ᵀ, (out × r).
            let grad_bt = matmul_nn(&transposed(&xa, n, r)?, r, n, gv, out)?;
            let mut grad_b = transposed(&grad_bt, r, out)?;
            grad_b.iter_mut().for_each(|v| *v *= s);
            // The adapter's term of dx, s·(g B) A; the base's product is added onto it in place.
            gb.iter_mut().for_each(|v| *v *= s);
            (grad_a, grad_b, matmul_nn(&gb, n, r, av, inp)?)
        };
        let grad_x = input_grad(&g, &self.base.weight_f32()?, Some(lora))?;
        let dev = &Device::Cpu;
        Ok((
            Some(grad_x),
            Some(Tensor::from_vec(grad_a, (r, inp), dev)?),
            Some(Tensor::from_vec(grad_b, (out, r), dev)?),
        ))
    }
}

/// `scale · B (A x)` for the rows of `x`. Row by row the product is the same whatever the batch with
/// `invariant`: (x Aᵀ) and its product with Bᵀ are small GEMMs per row tile.
fn lora_update(x: &Tensor, l: &crate::lora::LoraDelta, invariant: bool) -> Result<Tensor> {
    let xa = tiled_matmul_t(x, &l.a, invariant)?;
    Ok((tiled_matmul_t(&xa, &l.b, invariant)? * l.scale)?)
}

/// Applies `f` to `x` in tiles of [`INVARIANT_TILE`] rows (the last one zero-padded) and joins the results:
/// every row then meets a kernel of one fixed shape, whatever the number of rows.
fn in_row_tiles(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let tiles = rows.div_ceil(INVARIANT_TILE);
    let pad = tiles * INVARIANT_TILE - rows;
    let padded = if pad == 0 {
        x.clone()
    } else {
        Tensor::cat(
            &[x, &Tensor::zeros((pad, x.dim(1)?), x.dtype(), x.device())?],
            0,
        )?
    };
    let parts = (0..tiles)
        .map(|t| f(&padded.narrow(0, t * INVARIANT_TILE, INVARIANT_TILE)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?.narrow(0, 0, rows)?)
}

/// Rows per float GEMM call in [`Linear::forward_invariant`].
pub const INVARIANT_TILE: usize = 8;

/// `y = x Wᵀ + b` with W of shape (out, in).
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    /// An attached LoRA update, applied on top of the frozen weight.
    lora: Option<crate::lora::LoraDelta>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let w = src.require(&name)?;
        check_shape(&name, &w.dims(), &[out, inp])?;
        let weight = match w {
            Weight::Blocks { format, data, .. } => LinearWeight::Blocks {
                format,
                data,
                packed: PackedCache::default(),
            },
            Weight::FloatRows { format, data, .. } => LinearWeight::FloatRows { format, data },
            Weight::Quant(q) => LinearWeight::Candle(QMatMul::from_arc(std::sync::Arc::new(q))?),
            Weight::Float(t) => LinearWeight::Candle(QMatMul::Tensor(t)),
        };
        let bias = if bias {
            Some(load_vector(src, &format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
            out_features: out,
            in_features: inp,
        })
    }

    /// `x`: (tokens, in) → (tokens, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, false)
    }

    /// [`Linear::forward`] of several layers over the same input (a layer's q, k and v; gate and up), with the
    /// same results. Block-quantized weights share one kernel call ([`quant_matmul_many`]): for a decoded
    /// token the activations are quantized once and the threads meet once for all of them.
    pub fn forward_many(ls: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        Linear::forward_many_mode(ls, x, false)
    }

    /// [`Linear::forward_many`] or, with `invariant`, [`Linear::forward_invariant`] of each layer.
    fn forward_many_mode(ls: &[&Linear], x: &Tensor, invariant: bool) -> Result<Vec<Tensor>> {
        let cols = x.dim(1)?;
        let n = x.dim(0)?;
        let mats: Option<Vec<QuantMatrix>> = ls
            .iter()
            .map(|l| match &l.weight {
                LinearWeight::Blocks {
                    format,
                    data,
                    packed,
                } if l.in_features == cols => Some(QuantMatrix {
                    format: *format,
                    data,
                    rows: l.out_features,
                    packed: packed_for(packed, *format, data, l.out_features, cols, n),
                }),
                _ => None,
            })
            .collect();
        let Some(mats) = mats else {
            return ls.iter().map(|l| l.forward_mode(x, invariant)).collect();
        };
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ys =
            quant_matmul_many(&mats, cols, &xs).map_err(|e| ModelError::Kernel(e.to_string()))?;
        ls.iter()
            .zip(ys)
            .map(|(l, y)| {
                let y = Tensor::from_vec(y, (n, l.out_features), x.device())?;
                l.add_bias_and_lora(x, y, invariant)
            })
            .collect()
    }

    /// Like [`Linear::forward`], but each row's result is bit-identical whatever the other rows are (the
    /// served path's batch invariance). Our block kernels are so by construction; candle's float GEMM and
    /// K-quant matmul choose their paths from the matrix shape, so those weights are multiplied in fixed tiles
    /// of [`INVARIANT_TILE`] rows (the last tile zero-padded): every row always meets the same kernel.
    pub fn forward_invariant(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, true)
    }

    fn forward_mode(&self, x: &Tensor, invariant: bool) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Candle(w) if invariant => in_row_tiles(x, |t| Ok(w.forward(t)?))?,
            LinearWeight::Candle(w) => w.forward(x)?,
            LinearWeight::Blocks {
                format,
                data,
                packed,
            } => {
                let n = x.dim(0)?;
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let (rows, cols) = (self.out_features, self.in_features);
                let y = match packed_for(packed, *format, data, rows, cols, n) {
                    Some(p) => quant_matmul_packed(p, data, &xs),
                    None => quant_matmul(*format, data, rows, cols, &xs),
                }
                .map_err(|e| ModelError::Kernel(e.to_string()))?;
                Tensor::from_vec(y, (n, self.out_features), x.device())?
            }
            LinearWeight::FloatRows { format, data } => {
                let n = x.dim(0)?;
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let y = float_matmul(*format, data, self.out_features, self.in_features, &xs)
                    .map_err(|e| ModelError::Kernel(e.to_string()))?;
                Tensor::from_vec(y, (n, self.out_features), x.device())?
            }
        };
        self.add_bias_and_lora(x, y, invariant)
    }

    /// `y` (the base product of `x`) plus the bias and the attached LoRA update (with its training dropout).
    fn add_bias_and_lora(&self, x: &Tensor, y: Tensor, invariant: bool) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match &self.lora {
            Some(l) => {
                let x = if l.dropout > 0.0 {
                    dropout(x, l.dropout)?
                } else {
                    x.clone()
                };
                (y + lora_update(&x, l, invariant)?)?
            }
            None => y,
        })
    }

    /// The training pass: like [`Linear::forward`], but a float weight is multiplied as a frozen constant
    /// ([`FrozenMatmul`], [`FrozenStored`]), so backpropagation computes the input's gradient only. Without
    /// dropout the product and its LoRA update are one node ([`LoraLinearOp`]); with dropout the update stays
    /// ordinary differentiable ops.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.rank() != 2 {
            return self.forward_mode(x, false);
        }
        let base = match &self.weight {
            LinearWeight::Candle(QMatMul::Tensor(w)) => Frozen::Dense(FrozenMatmul(w.clone())),
            LinearWeight::Blocks { .. } | LinearWeight::FloatRows { .. } => {
                Frozen::Stored(FrozenStored {
                    weight: self.weight.clone(),
                    out: self.out_features,
                    inp: self.in_features,
                })
            }
            _ => return self.forward_mode(x, false),
        };
        let x = x.contiguous()?;
        match &self.lora {
            // Without dropout the adapter sees x itself, and the whole projection is one node.
            Some(l) if l.dropout == 0.0 && l.a.dtype() == DType::F32 => {
                let bias = match &self.bias {
                    Some(b) => Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                    None => None,
                };
                let op = LoraLinearOp {
                    base,
                    bias,
                    scale: l.scale,
                    xa: std::sync::Mutex::new(None),
                };
                Ok(x.apply_op3(&l.a, &l.b, op)?)
            }
            _ => {
                let y = x.apply_op1(base)?;
                self.add_bias_and_lora(&x, y, false)
            }
        }
    }

    /// The batched serving pass: [`Linear::forward_invariant`] over every row, plus, for each `(first row,
    /// rows, update)` in `per_rows` (ascending, disjoint), that LoRA update on those rows only. Rows of
    /// different adapters, and rows of none, so share the base product.
    pub(crate) fn forward_rows(
        &self,
        x: &Tensor,
        per_rows: &[(usize, usize, &crate::lora::LoraDelta)],
    ) -> Result<Tensor> {
        self.add_rows_lora(x, self.forward_mode(x, true)?, per_rows)
    }

    /// [`Linear::forward_rows`] of several layers over the same input (each with its own row updates), the
    /// base products in one kernel call as in [`Linear::forward_many`].
    pub(crate) fn forward_rows_many(
        ls: &[&Linear],
        x: &Tensor,
        per_rows: &[Vec<(usize, usize, &crate::lora::LoraDelta)>],
    ) -> Result<Vec<Tensor>> {
        let ys = Linear::forward_many_mode(ls, x, true)?;
        ls.iter()
            .zip(ys)
            .zip(per_rows)
            .map(|((l, y), rows)| l.add_rows_lora(x, y, rows))
            .collect()
    }

    /// `y` (the invariant base product of `x`) plus each sequence's own LoRA update on its rows.
    fn add_rows_lora(
        &self,
        x: &Tensor,
        y: Tensor,
        per_rows: &[(usize, usize, &crate::lora::LoraDelta)],
    ) -> Result<Tensor> {
        if per_rows.is_empty() {
            return Ok(y);
        }
        if let Some(y) = self.add_lora_rows_by_kernel(x, &y, per_rows) {
            return y;
        }
        let rows = y.dim(0)?;
        let mut parts = Vec::with_capacity(2 * per_rows.len() + 1);
        let mut at = 0;
        for &(start, n, d) in per_rows {
            if start > at {
                parts.push(y.narrow(0, at, start - at)?);
            }
            let xs = x.narrow(0, start, n)?;
            parts.push((y.narrow(0, start, n)? + lora_update(&xs, d, true)?)?);
            at = start + n;
        }
        if at < rows {
            parts.push(y.narrow(0, at, rows - at)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// [`Linear::forward_rows`]'s updates with our float kernel: the rows of each adapter gathered into one
    /// product pair (whatever the number of its sequences in the batch), each row's result independent of
    /// the others. `None` where the kernel is not fast or the matrices are not plain f32.
    fn add_lora_rows_by_kernel(
        &self,
        x: &Tensor,
        y: &Tensor,
        per_rows: &[(usize, usize, &crate::lora::LoraDelta)],
    ) -> Option<Result<Tensor>> {
        if !baimo_kernels::float_kernels_fast() {
            return None;
        }
        let run = || -> Result<Option<Tensor>> {
            let (cols, out) = (self.in_features, self.out_features);
            let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut ys = y.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut groups: Vec<(&crate::lora::LoraDelta, Vec<usize>)> = Vec::new();
            for &(start, n, d) in per_rows {
                match groups.iter_mut().find(|(g, _)| std::ptr::eq(*g, d)) {
                    Some((_, rows)) => rows.extend(start..start + n),
                    None => groups.push((d, (start..start + n).collect())),
                }
            }
            for (d, rows) in groups {
                let xg: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| xs[r * cols..(r + 1) * cols].iter().copied())
                    .collect();
                let Some(xa) = kernel_matmul_t(&d.a, &xg).transpose()? else {
                    return Ok(None);
                };
                let Some(delta) = kernel_matmul_t(&d.b, &xa).transpose()? else {
                    return Ok(None);
                };
                let scale = d.scale as f32;
                for (i, &r) in rows.iter().enumerate() {
                    for (yv, dv) in ys[r * out..(r + 1) * out]
                        .iter_mut()
                        .zip(&delta[i * out..(i + 1) * out])
                    {
                        *yv += dv * scale;
                    }
                }
            }
            Ok(Some(Tensor::from_vec(ys, y.shape(), y.device())?))
        };
        run().transpose()
    }

    /// Checks a LoRA update's shapes against this layer.
    pub(crate) fn check_lora(&self, l: &crate::lora::LoraDelta, name: &str) -> Result<()> {
        let (r, inp) = l.a.dims2()?;
        let (out, rb) = l.b.dims2()?;
        if inp != self.in_features || out != self.out_features || r != rb {
            return Err(ModelError::BadShape {
                name: format!("{name} LoRA A/B"),
                expected: vec![self.out_features, self.in_features],
                actual: vec![out, inp],
            });
        }
        Ok(())
    }

    /// Attaches (or with `None` removes) a LoRA update; checks its shapes against the layer.
    pub fn set_lora(&mut self, lora: Option<crate::lora::LoraDelta>, name: &str) -> Result<()> {
        if let Some(l) = &lora {
            self.check_lora(l, name)?;
        }
        self.lora = lora;
        Ok(())
    }

    /// This layer with its weight as a dense f32 tensor on `dev` (dequantized, or converted from F16/BF16,
    /// when the file stores it so), and its bias and attached LoRA update moved there too: the form candle's
    /// own operations multiply on any device ([`crate::Transformer::to_device`]).
    pub fn to_dense(&self, dev: &Device) -> Result<Linear> {
        let w = self.weight.to_f32(self.out_features, self.in_features)?;
        Ok(Linear {
            weight: LinearWeight::Candle(QMatMul::Tensor(w.to_device(dev)?)),
            bias: match &self.bias {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_device(dev)?),
                None => None,
            },
            lora: match &self.lora {
                Some(l) => Some(l.to_device(dev)?),
                None => None,
            },
            out_features: self.out_features,
            in_features: self.in_features,
        })
    }

    /// A float weight (differentiable with respect to the input).
    pub fn is_float(&self) -> bool {
        matches!(self.weight, LinearWeight::Candle(QMatMul::Tensor(_)))
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }
}

fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(ModelError::BadShape {
            name: name.into(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// A 1-D float weight (norm scale, bias).
pub fn load_vector(src: &dyn WeightSource, name: &str, len: usize) -> Result<Tensor> {
    let t = src.require(name)?.into_f32()?;
    let t = t.flatten_all()?;
    check_shape(name, t.dims(), &[len])?;
    Ok(t)
}

/// Root-mean-square layer norm (Zhang & Sennrich 2019), computed in f32 like HF `LlamaRMSNorm`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(src: &dyn WeightSource, name: &str, len: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: load_vector(src, name, len)?,
            eps,
        })
    }
    /// Normalizes over the last dimension, rounding as ggml's `rms_norm` and the `mul` by the weight that
    /// follows it do: each square rounded to f32 and summed in f64, the mean rounded to f32, then
    /// `x · (1 / sqrt(mean + eps)) · weight` in f32 ([`RmsNormOp`]). The textbook `x / sqrt(…)` differs by an ulp
    /// in about a third of the values, enough to move some of the int8 roundings of the activation
    /// quantization that follows, and so llama.cpp's greedy tokens at near-ties.
    ///
    /// Off the CPU, and for other dtypes, it is [`RmsNorm::forward_candle`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != DType::F32 || self.weight.dtype() != DType::F32 || !x.device().is_cpu() {
            return self.forward_candle(x);
        }
        let op = RmsNormOp {
            eps: self.eps as f32,
        };
        Ok(x.contiguous()?.apply_op2(&self.weight, op)?)
    }

    /// The textbook `x / sqrt(mean(x²) + eps) · weight` in candle's operations (any device, differentiable).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_mul(&(ms + self.eps)?.sqrt()?.recip()?)?;
        Ok(x.broadcast_mul(&self.weight)?)
    }

    /// The same norm with its weight on `dev`.
    pub fn to_device(&self, dev: &Device) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.weight.to_device(dev)?,
            eps: self.eps,
        })
    }
}

/// RMSNorm times its weight in one pass over each row (see [`RmsNorm::forward`]); the input's gradient is the
/// usual one, also one pass per row.
struct RmsNormOp {
    eps: f32,
}

impl candle_core::CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-ggml"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let n = w.len();
        if n == 0 || xl.dims().last() != Some(&n) {
            return Err(candle_core::Error::Msg(format!(
                "rms-norm: rows of {:?} against a weight of {n}",
                xl.dims()
            )));
        }
        use rayon::prelude::*;
        let mut y = vec![0f32; x.len()];
        let eps = self.eps;
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .with_min_len(64)
            .for_each(|(yr, xr)| {
                let sum: f64 = xr.iter().map(|&v| f64::from(v * v)).sum();
                let mean = (sum / n as f64) as f32;
                let scale = 1.0 / (mean + eps).sqrt();
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                    *o = (v * scale) * g;
                }
            });
        Ok((candle_core::CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = x·r·w with r = (mean(x²) + eps)^-1/2: dx = r·(g·w) - x·r³·mean((g·w)·x); dw = Σ_rows g·x·r.
        // One pass per row for dx (candle ops made eight (rows × n) temporaries, each a gradient node's
        // worth of allocation); dw only for a weight that gradients reach (`track_op`: a variable or made
        // from one; LoRA keeps norms frozen).
        use rayon::prelude::*;
        let n = w.dim(D::Minus1)?;
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
        let trained = w.track_op();
        let dx = {
            let (xv, wv, gv) = (
                F32View::of(&x, self.name())?,
                F32View::of(&w, self.name())?,
                F32View::of(&g, self.name())?,
            );
            let (xv, wv, gv) = (xv.values(), wv.values(), gv.values());
            let eps = self.eps;
            let mut dx = vec![0f32; xv.len()];
            dx.par_chunks_mut(n)
                .zip(xv.par_chunks(n).zip(gv.par_chunks(n)))
                .with_min_len(16)
                .for_each(|(dr, (xr, gr))| {
                    let sum: f64 = xr.iter().map(|&v| f64::from(v * v)).sum();
                    let r = 1.0 / ((sum / n as f64) as f32 + eps).sqrt();
                    let dot: f32 = xr
                        .iter()
                        .zip(gr)
                        .zip(wv)
                        .map(|((x, g), w)| g * w * x)
                        .sum::<f32>()
                        / n as f32;
                    let k = r * r * r * dot;
                    for (((d, &x), &g), &w) in dr.iter_mut().zip(xr).zip(gr).zip(wv) {
                        *d = g * w * r - x * k;
                    }
                });
            dx
        };
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = if trained {
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(self.eps))?
                .sqrt()?
                .recip()?;
            let dw = (g * x.broadcast_mul(&r)?)?;
            Some(if dw.rank() > 1 {
                dw.flatten_to(dw.rank() - 2)?.sum(0)?
            } else {
                dw
            })
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// SwiGLU's gate for training, `silu(g) · u` as one autograd node (candle's silu and product are two
/// nodes over (tokens × intermediate), and silu's backward several more temporaries). The forward is
/// candle's `silu` formula, so the values are the inference path's bits. The forward keeps each
/// `1 + exp(−g)` for the backward (which needs σ(g), and the exponentials were a third of the op's time).
#[derive(Default)]
pub(crate) struct SwiGluOp {
    den: std::sync::Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
        us: &candle_core::CpuStorage,
        ul: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let g = contiguous_f32(gs, gl, self.name())?;
        let u = contiguous_f32(us, ul, self.name())?;
        if gl.shape() != ul.shape() {
            return Err(candle_core::Error::Msg(
                "swiglu: gate and up differ in shape".into(),
            ));
        }
        let mut y = vec![0f32; g.len()];
        let mut den = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(den.par_chunks_mut(4096))
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|((yc, dc), (gc, uc))| {
                for (((o, e), &v), &w) in yc.iter_mut().zip(dc).zip(gc).zip(uc) {
                    *e = 1.0 + (-v).exp();
                    *o = (v / *e) * w;
                }
            });
        if let Ok(mut slot) = self.den.lock() {
            *slot = Some(den);
        }
        Ok((candle_core::CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
        let (gv, uv, dv) = (
            F32View::of(&g, self.name())?,
            F32View::of(&u, self.name())?,
            F32View::of(&dy, self.name())?,
        );
        let (gv, uv, dv) = (gv.values(), uv.values(), dv.values());
        let den = match self.den.lock().ok().and_then(|mut slot| slot.take()) {
            Some(den) if den.len() == gv.len() => den,
            _ => gv.par_iter().map(|&x| 1.0 + (-x).exp()).collect(),
        };
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                gv.par_chunks(4096)
                    .zip(uv.par_chunks(4096))
                    .zip(dv.par_chunks(4096).zip(den.par_chunks(4096))),
            )
            .for_each(|((dgc, duc), ((gc, uc), (dc, ec)))| {
                for i in 0..gc.len() {
                    let (x, w, d) = (gc[i], uc[i], dc[i]);
                    let sig = 1.0 / ec[i];
                    // silu'(x) = σ(x)·(1 + x·(1 − σ(x))).
                    dgc[i] = d * w * (sig * (1.0 + x * (1.0 - sig)));
                    duc[i] = d * (x * sig);
                }
            });
        let t = |v: Vec<f32>| Tensor::from_vec(v, g.shape(), g.device());
        Ok((Some(t(dg)?), Some(t(du)?)))
    }
}

/// Token embedding table; stays quantized when the file stores it quantized (rows dequantized on lookup,
/// as ggml's `get_rows` does).
pub enum Embedding {
    Blocks {
        format: BlockFormat,
        data: SharedBytes,
        vocab: usize,
        hidden: usize,
    },
    FloatRows {
        format: FloatFormat,
        data: SharedBytes,
        vocab: usize,
        hidden: usize,
    },
    Quant(std::sync::Arc<QTensor>),
    Float(Tensor),
}

impl Embedding {
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Embedding> {
        let w = src.require(name)?;
        check_shape(name, &w.dims(), &[vocab, hidden])?;
        Ok(match w {
            Weight::Blocks { format, data, .. } => Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            },
            Weight::FloatRows { format, data, .. } => Embedding::FloatRows {
                format,
                data,
                vocab,
                hidden,
            },
            Weight::Quant(q) => Embedding::Quant(std::sync::Arc::new(q)),
            Weight::Float(t) => Embedding::Float(t),
        })
    }
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            } => {
                let row_bytes = data.len() / vocab;
                lookup(ids, *vocab, *hidden, |id| {
                    dequantize_row(*format, &data[id * row_bytes..(id + 1) * row_bytes])
                })?
            }
            Embedding::FloatRows {
                format,
                data,
                vocab,
                hidden,
            } => {
                let row_bytes = hidden * format.bytes();
                lookup(ids, *vocab, *hidden, |id| {
                    format.row_values(&data[id * row_bytes..(id + 1) * row_bytes])
                })?
            }
            Embedding::Quant(q) => q.embedding(ids)?,
            Embedding::Float(t) => t.index_select(ids, 0)?,
        })
    }
    /// The table as a dense f32 tensor on `dev` (dequantized, or converted from F16/BF16, when the file
    /// stores it so): looked up by candle's `index_select` on any device.
    pub fn to_dense(&self, dev: &Device) -> Result<Embedding> {
        let t = match self.as_linear()?.to_dense(dev)?.weight {
            LinearWeight::Candle(QMatMul::Tensor(t)) => t,
            _ => return Err(ModelError::Kernel("embedding: no dense table".into())),
        };
        Ok(Embedding::Float(t))
    }

    /// The same table as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        Ok(match self {
            Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            } => Linear {
                weight: LinearWeight::Blocks {
                    format: *format,
                    data: data.clone(),
                    packed: PackedCache::default(),
                },
                bias: None,
                lora: None,
                out_features: *vocab,
                in_features: *hidden,
            },
            Embedding::FloatRows {
                format,
                data,
                vocab,
                hidden,
            } => Linear {
                weight: LinearWeight::FloatRows {
                    format: *format,
                    data: data.clone(),
                },
                bias: None,
                lora: None,
                out_features: *vocab,
                in_features: *hidden,
            },
            Embedding::Quant(q) => {
                let (v, h) = q.shape().dims2()?;
                Linear {
                    weight: LinearWeight::Candle(QMatMul::from_arc(q.clone())?),
                    bias: None,
                    lora: None,
                    out_features: v,
                    in_features: h,
                }
            }
            Embedding::Float(t) => {
                let (v, h) = t.dims2()?;
                Linear {
                    weight: LinearWeight::Candle(QMatMul::Tensor(t.clone())),
                    bias: None,
                    lora: None,
                    out_features: v,
                    in_features: h,
                }
            }
        })
    }
}

/// Rows `ids` of a table of `vocab` rows, each decoded by `row`.
fn lookup(
    ids: &Tensor,
    vocab: usize,
    hidden: usize,
    row: impl Fn(usize) -> Vec<f32>,
) -> Result<Tensor> {
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let mut v = Vec::with_capacity(ids.len() * hidden);
    for &id in &ids {
        let id = id as usize;
        if id >= vocab {
            return Err(ModelError::Kernel(format!(
                "token id {id} outside the embedding table of {vocab}"
            )));
        }
        v.extend(row(id));
    }
    Ok(Tensor::from_vec(v, (ids.len(), hidden), &Device::Cpu)?)
}

/// Rotary position embedding (Su et al. 2021) with cos/sin tables computed for each call's positions.
#[derive(Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: crate::RopeStyle,
    /// ggml's angles ([`crate::config::RopeAngles::Progressive`]): `(theta_scale, freq_scale, factors)`.
    progressive: Option<(f32, f32, Option<Vec<f32>>)>,
}

impl Rope {
    /// Angles `position · inv_freq[i]` (HF's rounding).
    pub fn new(inv_freq: Vec<f32>, style: crate::RopeStyle) -> Rope {
        Rope {
            inv_freq,
            style,
            progressive: None,
        }
    }

    /// The model's rotary embedding, with its reference's rounding of the angles.
    pub fn from_config(cfg: &crate::ModelConfig) -> Rope {
        use crate::config::{RopeAngles, RopeScaling};
        let mut rope = Rope::new(cfg.rope_inv_freq(), cfg.rope_style);
        if cfg.rope_angles == RopeAngles::Progressive {
            let theta_scale = cfg.rope_theta.powf(-2.0 / cfg.head_dim as f32);
            rope.progressive = match &cfg.rope_scaling {
                None => Some((theta_scale, 1.0, None)),
                Some(RopeScaling::Linear { factor }) => Some((theta_scale, 1.0 / factor, None)),
                Some(RopeScaling::FreqFactors(ff)) => Some((theta_scale, 1.0, Some(ff.clone()))),
                // Not a GGUF form: HF's rounding.
                Some(RopeScaling::Llama3 { .. }) => None,
            };
        }
        rope
    }

    /// How the rotated pairs are laid out.
    pub fn style(&self) -> crate::RopeStyle {
        self.style
    }

    /// cos and sin tables of shape (seq, head_dim/2) for absolute positions `start..start+seq`.
    pub fn tables(&self, start: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        self.tables_at(&(start..start + seq).collect::<Vec<_>>())
    }

    /// cos and sin tables of shape (positions, head_dim/2) for the given absolute positions.
    pub fn tables_at(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let seq = positions.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for &p in positions {
            match &self.progressive {
                Some((theta_scale, freq_scale, factors)) => {
                    let mut theta = p as f32;
                    for i in 0..half {
                        let ff = factors.as_ref().and_then(|f| f.get(i)).copied();
                        let a = freq_scale * (theta / ff.unwrap_or(1.0));
                        cos.push(a.cos());
                        sin.push(a.sin());
                        theta *= theta_scale;
                    }
                }
                None => {
                    for &f in &self.inv_freq {
                        // HF computes `position * inv_freq` in f32, then cos/sin.
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (seq, half), &Device::Cpu)?;
        let sin = Tensor::from_vec(sin, (seq, half), &Device::Cpu)?;
        Ok((cos, sin))
    }

    /// `x`: (heads, seq, head_dim).
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (heads, seq, d) = x.dims3()?;
        let half = d / 2;
        match self.style {
            crate::RopeStyle::Half => {
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let o1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
                let o2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
                Ok(Tensor::cat(&[o1, o2], D::Minus1)?)
            }
            crate::RopeStyle::Interleaved => {
                let xr = x.reshape((heads, seq, half, 2))?;
                let xe = xr.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                let xo = xr.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let oe = (xe.broadcast_mul(cos)? - xo.broadcast_mul(sin)?)?;
                let oo = (xe.broadcast_mul(sin)? + xo.broadcast_mul(cos)?)?;
                Ok(Tensor::stack(&[oe, oo], D::Minus1)?.reshape((heads, seq, d))?)
            }
        }
    }
}

/// Softmax over the last dimension, max-subtracted.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op1(SoftmaxOp)?);
    }
    softmax_last_dim_candle(x)
}

/// [`softmax_last_dim`] in candle's operations (any device, differentiable).
pub fn softmax_last_dim_candle(x: &Tensor) -> Result<Tensor> {
    // The shift only guards exp() against overflow; it cancels out, so it carries no gradient.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Softmax of one row in place, rounding as ggml's `soft_max`: `exp(x - max)` in f32, the sum in f64, every
/// value times the f32-rounded reciprocal ([`baimo_kernels::softmax_ref`]: the C library's `expf`, the sum in
/// order). The dense ([`SoftmaxOp`]) and paged attention both use it, so their probabilities agree bit for
/// bit. (The vector [`baimo_kernels::softmax`], a few ulp away, cost SmolLM2 one of its prompts fully
/// identical to llama.cpp's greedy tokens; training's attention uses it, for speed at length.)
pub(crate) fn softmax_row(row: &mut [f32]) {
    baimo_kernels::softmax_ref(row)
}

/// Softmax over each row in one pass ([`softmax_row`]): `exp(x - max)` in f32, the sum in f64, every
/// value times the f32-rounded reciprocal.
struct SoftmaxOp;

impl candle_core::CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-ggml"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32(storage, layout, self.name())?;
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut y = x.to_vec();
        // Rows are independent: a long prompt's attention chunk has thousands of them.
        y.par_chunks_mut(n).with_min_len(64).for_each(softmax_row);
        Ok((candle_core::CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = y·(g - Σ g·y)
        let s = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&s)?)?))
    }
}
