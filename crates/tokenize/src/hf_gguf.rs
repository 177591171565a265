//! A Hugging Face tokenizer folder as GGUF `tokenizer.*` metadata: what llama.cpp's `convert_hf_to_gguf.py`
//! writes for a byte-level BPE vocabulary (`TextModel._set_vocab_gpt2`: `get_vocab_base` for the tokens and
//! their types, `get_vocab_base_pre` for `tokenizer.ggml.pre`, gguf-py's `SpecialVocab` for the merges, the
//! special ids, the `add_*_token` flags and the chat template), so that a model Baimo converts tokenizes in
//! llama.cpp exactly as one llama.cpp converted.
//!
//! The converter names the pre-tokenizer by hashing the token ids of a test text against a table of published
//! models, which a freshly trained vocabulary is not in. Here the `tokenizer.json`'s own pre-tokenizer is run
//! on that test text and compared with each of llama.cpp's split rules ([`crate::pretok`]): any vocabulary
//! that splits text by a rule llama.cpp implements is recognised, and no other.
//!
//! SentencePiece vocabularies (`tokenizer.model`, which the converter tries first, or a byte-fallback BPE
//! `tokenizer.json`) become `tokenizer.ggml.model = "llama"` with scores and types ([`crate::spm_gguf`]), with
//! the same special tokens, flags and template.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use baimo_formats::gguf::Value;
use serde_json::Value as Json;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::build::byte_level_pre_tokenizer;
use crate::error::{Result, TokenizeError};
use crate::hf::{read_json, token_text};
use crate::pretok;
use crate::spm_gguf;

/// llama.cpp `llama_token_type` values (gguf-py `TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Texts the pre-tokenizers must split alike: the converter's `chktxt` (whitespace runs, emoji with joiners,
/// digit runs, Khmer, CJK, Cyrillic, upper-case contractions), then Chinese prose and CRLF line ends.
const SAMPLES: &[&str] = &[
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis \
     concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 \
     ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? \
     I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "用一句话介绍一下通义千问。\r\n\r\nHello,  world!\tIt's 2024-05-17 12:34:56 —  Ünïcödé\u{a0}text  ",
];

/// What llama.cpp's converter writes for the tokenizer of a Hugging Face folder.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// `tokenizer.ggml.*` and `tokenizer.chat_template*` keys, in the converter's order.
    pub metadata: Vec<(String, Value)>,
    /// `add_prefix_space` of `tokenizer_config.json`, which the converter writes as
    /// `tokenizer.ggml.add_space_prefix` for Llama-architecture models only (`LlamaModel.set_vocab`).
    pub add_prefix_space: Option<bool>,
}

