//! The training pass's attention as one autograd node: rotary embedding of q and k, then causal softmax
//! attention (Vaswani et al. 2017) of each packed sequence within itself, grouped-query heads sharing their
//! key/value head, forward and backward written out.
//!
//! The same arithmetic as the decoder's attention in candle ops (rope by the same formula, scores times the
//! f32 scale, [`softmax_row`]'s rounding; on AVX-512 the vector softmax, a few ulp from it), but candle's
//! autograd turns that into some eighty nodes per layer for a batch of four sequences (reshapes, copies,
//! masks, per-sequence products), and its backward allocates, zeroes and adds a gradient buffer for the
//! inputs of every one; on a small model that bookkeeping took more time than the arithmetic.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::layers::{contiguous_f32, kernel_err, matmul_nn, softmax_row, transposed, F32View};
use crate::RopeStyle;
use baimo_kernels::NtPanels;

/// Inputs: q (tokens, heads·hd), k and v (tokens, kv_heads·hd), the projections' outputs; output (tokens,
/// heads·hd), the heads side by side as `o_proj` takes them.
pub(crate) struct TrainAttention {
    /// Lengths of the packed sequences, in order; each starts at position 0.
    pub lens: Vec<usize>,
    /// Rotary tables (tokens, hd/2) for each packed token's position.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub style: RopeStyle,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// One (sequence, key/value head) pair: the unit of parallel work, owning its rows of every output.
struct Task {
    start: usize,
    len: usize,
    kv_head: usize,
}

impl TrainAttention {
    fn tasks(&self) -> Vec<Task> {
        let mut out = Vec::new();
        let mut start = 0;
        for &len in &self.lens {
            for kv_head in 0..self.n_kv_heads {
                out.push(Task {
                    start,
                    len,
                    kv_head,
                });
            }
            start += len;
        }
        out
    }

    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// Head `head`'s values of token `t` in a (tokens, heads·hd) matrix of `heads` heads.
    fn head_row<'a>(&self, m: &'a [f32], heads: usize, t: usize, head: usize) -> &'a [f32] {
        let hd = self.head_dim;
        &m[(t * heads + head) * hd..(t * heads + head + 1) * hd]
    }

    /// Half the head size and the cos and sin of packed token `t`'s angles.
    fn angles(&self, t: usize) -> (usize, &[f32], &[f32]) {
        let half = self.head_dim / 2;
        (
            half,
            &self.cos[t * half..(t + 1) * half],
            &self.sin[t * half..(t + 1) * half],
        )
    }

    /// The rotary embedding of one head's row `x` at packed token `t`, as `Rope::apply` computes it.
    fn rope(&self, x: &[f32], t: usize, out: &mut [f32]) {
        let (half, c, s) = self.angles(t);
        for i in 0..half {
            match self.style {
                RopeStyle::Half => {
                    let (x1, x2) = (x[i], x[i + half]);
                    out[i] = x1 * c[i] - x2 * s[i];
                    out[i + half] = x2 * c[i] + x1 * s[i];
                }
                RopeStyle::Interleaved => {
                    let (xe, xo) = (x[2 * i], x[2 * i + 1]);
                    out[2 * i] = xe * c[i] - xo * s[i];
                    out[2 * i + 1] = xe * s[i] + xo * c[i];
                }
            }
        }
    }

    /// The gradient at a row's input given the gradient `g` at its rotated output (the transposed rotation).
    fn rope_back(&self, g: &[f32], t: usize, out: &mut [f32]) {
        let (half, c, s) = self.angles(t);
        for i in 0..half {
            match self.style {
                RopeStyle::Half => {
                    let (g1, g2) = (g[i], g[i + half]);
                    out[i] = g1 * c[i] + g2 * s[i];
                    out[i + half] = g2 * c[i] - g1 * s[i];
                }
                RopeStyle::Interleaved => {
                    let (ge, go) = (g[2 * i], g[2 * i + 1]);
                    out[2 * i] = ge * c[i] + go * s[i];
                    out[2 * i + 1] = go * c[i] - ge * s[i];
                }
            }
        }
    }

    /// Rotated rows (len × hd) of head `head` of `m` for the task's tokens.
    fn rotated(&self, m: &[f32], heads: usize, task: &Task, head: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let mut out = vec![0f32; task.len * hd];
        for (i, row) in out.chunks_exact_mut(hd).enumerate() {
            let t = task.start + i;
            self.rope(self.head_row(m, heads, t, head), t, row);
        }
        out
    }

    /// Softmax probabilities (len × len, row i over keys 0..=i, zeros after) of query rows `qr` over
    /// key rows `kr`.
    fn probs(&self, qr: &[f32], kr: &[f32], len: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let scale = self.scale();
        let mut p = vec![0f32; len * len];
        for i in 0..len {
            let row = &mut p[i * len..i * len + i + 1];
            let q = &qr[i * hd..(i + 1) * hd];
            for (j, s) in row.iter_mut().enumerate() {
                *s = dot(q, &kr[j * hd..(j + 1) * hd]) * scale;
            }
            softmax_row(row);
        }
        p
    }

    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Head `head`'s rows (len × hd) of `m` for the task's tokens, contiguous.
    fn head_rows(&self, m: &[f32], heads: usize, task: &Task, head: usize) -> Vec<f32> {
        (task.start..task.start + task.len)
            .flat_map(|t| self.head_row(m, heads, t, head).iter().copied())
            .collect()
    }

    /// [`TrainAttention::probs`] on the float kernels, in blocks of [`QUERY_BLOCK`] query rows: block
    /// `i0..i1` scores keys `0..i1` only (the causal mask leaves the rest), so about half the square is
    /// computed. Each block holds (i1 − i0) × i1 probabilities, row i zero after key i. The softmax is the
    /// vector one ([`baimo_kernels::softmax`], within a few ulp of serving's [`softmax_row`]): the scalar
    /// one's `expf` calls were a fifth of a step at 1,500-token sequences.
    /// `kp`: the rotated keys packed once for all the blocks (and all the heads of their group).
    fn causal_probs(
        &self,
        qr: &[f32],
        kp: &NtPanels,
        len: usize,
    ) -> candle_core::Result<Vec<Block>> {
        let hd = self.head_dim;
        let scale = self.scale();
        blocks(len)
            .map(|(i0, i1)| {
                let mut p = nt(&qr[i0 * hd..i1 * hd], i1 - i0, hd, kp, i1)?;
                for (r, row) in p.chunks_exact_mut(i1).enumerate() {
                    let (seen, masked) = row.split_at_mut(i0 + r + 1);
                    seen.iter_mut().for_each(|s| *s *= scale);
                    baimo_kernels::softmax(seen);
                    masked.fill(0.0);
                }
                Ok(Block { i0, i1, p })
            })
            .collect()
    }

    /// One task's gradients (at its group's q rows, at its kv head's k and v rows) with the products on
    /// the float kernels, block by block of query rows as [`TrainAttention::causal_probs`]: dP = dO Vᵀ,
    /// dS = P ⊙ (dP − Σ_j P dP)·scale, dQ = dS K, dK = Σ_heads dSᵀ Q, dV = Σ_heads Pᵀ dO (then the rotations
    /// undone).
    fn task_bwd_by_kernels(
        &self,
        task: &Task,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        gy: &[f32],
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (hd, nh, nkv, n) = (self.head_dim, self.n_heads, self.n_kv_heads, task.len);
        let scale = self.scale();
        let kr = self.rotated(k, nkv, task, task.kv_head);
        let vh = self.head_rows(v, nkv, task, task.kv_head);
        let (kp, vp) = (panels(&kr, n, hd)?, panels(&vh, n, hd)?);
        let mut dq = vec![0f32; self.group() * n * hd];
        let mut dkr = vec![0f32; n * hd];
        let mut dv = vec![0f32; n * hd];
        for (j, dqh) in dq.chunks_exact_mut(n * hd).enumerate() {
            let head = task.kv_head * self.group() + j;
            let qr = self.rotated(q, nh, task, head);
            let go = self.head_rows(gy, nh, task, head);
            for Block { i0, i1, p } in self.causal_probs(&qr, &kp, n)? {
                let rows = i1 - i0;
                let (qb, gob) = (&qr[i0 * hd..i1 * hd], &go[i0 * hd..i1 * hd]);
                let mut ds = nt(gob, rows, hd, &vp, i1)?;
                for (r, (dsr, pr)) in ds.chunks_exact_mut(i1).zip(p.chunks_exact(i1)).enumerate() {
                    let seen = i0 + r + 1;
                    let d: f32 = dsr[..seen]
                        .iter()
                        .zip(&pr[..seen])
                        .map(|(s, w)| w * s)
                        .sum();
                    for (s, &w) in dsr.iter_mut().zip(pr) {
                        *s = w * (*s - d) * scale;
                    }
                }
                let dqr = matmul_nn(&ds, rows, i1, &kr[..i1 * hd], hd)?;
                for (r, row) in dqh[i0 * hd..i1 * hd].chunks_exact_mut(hd).enumerate() {
                    self.rope_back(&dqr[r * hd..(r + 1) * hd], task.start + i0 + r, row);
                }
                let nn_add = |out: &mut [f32], g: &[f32], w: &[f32]| {
                    baimo_kernels::float_matmul_nn_add(out, g, i1, rows, w, hd).map_err(kernel_err)
                };
                nn_add(&mut dkr[..i1 * hd], &transposed(&ds, rows, i1)?, qb)?;
                nn_add(&mut dv[..i1 * hd], &transposed(&p, rows, i1)?, gob)?;
            }
        }
        let mut dk = vec![0f32; n * hd];
        for (i, row) in dk.chunks_exact_mut(hd).enumerate() {
            self.rope_back(&dkr[i * hd..(i + 1) * hd], task.start + i, row);
        }
        Ok((dq, dk, dv))
    }
}

