//! LoRA adapters saved by Hugging Face PEFT, applied by Baimo, against PEFT's own logits
//! (fixtures from tools/make_lora_refs.py): on the safetensors base and on its GGUF conversion, where
//! llama.cpp's q/k row permutation must be applied to the adapter too.

use baimo_formats::gguf::GgufFile;
use baimo_models::{LoraAdapter, Transformer};
use serde_json::Value;

mod common;
use common::{fixtures, logits_all, read_f32, rel_err};

#[test]
fn peft_adapters_match_peft_logits() {
    let text = std::fs::read_to_string(fixtures().join("tiny/lora-manifest.json")).unwrap();
    let man: Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(man["prompts"].clone()).unwrap();
    let adapters = man["adapters"].as_array().unwrap();
    assert!(adapters.len() >= 4);
    for a in adapters {
        let model = a["model"].as_str().unwrap();
        let adapter = LoraAdapter::load(&fixtures().join(a["dir"].as_str().unwrap())).unwrap();
        let hf = Transformer::from_hf_dir(&fixtures().join(format!("tiny/{model}/hf"))).unwrap();
        let g = GgufFile::open(fixtures().join(format!("tiny/{model}/{model}-F32.gguf"))).unwrap();
        let gguf = Transformer::from_gguf(&g).unwrap();
        for (label, mut m) in [("safetensors", hf), ("gguf-F32", gguf)] {
            m.set_adapter(Some(&adapter)).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let want = read_f32(a["logits"][i].as_str().unwrap());
                let got = logits_all(&m, p);
                let e = rel_err(&got, &want);
                println!(
                    "{model}/{} on {label}, prompt {i}: max|err|/range {e:.1e}",
                    a["adapter"]
                );
                assert!(e < 1e-4, "{model} {label} prompt {i}: {e}");
            }
            // Removing the adapter restores the base model (HF's base logits).
            m.set_adapter(None).unwrap();
            let base = read_f32(&format!("tiny/{model}/logits/hf-p2.f32"));
            let e = rel_err(&logits_all(&m, &prompts[2]), &base);
            assert!(e < 1e-4, "{model} {label} without adapter: {e}");
        }
    }
}

#[test]
fn malformed_adapters_are_errors() {
    let dir = std::env::temp_dir().join(format!("baimo-lora-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("tiny/llama-gqa/lora-all");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    for (cfg, needle) in [
        ("{", "EOF"),
        (r#"{"peft_type": "IA3", "r": 4}"#, "IA3"),
        (r#"{"r": 0}"#, "`r`"),
        (r#"{"r": 8, "lora_alpha": 8}"#, "rank"),
        (r#"{"r": 4, "use_dora": true}"#, "use_dora"),
    ] {
        std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
        let e = LoraAdapter::load(&dir).err().expect(cfg).to_string();
        assert!(e.contains(needle), "{cfg}: {e}");
    }
    // An adapter for a different model shape.
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let ad = LoraAdapter::load(&dir).unwrap();
    let g = GgufFile::open(fixtures().join("tiny/llama-q/llama-q-Q8_0.gguf")).unwrap();
    let mut m = Transformer::from_gguf(&g).unwrap();
    assert!(m.set_adapter(Some(&ad)).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Served adapters: sequences with different adapters, and none, in one batched pass over the unchanged base;
/// each gives PEFT's logits for its own adapter, and the same bits as when it runs alone.
#[test]
fn mixed_adapter_batches_match_peft() {
    use baimo_models::{Logits, PagedKvCache, SeqSlice};
    let text = std::fs::read_to_string(fixtures().join("tiny/lora-manifest.json")).unwrap();
    let man: Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(man["prompts"].clone()).unwrap();
    let adapters = man["adapters"].as_array().unwrap();
    let to_vec = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for model in ["llama-gqa", "qwen2-gqa"] {
        let mine: Vec<&Value> = adapters.iter().filter(|a| a["model"] == model).collect();
        assert_eq!(mine.len(), 2, "{model}: two reference adapters");
        let hf = Transformer::from_hf_dir(&fixtures().join(format!("tiny/{model}/hf"))).unwrap();
        let g = GgufFile::open(fixtures().join(format!("tiny/{model}/{model}-F32.gguf"))).unwrap();
        let gguf = Transformer::from_gguf(&g).unwrap();
        for (label, m) in [("safetensors", hf), ("gguf-F32", gguf)] {
            let served: Vec<_> = mine
                .iter()
                .map(|a| {
                    let ad =
                        LoraAdapter::load(&fixtures().join(a["dir"].as_str().unwrap())).unwrap();
                    m.prepare_adapter(&ad).unwrap()
                })
                .collect();
            assert_ne!(served[0].id(), served[1].id());
            // (prompt, adapter index or none), all in one batch.
            let plan: [(usize, Option<usize>); 4] =
                [(2, Some(0)), (1, None), (0, Some(1)), (2, Some(1))];
            let tables: Vec<Vec<u32>> = (0..plan.len() as u32)
                .map(|s| (0..4).map(|b| b * plan.len() as u32 + s).collect())
                .collect();
            let slices: Vec<SeqSlice> = plan
                .iter()
                .zip(&tables)
                .map(|(&(p, a), t)| SeqSlice {
                    tokens: &prompts[p],
                    start: 0,
                    block_table: t,
                    logits: Logits::All,
                    adapter: a.map(|i| &served[i]),
                })
                .collect();
            let mut pool = PagedKvCache::new(m.config(), 8, 16).unwrap();
            let batch = m.forward_paged(&slices, &mut pool).unwrap();
            for (k, (&(p, a), got)) in plan.iter().zip(&batch).enumerate() {
                let want = match a {
                    Some(i) => read_f32(mine[i]["logits"][p].as_str().unwrap()),
                    None => read_f32(&format!("tiny/{model}/logits/hf-p{p}.f32")),
                };
                let got = to_vec(got);
                let e = rel_err(&got, &want);
                println!("{model} {label}: prompt {p} adapter {a:?}: max|err|/range {e:.1e}");
                assert!(e < 1e-4, "{model} {label} prompt {p} adapter {a:?}: {e}");
                // Alone in its own pass: the same bits.
                let mut pool = PagedKvCache::new(m.config(), 8, 16).unwrap();
                let alone = m.forward_paged(&slices[k..k + 1], &mut pool).unwrap();
                assert_eq!(
                    to_vec(&alone[0]),
                    got,
                    "{model} {label}: batch invariance of row {k}"
                );
            }
        }
    }
}

#[test]
fn adapters_for_another_model_are_refused() {
    // Same module names, other widths: a shape error naming the module, for both ways of applying it.
    let mut other = Transformer::from_hf_dir(&fixtures().join("tiny/llama-mha-rope3/hf")).unwrap();
    let ad = LoraAdapter::load(&fixtures().join("tiny/llama-gqa/lora-all")).unwrap();
    let e = other
        .prepare_adapter(&ad)
        .expect_err("a mismatched adapter")
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.k_proj LoRA A/B"),
        "{e}"
    );
    let e = other
        .set_adapter(Some(&ad))
        .expect_err("a mismatched adapter")
        .to_string();
    assert!(e.contains("LoRA"), "{e}");
}
