//! Baimo's LoRA training step against PyTorch + PEFT (fixtures from tools/make_lora_refs.py): the loss, the
//! gradient of every lora_A/lora_B, and the parameters after one AdamW step; plus the PEFT export round trip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baimo_formats::safetensors::SafeTensorsFiles;
use baimo_models::weights::WeightSource;
use baimo_models::{LoraAdapter, TrainOps, Transformer};
use baimo_train::params::LoraParams;
use baimo_train::{batch_loss_and_grads, Example, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tensors(rel: &str) -> HashMap<String, Tensor> {
    let f = SafeTensorsFiles::open(fixtures().join(rel)).unwrap();
    f.names()
        .iter()
        .map(|n| (n.clone(), f.require(n).unwrap().into_f32().unwrap()))
        .collect()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let got = got.to_device(&Device::Cpu).unwrap();
    let d = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d as f64 / (m as f64).max(1e-12)
}

fn examples(t: &Value) -> Vec<Example> {
    let ids: Vec<Vec<u32>> = serde_json::from_value(t["input_ids"].clone()).unwrap();
    let labels: Vec<Vec<i64>> = serde_json::from_value(t["labels"].clone()).unwrap();
    ids.into_iter()
        .zip(labels)
        .map(|(tokens, labels)| Example { tokens, labels })
        .collect()
}

#[test]
fn lora_gradients_and_adamw_step_match_peft() {
    let text = std::fs::read_to_string(fixtures().join("tiny/lora-manifest.json")).unwrap();
    let man: Value = serde_json::from_str(&text).unwrap();
    // Our kernels' training pass, then candle's operations on the CPU, and on a GPU where this build and
    // machine have one (`--features baimo-models/cuda`), each against PEFT.
    let gpu = baimo_models::device("cuda")
        .map_err(|e| println!("the GPU case is skipped: {e}"))
        .ok();
    let runs: Vec<(TrainOps, Device)> = [
        (TrainOps::Kernels, Device::Cpu),
        (TrainOps::Candle, Device::Cpu),
    ]
    .into_iter()
    .chain(gpu.map(|d| (TrainOps::Candle, d)))
    .collect();
    for (t, (ops, dev)) in man["training"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| runs.iter().map(move |r| (t, r)))
    {
        let model_name = t["model"].as_str().unwrap();
        let mut model =
            Transformer::from_hf_dir(&fixtures().join(format!("tiny/{model_name}/hf"))).unwrap();
        if *ops == TrainOps::Candle {
            model = model.to_device(dev).unwrap();
        }
        assert_eq!(model.train_ops(), *ops);
        let model_name = format!("{model_name} ({ops:?} on {dev:?})");
        let adapter = LoraAdapter::load(&fixtures().join(t["adapter"].as_str().unwrap())).unwrap();
        let params = LoraParams::from_adapter(&model, &adapter, 0.0).unwrap();
        params.attach(&mut model, true).unwrap();
        let exs = examples(t);
        let refs: Vec<&Example> = exs.iter().collect();

        assert!(
            refs.len() > 1,
            "several sequences, so that packing is exercised"
        );
        // One sequence per pass, and all of them packed into one pass: both are PEFT's batch.
        for pack_tokens in [0, baimo_train::trainer::PACK_TOKENS] {
            let (loss, grads, _) =
                batch_loss_and_grads(&model, &params, &refs, pack_tokens).unwrap();
            let want_loss = t["loss"].as_f64().unwrap();
            println!("{model_name} (pack {pack_tokens}): loss {loss:.6} vs PEFT {want_loss:.6}");
            assert!((loss - want_loss).abs() / want_loss < 1e-5);

            let want = tensors(t["grads"].as_str().unwrap());
            let mut worst = 0f64;
            for e in &params.entries {
                for (v, which) in [(&e.a, "lora_A"), (&e.b, "lora_B")] {
                    let name = format!("base_model.model.{}.{which}.weight", e.target.path);
                    let g = grads
                        .get(v.as_tensor())
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    let err = rel_err(g, &want[&name]);
                    worst = worst.max(err);
                    assert!(err <= 1e-4, "{model_name} {name}: relative error {err:.2e}");
                }
            }
            println!(
                "{model_name} (pack {pack_tokens}): {} LoRA gradients, worst relative error {worst:.2e}",
                want.len()
            );
        }

        // One AdamW step with torch's settings.
        let o = &t["optimizer"];
        let mut trainer = Trainer::new(
            params,
            TrainerConfig {
                lr: o["lr"].as_f64().unwrap(),
                warmup_steps: 0,
                total_steps: 1_000_000, // cosine factor ≈ 1 at step 0
                weight_decay: o["weight_decay"].as_f64().unwrap(),
                beta1: 0.9,
                beta2: 0.999,
                eps: o["eps"].as_f64().unwrap(),
                max_grad_norm: None,
                ..TrainerConfig::default()
            },
        )
        .unwrap();
        trainer.step(&model, &refs).unwrap();
        let after = tensors(t["after_step"].as_str().unwrap());
        let got = trainer.params.peft_tensors().unwrap();
        let mut worst = 0f64;
        for (name, want) in &after {
            let err = rel_err(&got[name], want);
            worst = worst.max(err);
            assert!(err <= 1e-4, "{model_name} {name} after one step: {err:.2e}");
        }
        println!("{model_name}: parameters after one AdamW step, worst relative error {worst:.2e}");
    }
}

#[test]
fn exported_adapter_reloads_with_the_same_logits() {
    // Export from a GGUF Llama base (q/k rows permuted inside the model) and reload on the safetensors base:
    // PEFT's layout must come out.
    let g =
        baimo_formats::gguf::GgufFile::open(fixtures().join("tiny/llama-gqa/llama-gqa-F32.gguf"))
            .unwrap();
    let mut gguf = Transformer::from_gguf(&g).unwrap();
    let adapter = LoraAdapter::load(&fixtures().join("tiny/llama-gqa/lora-all")).unwrap();
    let params = LoraParams::from_adapter(&gguf, &adapter, 0.0).unwrap();
    params.attach(&mut gguf, false).unwrap();
    let dir = std::env::temp_dir().join(format!("baimo-export-{}", std::process::id()));
    params.save_peft(&dir, "llama-gqa").unwrap();
    let back = LoraAdapter::load(&dir).unwrap();
    let mut hf = Transformer::from_hf_dir(&fixtures().join("tiny/llama-gqa/hf")).unwrap();
    hf.set_adapter(Some(&back)).unwrap();
    let toks = [1u32, 50, 99, 7, 200, 13, 5, 77];
    let a = gguf.forward_train(&toks).unwrap();
    let b = hf.forward_train(&toks).unwrap();
    let err = rel_err(&a, &b);
    assert!(err < 1e-5, "{err}");
    let orig = tensors("tiny/llama-gqa/lora-all/adapter_model.safetensors");
    let again = tensors(&dir.join("adapter_model.safetensors").to_string_lossy());
    for (k, v) in &orig {
        assert!(
            rel_err(&again[k], v) == 0.0,
            "{k} changed in the round trip"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
