//! llama.cpp `test-tokenizer-0` vectors: every case of `shared/refdata/vocab/*.inp/.out` must
//! tokenize exactly (no BOS, `parse_special = false`), and decode back where that round-trips.

mod common;

use baimo_tokenize::Tokenizer;

fn check(name: &str, expected_cases: usize) {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf(name)).unwrap();
    let cases = common::vocab_cases(name);
    assert_eq!(cases.len(), expected_cases, "{name}: case count");
    let mut failures = Vec::new();
    let mut round_trips = 0;
    for (text, want) in &cases {
        let got = tok.encode(text, false, false).unwrap();
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
            continue;
        }
        let back = tok.decode(&got, false).unwrap();
        if &back == text {
            round_trips += 1;
        }
    }
    eprintln!(
        "{name}: {}/{} cases match, {round_trips} round-trip",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every case decodes back to its input, including SentencePiece ones: the HF legacy decoder
    // strips exactly the dummy-prefix space the normalizer added.
    assert_eq!(
        round_trips,
        cases.len(),
        "{name}: decode(encode(x)) != x for some cases"
    );
}

#[test]
fn llama_spm() {
    check("llama-spm", 46);
}

#[test]
fn llama_bpe() {
    check("llama-bpe", 46);
}

#[test]
fn qwen2() {
    check("qwen2", 46);
}

#[test]
fn qwen35() {
    check("qwen35", 50);
}

#[test]
fn gpt_2() {
    check("gpt-2", 46);
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm", 46);
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder", 46);
}