/// Query rows per block of [`TrainAttention::causal_probs`]: small enough that the causal mask's upper
/// triangle is mostly skipped, big enough for the kernels' tiles.
const QUERY_BLOCK: usize = 64;

/// Rows `i0..i1` of a causal probability matrix over keys `0..i1`, row-major ((i1 − i0) × i1).
struct Block {
    i0: usize,
    i1: usize,
    p: Vec<f32>,
}

/// The query blocks `(i0, i1)` of a sequence of `len` tokens.
fn blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(QUERY_BLOCK)
        .map(move |i0| (i0, (i0 + QUERY_BLOCK).min(len)))
}

/// `a · bᵀ` for `a` (n × k) and the first `rows` rows of `b`, packed ([`panels`]).
fn nt(a: &[f32], n: usize, k: usize, b: &NtPanels, rows: usize) -> candle_core::Result<Vec<f32>> {
    baimo_kernels::float_matmul_nt_packed(a, n, k, b, rows).map_err(kernel_err)
}

/// `m` (rows × k) packed for [`nt`]: one head's keys or values, transposed into the NN kernel's panels once
/// for every query block and every query head of the group, instead of once per product.
fn panels(m: &[f32], rows: usize, k: usize) -> candle_core::Result<NtPanels> {
    NtPanels::new(m, rows, k).map_err(kernel_err)
}

