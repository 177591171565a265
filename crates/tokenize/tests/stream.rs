//! StreamDecoder: output pieces are always valid UTF-8 and concatenate to `decode`.

mod common;

use baimo_tokenize::{StreamDecoder, Tokenizer};

/// Streams `ids`; returns the pushed pieces (finish() appended last).
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = StreamDecoder::new(tok);
    let mut out: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    out.push(dec.finish());
    out
}

fn check_text(tok: &Tokenizer, text: &str) -> usize {
    let ids = tok.encode(text, false, false).unwrap();
    let pieces = stream(tok, &ids);
    for p in &pieces {
        assert!(
            !p.contains('\u{FFFD}'),
            "{text:?}: replacement char in streamed piece {p:?}"
        );
    }
    let joined: String = pieces.concat();
    assert_eq!(joined, tok.decode(&ids, false).unwrap(), "{text:?}");
    // Tokens that are not complete UTF-8 on their own (held back by the decoder).
    ids.iter()
        .filter(|&&id| std::str::from_utf8(&tok.token_bytes(id)).is_err())
        .count()
}

const TEXTS: &[&str] = &[
    "你好，世界！今天天气很好。",
    "Emoji: 🦀🫠👩‍👩‍👧 and 龘靐齉 rare characters",
    "  leading spaces and a tab\tthen 日本語のテキスト",
    "Hello",
];

#[test]
fn qwen2_stream_matches_decode() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("qwen2")).unwrap();
    let partial: usize = TEXTS.iter().map(|t| check_text(&tok, t)).sum();
    assert!(
        partial > 0,
        "the texts should split some character across byte-level tokens"
    );
    for t in TEXTS {
        let ids = tok.encode(t, false, false).unwrap();
        assert_eq!(stream(&tok, &ids).concat(), *t);
    }
}

#[test]
fn llama_spm_stream_matches_decode_and_strips_dummy_prefix() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("llama-spm")).unwrap();
    let partial: usize = TEXTS.iter().map(|t| check_text(&tok, t)).sum();
    assert!(partial > 0, "byte-fallback pieces split CJK characters");
    // "Hello" -> "▁Hello": the dummy-prefix space is dropped exactly once.
    let ids = tok.encode("Hello world", false, false).unwrap();
    assert_eq!(ids, [15043, 3186]);
    assert_eq!(stream(&tok, &ids), ["Hello", " world", ""]);
    // A CJK character outside the vocabulary arrives as three <0xNN> tokens.
    let ids = tok.encode("龘", false, false).unwrap();
    let mut dec = StreamDecoder::new(&tok);
    let outs: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    assert_eq!(outs.concat(), "龘");
    assert!(
        outs.iter().filter(|o| o.is_empty()).count() >= 2,
        "{ids:?} -> {outs:?}"
    );
    assert_eq!(dec.pending_len(), 0);
}

#[test]
fn skip_special_and_incomplete_tail() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("qwen2")).unwrap();
    let ids = tok.encode("<|im_start|>hi<|im_end|>", false, true).unwrap();
    assert_eq!(ids.first(), Some(&151644));
    let mut dec = StreamDecoder::with_skip_special(&tok, true);
    let text: String = ids.iter().map(|&id| dec.push(id)).collect::<String>() + &dec.finish();
    assert_eq!(text, "hi");
    assert_eq!(text, tok.decode(&ids, true).unwrap());
    // A lone lead byte is held back, then flushed as U+FFFD by finish().
    let lead = (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id) == [0xE4])
        .unwrap();
    let mut dec = StreamDecoder::new(&tok);
    assert_eq!(dec.push(lead), "");
    assert_eq!(dec.pending_len(), 1);
    assert_eq!(dec.finish(), "\u{FFFD}");
}
