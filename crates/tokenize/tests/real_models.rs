//! Tokenizers of the real GGUF models in `$BAIMO_TEST_MODELS_DIR` (skipped with a note when
//! unset): from_gguf works, the embedded template is the one in tests/fixtures, and the rendered
//! prompt keeps `<|im_start|>` as a single token with parse_special.

mod common;

use baimo_tokenize::{ChatTemplate, Message, Tokenizer};

fn check(prefix: &str, fixture: &str, pre: &str, im_start: u32, im_end: u32) {
    let Some(path) = common::test_model(prefix) else {
        return;
    };
    let tok = Tokenizer::from_gguf_path(&path).unwrap();
    assert!(tok.kind().contains(pre), "{}", tok.kind());
    let fixture_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    assert_eq!(
        tok.chat_template(),
        Some(std::fs::read_to_string(fixture_path).unwrap().as_str())
    );
    let t = ChatTemplate::for_tokenizer(&tok).unwrap();
    let prompt = t
        .render(&[Message::new("user", "Write a haiku about Rust.")], true)
        .unwrap();
    let ids = tok.encode(&prompt, true, true).unwrap();
    let first_real = if tok.adds_bos() { 1 } else { 0 };
    assert_eq!(ids[first_real], im_start, "{prompt:?} -> {ids:?}");
    assert_eq!(tok.piece_to_id("<|im_start|>"), Some(im_start));
    assert!(tok.is_eog(im_end), "<|im_end|> ends generation");
    assert_eq!(tok.decode(&ids[first_real..], false).unwrap(), prompt);
    let plain = tok.encode(&prompt, false, false).unwrap();
    assert!(!plain.contains(&im_start));
}

#[test]
fn qwen25_coder_gguf() {
    check(
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-instruct.jinja",
        "qwen2",
        151644,
        151645,
    );
}

#[test]
fn smollm2_gguf() {
    check(
        "smollm2-135m-instruct",
        "smollm2-instruct.jinja",
        "smollm",
        1,
        2,
    );
}
