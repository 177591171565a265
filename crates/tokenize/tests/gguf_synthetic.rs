//! Small GGUF vocabularies written in memory: error reporting and token-type semantics
//! (control tokens only with parse_special, user-defined tokens always, as llama.cpp's
//! `tokenizer_st_partition`).

use baimo_formats::gguf::{GgufFile, GgufWriter, Value};
use baimo_tokenize::{TokenizeError, Tokenizer};

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A byte-level BPE vocabulary: the 256 byte characters, then "ab", "<|ctl|>", "<ud>".
fn gpt2_writer(pre: Option<&str>) -> GgufWriter {
    let b2c = |b: u8| -> char {
        let printable =
            |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
        if printable(b) {
            b as char
        } else {
            char::from_u32(256 + (0..b).filter(|&x| !printable(x)).count() as u32).unwrap()
        }
    };
    let mut tokens: Vec<String> = (0..=255u8).map(|b| b2c(b).to_string()).collect();
    tokens.extend(["ab", "<|ctl|>", "<ud>"].map(String::from));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(1), Value::I32(3), Value::I32(4)]);
    let mut w = GgufWriter::new();
    w.add_kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    if let Some(pre) = pre {
        w.add_kv("tokenizer.ggml.pre", Value::String(pre.into()));
    }
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    w.add_kv("tokenizer.ggml.token_type", Value::Array(types));
    w.add_kv("tokenizer.ggml.merges", strings(&["a b"]));
    w.add_kv("tokenizer.ggml.eos_token_id", Value::U32(257));
    w
}

fn load(w: &GgufWriter) -> Result<Tokenizer, TokenizeError> {
    Tokenizer::from_gguf(&GgufFile::from_vec(w.to_bytes().unwrap()).unwrap())
}

#[test]
fn control_and_user_defined_tokens() {
    let tok = load(&gpt2_writer(Some("gpt-2"))).unwrap();
    assert_eq!(tok.kind(), "gpt2 byte-level BPE (pre: gpt-2)");
    assert_eq!(tok.vocab_size(), 259);
    assert_eq!(tok.encode("ab", false, false).unwrap(), [256]);
    // Control: matched only with parse_special.
    assert_eq!(tok.encode("<|ctl|>", false, true).unwrap(), [257]);
    assert!(!tok.encode("<|ctl|>", false, false).unwrap().contains(&257));
    // User-defined: matched either way.
    assert_eq!(
        tok.encode("x<ud>", false, false).unwrap(),
        [b'x' as u32, 258]
    );
    assert!(tok.is_eog(257) && tok.is_special(257) && !tok.is_special(258));
    assert_eq!(tok.decode(&[256, 257], true).unwrap(), "ab");
    assert_eq!(tok.decode(&[256, 257], false).unwrap(), "ab<|ctl|>");
    assert!(matches!(
        tok.decode(&[999], false),
        Err(TokenizeError::TokenOutOfRange { id: 999, .. })
    ));
    // gpt2 BPE does not add BOS unless add_bos_token says so.
    assert!(!tok.adds_bos());
}

#[test]
fn missing_pre_means_default_and_aliases_are_named() {
    let tok = load(&gpt2_writer(None)).unwrap();
    assert_eq!(tok.kind(), "gpt2 byte-level BPE (pre: default)");
    let tok = load(&gpt2_writer(Some("deepseek-r1-qwen"))).unwrap();
    assert_eq!(
        tok.kind(),
        "gpt2 byte-level BPE (pre: deepseek-r1-qwen = qwen2)"
    );
}

#[test]
fn unknown_pre_is_an_error() {
    let err = load(&gpt2_writer(Some("my-new-model"))).unwrap_err();
    match &err {
        TokenizeError::UnsupportedPre { name, .. } => assert_eq!(name, "my-new-model"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("my-new-model"));
}

#[test]
fn unsupported_model_and_missing_keys() {
    let mut w = gpt2_writer(Some("gpt-2"));
    w.add_kv("tokenizer.ggml.model", Value::String("bert".into()));
    assert!(matches!(load(&w), Err(TokenizeError::UnsupportedModel { name }) if name == "bert"));
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("llama".into()));
    assert!(
        matches!(load(&w), Err(TokenizeError::MissingKey { key }) if key == "tokenizer.ggml.model")
    );
    let mut w = GgufWriter::new();
    w.add_kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    assert!(
        matches!(load(&w), Err(TokenizeError::MissingKey { key }) if key == "tokenizer.ggml.tokens")
    );
    let mut w = gpt2_writer(Some("gpt-2"));
    w.add_kv("tokenizer.ggml.merges", strings(&["a q"]));
    assert!(matches!(load(&w), Err(TokenizeError::InvalidVocab { .. })));
}

/// SentencePiece with `add_space_prefix = false` and `add_bos_token = false`.
#[test]
fn spm_flags() {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["▁", "h", "i", "hi", "▁hi"].map(String::from));
    let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    types.extend(std::iter::repeat_n(Value::I32(6), 256));
    types.extend(std::iter::repeat_n(Value::I32(1), 5));
    let scores: Vec<Value> = (0..tokens.len())
        .map(|i| Value::F32(if i > 258 { -(i as f32) } else { 0.0 }))
        .collect();
    let mut w = GgufWriter::new();
    w.add_kv("tokenizer.ggml.model", Value::String("llama".into()));
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    w.add_kv("tokenizer.ggml.token_type", Value::Array(types));
    w.add_kv("tokenizer.ggml.scores", Value::Array(scores));
    let tok = load(&w).unwrap();
    assert_eq!(tok.kind(), "SentencePiece BPE");
    assert!(tok.adds_bos());
    assert_eq!(tok.encode("hi", true, false).unwrap(), [1, 263]); // "▁hi"
    assert_eq!(tok.encode("hi!", false, false).unwrap(), [263, 3 + 0x21]); // byte fallback
    assert_eq!(tok.decode(&[263, 3 + 0x21], false).unwrap(), "hi!");
    w.add_kv("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let tok = load(&w).unwrap();
    assert!(!tok.adds_bos());
    assert_eq!(tok.encode("hi", true, false).unwrap(), [262]);
    assert_eq!(tok.encode(" hi", false, false).unwrap(), [263]);
    assert_eq!(tok.decode(&[263], false).unwrap(), " hi");
}
