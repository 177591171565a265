//! Cross-checks against the official tokenizer files in `shared/refdata/tokenizers` (see its
//! README): the Llama 3 `tokenizer.json`, Meta's and Qwen's tiktoken ranks, and llama2.c's
//! `tokenizer.bin`, with the published reference vectors.

mod common;

use baimo_tokenize::Tokenizer;
use base64::Engine;
use std::path::PathBuf;

fn tokdir(sub: &str) -> PathBuf {
    common::refdata().join("tokenizers").join(sub)
}

/// `(bytes, rank)` of a tiktoken ranks file.
fn tiktoken_ranks(path: &std::path::Path) -> Vec<(Vec<u8>, u32)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (b64, rank) = l.split_once(' ').unwrap();
            (
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
                rank.parse().unwrap(),
            )
        })
        .collect()
}

const META_SENTENCE: &str = "This is a test sentence.";
const META_IDS: [u32; 6] = [2028, 374, 264, 1296, 11914, 13];

#[test]
fn llama3_tokenizer_json_matches_vocab_vectors() {
    let tok = Tokenizer::from_hf_dir(&tokdir("llama3")).unwrap();
    assert!(tok.kind().contains("byte-level"), "{}", tok.kind());
    assert_eq!(tok.vocab_size(), 128256);
    for (text, want) in common::vocab_cases("llama-bpe") {
        assert_eq!(tok.encode(&text, false, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text);
    }
    assert_eq!(tok.encode(META_SENTENCE, false, false).unwrap(), META_IDS);
    // Meta's chat format for one user message (llama-models test_tokenizer.py).
    let chat = "<|start_header_id|>user<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>";
    let ids = tok.encode(chat, false, true).unwrap();
    assert_eq!(
        ids,
        [128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009]
    );
    // Without parse_special the header markers are plain text.
    assert!(!tok.encode(chat, false, false).unwrap().contains(&128006));
    assert!(tok.is_eog(128009), "<|eot_id|> ends generation");
    // No tokenizer_config.json here and the post-processor adds nothing: no BOS.
    assert!(!tok.adds_bos());
}

#[test]
fn llama3_tokenizer_config_adds_bos_and_eos() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tokdir("llama3").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let cfg = r#"{"bos_token": {"content": "<|begin_of_text|>", "special": true}, "eos_token": "<|end_of_text|>",
                 "add_bos_token": true, "add_eos_token": true, "chat_template": [{"name": "default", "template": "{{ bos_token }}"}]}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [128001, 128009]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    let ids = tok.encode(META_SENTENCE, true, false).unwrap();
    assert_eq!(ids, [128000, 2028, 374, 264, 1296, 11914, 13, 128001]);
    assert_eq!(tok.bos_token_str(), "<|begin_of_text|>");
    assert_eq!(tok.eos_token_str(), "<|end_of_text|>");
    assert_eq!(tok.chat_template(), Some("{{ bos_token }}"));
    assert!(tok.is_eog(128001) && tok.is_eog(128009) && !tok.is_eog(128000));
}

#[test]
fn llama3_gguf_meta_vectors_and_ranks() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("llama-bpe")).unwrap();
    // llama.cpp: the llama3 pre-tokenizer type adds BOS by default.
    assert!(tok.adds_bos());
    let mut want = vec![128000];
    want.extend(META_IDS);
    assert_eq!(tok.encode(META_SENTENCE, true, false).unwrap(), want);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.eot_id()),
        (Some(128000), Some(128001), Some(128009))
    );
    assert!(tok.is_eog(128001) && tok.is_eog(128009));
    // The GGUF pieces are the byte-level form of Meta's tiktoken ranks.
    let ranks = tiktoken_ranks(&tokdir("llama3").join("tokenizer.model"));
    assert_eq!(ranks.len(), 128000);
    for (bytes, rank) in &ranks {
        assert_eq!(&tok.token_bytes(*rank), bytes, "rank {rank}");
    }
    assert_eq!(tok.token_bytes(128009), b"<|eot_id|>");
}

