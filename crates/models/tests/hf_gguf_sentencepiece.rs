//! Hugging Face folder → GGUF with a SentencePiece tokenizer (`merge_hf_to_gguf`): a tiny random Llama folder
//! carrying Meta's Llama 2 tokenizer (shared/refdata/tokenizers/llama2/tokenizer.model, used in place) converts
//! to the tokenizer keys llama.cpp's converter wrote for that tokenizer (shared/refdata/vocab/
//! ggml-vocab-llama-spm.gguf: tokens, scores, types, special ids, flags), and the file tokenizes llama.cpp's 46
//! test cases as Meta's tokenizer does. With `tokenizer.json` alone (byte-fallback BPE, here the one Baimo
//! writes for that vocabulary, which has transformers' `LlamaConverter` vocabulary and merges) the tokens, types
//! and special ids are the same and scores ranked by the merges tokenize the same. A malformed
//! `tokenizer.model` is an error that names it, and no file is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baimo_formats::gguf::{GgmlType, GgufFile, Value};
use baimo_models::merge::{merge_hf_to_gguf, OutType};
use baimo_models::Transformer;
use baimo_tokenize::Tokenizer;
use candle_core::{Device, Tensor};

mod common;
use common::refdata;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baimo-spm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reference() -> GgufFile {
    GgufFile::open(refdata().join("vocab/ggml-vocab-llama-spm.gguf")).unwrap()
}

/// llama.cpp's test cases for this vocabulary: (text, ids without BOS).
fn cases() -> Vec<(String, Vec<u32>)> {
    let dir = refdata().join("vocab");
    let inp = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len() + 1);
    texts.into_iter().map(String::from).zip(ids).collect()
}

/// A one-layer Llama (hidden 16) with Llama 2's 32000-token vocabulary and Meta's tokenizer_config.json.
fn tiny_llama(dir: &Path) {
    tiny_llama_rows(dir, 32000)
}

/// [`tiny_llama`] with `rows` embedding rows (`vocab_size`).
fn tiny_llama_rows(dir: &Path, rows: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "vocab_size": {rows}, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let tokenizer_config = r#"{"add_bos_token": true, "add_eos_token": false, "bos_token": {"content": "<s>",
        "special": true}, "eos_token": "</s>", "unk_token": "<unk>", "pad_token": null, "legacy": false,
        "clean_up_tokenization_spaces": false, "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "LlamaTokenizer"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config).unwrap();
    let w = |rows: usize, cols: usize| {
        let v: Vec<f32> = (0..rows * cols)
            .map(|k| 0.1 * (k as f32 * 0.37).sin())
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    };
    let ones = Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), w(rows, 16));
    t.insert("model.norm.weight".to_string(), ones.clone());
    let layer = "model.layers.0";
    for n in ["input_layernorm", "post_attention_layernorm"] {
        t.insert(format!("{layer}.{n}.weight"), ones.clone());
    }
    for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        t.insert(format!("{layer}.self_attn.{p}.weight"), w(16, 16));
    }
    t.insert(format!("{layer}.mlp.gate_proj.weight"), w(32, 16));
    t.insert(format!("{layer}.mlp.up_proj.weight"), w(32, 16));
    t.insert(format!("{layer}.mlp.down_proj.weight"), w(16, 32));
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

/// Llama 2's vocabulary as the `tokenizer.json` Baimo writes for it (the llama.cpp reference's tokens and
/// scores, transformers' LlamaConverter pipeline: BPE with byte fallback, merges in score order).
fn tokenizer_json(dir: &Path) {
    let files = Tokenizer::from_gguf(&reference())
        .unwrap()
        .hf_files(None)
        .unwrap();
    std::fs::write(dir.join("tokenizer.json"), files.tokenizer.to_string()).unwrap();
}

fn convert(hf: &Path, out: &Path) -> GgufFile {
    merge_hf_to_gguf(hf, None, OutType::All(GgmlType::F32), None, out).unwrap();
    GgufFile::open(out).unwrap()
}

/// Keys the reference does not have: llama.cpp's converter of the time did not yet read `add_sep_token` from a
/// `TemplateProcessing` pair (gguf-py's `SpecialVocab` of llama-cpp-python 0.3.36, which Baimo follows, does).
const NEWER_THAN_REFERENCE: [&str; 1] = ["tokenizer.ggml.add_sep_token"];

/// How `g`'s `tokenizer.*` keys differ from `want`'s (`skip`: keys not compared), one line per key.
fn differences(g: &GgufFile, want: &GgufFile, skip: &[&str]) -> Vec<String> {
    let keys = |g: &GgufFile| -> Vec<String> {
        let mut k: Vec<String> = g
            .metadata
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with("tokenizer.") && !skip.contains(&k.as_str()))
            .collect();
        k.sort();
        k
    };
    let mut out = Vec::new();
    for k in keys(want) {
        let (a, b) = (g.get(&k), want.get(&k));
        match (a.and_then(Value::as_array), b.and_then(Value::as_array)) {
            (Some(x), Some(y)) if x.len() == y.len() => {
                if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
                    out.push(format!("{k}[{i}]: {:?} vs llama.cpp {:?}", x[i], y[i]));
                }
            }
            _ if a != b => out.push(format!(
                "{k}: {} vs llama.cpp {}",
                a.map_or("missing".into(), |v| format!("{:.80}", format!("{v:?}"))),
                b.map_or("missing".into(), |v| format!("{:.80}", format!("{v:?}")))
            )),
            _ => {}
        }
    }
    for k in keys(g) {
        if want.get(&k).is_none() {
            out.push(format!("{k}: llama.cpp has none"));
        }
    }
    out
}