/// The GGUF vocabulary of the folder `dir` for a model with `vocab_size` embedding rows (ids the tokenizer
/// does not use become `[PAD{id}]`, as in the converter).
pub(crate) fn gguf_vocab(dir: &Path, vocab_size: usize) -> Result<GgufVocab> {
    let tj_path = dir.join("tokenizer.json");
    let unconvertible = |what: String| TokenizeError::Unconvertible {
        path: tj_path.clone(),
        what,
    };
    let text = match std::fs::read_to_string(&tj_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TokenizeError::io(&tj_path, e)),
    };
    let tj: Option<Json> = match &text {
        Some(t) => Some(
            serde_json::from_str(t).map_err(|source| TokenizeError::Json {
                path: tj_path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let config = read_json(&dir.join("config.json"))?;
    let add_prefix_space = cfg
        .as_ref()
        .and_then(|c| c.get("add_prefix_space"))
        .and_then(Json::as_bool);
    // The converter tries SentencePiece's tokenizer.model first (`LlamaModel.set_vocab`, `Qwen2Model.set_vocab`).
    if let Some(v) = spm_gguf::from_tokenizer_model(dir, vocab_size)? {
        let specials =
            Specials::load(dir, tj.as_ref(), cfg, config.as_ref(), Some(v.tokens.len()))?;
        return Ok(sentencepiece_vocab(v, specials, add_prefix_space));
    }
    let (Some(text), Some(tj)) = (text, tj) else {
        return Err(unconvertible(
            "there is neither a tokenizer.json nor a tokenizer.model".into(),
        ));
    };
    let tk = tokenizers::Tokenizer::from_str(&text)
        .map_err(|e| TokenizeError::tk("tokenizer.json", format!("{}: {e}", tj_path.display())))?;
    if spm_gguf::is_llama_hf(&tj) {
        let v = spm_gguf::from_tokenizer_json(&tk, &tj, cfg.as_ref(), vocab_size)
            .map_err(unconvertible)?;
        let specials = Specials::load(dir, Some(&tj), cfg, config.as_ref(), Some(v.tokens.len()))?;
        return Ok(sentencepiece_vocab(v, specials, add_prefix_space));
    }
    check_byte_level(&tj).map_err(unconvertible)?;
    let pre = pre_name(&tk)?.ok_or_else(|| {
        unconvertible(format!(
            "its pre-tokenizer splits text like none of llama.cpp's (tokenizer.ggml.pre: {})",
            pretok::known_names()
        ))
    })?;
    let (tokens, types) = tokens_and_types(&tk, vocab_size).map_err(unconvertible)?;
    let merges = merges(&tj).map_err(unconvertible)?;
    let specials = Specials::load(dir, Some(&tj), cfg, config.as_ref(), None)?;

    let mut metadata: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::from("gpt2")),
        ("tokenizer.ggml.pre".into(), Value::from(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ];
    if !merges.is_empty() {
        metadata.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ));
    }
    specials.write(&mut metadata);
    Ok(GgufVocab {
        metadata,
        add_prefix_space,
    })
}

/// `_set_vocab_sentencepiece` / `_set_vocab_llama_hf`: model `llama`, pre-tokenizer `default`, the tokens with
/// their scores and types, then the special tokens (no merges).
fn sentencepiece_vocab(
    v: spm_gguf::SpmVocab,
    specials: Specials,
    add_prefix_space: Option<bool>,
) -> GgufVocab {
    let mut metadata: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::from("llama")),
        ("tokenizer.ggml.pre".into(), Value::from("default")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(v.scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.into_iter().map(Value::I32).collect()),
        ),
    ];
    specials.write(&mut metadata);
    GgufVocab {
        metadata,
        add_prefix_space,
    }
}

/// Errors unless `tokenizer.json` is byte-level BPE (gguf-py `BpeVocab`'s test: a BPE model without byte
/// fallback and a `ByteLevel` decoder), with no normalizer llama.cpp would not apply either.
fn check_byte_level(tj: &Json) -> std::result::Result<(), String> {
    let only = "byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM style) and SentencePiece tokenizers (a \
                tokenizer.model, or BPE with byte_fallback and a Sequence decoder: Llama 2, Mistral style) are \
                converted";
    let model = tj
        .pointer("/model/type")
        .and_then(Json::as_str)
        .unwrap_or("?");
    if model != "BPE" {
        return Err(format!("the tokenizer model is {model}; {only}"));
    }
    if tj.pointer("/model/byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(format!(
            "BPE with byte_fallback but without a Sequence decoder; {only}"
        ));
    }
    let decoder = tj.pointer("/decoder/type").and_then(Json::as_str);
    if decoder != Some("ByteLevel") {
        return Err(format!(
            "the decoder is {}, not ByteLevel; {only}",
            decoder.unwrap_or("missing")
        ));
    }
    // Qwen2's tokenizer.json has an NFC normalizer, which llama.cpp does not apply and its converter ignores.
    match tj.get("normalizer") {
        None | Some(Json::Null) => Ok(()),
        Some(n) => match n.get("type").and_then(Json::as_str) {
            Some("NFC") => Ok(()),
            other => Err(format!(
                "the normalizer {} has no llama.cpp equivalent for byte-level BPE",
                other.unwrap_or("?")
            )),
        },
    }
}