/// A dot product in sixteen lane sums (which the compiler turns into vector code; a plain sequential sum
/// cannot be reordered and stays scalar).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `acc += w · x` over one row.
fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, v)| *a += w * v);
}

impl CustomOp3 for TrainAttention {
    fn name(&self) -> &'static str {
        "train-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(qs, ql, self.name())?,
            contiguous_f32(ks, kl, self.name())?,
            contiguous_f32(vs, vl, self.name())?,
        );
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv_heads);
        let tokens: usize = self.lens.iter().sum();
        if q.len() != tokens * nh * hd || k.len() != tokens * nkv * hd || k.len() != v.len() {
            return Err(candle_core::Error::Msg(
                "train-attention: q/k/v shapes do not match the packed lengths".into(),
            ));
        }
        let tasks = self.tasks();
        let fast = baimo_kernels::float_kernels_fast();
        let parts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|task| {
                let kr = self.rotated(k, nkv, task, task.kv_head);
                let vh = fast.then(|| self.head_rows(v, nkv, task, task.kv_head));
                let kp = fast.then(|| panels(&kr, task.len, hd)).transpose()?;
                let mut out = vec![0f32; self.group() * task.len * hd];
                for (j, oh) in out.chunks_exact_mut(task.len * hd).enumerate() {
                    let head = task.kv_head * self.group() + j;
                    let qr = self.rotated(q, nh, task, head);
                    if let (Some(vh), Some(kp)) = (&vh, &kp) {
                        // O = P V on the float kernels, a block of query rows at a time.
                        for Block { i0, i1, p } in self.causal_probs(&qr, kp, task.len)? {
                            let o = matmul_nn(&p, i1 - i0, i1, &vh[..i1 * hd], hd)?;
                            oh[i0 * hd..i1 * hd].copy_from_slice(&o);
                        }
                        continue;
                    }
                    let p = self.probs(&qr, &kr, task.len);
                    for (i, orow) in oh.chunks_exact_mut(hd).enumerate() {
                        for (key, &w) in p[i * task.len..i * task.len + i + 1].iter().enumerate() {
                            axpy(
                                orow,
                                w,
                                self.head_row(v, nkv, task.start + key, task.kv_head),
                            );
                        }
                    }
                }
                Ok(out)
            })
            .collect::<candle_core::Result<_>>()?;
        let mut y = vec![0f32; tokens * nh * hd];
        for (task, out) in tasks.iter().zip(&parts) {
            for (j, oh) in out.chunks_exact(task.len * hd).enumerate() {
                let head = task.kv_head * self.group() + j;
                for (i, orow) in oh.chunks_exact(hd).enumerate() {
                    let at = ((task.start + i) * nh + head) * hd;
                    y[at..at + hd].copy_from_slice(orow);
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((tokens, nh * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, gy) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            grad_y.contiguous()?,
        );
        let (q, k, v, gy) = (
            F32View::of(&q, self.name())?,
            F32View::of(&k, self.name())?,
            F32View::of(&v, self.name())?,
            F32View::of(&gy, self.name())?,
        );
        let (q, k, v, gy) = (q.values(), k.values(), v.values(), gy.values());
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv_heads);
        let scale = self.scale();
        let tasks = self.tasks();
        // Per task: the gradients at its group's q rows, and at its kv head's k and v rows.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
            .par_iter()
            .map(|task| {
                if baimo_kernels::float_kernels_fast() {
                    return self.task_bwd_by_kernels(task, q, k, v, gy);
                }
                let n = task.len;
                let kr = self.rotated(k, nkv, task, task.kv_head);
                let mut dq = vec![0f32; self.group() * n * hd];
                let mut dkr = vec![0f32; n * hd];
                let mut dv = vec![0f32; n * hd];
                let mut dqr = vec![0f32; hd];
                for (j, dqh) in dq.chunks_exact_mut(n * hd).enumerate() {
                    let head = task.kv_head * self.group() + j;
                    let qr = self.rotated(q, nh, task, head);
                    let p = self.probs(&qr, &kr, n);
                    let mut ds = vec![0f32; n];
                    for i in 0..n {
                        let t = task.start + i;
                        let go = self.head_row(gy, nh, t, head);
                        let pi = &p[i * n..i * n + i + 1];
                        // dP[i][j] = dO[i]·V[j]; dS = P ⊙ (dP − Σ_j P dP).
                        let mut d = 0f32;
                        for (key, (s, &w)) in ds.iter_mut().zip(pi).enumerate() {
                            *s = dot(go, self.head_row(v, nkv, task.start + key, task.kv_head));
                            d += w * *s;
                        }
                        dqr.fill(0.0);
                        let qi = &qr[i * hd..(i + 1) * hd];
                        for (key, (s, &w)) in ds.iter_mut().zip(pi).enumerate() {
                            let g = w * (*s - d) * scale;
                            axpy(&mut dqr, g, &kr[key * hd..(key + 1) * hd]);
                            axpy(&mut dkr[key * hd..(key + 1) * hd], g, qi);
                            axpy(&mut dv[key * hd..(key + 1) * hd], w, go);
                        }
                        self.rope_back(&dqr, t, &mut dqh[i * hd..(i + 1) * hd]);
                    }
                }
                let mut dk = vec![0f32; n * hd];
                for (i, row) in dk.chunks_exact_mut(hd).enumerate() {
                    self.rope_back(&dkr[i * hd..(i + 1) * hd], task.start + i, row);
                }
                Ok((dq, dk, dv))
            })
            .collect::<candle_core::Result<_>>()?;
        let tokens: usize = self.lens.iter().sum();
        let mut gq = vec![0f32; tokens * nh * hd];
        let mut gk = vec![0f32; tokens * nkv * hd];
        let mut gv = vec![0f32; tokens * nkv * hd];
        for (task, (dq, dk, dv)) in tasks.iter().zip(&parts) {
            let n = task.len;
            for (j, dqh) in dq.chunks_exact(n * hd).enumerate() {
                let head = task.kv_head * self.group() + j;
                for (i, row) in dqh.chunks_exact(hd).enumerate() {
                    let at = ((task.start + i) * nh + head) * hd;
                    gq[at..at + hd].copy_from_slice(row);
                }
            }
            for i in 0..n {
                let at = ((task.start + i) * nkv + task.kv_head) * hd;
                gk[at..at + hd].copy_from_slice(&dk[i * hd..(i + 1) * hd]);
                gv[at..at + hd].copy_from_slice(&dv[i * hd..(i + 1) * hd]);
            }
        }
        let t = |d: Vec<f32>, heads: usize| Tensor::from_vec(d, (tokens, heads * hd), &Device::Cpu);
        Ok((Some(t(gq, nh)?), Some(t(gk, nkv)?), Some(t(gv, nkv)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{softmax_last_dim, Rope};
    use candle_core::{Var, D};
    use rand::{Rng, SeedableRng};

    /// The same attention in candle ops (the decoder's inference path: `Rope::apply`, masked scores,
    /// softmax, per sequence), differentiated by candle's autograd.
    fn reference(
        op: &TrainAttention,
        rope: &Rope,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (hd, nh, nkv) = (op.head_dim, op.n_heads, op.n_kv_heads);
        let half = hd / 2;
        let tokens: usize = op.lens.iter().sum();
        let cos = Tensor::from_vec(op.cos.clone(), (tokens, half), &Device::Cpu)?;
        let sin = Tensor::from_vec(op.sin.clone(), (tokens, half), &Device::Cpu)?;
        let mut outs = Vec::new();
        let mut at = 0;
        for &n in &op.lens {
            let heads = |t: &Tensor, h: usize| -> candle_core::Result<Tensor> {
                t.narrow(0, at, n)?
                    .reshape((n, h, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (c, s) = (cos.narrow(0, at, n)?, sin.narrow(0, at, n)?);
            let qh = rope.apply(&heads(q, nh)?, &c, &s).unwrap();
            let kh = rope.apply(&heads(k, nkv)?, &c, &s).unwrap();
            let vh = heads(v, nkv)?;
            let group = nh / nkv;
            let qg = qh.reshape((nkv, group * n, hd))?;
            let scores = (qg.matmul(&kh.t()?)? * (1.0 / (hd as f64).sqrt()))?;
            let mask: Vec<f32> = (0..group * n)
                .flat_map(|r| (0..n).map(move |j| if j <= r % n { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            let mask = Tensor::from_vec(mask, (group * n, n), &Device::Cpu)?;
            let p = softmax_last_dim(&scores.broadcast_add(&mask)?).unwrap();
            let o = p.matmul(&vh)?.reshape((nh, n, hd))?.transpose(0, 1)?;
            outs.push(o.reshape((n, nh * hd))?);
            at += n;
        }
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn forward_and_gradients_match_candle_autograd() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            // The last case spans several query blocks (64 rows), one of them partial.
            for (nh, nkv, lens) in [
                (4, 2, vec![5, 1, 7]),
                (2, 2, vec![6]),
                (6, 2, vec![3, 4]),
                (4, 2, vec![150, 64, 65]),
            ] {
                let hd = 8;
                let tokens: usize = lens.iter().sum();
                let inv_freq: Vec<f32> = (0..hd / 2)
                    .map(|i| 1.0 / 100f32.powf(i as f32 / 4.0))
                    .collect();
                let rope = Rope::new(inv_freq, style);
                let positions: Vec<usize> = lens.iter().flat_map(|&n| 0..n).collect();
                let (cos, sin) = rope.tables_at(&positions).unwrap();
                let op = || TrainAttention {
                    lens: lens.clone(),
                    cos: cos.flatten_all().unwrap().to_vec1().unwrap(),
                    sin: sin.flatten_all().unwrap().to_vec1().unwrap(),
                    style,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                };
                let mut var = |heads: usize| {
                    let v: Vec<f32> = (0..tokens * heads * hd)
                        .map(|_| rng.gen_range(-1.0..1.0))
                        .collect();
                    Var::from_vec(v, (tokens, heads * hd), &Device::Cpu).unwrap()
                };
                let (q, k, v) = (var(nh), var(nkv), var(nkv));
                let w: Vec<f32> = (0..tokens * nh * hd)
                    .map(|_| rng.gen_range(-1.0..1.0))
                    .collect();
                let w = Tensor::from_vec(w, (tokens, nh * hd), &Device::Cpu).unwrap();
                let ours = q.apply_op3(&k, &v, op()).unwrap();
                let theirs = reference(&op(), &rope, &q, &k, &v).unwrap();
                let diff = |a: &Tensor, b: &Tensor| -> f32 {
                    (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_keepdim(D::Minus1)
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()[0]
                };
                assert!(diff(&ours, &theirs) < 1e-5, "{style:?} forward");
                let ga = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (theirs * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                    let (a, b) = (ga.get(x).unwrap(), gb.get(x).unwrap());
                    assert!(
                        diff(a, b) < 1e-5,
                        "{style:?} {nh}/{nkv} {lens:?}: gradient at {name}"
                    );
                }
            }
        }
    }
}
