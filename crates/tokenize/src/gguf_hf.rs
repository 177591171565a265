//! A GGUF vocabulary as Hugging Face tokenizer files (`tokenizer.json` + `tokenizer_config.json`), for
//! `baimo merge model.gguf ADAPTER -o DIR`: the pipeline [`crate::Tokenizer::from_gguf`] builds to tokenize as
//! llama.cpp does (byte-level BPE with llama.cpp's split rules, or SentencePiece BPE with byte fallback), saved
//! as it is, so that transformers' `AutoTokenizer` (`PreTrainedTokenizerFast`, which runs `tokenizer.json`
//! unchanged) tokenizes like llama.cpp too.
//!
//! What llama.cpp does outside the pipeline is written where transformers expects it: BOS/EOS added by a
//! `TemplateProcessing` post-processor when `tokenizer.ggml.add_bos_token` / `add_eos_token` say so (as
//! `LlamaTokenizerFast.update_post_processor` builds it), the special tokens and their ids in
//! `tokenizer_config.json`'s `added_tokens_decoder`, the chat template and `model_max_length`.

use serde_json::{json, Map, Value as Json};

use crate::error::{Result, TokenizeError};
use crate::Tokenizer;

/// The two tokenizer files of a Hugging Face folder, as JSON.
#[derive(Debug, Clone)]
pub struct HfTokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer: Json,
    /// `tokenizer_config.json`.
    pub config: Json,
}

/// The Hugging Face files of `tok` (built from GGUF metadata by [`Tokenizer::from_gguf`]);
/// `model_max_length` is the model's context length.
pub(crate) fn hf_files(
    tok: &Tokenizer,
    model_max_length: Option<usize>,
) -> Result<HfTokenizerFiles> {
    let inner = tok.inner();
    let mut tokenizer =
        serde_json::to_value(inner).map_err(|e| TokenizeError::tk("tokenizer.json", e))?;
    let piece = |id: Option<u32>| id.and_then(|id| tok.id_to_piece(id));
    let bos = piece(tok.bos_id()).filter(|_| tok.adds_bos());
    let eos = piece(tok.eos_id()).filter(|_| tok.adds_eos());
    if let Some(p) = post_processor(bos.as_deref(), tok.bos_id(), eos.as_deref(), tok.eos_id()) {
        tokenizer["post_processor"] = p;
    }

    let mut added: Vec<(u32, Json)> = inner
        .get_added_tokens_decoder()
        .into_iter()
        .map(|(id, t)| {
            let entry = json!({
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            });
            (id, entry)
        })
        .collect();
    added.sort_by_key(|(id, _)| *id);
    let mut decoder = Map::new();
    for (id, entry) in added {
        decoder.insert(id.to_string(), entry);
    }
    let name = |id: Option<u32>| piece(id).map_or(Json::Null, Json::String);
    let ids = tok.special_ids();
    let mut config = json!({
        "add_bos_token": tok.adds_bos(),
        "add_eos_token": tok.adds_eos(),
        "added_tokens_decoder": decoder,
        "bos_token": name(ids.bos),
        "eos_token": name(ids.eos),
        "unk_token": name(ids.unk),
        "pad_token": name(ids.pad),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = tok.chat_template() {
        config["chat_template"] = Json::String(t.to_string());
    }
    if let Some(n) = model_max_length {
        config["model_max_length"] = Json::from(n);
    }
    Ok(HfTokenizerFiles { tokenizer, config })
}

/// `TemplateProcessing` adding BOS before and EOS after each sequence (`$B` of a pair with type id 1), the
/// post-processor transformers' `LlamaTokenizerFast.update_post_processor` writes; `None` when nothing is
/// added.
fn post_processor(
    bos: Option<&str>,
    bos_id: Option<u32>,
    eos: Option<&str>,
    eos_id: Option<u32>,
) -> Option<Json> {
    let marks: Vec<(&str, u32)> = [(bos, bos_id), (eos, eos_id)]
        .into_iter()
        .filter_map(|(t, id)| Some((t?, id?)))
        .collect();
    if marks.is_empty() {
        return None;
    }
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let part = |s: &str, type_id: u32| -> Vec<Json> {
        let mut v = Vec::new();
        v.extend(bos.map(|t| special(t, type_id)));
        v.push(seq(s, type_id));
        v.extend(eos.map(|t| special(t, type_id)));
        v
    };
    let single = part("A", 0);
    let mut pair = single.clone();
    pair.extend(part("B", 1));
    let mut tokens = Map::new();
    for (t, id) in marks {
        tokens.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    Some(json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": tokens,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_processor_adds_what_is_asked() {
        assert!(post_processor(None, Some(1), None, Some(2)).is_none());
        let p = post_processor(Some("<s>"), Some(1), None, Some(2)).unwrap();
        let tk: tokenizers::processors::PostProcessorWrapper =
            serde_json::from_value(p.clone()).unwrap();
        drop(tk);
        assert_eq!(p["single"].as_array().unwrap().len(), 2);
        assert_eq!(p["pair"][2]["SpecialToken"]["type_id"], 1);
        let both = post_processor(Some("<s>"), Some(1), Some("</s>"), Some(2)).unwrap();
        assert_eq!(both["single"].as_array().unwrap().len(), 3);
        assert_eq!(both["special_tokens"]["</s>"]["ids"], json!([2]));
    }
}
