//! Training on a base kept quantized (QLoRA-style): the LoRA gradients through the file's Q8_0 / Q4_K blocks
//! (forward: the serving kernels; backward: the weight dequantized per call) agree with the gradients through
//! an f32 copy of the same dequantized weights, up to the forward's int8 activation rounding; and the same
//! file made dense for candle's operations ([`Transformer::to_device`]) gives the f32 copy's gradients.

use std::path::{Path, PathBuf};

use baimo_formats::gguf::GgufFile;
use baimo_models::Transformer;
use baimo_train::{batch_loss_and_grads, Example, LoraParams, LoraSpec};
use candle_core::Tensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn grads(model: &mut Transformer, exs: &[Example]) -> (f64, Vec<Vec<f32>>) {
    let params = LoraParams::init(model, LoraSpec::default(), 5).unwrap();
    // PEFT starts B at zero, which makes A's gradient zero: give B values so both are exercised.
    for (i, e) in params.entries.iter().enumerate() {
        let dims = e.b.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|k| (((k * 37 + i * 11) % 97) as f32 / 97.0 - 0.5) * 0.1)
            .collect();
        e.b.set(&Tensor::from_vec(vals, dims.as_slice(), &candle_core::Device::Cpu).unwrap())
            .unwrap();
    }
    params.attach(model, false).unwrap();
    let refs: Vec<&Example> = exs.iter().collect();
    let (loss, g, _) = batch_loss_and_grads(model, &params, &refs, 2048).unwrap();
    let out = params
        .vars()
        .iter()
        .map(|v| {
            g.get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    (loss, out)
}

#[test]
fn lora_gradients_through_a_quantized_base() {
    for file in ["llama-q/llama-q-Q8_0.gguf", "llama-q/llama-q-Q4_K_M.gguf"] {
        let g = GgufFile::open(fixtures().join("tiny").join(file)).unwrap();
        let mut quant = Transformer::from_gguf(&g).unwrap();
        assert!(!quant.is_float(), "{file}: the base stays quantized");
        let mut float = Transformer::from_gguf_dequantized(&g).unwrap();
        let vocab = quant.config().vocab_size as u32;
        let exs: Vec<Example> = (0..3u32)
            .map(|k| {
                let tokens: Vec<u32> = (0..12).map(|i| (i * 29 + k * 13 + 1) % vocab).collect();
                let labels = tokens.iter().map(|&t| t as i64).collect();
                Example { tokens, labels }
            })
            .collect();
        let (lq, gq) = grads(&mut quant, &exs);
        let (lf, gf) = grads(&mut float, &exs);
        assert!((lq - lf).abs() / lf < 1e-2, "{file}: loss {lq} vs {lf}");
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in gq.iter().zip(&gf) {
            for (x, y) in a.iter().zip(b) {
                num += ((x - y) as f64).powi(2);
                den += (*y as f64).powi(2);
            }
        }
        let rel = (num / den).sqrt();
        println!("{file}: loss {lq:.5} vs {lf:.5}, gradient relative error {rel:.2e}");
        assert!(den > 0.0 && rel < 5e-2, "{file}: gradients differ by {rel}");

        // The quantized file made dense for candle's operations (what a GPU trains on): the f32 copy's
        // gradients, up to rounding (no int8 activations here).
        let mut dense = Transformer::from_gguf(&g)
            .unwrap()
            .to_device(&candle_core::Device::Cpu)
            .unwrap();
        let (ld, gd) = grads(&mut dense, &exs);
        let worst = gd
            .iter()
            .flatten()
            .zip(gf.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = gf.iter().flatten().fold(0f32, |m, y| m.max(y.abs()));
        println!("{file}: made dense, loss {ld:.6} vs {lf:.6}, worst gradient difference {worst:.2e} of {scale:.2e}");
        assert!((ld - lf).abs() / lf < 1e-5, "{file}: loss {ld} vs {lf}");
        assert!(worst <= 1e-4 * scale, "{file}: gradients differ by {worst}");
        // Candle's operations over weights our kernels multiply would pass no gradient: refused.
        let e = Transformer::from_gguf(&g)
            .unwrap()
            .set_train_ops(baimo_models::TrainOps::Candle)
            .unwrap_err();
        assert!(e.to_string().contains("need dense weights"), "{e}");
    }
}