/// llama.cpp's name for the split rule of `tk`'s pre-tokenizer, or `None` when no rule splits [`SAMPLES`]
/// into the same pieces.
fn pre_name(tk: &tokenizers::Tokenizer) -> Result<Option<&'static str>> {
    let Some(theirs) = tk.get_pre_tokenizer() else {
        return Ok(None);
    };
    let want = pieces(theirs)?;
    for (name, spec) in pretok::candidates() {
        if pieces(&byte_level_pre_tokenizer(spec.regexes)?)? == want {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// One piece of pre-tokenized text: its byte-level spelling and its byte offsets in the original.
type Piece = (String, (usize, usize));

/// The pieces `pre` splits each sample into.
fn pieces(pre: &impl PreTokenizer) -> Result<Vec<Vec<Piece>>> {
    SAMPLES
        .iter()
        .map(|text| {
            let mut s = PreTokenizedString::from(*text);
            pre.pre_tokenize(&mut s)
                .map_err(|e| TokenizeError::tk("pre-tokenizer", e))?;
            Ok(s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(piece, offsets, _)| (piece.to_string(), offsets))
                .collect())
        })
        .collect()
}

/// `get_vocab_base`: one token per id below `vocab_size`; added tokens are control tokens when special or
/// special-looking, else user-defined (with SentencePiece's `▁` as a space); unused ids `[PAD{id}]`.
fn tokens_and_types(
    tk: &tokenizers::Tokenizer,
    vocab_size: usize,
) -> std::result::Result<(Vec<String>, Vec<i32>), String> {
    let mut by_id: Vec<Option<String>> = vec![None; vocab_size];
    for (token, id) in tk.get_vocab(true) {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            format!("token {token:?} has id {id}, outside the model's vocab_size {vocab_size}")
        })?;
        *slot = Some(token);
    }
    let added = tk.get_added_tokens_decoder();
    Ok(by_id
        .into_iter()
        .enumerate()
        .map(|(i, token)| match (token, added.get(&(i as u32))) {
            (None, _) => (format!("[PAD{i}]"), UNUSED),
            (Some(_), Some(a)) if a.special || looks_special(&a.content) => {
                (a.content.clone(), CONTROL)
            }
            (Some(_), Some(a)) => (a.content.replace('\u{2581}', " "), USER_DEFINED),
            (Some(t), None) => (t, NORMAL),
        })
        .unzip())
}

/// The converter's `does_token_look_special`: added tokens some publishers forget to mark special.
pub(crate) fn looks_special(t: &str) -> bool {
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(&t)
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `model.merges` as `"left right"` strings; pairs (transformers ≥ 4.45) are joined with a space after
/// spelling spaces inside them as U+0120, as gguf-py does.
fn merges(tj: &Json) -> std::result::Result<Vec<String>, String> {
    let Some(list) = tj.pointer("/model/merges").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let part = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{120}"));
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => match (part(&pair[0]), part(&pair[1])) {
                (Some(l), Some(r)) => Ok(format!("{l} {r}")),
                _ => Err(format!("a merge is not two strings: {m}")),
            },
            _ => Err(format!("unknown merges format: {m}")),
        })
        .collect()
}

/// gguf-py `SpecialVocab` with `load_merges` (as vendored by llama-cpp-python 0.3.36, which made the fixtures):
/// special token ids (tokenizer_config.json's token names looked up in tokenizer.json's `added_tokens`, then
/// config.json's `*_token_id`), the `add_*_token` flags (the post-processor's, else tokenizer_config.json's)
/// and the chat template.
struct Specials {
    /// (type, id) in the order they were found.
    ids: Vec<(String, u32)>,
    /// (type, add) in the order they were found.
    add: Vec<(String, bool)>,
    chat_template: Option<Json>,
    n_vocab: Option<usize>,
}

fn set<T>(list: &mut Vec<(String, T)>, key: &str, value: T) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.to_string(), value)),
    }
}

