//! `Tokenizer::from_llama2c`: llama2.c `tokenizer.bin` / `tok*.bin`.
//!
//! Layout (llama2.c `tokenizer.py` export, read by `run.c build_tokenizer`): i32
//! `max_token_length`, then per id an f32 score, an i32 byte length and the bytes. Pieces are
//! SentencePiece pieces with "▁" already turned into spaces; ids 0..2 are `<unk>`, `\n<s>\n`,
//! `\n</s>\n`, then the 256 `<0xNN>` byte pieces. run.c encodes like SentencePiece BPE (best
//! score pair first, byte fallback at +3, dummy-prefix space, BOS), so we build the same
//! SentencePiece pipeline as for GGUF `llama` vocabularies. The file is read by
//! `baimo_formats::llama2c::read_vocab`.

use crate::build::{add_tokens, parse_byte_piece, sentencepiece_bpe};
use crate::error::{Result, TokenizeError};
use crate::tokenizer::{Parts, PieceStyle, SpecialIds, Tokenizer};
use std::path::Path;

pub(crate) fn from_llama2c(path: &Path, vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size < 3 {
        return Err(TokenizeError::vocab(
            path.display().to_string(),
            "vocab_size must be at least 3",
        ));
    }
    let records = baimo_formats::llama2c::read_vocab(path, vocab_size)?.tokens;
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    for (id, (piece, score)) in records.into_iter().enumerate() {
        let text = match id {
            0 => "<unk>".to_string(),
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            _ => String::from_utf8_lossy(&piece).replace(' ', "▁"),
        };
        tokens.push(text);
        scores.push(score);
    }
    let mut tk = sentencepiece_bpe(
        &path.display().to_string(),
        &tokens,
        &scores,
        Some("<unk>"),
        true,
    )?;
    add_tokens(&mut tk, &tokens[..3], &[])?;
    debug_assert!(tokens.get(3).is_none_or(|t| parse_byte_piece(t).is_some()));
    Tokenizer::from_parts(Parts {
        tk,
        n_vocab: vocab_size,
        kind: "SentencePiece BPE (llama2.c)".to_string(),
        style: PieceStyle::SentencePiece,
        strip_leading_space: true,
        ids: SpecialIds {
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..SpecialIds::default()
        },
        add_bos: true,
        add_eos: false,
        eog: [2].into_iter().collect(),
        chat_template: None,
        bos_str: None,
        eos_str: None,
    })
}
