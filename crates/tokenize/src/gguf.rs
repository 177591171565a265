//! `Tokenizer::from_gguf`: the vocabulary stored in GGUF `tokenizer.ggml.*` keys.
//!
//! Follows llama.cpp `llama_vocab::impl::load`: model `gpt2` is byte-level BPE with a
//! pre-tokenizer chosen by `tokenizer.ggml.pre`, model `llama` is SentencePiece BPE from scores;
//! special ids and the `add_bos`/`add_eos`/`add_space_prefix` defaults per family, overridden by
//! the keys; control-looking tokens (EOT/EOG/FIM names) forced to control, and the
//! end-of-generation set built the same way.

use crate::build::{add_tokens, byte_level_bpe, sentencepiece_bpe};
use crate::error::{Result, TokenizeError};
use crate::pretok;
use crate::tokenizer::{Parts, PieceStyle, SpecialIds, Tokenizer};
use baimo_formats::gguf::{GgufHeader, Value};
use std::collections::BTreeSet;

/// llama.cpp `llama_token_type` values in `tokenizer.ggml.token_type`.
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Token texts llama.cpp treats as end of generation (`special_eog_ids`).
pub(crate) const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "</s>",
];
/// Candidates for the EOT id when `tokenizer.ggml.eot_token_id` is absent.
pub(crate) const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// FIM names llama.cpp forces to control; pad/repo/sep also end generation.
const FIM_CONTROL: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
];
const FIM_EOG: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

struct Meta<'a>(&'a GgufHeader);

impl<'a> Meta<'a> {
    fn str(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).and_then(Value::as_str)
    }
    fn req_str(&self, key: &str) -> Result<&'a str> {
        let v = self
            .0
            .get(key)
            .ok_or_else(|| TokenizeError::MissingKey { key: key.into() })?;
        v.as_str().ok_or_else(|| TokenizeError::BadKey {
            key: key.into(),
            expected: "a string",
        })
    }
    fn bool(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(Value::as_bool)
    }
    fn id(&self, key: &str, n_vocab: usize) -> Option<u32> {
        let id = self.0.get(key)?.as_u64()?;
        // llama.cpp ignores out-of-range ids ("bad special token") and keeps the default.
        (id < n_vocab as u64).then_some(id as u32)
    }
    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| TokenizeError::BadKey {
                key: key.into(),
                expected: "an array",
            }),
        }
    }
    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        let bad = || TokenizeError::BadKey {
            key: key.into(),
            expected: "an array of strings",
        };
        arr.iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_>>()
            .map(Some)
    }
}

/// What the tokenizer family (`tokenizer.ggml.model`) decides before the keys override it.
struct Family {
    tk: tokenizers::Tokenizer,
    kind: String,
    style: PieceStyle,
    ids: SpecialIds,
    add_bos: bool,
    strip_leading_space: bool,
}

/// The pipeline and llama.cpp's per-family defaults.
fn family(m: &Meta, model: &str, tokens: &[String], types: &[i64]) -> Result<Family> {
    let n = tokens.len();
    match model {
        "gpt2" => {
            let pre = m.str("tokenizer.ggml.pre").unwrap_or("default");
            let spec = pretok::lookup(pre).ok_or_else(|| TokenizeError::UnsupportedPre {
                name: pre.to_string(),
                known: pretok::known_names(),
            })?;
            let merges =
                m.strings("tokenizer.ggml.merges")?
                    .ok_or_else(|| TokenizeError::MissingKey {
                        key: "tokenizer.ggml.merges".into(),
                    })?;
            let tk = byte_level_bpe("GGUF", tokens, &merges, spec.regexes, spec.ignore_merges)?;
            let kind = if pre == spec.kind {
                format!("gpt2 byte-level BPE (pre: {pre})")
            } else {
                format!("gpt2 byte-level BPE (pre: {pre} = {})", spec.kind)
            };
            // llama.cpp's BPE defaults (bos = eos = 11) are placeholders; we leave them unset.
            Ok(Family {
                tk,
                kind,
                style: PieceStyle::ByteLevel,
                ids: SpecialIds::default(),
                add_bos: spec.add_bos,
                strip_leading_space: false,
            })
        }
        "llama" => {
            let scores: Vec<f32> = match m.array("tokenizer.ggml.scores")? {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                None => vec![0.0; n],
            };
            let add_space_prefix = m.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let unk = types
                .iter()
                .position(|&t| t == TYPE_UNKNOWN)
                .map(|i| tokens[i].as_str());
            let tk = sentencepiece_bpe("GGUF", tokens, &scores, unk, add_space_prefix)?;
            Ok(Family {
                tk,
                kind: "SentencePiece BPE".to_string(),
                style: PieceStyle::SentencePiece,
                ids: SpecialIds {
                    bos: (n > 1).then_some(1),
                    eos: (n > 2).then_some(2),
                    unk: (n > 0).then_some(0),
                    ..SpecialIds::default()
                },
                add_bos: true,
                strip_leading_space: add_space_prefix,
            })
        }
        other => Err(TokenizeError::UnsupportedModel {
            name: other.to_string(),
        }),
    }
}