/// Every case of llama.cpp's test tokenizes to its ids with the converted file's tokenizer.
fn check_cases(g: &GgufFile, what: &str) {
    let tok = Tokenizer::from_gguf(g).unwrap();
    let cases = cases();
    for (text, want) in &cases {
        assert_eq!(
            &tok.encode(text, false, false).unwrap(),
            want,
            "{what}: {text:?}"
        );
    }
    assert_eq!(tok.encode("Hello", true, false).unwrap(), [1, 15043]);
    println!(
        "{what}: {} of llama.cpp's cases tokenize alike",
        cases.len()
    );
}

#[test]
fn tokenizer_model_converts_as_llama_cpp() {
    let dir = scratch("model");
    let hf = dir.join("hf");
    tiny_llama(&hf);
    std::fs::copy(
        refdata().join("tokenizers/llama2/tokenizer.model"),
        hf.join("tokenizer.model"),
    )
    .unwrap();
    // Meta's folder has both files; the converter reads tokenizer.model, and SpecialVocab tokenizer.json's
    // added tokens (which is where `<unk>`'s id comes from).
    tokenizer_json(&hf);
    let g = convert(&hf, &dir.join("x.gguf"));
    let diffs = differences(&g, &reference(), &NEWER_THAN_REFERENCE);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    check_cases(&g, "tokenizer.model");
    let m = Transformer::from_gguf(&g).unwrap();
    assert_eq!(m.config().vocab_size, 32000);
    std::fs::remove_dir_all(&dir).ok();
}

/// llama.cpp's converter writes `add_bos_token = false` for a Llama with 49152 embedding rows (its "granite
/// small models" rule, which SmolLM2's GGUFs carry) even where tokenizer_config.json says true; one row fewer
/// and the config's flag stands.
#[test]
fn llama_of_49152_rows_adds_no_bos() {
    let dir = scratch("granite");
    for (rows, adds) in [(49152, false), (49151, true)] {
        let hf = dir.join(format!("hf{rows}"));
        tiny_llama_rows(&hf, rows);
        std::fs::copy(
            refdata().join("tokenizers/llama2/tokenizer.model"),
            hf.join("tokenizer.model"),
        )
        .unwrap();
        let g = convert(&hf, &dir.join(format!("{rows}.gguf")));
        let flag = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool);
        assert_eq!(flag, Some(adds), "{rows} rows");
        let tok = Tokenizer::from_gguf(&g).unwrap();
        assert_eq!(tok.adds_bos(), adds, "{rows} rows");
        assert_eq!(tok.vocab_size(), rows);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_json_alone_converts_with_ranked_scores() {
    let dir = scratch("json");
    let hf = dir.join("hf");
    tiny_llama(&hf);
    tokenizer_json(&hf);
    let g = convert(&hf, &dir.join("x.gguf"));
    let want = reference();
    let mut skip = NEWER_THAN_REFERENCE.to_vec();
    skip.push("tokenizer.ggml.scores");
    let diffs = differences(&g, &want, &skip);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // Scores follow the merges' order: the reference's order on every piece a merge makes.
    let scores = |g: &GgufFile| -> Vec<f32> {
        let a = g.get("tokenizer.ggml.scores").unwrap().as_array().unwrap();
        a.iter().map(|v| v.as_f32().unwrap()).collect()
    };
    let (got, theirs) = (scores(&g), scores(&want));
    let merged: Vec<usize> = (0..got.len()).filter(|&i| got[i] > -1e8).collect();
    assert!(
        merged.len() > 29000,
        "{} pieces made by merges",
        merged.len()
    );
    for w in merged.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            got[a] > got[b],
            theirs[a] > theirs[b],
            "pieces {a} and {b} ordered otherwise"
        );
    }
    check_cases(&g, "tokenizer.json");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn malformed_tokenizer_model_is_named_and_writes_nothing() {
    let dir = scratch("bad");
    let hf = dir.join("hf");
    tiny_llama(&hf);
    let out = dir.join("x.gguf");
    for (bytes, what) in [
        (vec![0xffu8; 64], "not a SentencePiece model"),
        (
            std::fs::read(refdata().join("tokenizers/llama2/tokenizer.model")).unwrap()[..1000]
                .to_vec(),
            "not a SentencePiece model",
        ),
        // Llama 3's tokenizer.model is a tiktoken ranks file, not SentencePiece.
        (
            std::fs::read(refdata().join("tokenizers/llama3/tokenizer.model")).unwrap(),
            "not a SentencePiece model",
        ),
    ] {
        std::fs::write(hf.join("tokenizer.model"), bytes).unwrap();
        let e = merge_hf_to_gguf(&hf, None, OutType::All(GgmlType::F16), None, &out)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.model") && e.contains(what), "{e}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&dir).ok();
}
