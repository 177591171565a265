//! GGUF → Hugging Face folder (`merge_gguf_to_hf`). Without an adapter, each tiny F32 GGUF (llama.cpp's
//! conversion of a fixture folder) comes back as that folder: the same tensors bit for bit (q/k rows of Llama
//! un-permuted), the same hyper-parameters (Llama 3 rope scaling recovered from `rope_freqs`), a tokenizer that
//! tokenizes as llama.cpp. With a PEFT adapter, the folder gives PEFT's logits in Baimo, Baimo's logits of the
//! GGUF with the adapter applied, and the logits and tokens transformers computed on the folder Baimo wrote
//! (tools/make_gguf_hf_refs.py). Quantized bases are dequantized: the folder gives the logits of the
//! dequantized GGUF with the adapter.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baimo_formats::gguf::GgufFile;
use baimo_formats::safetensors::SafeTensorsFiles;
use baimo_models::merge::merge_gguf_to_hf;
use baimo_models::weights::WeightSource;
use baimo_models::{LoraAdapter, Transformer};
use baimo_tokenize::template::{ChatTemplate, Message};
use baimo_tokenize::Tokenizer;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

mod common;
use common::{fixtures, logits_all, read_f32, rel_err};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baimo-gguf-hf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn gguf(model: &str, ty: &str) -> GgufFile {
    GgufFile::open(fixtures().join(format!("tiny/{model}/{model}-{ty}.gguf"))).unwrap()
}

