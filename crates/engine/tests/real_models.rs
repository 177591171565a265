//! The two real trained models against llama.cpp (llama-cpp-python 0.3.36) on the same GGUF files:
//! chat-template rendering, prompt tokenization, 32 greedy tokens for each of nine English and Chinese
//! prompts, and perplexity. References: `fixtures/real/` (made by `tools/make_real_refs.py`).

mod common;

use baimo_engine::{GenerateOptions, LoadOptions, SamplingParams, Session};
use baimo_tokenize::Message;
use serde_json::Value;

fn json(rel: &str) -> Value {
    let p = common::fixtures().join(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Catalog name for a reference entry.
fn catalog_name(reference_name: &str) -> &'static str {
    if reference_name.starts_with("qwen2.5-coder-0.5b") {
        "qwen2.5-coder-0.5b-instruct"
    } else if reference_name.starts_with("smollm2-135m") {
        "smollm2-135m-instruct"
    } else {
        panic!("unknown reference model {reference_name}")
    }
}

/// A greedy step whose top two candidates are closer than this (natural-log probability) is a near-tie.
/// Both engines quantize activations to int8 per block; a float summation-order difference occasionally puts
/// one activation on the other side of a rounding step, and over 24-30 layers and a long prompt that moves
/// logits by a few hundredths. At a near-tie either pick is right and the continuations then differ; the
/// comparison stops there (and says so), provided Baimo picked llama.cpp's runner-up. The bar is that
/// at least five prompts per model give the same 32 greedy tokens; the test asserts that.
///
/// 0.25: with RMSNorm, softmax and rotary angles rounded as ggml's, the widest margin at which a prompt parts is
/// 0.11 (SmolLM2 email-zh; Qwen 0.065); it was 0.365 before, when this bound was 0.4. A real bug moves logits
/// by far more.
const NEAR_TIE: f64 = 0.25;

/// Checks every prompt and returns how many gave all their tokens identical to llama.cpp.
fn check_greedy(model_ref: &Value) -> usize {
    let name = catalog_name(model_ref["name"].as_str().unwrap());
    let Some(path) = common::real_model(name) else {
        return usize::MAX;
    };
    let m = baimo_engine::load(&path, &LoadOptions::default()).unwrap();
    assert!(!m.template.is_fallback(), "{name} ships a chat template");
    for eog in ids(&model_ref["eog_ids"]) {
        assert!(
            m.tokenizer.is_eog(eog),
            "{name}: token {eog} ends generation in llama.cpp"
        );
    }
    let mut compared = 0;
    let prompts = model_ref["prompts"].as_array().unwrap();
    for p in prompts {
        let pid = p["id"].as_str().unwrap();
        let msgs: Vec<Message> = p["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| Message::new(x["role"].as_str().unwrap(), x["content"].as_str().unwrap()))
            .collect();
        let text = m.template.render(&msgs, true).unwrap();
        assert_eq!(
            text,
            p["prompt_text"].as_str().unwrap(),
            "{name}/{pid}: rendered template"
        );
        let add_bos = model_ref["add_bos"].as_bool().unwrap();
        let tokens = m.tokenizer.encode(&text, add_bos, true).unwrap();
        assert_eq!(tokens, ids(&p["prompt_ids"]), "{name}/{pid}: prompt tokens");

        let expected = ids(&p["output_ids"]);
        let opts = GenerateOptions {
            max_tokens: 32,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let mut s = Session::new(&m.model, 1024);
        let g = s
            .generate(&m.model, &m.tokenizer, &tokens, &opts, |_| true)
            .unwrap();
        let mut ours: Vec<u32> = g.tokens.iter().map(|t| t.id).collect();
        if ours.len() < 32 && g.finish_reason == baimo_engine::FinishReason::Stop {
            // llama.cpp's reference lists the end-of-generation token; Baimo stops before emitting it.
            if let Some(&last) = expected.last() {
                if m.tokenizer.is_eog(last) && ours.len() + 1 == expected.len() {
                    ours.push(last);
                }
            }
        }
        let steps = p["steps"].as_array().unwrap();
        let first_diff = ours.iter().zip(&expected).position(|(a, b)| a != b);
        let top_at = |i: usize| -> (f64, Vec<u32>) {
            let margin = steps[i]["margin_to_second"].as_f64().unwrap();
            let top = steps[i]["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t[0].as_u64().unwrap() as u32)
                .collect();
            (margin, top)
        };
        match first_diff {
            // Baimo ended (end-of-generation token) where llama.cpp went on: a divergence at that position.
            None if ours.len() < expected.len()
                && g.finish_reason == baimo_engine::FinishReason::Stop =>
            {
                let i = ours.len();
                let (margin, top) = top_at(i);
                assert!(
                    margin < NEAR_TIE && top.iter().any(|&t| m.tokenizer.is_eog(t)),
                    "{name}/{pid}: ended at token {i} where llama.cpp continued (margin {margin:.4}, top-5 {top:?})"
                );
                println!("{name}/{pid}: identical for {i} tokens, then a near-tie (llama.cpp margin {margin:.4}) went to end-of-generation");
            }
            None => {
                assert_eq!(
                    ours.len(),
                    expected.len(),
                    "{name}/{pid}: length\n ours {ours:?}\n ref  {expected:?}"
                );
                compared += 1;
                println!("{name}/{pid}: {} tokens identical to llama.cpp", ours.len());
            }
            Some(i) => {
                let margin = steps[i]["margin_to_second"].as_f64().unwrap();
                let top: Vec<u32> = steps[i]["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t[0].as_u64().unwrap() as u32)
                    .collect();
                assert!(
                    margin < NEAR_TIE && top.contains(&ours[i]),
                    "{name}/{pid}: token {i} differs (ours {}, llama.cpp {}; llama.cpp's top-2 margin {margin:.4}, top-5 {top:?})\n ours {ours:?}\n ref  {expected:?}",
                    ours[i], expected[i]
                );
                println!("{name}/{pid}: identical for {i} tokens, then a near-tie (llama.cpp margin {margin:.4}) went to its candidate {}", top.iter().position(|&t| t == ours[i]).unwrap_or(9) + 1);
            }
        }
    }
    println!(
        "{name}: {compared}/{} prompts identical to llama.cpp for all their tokens",
        prompts.len()
    );
    compared
}

/// Prompts that must give all their greedy tokens identical to llama.cpp. The issue asks for five per model;
/// Baimo reaches 6 of 9 for Qwen (the others part at near-ties after 8-25 identical tokens).
const QWEN_MIN_IDENTICAL: usize = 5;

#[test]
fn qwen25_coder_greedy_matches_llama_cpp() {
    let r = json("real/greedy.json");
    let same = check_greedy(
        r["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["arch"] == "qwen2")
            .unwrap(),
    );
    assert!(
        same >= QWEN_MIN_IDENTICAL,
        "only {same} prompts fully identical to llama.cpp"
    );
}

/// SmolLM2-135M at Q4_1 is small and coarsely quantized: its logits sit closer together, so near-ties come earlier.
/// The issue asks for five. Baimo reached 3-4 of 9 until its RMSNorm, softmax normalisation and rotary angles
/// rounded as ggml's do (f64 sums times f32 reciprocals; angles by repeated multiplication): 5 of 9 since, with
/// the scalar, AVX2 and AVX-512 kernels alike (every other prompt parts at a near-tie).
const SMOLLM_MIN_IDENTICAL: usize = 5;

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    let r = json("real/greedy.json");
    let same = check_greedy(
        r["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["arch"] == "llama")
            .unwrap(),
    );
    assert!(
        same >= SMOLLM_MIN_IDENTICAL,
        "only {same} prompts fully identical to llama.cpp"
    );
}

#[test]
fn perplexity_matches_llama_perplexity() {
    let r = json("real/perplexity.json");
    let text =
        std::fs::read_to_string(common::fixtures().join(r["text_file"].as_str().unwrap())).unwrap();
    for model_ref in r["models"].as_array().unwrap() {
        let name = catalog_name(model_ref["name"].as_str().unwrap());
        let Some(path) = common::real_model(name) else {
            continue;
        };
        let m = baimo_engine::load(&path, &LoadOptions::default()).unwrap();
        let run = model_ref["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["n_ctx"] == 128)
            .unwrap();
        let expected = run["final_ppl"].as_f64().unwrap();
        let rep = baimo_engine::perplexity(&m.model, &m.tokenizer, &text, 128, |_, _| {}).unwrap();
        assert_eq!(
            rep.chunks as u64,
            run["n_chunks"].as_u64().unwrap(),
            "{name}: chunk count"
        );
        let rel = (rep.ppl - expected).abs() / expected;
        println!(
            "{name}: ppl {:.4} vs llama-perplexity {expected:.4} (rel. diff {:.3}%)",
            rep.ppl,
            rel * 100.0
        );
        assert!(
            rel <= 0.01,
            "{name}: perplexity {:.4} vs llama.cpp {expected:.4}",
            rep.ppl
        );
    }
}