/// Ids of the tokens whose text is in `names`, in vocabulary order.
fn find(tokens: &[String], names: &[&str]) -> Vec<u32> {
    let set: BTreeSet<&str> = names.iter().copied().collect();
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| set.contains(t.as_str()))
        .map(|(i, _)| i as u32)
        .collect()
}

/// EOT/EOM by name when the keys are absent, the end-of-generation set, and the control type
/// llama.cpp forces on every control-looking token it finds by name.
fn end_of_generation(
    m: &Meta,
    tokens: &[String],
    ids: &mut SpecialIds,
    types: &mut [i64],
) -> BTreeSet<u32> {
    let n = tokens.len();
    let first = |name: &str| find(tokens, &[name]).first().copied();
    if ids.eot.is_none() {
        // llama.cpp takes whichever name its hash map yields first; we take the list order.
        ids.eot = EOT_NAMES.iter().find_map(|name| first(name));
    }
    if ids.eom.is_none() {
        ids.eom = first("<|eom_id|>");
    }
    let mut eog: BTreeSet<u32> = find(tokens, EOG_NAMES).into_iter().collect();
    let fim_keys = [
        "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id",
        "tokenizer.ggml.fim_sep_token_id",
    ];
    for (key, names) in fim_keys.iter().zip(FIM_EOG) {
        if let Some(id) = m
            .id(key, n)
            .or_else(|| find(tokens, names).first().copied())
        {
            eog.insert(id);
        }
    }
    if let (Some(_), Some(_), Some(end)) =
        (first("<|return|>"), first("<|call|>"), first("<|end|>"))
    {
        eog.remove(&end); // gpt-oss harmony: <|end|> separates messages
    }
    let forced = eog
        .iter()
        .copied()
        .chain(ids.eot)
        .chain(ids.eom)
        .chain(find(tokens, FIM_CONTROL));
    for id in forced.collect::<Vec<_>>() {
        types[id as usize] = TYPE_CONTROL;
    }
    eog.extend(ids.eos);
    eog.extend(ids.eot);
    eog.extend(ids.eom);
    eog
}

/// Builds the tokenizer described by a GGUF file's metadata.
pub(crate) fn from_header(g: &GgufHeader) -> Result<Tokenizer> {
    let m = Meta(g);
    let model = m.req_str("tokenizer.ggml.model")?;
    let tokens = m
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| TokenizeError::MissingKey {
            key: "tokenizer.ggml.tokens".into(),
        })?;
    let n = tokens.len();
    let mut types: Vec<i64> = match m.array("tokenizer.ggml.token_type")? {
        Some(a) => a
            .iter()
            .map(|v| v.as_i64().unwrap_or(TYPE_NORMAL))
            .collect(),
        None => vec![TYPE_NORMAL; n],
    };
    if types.len() != n {
        let reason = format!("{} token types for {n} tokens", types.len());
        return Err(TokenizeError::vocab("GGUF", reason));
    }
    let Family {
        mut tk,
        kind,
        style,
        mut ids,
        mut add_bos,
        strip_leading_space,
    } = family(&m, model, &tokens, &types)?;
    if model == "gpt2"
        && m.str("tokenizer.ggml.pre")
            .and_then(pretok::lookup)
            .is_some_and(|s| s.no_bos)
    {
        ids.bos = None;
    }
    let key_ids = [
        ("tokenizer.ggml.bos_token_id", &mut ids.bos),
        ("tokenizer.ggml.eos_token_id", &mut ids.eos),
        ("tokenizer.ggml.eot_token_id", &mut ids.eot),
        ("tokenizer.ggml.eom_token_id", &mut ids.eom),
        ("tokenizer.ggml.unknown_token_id", &mut ids.unk),
        ("tokenizer.ggml.padding_token_id", &mut ids.pad),
    ];
    for (key, slot) in key_ids {
        if let Some(id) = m.id(key, n) {
            *slot = Some(id);
        }
    }
    if let Some(b) = m.bool("tokenizer.ggml.add_bos_token") {
        add_bos = b;
    }
    let add_eos = m.bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let eog = end_of_generation(&m, &tokens, &mut ids, &mut types);

    let of_type = |want: &[i64]| -> Vec<String> {
        (0..n)
            .filter(|&i| want.contains(&types[i]))
            .map(|i| tokens[i].clone())
            .collect()
    };
    add_tokens(
        &mut tk,
        &of_type(&[TYPE_CONTROL, TYPE_UNKNOWN]),
        &of_type(&[TYPE_USER_DEFINED]),
    )?;
    Tokenizer::from_parts(Parts {
        tk,
        n_vocab: n,
        kind,
        style,
        strip_leading_space,
        ids,
        add_bos,
        add_eos,
        eog,
        chat_template: m.str("tokenizer.chat_template").map(str::to_string),
        bos_str: None,
        eos_str: None,
    })
}
