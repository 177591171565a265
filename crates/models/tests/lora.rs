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
        let g = GgufFile::open(&fixtures().join(format!("tiny/{model}/{model}-F32.gguf"))).unwrap();
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
    let g = GgufFile::open(&fixtures().join("tiny/llama-q/llama-q-Q8_0.gguf")).unwrap();
    let mut m = Transformer::from_gguf(&g).unwrap();
    assert!(m.set_adapter(Some(&ad)).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