/// `t`'s values as f32 (from the folder's safetensors).
fn values(files: &SafeTensorsFiles, name: &str) -> Vec<f32> {
    let t = files.require(name).unwrap().into_f32().unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn f32_gguf_comes_back_as_its_hf_folder() {
    let dir = scratch("back");
    let manifest = json(&fixtures().join("tiny/manifest.json"));
    for model in ["llama-gqa", "qwen2-gqa", "qwen3-gqa", "llama-mha-rope3"] {
        let hf = fixtures().join(format!("tiny/{model}/hf"));
        let out = dir.join(model);
        let r = merge_gguf_to_hf(&gguf(model, "F32"), None, DType::F32, &out).unwrap();
        assert_eq!(r.merged, 0);

        let (want, got) = (
            SafeTensorsFiles::open(&hf).unwrap(),
            SafeTensorsFiles::open(&out).unwrap(),
        );
        let names =
            |f: &SafeTensorsFiles| -> BTreeSet<String> { f.names().iter().cloned().collect() };
        assert_eq!(names(&got), names(&want), "{model}: tensor names");
        for name in want.names() {
            assert_eq!(
                got.info(name).unwrap().shape,
                want.info(name).unwrap().shape
            );
            assert!(
                values(&got, name) == values(&want, name),
                "{model} {name}: other values"
            );
        }

        let (cw, cg) = (
            json(&hf.join("config.json")),
            json(&out.join("config.json")),
        );
        for key in [
            "architectures",
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "tie_word_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "max_position_embeddings",
            "vocab_size",
            "head_dim",
            "rope_scaling",
        ] {
            if let Some(v) = cw.get(key) {
                assert_eq!(cg.get(key), Some(v), "{model} config.json {key}");
            }
        }
        assert_eq!(cg["torch_dtype"], "float32");

        // The tokenizer: llama.cpp's ids for the manifest's texts, BOS where the GGUF adds one, the template.
        let tok = Tokenizer::from_hf_dir(&out).unwrap();
        let from_gguf = Tokenizer::from_gguf(&gguf(model, "F32")).unwrap();
        let entry = manifest["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == model)
            .unwrap();
        for case in entry["tokenize"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["llamacpp_ids"].clone()).unwrap();
            assert_eq!(
                tok.encode(text, false, true).unwrap(),
                want,
                "{model} {text:?}"
            );
            assert_eq!(
                tok.encode(text, true, true).unwrap(),
                from_gguf.encode(text, true, true).unwrap(),
                "{model} {text:?} with BOS"
            );
        }
        assert_eq!(tok.adds_bos(), from_gguf.adds_bos(), "{model}");
        assert_eq!(tok.chat_template(), from_gguf.chat_template(), "{model}");
        assert_eq!(tok.bos_id(), from_gguf.bos_id(), "{model}");
        assert_eq!(tok.eos_id(), from_gguf.eos_id(), "{model}");
        println!(
            "{model}: {} tensors equal to the HF folder's, config and tokenizer as llama.cpp's",
            r.tensors
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn merged_folder_gives_the_adapters_logits() {
    let lora = json(&fixtures().join("tiny/lora-manifest.json"));
    let refs = json(&fixtures().join("tiny/gguf-hf-manifest.json"));
    let prompts: Vec<Vec<u32>> = serde_json::from_value(lora["prompts"].clone()).unwrap();
    let chat: Vec<Message> = serde_json::from_value(refs["chat"].clone()).unwrap();
    let dir = scratch("peft");
    for a in lora["adapters"].as_array().unwrap() {
        let model = a["model"].as_str().unwrap();
        let name = a["adapter"].as_str().unwrap();
        let adapter = LoraAdapter::load(&fixtures().join(a["dir"].as_str().unwrap())).unwrap();
        let g = gguf(model, "F32");
        let out = dir.join(format!("{model}-{name}"));
        let r = merge_gguf_to_hf(&g, Some(&adapter), DType::F32, &out).unwrap();
        assert_eq!(r.merged, adapter.modules().count());
        let merged = Transformer::from_hf_dir(&out).unwrap();
        let mut applied = Transformer::from_gguf(&g).unwrap();
        applied.set_adapter(Some(&adapter)).unwrap();
        let transformers = refs["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model && m["adapter"] == a["dir"]);
        for (i, p) in prompts.iter().enumerate() {
            let got = logits_all(&merged, p);
            let peft = rel_err(&got, &read_f32(a["logits"][i].as_str().unwrap()));
            let baimo = rel_err(&got, &logits_all(&applied, p));
            let tf =
                transformers.map(|t| rel_err(&got, &read_f32(t["logits"][i].as_str().unwrap())));
            let tf_s = tf.map_or("-".into(), |e| format!("{e:.1e}"));
            println!(
                "{model}/{name} merged into an HF folder, prompt {i}: max|err|/range {peft:.1e} vs PEFT, \
                 {baimo:.1e} vs the GGUF with the adapter, {tf_s} vs transformers on the folder"
            );
            assert!(peft < 1e-4 && baimo < 1e-4, "{model}/{name} prompt {i}");
            assert!(tf.is_none_or(|e| e < 1e-4), "{model}/{name} prompt {i}");
        }
        let Some(t) = transformers else { continue };
        // transformers' AutoTokenizer on the files Baimo wrote: the same ids as Baimo reading them.
        let tok = Tokenizer::from_hf_dir(&out).unwrap();
        for case in t["tokenize"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(
                tok.encode(text, false, true).unwrap(),
                want,
                "{model} {text:?}"
            );
        }
        let hello: Vec<u32> = serde_json::from_value(t["hello_with_specials"].clone()).unwrap();
        assert_eq!(tok.encode("Hello", true, true).unwrap(), hello, "{model}");
        let text = ChatTemplate::for_tokenizer(&tok)
            .unwrap()
            .render(&chat, true)
            .unwrap();
        assert_eq!(text, t["chat_text"].as_str().unwrap(), "{model} chat");
        let ids: Vec<u32> = serde_json::from_value(t["chat_ids"].clone()).unwrap();
        assert_eq!(tok.encode(&text, false, true).unwrap(), ids, "{model} chat");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A PEFT adapter folder with A and B of pseudo-random values (|x| ≤ 0.3, reproducible) for every
/// projection of `g`'s layers.
fn random_adapter(g: &GgufFile, dir: &Path) -> LoraAdapter {
    let rank = 4;
    let mut tensors = std::collections::HashMap::new();
    for info in &g.tensors {
        let Some(hf) = baimo_models::weights::gguf_to_hf_name(&info.name) else {
            continue;
        };
        let Some(module) = hf.strip_suffix(".weight").filter(|m| m.contains("_proj")) else {
            continue;
        };
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        let rand = |shape: (usize, usize)| {
            let n = shape.0 * shape.1;
            let v: Vec<f32> = (0..n)
                .map(|k| 0.3 * ((k as f32 * 12.9898 + rows as f32).sin()))
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let key = format!("base_model.model.{module}");
        tensors.insert(format!("{key}.lora_A.weight"), rand((rank, cols)));
        tensors.insert(format!("{key}.lora_B.weight"), rand((rows, rank)));
    }
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let cfg = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj",
        "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "bias": "none"}"#;
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    LoraAdapter::load(dir).unwrap()
}

#[test]
fn quantized_bases_are_dequantized() {
    let dir = scratch("quant");
    let prompt: Vec<u32> = (40..60).collect();
    for (model, ty) in [
        ("llama-q", "Q4_1"),
        ("llama-q", "Q4_K"),
        ("llama-q", "Q8_0"),
        ("qwen2-q", "Q4_K_M"),
    ] {
        let g = gguf(model, ty);
        let adapter = random_adapter(&g, &dir.join(format!("{model}-{ty}-adapter")));
        // The exact float computation of what the file stores, with the adapter applied unmerged.
        let mut want = Transformer::from_gguf_dequantized(&g).unwrap();
        let plain = logits_all(&want, &prompt);
        want.set_adapter(Some(&adapter)).unwrap();
        let want = logits_all(&want, &prompt);
        let gap = rel_err(&plain, &want);
        for (dtype, tol) in [
            (DType::F32, 1e-4f32),
            (DType::F16, 1e-2),
            (DType::BF16, 1e-1),
        ] {
            let out = dir.join(format!("{model}-{ty}-{dtype:?}"));
            merge_gguf_to_hf(&g, Some(&adapter), dtype, &out).unwrap();
            let files = SafeTensorsFiles::open(&out).unwrap();
            for name in files.names() {
                let stored = format!("{:?}", files.info(name).unwrap().dtype);
                assert_eq!(stored, format!("{dtype:?}"), "{model} {ty} {name}");
            }
            let e = rel_err(
                &logits_all(&Transformer::from_hf_dir(&out).unwrap(), &prompt),
                &want,
            );
            println!(
                "{model} {ty} + random adapter as an HF folder in {dtype:?}: max|err|/range {e:.1e} \
                 (the adapter moves the logits by {gap:.1e})"
            );
            assert!(e < tol && e < gap / 5.0, "{model} {ty} {dtype:?}: {e}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_adapter_for_another_model_writes_nothing_usable() {
    let dir = scratch("bad");
    let adapter = LoraAdapter::load(&fixtures().join("tiny/llama-gqa/lora-all")).unwrap();
    let out = dir.join("x");
    let e = merge_gguf_to_hf(&gguf("llama-q", "Q8_0"), Some(&adapter), DType::F16, &out)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter") || e.contains("shape"), "{e}");
    assert!(!out.join("model.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
