//! SentencePiece vocabularies (Llama 1/2, Mistral, TinyLlama: BPE with byte fallback) of a Hugging Face folder
//! as the GGUF `tokenizer.ggml.tokens` / `scores` / `token_type` llama.cpp's converter writes
//! (`tokenizer.ggml.model = "llama"`), from either file a publisher ships:
//!
//! - `tokenizer.model`, the SentencePiece `ModelProto` (read with the `sentencepiece-model` crate):
//!   `TextModel._create_vocab_sentencepiece`: every piece with its score and its type (unknown, control,
//!   unused, byte, else normal), ids up to the model's `vocab_size`, then `added_tokens.json` and
//!   `tokenizer_config.json`'s `added_tokens_decoder` over them (score -1000, control when special or
//!   special-looking, else user-defined with `▁` as a space), unfilled ids `[PAD{id}]`;
//! - `tokenizer.json` alone (`_set_vocab_llama_hf`, gguf-py `LlamaHfVocab`): the BPE's vocabulary with `<0xNN>`
//!   pieces as bytes and special tokens as control, then the added tokens beyond it (user-defined unless
//!   special). Two differences from gguf-py, both so that the file tokenizes as the folder does: each piece's
//!   score is minus the rank of the first merge that makes it (gguf-py writes -1000 for every piece, which
//!   leaves llama.cpp's SentencePiece tokenizer no merge order; the rank order is the one transformers'
//!   `LlamaConverter` derived the merges from), and the BPE's `unk_token` is typed unknown, as it is in
//!   `tokenizer.model` (gguf-py: control).

use std::collections::HashMap;
use std::path::Path;

use sentencepiece_model::{SentencePieceModel, Type};
use serde_json::Value as Json;

use crate::error::{Result, TokenizeError};
use crate::hf::{read_json, token_text};
use crate::hf_gguf::looks_special;

/// llama.cpp `llama_token_type` values (gguf-py `TokenType`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Score of a piece no merge makes (it is never the result of a merge, so any value tokenizes alike).
const NO_MERGE: f32 = -1e9;

/// Tokens, scores and types, one per id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

/// `_create_vocab_sentencepiece` for `dir/tokenizer.model`; `None` when the folder has no such file.
pub(crate) fn from_tokenizer_model(dir: &Path, vocab_size: usize) -> Result<Option<SpmVocab>> {
    let path = dir.join("tokenizer.model");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TokenizeError::io(&path, e)),
    };
    let model = parse_model(&bytes).map_err(|what| TokenizeError::Unconvertible {
        path: path.clone(),
        what,
    })?;
    let mut v = SpmVocab {
        tokens: (0..vocab_size).map(|i| format!("[PAD{i}]")).collect(),
        scores: vec![-10000.0; vocab_size],
        types: vec![UNUSED; vocab_size],
    };
    for (id, p) in model.pieces().iter().enumerate().take(vocab_size) {
        v.tokens[id] = p.piece().to_string();
        v.scores[id] = p.score();
        v.types[id] = match p.r#type() {
            Type::Unknown => UNKNOWN,
            Type::Control => CONTROL,
            Type::Unused => UNUSED,
            Type::Byte => BYTE,
            Type::Normal | Type::UserDefined => NORMAL,
        };
    }
    if let Some(Json::Object(added)) = read_json(&dir.join("added_tokens.json"))? {
        for (text, id) in added {
            let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) else {
                continue;
            };
            (v.tokens[id], v.scores[id], v.types[id]) = (text, -1000.0, USER_DEFINED);
        }
    }
    let cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let decoder = cfg.as_ref().and_then(|c| c.get("added_tokens_decoder"));
    if let Some(Json::Object(decoder)) = decoder {
        for (id, data) in decoder {
            let Some(id) = id.parse::<usize>().ok().filter(|&i| i < vocab_size) else {
                continue;
            };
            let Some(text) = data.get("content").and_then(Json::as_str) else {
                continue;
            };
            let special = data.get("special").and_then(Json::as_bool) == Some(true);
            (v.tokens[id], v.types[id]) = if special || looks_special(text) {
                (text.to_string(), CONTROL)
            } else {
                (text.replace('\u{2581}', " "), USER_DEFINED)
            };
            v.scores[id] = -1000.0;
        }
    }
    Ok(Some(v))
}

/// The `ModelProto` in `bytes`, or what is wrong with it.
fn parse_model(bytes: &[u8]) -> std::result::Result<SentencePieceModel, String> {
    let model = SentencePieceModel::from_slice(bytes)
        .map_err(|e| format!("not a SentencePiece model (protobuf ModelProto): {e}"))?;
    if model.pieces().is_empty() {
        return Err("a SentencePiece model without pieces".into());
    }
    if let Some(i) = model.pieces().iter().position(|p| p.piece().is_empty()) {
        return Err(format!("SentencePiece piece {i} is empty"));
    }
    Ok(model)
}

/// Whether `tokenizer.json` is SentencePiece-style BPE (gguf-py `LlamaHfVocab`'s test: BPE with byte fallback
/// and a `Sequence` decoder).
pub(crate) fn is_llama_hf(tj: &Json) -> bool {
    tj.pointer("/model/type").and_then(Json::as_str) == Some("BPE")
        && tj.pointer("/model/byte_fallback").and_then(Json::as_bool) == Some(true)
        && tj.pointer("/decoder/type").and_then(Json::as_str) == Some("Sequence")
}

