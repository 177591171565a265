//! `Tokenizer::from_hf_dir`: a Hugging Face model folder.
//!
//! `tokenizer.json` is loaded as is (`tokenizers::Tokenizer`). Around it, as transformers'
//! `PreTrainedTokenizerFast` and `GenerationConfig` do: `tokenizer_config.json` gives
//! `chat_template` (a string, or a list of `{name, template}` where "default" is used),
//! `bos_token` / `eos_token` (a string or an AddedToken object) and `add_bos_token`;
//! `chat_template.jinja` is used when the config has no template; `generation_config.json`
//! gives `eos_token_id` (an int or a list), all of which end generation.

use crate::error::{Result, TokenizeError};
use crate::gguf::{EOG_NAMES, EOT_NAMES};
use crate::tokenizer::{Parts, PieceStyle, SpecialIds, Tokenizer};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

pub(crate) fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|source| TokenizeError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenizeError::io(path, e)),
    }
}

/// `"<s>"` or `{"content": "<s>", ...}`.
pub(crate) fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` as a string, or the entry named "default" (else the first) of a list.
fn chat_template(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Json::as_str) == Some(name))
            };
            let entry = named("default").or_else(|| list.first())?;
            entry.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// `eos_token_id`: an int or a list of ints.
fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// How the pipeline's decoder spells bytes, judged from its JSON.
fn piece_style(decoder: &str) -> (PieceStyle, bool) {
    if decoder.contains("\"ByteLevel\"") {
        (PieceStyle::ByteLevel, false)
    } else if decoder.contains("\"ByteFallback\"")
        || decoder.contains("\"Metaspace\"")
        || decoder.contains('▁')
    {
        let strips = decoder.contains("\"Strip\"")
            || (decoder.contains("\"Metaspace\"") && !decoder.contains("\"never\""));
        (PieceStyle::SentencePiece, strips)
    } else {
        (PieceStyle::Raw, false)
    }
}

pub(crate) fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
    let tj_path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tj_path).map_err(|e| TokenizeError::io(&tj_path, e))?;
    let tk = tokenizers::Tokenizer::from_str(&text)
        .map_err(|e| TokenizeError::tk("tokenizer.json", format!("{}: {e}", tj_path.display())))?;
    let tj: Json = serde_json::from_str(&text).map_err(|source| TokenizeError::Json {
        path: tj_path.clone(),
        source,
    })?;
    let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);

    let (style, strip) = piece_style(&tj.get("decoder").map(Json::to_string).unwrap_or_default());
    let model_type = tj
        .pointer("/model/type")
        .and_then(Json::as_str)
        .unwrap_or("?");
    let kind = match style {
        PieceStyle::ByteLevel => format!("tokenizer.json ({model_type}, byte-level)"),
        PieceStyle::SentencePiece => format!("tokenizer.json ({model_type}, SentencePiece-style)"),
        PieceStyle::Raw => format!("tokenizer.json ({model_type})"),
    };
    let n_vocab = tk
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| m as usize + 1);

    let bos_str = token_text(cfg.get("bos_token"));
    let eos_str = token_text(cfg.get("eos_token"));
    let lookup = |s: &Option<String>| s.as_deref().and_then(|s| tk.token_to_id(s));
    let gen_eos = ids_of(gen.get("eos_token_id"));
    let mut ids = SpecialIds {
        bos: lookup(&bos_str).or_else(|| ids_of(gen.get("bos_token_id")).first().copied()),
        eos: lookup(&eos_str).or_else(|| gen_eos.first().copied()),
        pad: token_text(cfg.get("pad_token")).and_then(|s| tk.token_to_id(&s)),
        unk: token_text(cfg.get("unk_token")).and_then(|s| tk.token_to_id(&s)),
        ..SpecialIds::default()
    };
    let added = tk.get_added_tokens_decoder();
    let special_named = |names: &[&str]| -> Vec<u32> {
        let mut v: Vec<u32> = added
            .iter()
            .filter(|(_, t)| t.special && names.contains(&t.content.as_str()))
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    };
    // The first name of the list that is a special token, as GGUF loading picks it (not the lowest id: for
    // Qwen2 that would be <|endoftext|> where a GGUF says <|im_end|>).
    ids.eot = EOT_NAMES
        .iter()
        .find_map(|name| special_named(&[name]).first().copied());
    ids.eom = special_named(&["<|eom_id|>"]).first().copied();
    let mut eog: BTreeSet<u32> = special_named(EOG_NAMES).into_iter().collect();
    eog.extend(gen_eos.iter().copied());
    eog.extend(ids.eos);
    eog.extend(ids.eot);
    eog.extend(ids.eom);

    // add_bos_token when stated, else whether the post-processor itself adds BOS.
    let add_bos = match cfg.get("add_bos_token").and_then(Json::as_bool) {
        Some(b) => b,
        None => match (ids.bos, tk.encode("", true)) {
            (Some(bos), Ok(enc)) => enc.get_ids().first() == Some(&bos),
            _ => false,
        },
    };
    let add_eos = cfg
        .get("add_eos_token")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let template = match chat_template(cfg.get("chat_template")) {
        Some(t) => Some(t),
        None => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TokenizeError::io(dir.join("chat_template.jinja"), e)),
        },
    };
    Tokenizer::from_parts(Parts {
        tk,
        n_vocab,
        kind,
        style,
        strip_leading_space: strip,
        ids,
        add_bos,
        add_eos,
        eog,
        chat_template: template,
        bos_str,
        eos_str,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_shapes() {
        let obj: Json = serde_json::json!({"content": "<s>", "lstrip": false});
        assert_eq!(token_text(Some(&obj)).as_deref(), Some("<s>"));
        assert_eq!(token_text(Some(&Json::Null)), None);
        let list = serde_json::json!([{"name": "tool_use", "template": "A"}, {"name": "default", "template": "B"}]);
        assert_eq!(chat_template(Some(&list)).as_deref(), Some("B"));
        assert_eq!(ids_of(Some(&serde_json::json!([1, 2]))), vec![1, 2]);
        assert_eq!(ids_of(Some(&serde_json::json!(7))), vec![7]);
    }
}
