//! The causal-LM loss as one autograd node.

use baimo_models::layers::{contiguous_f32, F32View};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// `Σ_i −log softmax(logits_i)[target_i]` over the rows of `logits` (rows × vocab), a scalar. The same value
/// as `candle_nn::loss::cross_entropy` times the row count, but one node: candle's version is a log-softmax
/// (five nodes over rows × vocab), a gather and a mean, and its backward allocates and sums a gradient
/// buffer of rows × vocab for each of them, on one thread. The gradient is `g·(softmax − onehot)`, row by
/// row in parallel, from each row's log-sum-exp kept by the forward.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let op = CrossEntropySum {
        targets: targets.to_vec(),
        lse: std::sync::Mutex::new(Vec::new()),
    };
    Ok(logits.contiguous()?.apply_op1(op)?)
}

/// [`cross_entropy_sum`] in candle's operations (log-softmax, gather, sum): any device, differentiable; on
/// the CPU, the reference the one-node version is tested against.
pub fn cross_entropy_sum_candle(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    check_targets(logits.dims(), targets)?;
    let t = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    // log softmax: the shifted logits less their log-sum-exp (the shift only guards exp against overflow).
    let last = candle_core::D::Minus1;
    let shifted = logits.broadcast_sub(&logits.max_keepdim(last)?.detach())?;
    let logp = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(last)?.log()?)?;
    Ok(logp.gather(&t, 1)?.sum_all()?.neg()?)
}

struct CrossEntropySum {
    targets: Vec<u32>,
    /// Each row's log Σ exp, from the forward.
    lse: std::sync::Mutex<Vec<f32>>,
}

/// The vocabulary size of `dims` (rows × vocab) when there is one target per row, each below it.
fn check_targets(dims: &[usize], targets: &[u32]) -> candle_core::Result<usize> {
    match dims {
        [rows, vocab]
            if *rows == targets.len() && targets.iter().all(|&t| (t as usize) < *vocab) =>
        {
            Ok(*vocab)
        }
        _ => Err(candle_core::Error::Msg(format!(
            "cross-entropy: logits {dims:?} against {} targets (each below the vocabulary)",
            targets.len()
        ))),
    }
}

/// log Σ_j exp(row_j), from the row's maximum (the sum in f64; the exponentials vectorised where the CPU
/// allows, [`baimo_kernels::softmax::sum_exp`]).
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + baimo_kernels::softmax::sum_exp(row, max).ln() as f32
}

impl CustomOp1 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "cross-entropy-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let vocab = check_targets(l.dims(), &self.targets)?;
        let logits = contiguous_f32(s, l, self.name())?;
        let lse: Vec<f32> = logits.par_chunks(vocab).map(log_sum_exp).collect();
        let nll: f64 = lse
            .iter()
            .zip(logits.chunks(vocab))
            .zip(&self.targets)
            .map(|((&z, row), &t)| f64::from(z - row[t as usize]))
            .sum();
        if let Ok(mut slot) = self.lse.lock() {
            *slot = lse;
        }
        Ok((CpuStorage::F32(vec![nll as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let vocab = check_targets(logits.dims(), &self.targets)?;
        let g = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let mut lse = self
            .lse
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let logits = logits.contiguous()?;
        let view = F32View::of(&logits, self.name())?;
        let values = view.values();
        if lse.len() != self.targets.len() {
            lse = values.par_chunks(vocab).map(log_sum_exp).collect();
        }
        let mut grad = vec![0f32; values.len()];
        grad.par_chunks_mut(vocab)
            .zip(values.par_chunks(vocab))
            .zip(lse.par_iter().zip(self.targets.par_iter()))
            .for_each(|((gr, row), (&z, &t))| {
                for (o, &v) in gr.iter_mut().zip(row) {
                    *o = v - z;
                }
                baimo_kernels::softmax::exp(gr);
                gr.iter_mut().for_each(|o| *o *= g);
                gr[t as usize] -= g;
            });
        drop(view);
        Ok(Some(Tensor::from_vec(
            grad,
            logits.shape(),
            logits.device(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    /// Value and gradient against candle_nn's cross-entropy (times the row count) through candle's autograd.
    #[test]
    fn matches_candle_nn_cross_entropy() {
        let (rows, vocab) = (5, 37);
        let values: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 9.0)
            .collect();
        let targets: Vec<u32> = vec![0, 36, 17, 17, 5];
        let logits = Var::from_vec(values, (rows, vocab), &Device::Cpu).unwrap();
        let ours = super::cross_entropy_sum(logits.as_tensor(), &targets).unwrap();
        let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let theirs = (candle_nn::loss::cross_entropy(logits.as_tensor(), &t).unwrap()
            * rows as f64)
            .unwrap();
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            theirs.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss {a} vs {b}");
        // A weight on the loss, as a mean over a step's tokens puts one.
        let grad = |loss: Tensor| {
            let g = (loss * 0.3).unwrap().backward().unwrap();
            let g = g.get(logits.as_tensor()).unwrap().flatten_all().unwrap();
            g.to_vec1::<f32>().unwrap()
        };
        let (ga, gb) = (grad(ours), grad(theirs));
        let worst = ga
            .iter()
            .zip(&gb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "gradient differs by {worst}");
        // A target outside the vocabulary is an error, not a panic.
        assert!(super::cross_entropy_sum(logits.as_tensor(), &[0, 1, 2, 3, 37]).is_err());
    }
}
