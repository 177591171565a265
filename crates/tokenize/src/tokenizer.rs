//! [`Tokenizer`]: a `tokenizers::Tokenizer` plus what the engine needs around it (special ids,
//! end-of-generation set, BOS policy, raw token bytes, chat template).

use crate::build::{char_to_byte, parse_byte_piece};
use crate::error::{Result, TokenizeError};
use std::collections::{BTreeSet, HashSet};

/// How a vocabulary piece spells its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceStyle {
    /// GPT-2 byte-to-unicode characters.
    ByteLevel,
    /// SentencePiece: "▁" for space, `<0xNN>` byte-fallback pieces.
    SentencePiece,
    /// The piece text is the bytes.
    Raw,
}

/// Special token ids, as llama.cpp's `llama_vocab` keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

/// Everything a constructor gathers before [`Tokenizer::from_parts`].
pub(crate) struct Parts {
    pub tk: tokenizers::Tokenizer,
    pub n_vocab: usize,
    pub kind: String,
    pub style: PieceStyle,
    /// The decoder drops one leading space (SentencePiece dummy prefix).
    pub strip_leading_space: bool,
    pub ids: SpecialIds,
    pub add_bos: bool,
    pub add_eos: bool,
    pub eog: BTreeSet<u32>,
    pub chat_template: Option<String>,
    pub bos_str: Option<String>,
    pub eos_str: Option<String>,
}

/// A text tokenizer built from tokenizer.json, GGUF metadata or a llama2.c vocabulary.
///
/// Encoding follows llama.cpp's `llama_tokenize(add_special, parse_special)`: with
/// `parse_special = false` control tokens written in the text are tokenized as plain text
/// (user-defined tokens still match, as in llama.cpp); with `true` they become their ids.
#[derive(Clone)]
pub struct Tokenizer {
    /// Matches special tokens in the input.
    special: tokenizers::Tokenizer,
    /// Same pipeline with `encode_special_tokens = true`: special tokens are plain text.
    plain: tokenizers::Tokenizer,
    n_vocab: usize,
    kind: String,
    ids: SpecialIds,
    add_bos: bool,
    add_eos: bool,
    eog: BTreeSet<u32>,
    special_ids: HashSet<u32>,
    pieces: Vec<Vec<u8>>,
    strip_leading_space: bool,
    chat_template: Option<String>,
    bos_str: Option<String>,
    eos_str: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("n_vocab", &self.n_vocab)
            .field("ids", &self.ids)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    pub(crate) fn from_parts(p: Parts) -> Result<Self> {
        let added = p.tk.get_added_tokens_decoder();
        let special_ids: HashSet<u32> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let c2b = char_to_byte();
        let pieces = (0..p.n_vocab as u32)
            .map(|id| {
                let Some(piece) = p.tk.id_to_token(id) else {
                    return Vec::new();
                };
                if added.get(&id).is_some_and(|t| t.special) {
                    return piece.into_bytes();
                }
                match p.style {
                    PieceStyle::ByteLevel => piece
                        .chars()
                        .map(|c| c2b.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| piece.clone().into_bytes()),
                    PieceStyle::SentencePiece => match parse_byte_piece(&piece) {
                        Some(b) => vec![b],
                        None => piece.replace('▁', " ").into_bytes(),
                    },
                    PieceStyle::Raw => piece.into_bytes(),
                }
            })
            .collect();
        let mut plain = p.tk.clone();
        plain.set_encode_special_tokens(true);
        let mut special = p.tk;
        special.set_encode_special_tokens(false);
        let name_of = |id: Option<u32>| id.and_then(|id| special.id_to_token(id));
        let bos_str = p.bos_str.or_else(|| name_of(p.ids.bos));
        let eos_str = p.eos_str.or_else(|| name_of(p.ids.eos));
        Ok(Tokenizer {
            plain,
            n_vocab: p.n_vocab,
            kind: p.kind,
            ids: p.ids,
            add_bos: p.add_bos && p.ids.bos.is_some(),
            add_eos: p.add_eos && p.ids.eos.is_some(),
            eog: p.eog,
            special_ids,
            pieces,
            strip_leading_space: p.strip_leading_space,
            chat_template: p.chat_template,
            bos_str,
            eos_str,
            special,
        })
    }

    /// Tokenizes `text`. `add_bos` is honoured only when the model adds BOS (`adds_bos`); it
    /// then also appends EOS if the model asks for that (`add_eos_token`), like llama.cpp's
    /// `add_special`. `parse_special` decides whether control-token text becomes control ids.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let tk = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        let enc = tk
            .encode_fast(text, false)
            .map_err(|e| TokenizeError::tk("encode", e))?;
        let mut out = Vec::with_capacity(enc.get_ids().len() + 2);
        if add_bos && self.add_bos {
            out.extend(self.ids.bos);
        }
        out.extend_from_slice(enc.get_ids());
        if add_bos && self.add_eos {
            out.extend(self.ids.eos);
        }
        Ok(out)
    }

    /// Detokenizes with the pipeline's decoder (HF `decode`); `skip_special` drops special
    /// (control) tokens. Invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.n_vocab) {
            return Err(TokenizeError::TokenOutOfRange {
                id,
                vocab_size: self.n_vocab,
            });
        }
        self.special
            .decode(ids, skip_special)
            .map_err(|e| TokenizeError::tk("decode", e))
    }

    /// The raw bytes one token stands for: byte-level characters and `<0xNN>` pieces resolved,
    /// "▁" as a space, special tokens as their text. Empty for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_bytes_ref(id).to_vec()
    }

    pub(crate) fn token_bytes_ref(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The vocabulary piece of `id` as stored (e.g. "Ġhello", "▁hello", "<|im_end|>").
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    /// The id of a vocabulary piece or added token, if any.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.special.token_to_id(piece)
    }

    pub fn special_ids(&self) -> SpecialIds {
        self.ids
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.ids.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.ids.eos
    }
    pub fn eot_id(&self) -> Option<u32> {
        self.ids.eot
    }
    pub fn eom_id(&self) -> Option<u32> {
        self.ids.eom
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.ids.pad
    }

    /// Whether generation should stop at `id` (EOS, EOT, EOM and the end-of-turn control tokens
    /// llama.cpp collects in `special_eog_ids`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> Vec<u32> {
        self.eog.iter().copied().collect()
    }

    /// Whether `id` is a special (control) token, i.e. one `decode(.., skip_special=true)` drops.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Whether `encode(.., add_bos = true, ..)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_bos = true, ..)` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Number of ids (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.n_vocab
    }

    /// The chat template shipped with the model (`tokenizer.chat_template` /
    /// tokenizer_config.json `chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// A human description, e.g. "gpt2 byte-level BPE (pre: qwen2)" or "SentencePiece BPE".
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The BOS token text for chat templates ("" when the model has none).
    pub fn bos_token_str(&self) -> &str {
        self.bos_str.as_deref().unwrap_or("")
    }

    /// The EOS token text for chat templates ("" when the model has none).
    pub fn eos_token_str(&self) -> &str {
        self.eos_str.as_deref().unwrap_or("")
    }

    /// Whether decoding drops one leading space (SentencePiece dummy prefix).
    pub(crate) fn strips_leading_space(&self) -> bool {
        self.strip_leading_space
    }

    /// The underlying `tokenizers` pipeline (special tokens matched).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.special
    }
}