impl Specials {
    /// `n_vocab`: ids at or above it are ignored (gguf-py's `SpecialVocab(n_vocab=...)`).
    fn load(
        dir: &Path,
        tj: Option<&Json>,
        mut cfg: Option<Json>,
        config: Option<&Json>,
        n_vocab: Option<usize>,
    ) -> Result<Specials> {
        let mut s = Specials {
            ids: Vec::new(),
            add: Vec::new(),
            chat_template: None,
            n_vocab,
        };
        let tj = tj.unwrap_or(&Json::Null);
        let mut types: Vec<&str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
        let name = |cfg: &Option<Json>, typ: &str| {
            cfg.as_ref()
                .and_then(|c| token_text(c.get(format!("{typ}_token").as_str())))
        };
        // SpecialVocab edits the config's names in place; so does this copy.
        let rename = |cfg: &mut Option<Json>, typ: &str, to: &Option<String>| {
            if let (Some(Json::Object(o)), Some(t)) = (cfg.as_mut(), to) {
                o.insert(format!("{typ}_token"), Json::String(t.clone()));
            }
        };
        let (mut bos, mut cls) = (name(&cfg, "bos"), name(&cfg, "cls"));
        let (mut eos, mut sep) = (name(&cfg, "eos"), name(&cfg, "sep"));
        if bos.is_none() && cls.is_some() && cfg.is_some() {
            bos = cls.clone();
            rename(&mut cfg, "bos", &bos);
        }
        if eos.is_none() && sep.is_some() && cfg.is_some() {
            eos = sep.clone();
            rename(&mut cfg, "eos", &eos);
        }
        let processors: Vec<&Json> = match tj.get("post_processor") {
            None | Some(Json::Null) => Vec::new(),
            Some(p) => match p.get("processors").and_then(Json::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![p],
            },
        };
        let special = |e: Option<&Json>| {
            e.and_then(|e| e.pointer("/SpecialToken/id"))
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        for p in processors {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    for typ in ["bos", "eos"] {
                        if !s.add.iter().any(|(t, _)| t == typ) {
                            s.add.push((typ.to_string(), false));
                        }
                    }
                }
                Some("RobertaProcessing") => {
                    for typ in ["bos", "eos", "sep"] {
                        set(&mut s.add, typ, true);
                    }
                    let first = |k: &str| p.pointer(&format!("/{k}/0")).and_then(Json::as_str);
                    if cls.is_none() && cfg.is_some() {
                        cls = first("cls").map(str::to_string).or_else(|| bos.clone());
                        rename(&mut cfg, "cls", &cls);
                    }
                    if sep.is_none() && cfg.is_some() {
                        sep = first("sep").map(str::to_string).or_else(|| eos.clone());
                        rename(&mut cfg, "sep", &sep);
                    }
                }
                // "Crude parsing of TemplateProcessing to determine if BOS/SEP/EOS should be added".
                Some("TemplateProcessing") => {
                    let none = Vec::new();
                    let single = p.get("single").and_then(Json::as_array).unwrap_or(&none);
                    let pair = p.get("pair").and_then(Json::as_array).unwrap_or(&none);
                    let (mut first, mut last) = (None, None);
                    if single.len() > 1 {
                        first = special(single.first());
                        if let Some(f) = &first {
                            if cfg.is_none() {
                                bos = first.clone();
                            } else if bos.as_ref() != Some(f) && cls.as_ref() != Some(f) {
                                // An unnamed leading token is taken as BOS (and CLS) where those are unnamed.
                                if bos.is_none() {
                                    bos = first.clone();
                                    rename(&mut cfg, "bos", &bos);
                                }
                                if cls.is_none() {
                                    cls = first.clone();
                                    rename(&mut cfg, "cls", &cls);
                                }
                            }
                            let adds = bos.as_ref() == Some(f) || cls.as_ref() == Some(f);
                            set(&mut s.add, "bos", adds);
                        }
                        last = special(single.last());
                        if let Some(l) = &last {
                            if cfg.is_none() {
                                eos = last.clone();
                            } else if eos.as_ref() != Some(l) {
                                // The old EOS stays as end-of-turn (or end-of-message).
                                for extra in ["eot", "eom"] {
                                    if !types.contains(&extra) {
                                        types.push(extra);
                                        rename(&mut cfg, extra, &eos);
                                        break;
                                    }
                                }
                                eos = last.clone();
                                rename(&mut cfg, "eos", &eos);
                            }
                            set(&mut s.add, "eos", true);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && special(pair.first()) == first);
                        let stop = pair.len()
                            - usize::from(last.is_some() && special(pair.last()) == last);
                        let mid = pair.get(start..stop).unwrap_or(&[]);
                        let is_seq = |e: Option<&Json>, id: &str| {
                            e.and_then(|e| e.pointer("/Sequence/id"))
                                .and_then(Json::as_str)
                                == Some(id)
                        };
                        if mid.len() > 2 && is_seq(mid.first(), "A") && is_seq(mid.last(), "B") {
                            let inner = &mid[1..mid.len() - 1];
                            let ends = |t: &Option<String>| t.is_some() && (*t == sep || *t == eos);
                            let mut add_sep = ends(&special(inner.first())) && last.is_none();
                            if inner.len() == 2 && ends(&special(inner.get(1))) {
                                add_sep = true;
                            }
                            set(&mut s.add, "sep", add_sep);
                            if add_sep && sep.is_none() && cfg.is_some() {
                                rename(&mut cfg, "sep", &eos);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(c) = &cfg {
            s.chat_template = match c.get("chat_template") {
                Some(t) => Some(t.clone()),
                None => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
                    Ok(t) => Some(Json::String(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        read_json(&dir.join("chat_template.json"))?
                            .and_then(|j| j.get("chat_template").cloned())
                    }
                    Err(e) => return Err(TokenizeError::io(dir.join("chat_template.jinja"), e)),
                },
            };
            let added = tj.get("added_tokens").and_then(Json::as_array);
            for typ in &types {
                // The post-processor's flags win over the config's.
                let flag = c
                    .get(format!("add_{typ}_token").as_str())
                    .and_then(Json::as_bool);
                if let (Some(b), false) = (flag, s.add.iter().any(|(t, _)| t == typ)) {
                    s.add.push((typ.to_string(), b));
                }
                let Some(content) = token_text(c.get(format!("{typ}_token").as_str())) else {
                    continue;
                };
                let id = added.and_then(|a| {
                    a.iter()
                        .find(|t| t.get("content").and_then(Json::as_str) == Some(&content))
                        .and_then(|t| t.get("id"))
                });
                s.set_id(typ, id, dir)?;
            }
        }
        for typ in &types {
            s.set_id(
                typ,
                config.and_then(|c| c.get(format!("{typ}_token_id").as_str())),
                dir,
            )?;
        }
        Ok(s)
    }

    /// `_set_special_token`: the first id found for a type wins; only integers count.
    fn set_id(&mut self, typ: &str, id: Option<&Json>, dir: &Path) -> Result<()> {
        let Some(n) = id.filter(|v| v.is_i64() || v.is_u64()) else {
            return Ok(());
        };
        let id = n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| TokenizeError::Unconvertible {
                path: PathBuf::from(dir),
                what: format!("invalid {typ} token id {n}"),
            })?;
        let in_range = self.n_vocab.is_none_or(|n| (id as usize) < n);
        if in_range && !self.ids.iter().any(|(t, _)| t == typ) {
            self.ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    /// `SpecialVocab.add_to_gguf` (after the merges): ids, the flags gguf-py has keys for, the template.
    fn write(self, out: &mut Vec<(String, Value)>) {
        for (typ, id) in self.ids {
            let key = match typ.as_str() {
                "unk" => "unknown",
                "sep" => "seperator", // sic: llama.cpp's key
                "pad" => "padding",
                other => other,
            };
            out.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
        for (typ, add) in self.add {
            if ["bos", "eos", "sep"].contains(&typ.as_str()) {
                out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(add)));
            }
        }
        match self.chat_template {
            Some(Json::String(t)) => out.push(("tokenizer.chat_template".into(), Value::String(t))),
            // gguf-py `add_chat_template` for a list: "default" as the template, the others by name.
            Some(Json::Array(list)) => {
                let mut names = Vec::new();
                let mut default = None;
                for e in &list {
                    let name: String = e
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    let Some(t) = e.get("template").and_then(Json::as_str) else {
                        continue;
                    };
                    if name == "default" {
                        default = Some(t.to_string());
                    } else if !name.is_empty() {
                        out.push((format!("tokenizer.chat_template.{name}"), Value::from(t)));
                        names.push(Value::String(name));
                    }
                }
                if !names.is_empty() {
                    out.push(("tokenizer.chat_templates".into(), Value::Array(names)));
                }
                if let Some(t) = default {
                    out.push(("tokenizer.chat_template".into(), Value::String(t)));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_in_both_formats() {
        let tj = serde_json::json!({"model": {"merges": [["Ġ", "t"], ["a b", "c"]]}});
        assert_eq!(merges(&tj).unwrap(), vec!["Ġ t", "aĠb c"]);
        let tj = serde_json::json!({"model": {"merges": ["Ġ t"]}});
        assert_eq!(merges(&tj).unwrap(), vec!["Ġ t"]);
        assert!(merges(&serde_json::json!({"model": {"merges": [1]}})).is_err());
    }

    #[test]
    fn byte_level_only() {
        let ok = serde_json::json!({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"},
                                    "normalizer": {"type": "NFC"}});
        assert!(check_byte_level(&ok).is_ok());
        let spm = serde_json::json!({"model": {"type": "BPE", "byte_fallback": true},
                                     "decoder": {"type": "Sequence"}});
        assert!(check_byte_level(&spm)
            .unwrap_err()
            .contains("byte_fallback"));
        let uni = serde_json::json!({"model": {"type": "Unigram"}});
        assert!(check_byte_level(&uni).unwrap_err().contains("Unigram"));
        let lower = serde_json::json!({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"},
                                       "normalizer": {"type": "Lowercase"}});
        assert!(check_byte_level(&lower).unwrap_err().contains("Lowercase"));
    }

    #[test]
    fn special_looking_tokens() {
        assert!(looks_special("<|im_start|>") && looks_special("<｜end▁of▁sentence｜>"));
        assert!(looks_special("<unused12>") && !looks_special("<tool_call>"));
    }
}