/// `_set_vocab_llama_hf` for the parsed `tokenizer.json` `tj` of `dir` (with the two differences in the module
/// doc), padded with unused `[PAD{id}]` tokens to `vocab_size`.
pub(crate) fn from_tokenizer_json(
    tk: &tokenizers::Tokenizer,
    tj: &Json,
    cfg: Option<&Json>,
    vocab_size: usize,
) -> std::result::Result<SpmVocab, String> {
    let base = tk.get_vocab(false);
    let n_base = base.len();
    let mut by_id: Vec<Option<&str>> = vec![None; n_base];
    for (token, &id) in &base {
        let slot = by_id
            .get_mut(id as usize)
            .ok_or_else(|| format!("token {token:?} has id {id} in a vocabulary of {n_base}"))?;
        *slot = Some(token);
    }
    let added = tk.get_added_tokens_decoder();
    // transformers' `all_special_ids`: the named special tokens of tokenizer_config.json, and the added tokens
    // marked special.
    let mut special: Vec<u32> = added
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&id, _)| id)
        .collect();
    let named = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        .iter()
        .filter_map(|t| token_text(cfg?.get(format!("{t}_token").as_str())));
    let extra = cfg
        .and_then(|c| c.get("additional_special_tokens"))
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| token_text(Some(t)));
    special.extend(named.chain(extra).filter_map(|t| tk.token_to_id(&t)));
    let unk = tj.pointer("/model/unk_token").and_then(Json::as_str);
    let ranks = merge_ranks(tj)?;

    let mut v = SpmVocab {
        tokens: Vec::new(),
        scores: Vec::new(),
        types: Vec::new(),
    };
    for (id, token) in by_id.iter().enumerate() {
        let token = token.ok_or_else(|| format!("no token has id {id}"))?;
        let ty = if crate::build::parse_byte_piece(token).is_some() {
            BYTE
        } else if Some(token) == unk {
            UNKNOWN
        } else if special.contains(&(id as u32)) {
            CONTROL
        } else {
            NORMAL
        };
        let score = ranks.get(token).map_or(NO_MERGE, |&r| -(r as f32) - 1.0);
        v.tokens.push(token.to_string());
        v.scores.push(score);
        v.types.push(ty);
    }
    let mut beyond: Vec<(u32, &tokenizers::AddedToken)> = added
        .iter()
        .filter(|(&id, _)| id as usize >= n_base)
        .map(|(&id, t)| (id, t))
        .collect();
    beyond.sort_by_key(|(id, _)| *id);
    for (id, t) in beyond {
        if id as usize != v.tokens.len() {
            return Err(format!(
                "added token {:?} has id {id}, not the next id {}",
                t.content,
                v.tokens.len()
            ));
        }
        v.tokens.push(t.content.clone());
        v.scores.push(-1000.0);
        v.types.push(if special.contains(&id) {
            CONTROL
        } else {
            USER_DEFINED
        });
    }
    if v.tokens.len() > vocab_size {
        return Err(format!(
            "{} tokens for a model of vocab_size {vocab_size}",
            v.tokens.len()
        ));
    }
    for i in v.tokens.len()..vocab_size {
        v.tokens.push(format!("[PAD{i}]"));
        v.scores.push(-1000.0);
        v.types.push(UNUSED);
    }
    Ok(v)
}

/// For each piece a merge makes, the rank of the first such merge.
fn merge_ranks(tj: &Json) -> std::result::Result<HashMap<String, usize>, String> {
    let mut ranks = HashMap::new();
    let Some(list) = tj.pointer("/model/merges").and_then(Json::as_array) else {
        return Ok(ranks);
    };
    for (rank, m) in list.iter().enumerate() {
        let piece = match m {
            Json::String(s) => s.split_once(' ').map(|(l, r)| format!("{l}{r}")),
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(l), Some(r)) => Some(format!("{l}{r}")),
                _ => None,
            },
            _ => None,
        };
        let piece = piece.ok_or_else(|| format!("a merge is not two pieces: {m}"))?;
        ranks.entry(piece).or_insert(rank);
    }
    Ok(ranks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_models_are_named() {
        // Not protobuf at all (a tiktoken ranks line), a truncated message, an empty one.
        for (bytes, what) in [
            (&[0xff, 0xff, 0xff][..], "not a SentencePiece model"),
            (
                &[0x0a, 0x05, 0x0a, 0x03, b'a'][..],
                "not a SentencePiece model",
            ),
            // Protobuf skips fields it does not know: some text parses as a model without pieces.
            (&b"IQ== 0\nIg== 1\n"[..], "without pieces"),
            (&[][..], "without pieces"),
        ] {
            let e = parse_model(bytes).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
        // One piece "a" with score -1, then one with an empty text.
        let ok = [0x0a, 0x08, 0x0a, 0x01, b'a', 0x15, 0x00, 0x00, 0x80, 0xbf];
        let m = parse_model(&ok).unwrap();
        assert_eq!((m.pieces()[0].piece(), m.pieces()[0].score()), ("a", -1.0));
        let e = parse_model(&[&ok[..], &[0x0a, 0x00]].concat()).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn merge_ranks_in_both_formats() {
        let tj = serde_json::json!({"model": {"merges": ["▁ t", ["e", "r"], "▁t he", "e r"]}});
        let r = merge_ranks(&tj).unwrap();
        assert_eq!((r["▁t"], r["er"], r["▁the"]), (0, 1, 2));
        assert!(merge_ranks(&serde_json::json!({"model": {"merges": [3]}})).is_err());
    }

    #[test]
    fn llama_hf_is_byte_fallback_bpe_with_a_sequence_decoder() {
        let spm = serde_json::json!({"model": {"type": "BPE", "byte_fallback": true},
                                     "decoder": {"type": "Sequence"}});
        assert!(is_llama_hf(&spm));
        let gpt2 = serde_json::json!({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}});
        assert!(!is_llama_hf(&gpt2));
    }
}
