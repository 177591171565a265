//! The real trained llama2.c model stories260K reproduces llama2.c run.c token for token.

mod common;

use baimo_engine::{GenerateOptions, LoadOptions, SamplingParams, Session};
use baimo_models::{KvCache, Logits};
use serde_json::Value;

fn reference() -> Value {
    let p = common::refdata().join("models/stories260K.reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load() -> baimo_engine::LoadedModel {
    baimo_engine::load(
        &common::refdata().join("models/stories260K.bin"),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn encodes_like_run_c() {
    let m = load();
    let r = reference();
    for case in r["generated"]["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ours = m
            .tokenizer
            .encode(text, case["bos"].as_bool().unwrap(), false)
            .unwrap();
        assert_eq!(ours, ids(&case["ids"]), "encoding {text:?}");
    }
}

#[test]
fn greedy_matches_run_c() {
    let m = load();
    let r = reference();
    for case in r["generated"]["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["generated_ids"]);
        // generated_ids lists what was fed after BOS: the prompt's own tokens, then the argmax picks.
        let n_new = expected.len() - (prompt.len() - 1);
        let opts = GenerateOptions {
            max_tokens: n_new,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(&m.model, 512);
        let g = s
            .generate(&m.model, &m.tokenizer, &prompt, &opts, |_| true)
            .unwrap();
        let mut ours: Vec<u32> = prompt[1..].to_vec();
        ours.extend(g.tokens.iter().map(|t| t.id));
        assert_eq!(
            ours, expected,
            "greedy continuation of {:?}",
            case["prompt"]
        );
    }
    // The published text of llama2.c's own test (200 steps = 200 tokens after BOS, temperature 0).
    let published = &r["published"][0]["expected"];
    let opts = GenerateOptions {
        max_tokens: 200,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = Session::new(&m.model, 512);
    let g = s
        .generate(&m.model, &m.tokenizer, &[1], &opts, |_| true)
        .unwrap();
    assert_eq!(g.text.trim_end(), published.as_str().unwrap());
}

#[test]
fn logits_match_run_c() {
    let m = load();
    let r = reference();
    for case in r["generated"]["logits"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let expected: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let mut cache = KvCache::new(m.model.config(), 512);
        let ours = m
            .model
            .forward(&input, &mut cache, Logits::Last)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let err = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err <= 1e-4,
            "position {}: max abs error {err}",
            case["position"]
        );
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        assert_eq!(argmax(&ours), argmax(&expected));
    }
}
