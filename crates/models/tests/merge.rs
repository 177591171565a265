//! `baimo merge`: PEFT adapters folded into their bases give PEFT's own logits (fixtures from
//! tools/make_lora_refs.py) when the merged file is loaded without any adapter: Hugging Face folder → folder,
//! GGUF → GGUF in the base's types (on Llama GGUF files the q/k rows are in llama.cpp's rope order), and GGUF
//! → F16 / Q8_0 GGUF within those types' rounding.

use std::path::PathBuf;

use baimo_formats::gguf::{GgmlType, GgufFile};
use baimo_models::merge::{merge_gguf, merge_hf_dir, OutType};
use baimo_models::{LoraAdapter, Transformer};
use serde_json::Value;

mod common;
use common::{fixtures, logits_all, read_f32, rel_err};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baimo-merge-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn merged_models_give_peft_logits() {
    let text = std::fs::read_to_string(fixtures().join("tiny/lora-manifest.json")).unwrap();
    let man: Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(man["prompts"].clone()).unwrap();
    let dir = scratch("peft");
    for (n, a) in man["adapters"].as_array().unwrap().iter().enumerate() {
        let model = a["model"].as_str().unwrap();
        let adapter = LoraAdapter::load(&fixtures().join(a["dir"].as_str().unwrap())).unwrap();
        // Hugging Face folder → folder.
        let hf_out = dir.join(format!("hf-{n}"));
        let r = merge_hf_dir(
            &fixtures().join(format!("tiny/{model}/hf")),
            &adapter,
            &hf_out,
        )
        .unwrap();
        assert_eq!(r.merged, adapter.modules().count());
        let hf = Transformer::from_hf_dir(&hf_out).unwrap();
        // GGUF (F32) → GGUF, keeping the types.
        let g = GgufFile::open(fixtures().join(format!("tiny/{model}/{model}-F32.gguf"))).unwrap();
        let gguf_out = dir.join(format!("{n}.gguf"));
        let r = merge_gguf(&g, &adapter, OutType::Keep, &gguf_out).unwrap();
        assert_eq!(r.merged, adapter.modules().count());
        assert_eq!(r.tensors, g.tensors.len());
        let merged_g = GgufFile::open(&gguf_out).unwrap();
        assert_eq!(merged_g.metadata, g.metadata, "metadata copied as is");
        let gguf = Transformer::from_gguf(&merged_g).unwrap();
        for (label, m) in [("safetensors", &hf), ("gguf-F32", &gguf)] {
            for (i, p) in prompts.iter().enumerate() {
                let want = read_f32(a["logits"][i].as_str().unwrap());
                let e = rel_err(&logits_all(m, p), &want);
                println!(
                    "{model}/{} merged into {label}, prompt {i}: max|err|/range {e:.1e}",
                    a["adapter"]
                );
                assert!(e < 1e-4, "{model} {label} prompt {i}: {e}");
            }
        }
        // Untouched tensors are copied byte for byte.
        let norm = "output_norm.weight";
        assert_eq!(
            merged_g.tensor_bytes(norm).unwrap().1,
            g.tensor_bytes(norm).unwrap().1
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn merged_gguf_in_another_type() {
    let text = std::fs::read_to_string(fixtures().join("tiny/lora-manifest.json")).unwrap();
    let man: Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(man["prompts"].clone()).unwrap();
    let a = &man["adapters"][0];
    let model = a["model"].as_str().unwrap();
    let adapter = LoraAdapter::load(&fixtures().join(a["dir"].as_str().unwrap())).unwrap();
    let g = GgufFile::open(fixtures().join(format!("tiny/{model}/{model}-F32.gguf"))).unwrap();
    let dir = scratch("types");
    let want = read_f32(a["logits"][2].as_str().unwrap());
    // How far the adapter moves the logits: the base model against PEFT's adapted logits.
    let base = Transformer::from_gguf(&g).unwrap();
    let gap = rel_err(&logits_all(&base, &prompts[2]), &want);
    println!("{model}: base without the adapter is {gap:.1e} from PEFT's adapted logits");
    assert!(
        gap > 5e-2,
        "the adapter barely changes the logits ({gap}); the test would prove nothing"
    );
    // F16 rounds each weight to 11 bits, Q8_0 to 8 (and quantizes activations): the merged model must sit
    // within that rounding of PEFT's logits, far closer than the base model is.
    for (ty, tol) in [
        (GgmlType::F16, (5e-3f32).min(gap / 10.0)),
        (GgmlType::Q8_0, gap / 2.0),
    ] {
        let out = dir.join(format!("{ty}.gguf"));
        merge_gguf(&g, &adapter, OutType::All(ty), &out).unwrap();
        let f = GgufFile::open(&out).unwrap();
        for t in &f.tensors {
            let want = if t.dims.len() == 2 { ty } else { GgmlType::F32 };
            assert_eq!(t.dtype, want, "{}", t.name);
        }
        let m = Transformer::from_gguf(&f).unwrap();
        let e = rel_err(&logits_all(&m, &prompts[2]), &want);
        println!(
            "{model} merged as {ty}: max|err|/range {e:.1e} against PEFT (tolerance {tol:.1e})"
        );
        assert!(e < tol, "{ty}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn adapter_for_another_model_is_an_error() {
    let adapter = LoraAdapter::load(&fixtures().join("tiny/llama-gqa/lora-all")).unwrap();
    let g = GgufFile::open(fixtures().join("tiny/llama-q/llama-q-Q8_0.gguf")).unwrap();
    let dir = scratch("wrong");
    let out = dir.join("x.gguf");
    let e = merge_gguf(&g, &adapter, OutType::Keep, &out)
        .map(|_| ())
        .expect_err("an adapter for a model of another width")
        .to_string();
    assert!(e.contains("adapter") || e.contains("shape"), "{e}");
    assert!(!out.exists(), "no output written on error");
    std::fs::remove_dir_all(&dir).ok();
}