/// Merges implied by tiktoken ranks: for each token, run rank-BPE on its bytes allowing only
/// lower ranks; the last two parts are its merge (how HF converts tiktoken files).
fn merges_from_ranks(ranks: &[(Vec<u8>, u32)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let rank_of: std::collections::HashMap<&[u8], u32> =
        ranks.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
    let mut sorted: Vec<&(Vec<u8>, u32)> = ranks.iter().filter(|(b, _)| b.len() > 1).collect();
    sorted.sort_by_key(|(_, r)| *r);
    sorted
        .into_iter()
        .map(|(token, rank)| {
            let mut parts: Vec<Vec<u8>> = token.iter().map(|b| vec![*b]).collect();
            loop {
                let best = (0..parts.len() - 1)
                    .filter_map(|i| {
                        let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                        rank_of
                            .get(joined.as_slice())
                            .filter(|r| *r < rank)
                            .map(|r| (*r, i))
                    })
                    .min();
                let Some((_, i)) = best else { break };
                let right = parts.remove(i + 1);
                parts[i].extend(right);
            }
            assert_eq!(parts.len(), 2, "token of rank {rank} does not split in two");
            (parts[0].clone(), parts[1].clone())
        })
        .collect()
}

#[test]
fn qwen_tiktoken_agrees_with_qwen2_gguf() {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;

    let gguf = Tokenizer::from_gguf_path(&common::vocab_gguf("qwen2")).unwrap();
    let ranks = tiktoken_ranks(&tokdir("qwen").join("qwen.tiktoken"));
    assert_eq!(ranks.len(), 151643);
    for (bytes, rank) in &ranks {
        assert_eq!(&gguf.token_bytes(*rank), bytes, "rank {rank}");
    }
    // An independent pipeline from the ranks alone, with the Qwen2 split rule from the README.
    let b2c = |b: &[u8]| -> String { b.iter().map(|&x| byte_char(x)).collect() };
    let vocab: ahash::AHashMap<String, u32> = ranks.iter().map(|(b, r)| (b2c(b), *r)).collect();
    let merges = merges_from_ranks(&ranks)
        .iter()
        .map(|(l, r)| (b2c(l), b2c(r)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut reference = tokenizers::Tokenizer::new(bpe);
    let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        tokenizers::SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    reference.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])));
    let mut texts: Vec<String> = common::vocab_cases("qwen2")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    texts.extend(
        [
            "你好，世界！今天天气很好。",
            "fn main() {\n    println!(\"{}\", 1234567);\n}\n",
            "🦀🫠 naïve café – “quotes”",
            "\u{3000}全角 ｅｘａｍｐｌｅ",
        ]
        .map(String::from),
    );
    for text in texts {
        let want = reference
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(gguf.encode(&text, false, false).unwrap(), want, "{text:?}");
    }
}

/// GPT-2 `bytes_to_unicode` for one byte.
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let offset = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + offset).unwrap()
}

#[test]
fn llama2c_tokenizer_bin_vectors() {
    let tok = Tokenizer::from_llama2c(&tokdir("llama2").join("tokenizer.bin"), 32000).unwrap();
    assert!(tok.adds_bos());
    let cases: [(&str, &[u32]); 5] = [
        ("", &[1]),
        ("I believe the meaning of life is", &[1, 306, 4658, 278, 6593, 310, 2834, 338]),
        ("Simply put, the theory of relativity states that ", &[1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871]),
        ("A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
         &[1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13, 4706, 6324, 14332, 29892, 13, 13, 4706, 306, 925, 29871]),
        ("Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
         &[1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449, 276, 316, 2778, 13, 4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318, 13, 4706, 715, 1878, 330, 3055, 1725, 1149, 330, 3055, 1725, 4639, 28754, 13, 4706, 923, 968, 1149]),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text, true, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(want, true).unwrap(), text);
    }
    // Same vocabulary as the Llama 2 GGUF: the llama.cpp vectors hold too.
    for (text, want) in common::vocab_cases("llama-spm") {
        assert_eq!(tok.encode(&text, false, false).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.token_bytes(13), b"\n");
    assert_eq!(tok.token_bytes(29871), b" ");
}
