//! Assembling `tokenizers` pipelines from vocabulary parts (no BPE of our own).
//!
//! * byte-level BPE (GPT-2 family): `Sequence[Split(regex, Isolated)..., ByteLevel(no prefix
//!   space, no regex)]` + `BPE(vocab, merges)` + `ByteLevel` decoder, as the publishers'
//!   `tokenizer.json` files and llama.cpp's `llm_tokenizer_bpe` do.
//! * SentencePiece BPE (Llama 1/2, llama2.c): HF's legacy `LlamaConverter` from
//!   `transformers/convert_slow_tokenizer.py`: normalizer `Prepend("▁")` + `Replace(" ", "▁")`,
//!   no pre-tokenizer, `BPE(byte_fallback, fuse_unk)` with merges derived from the piece scores
//!   as `SentencePieceExtractor.extract(vocab_scores)` does, decoder
//!   `Replace("▁", " ") + ByteFallback + Fuse + Strip(" ", 1, 0)`.

use crate::error::{Result, TokenizeError};
use ahash::AHashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100 onwards, so every byte has a visible, non-space character.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

/// Inverse of [`byte_to_char`].
pub(crate) fn char_to_byte() -> AHashMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Parses a `<0xNN>` byte-fallback piece.
pub(crate) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// `piece -> id`; on duplicate strings the later id wins, as in llama.cpp's `token_to_id`.
fn vocab_map(tokens: &[String]) -> AHashMap<String, u32> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

fn splits(regexes: &[&str]) -> Result<Vec<PreTokenizerWrapper>> {
    regexes
        .iter()
        .map(|re| {
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| TokenizeError::tk("pre-tokenizer regex", format!("{re}: {e}")))
        })
        .collect()
}

/// llama.cpp's byte-level pre-tokenizer for `regexes`: each a `Split(regex, Isolated)`, then bytes mapped to
/// GPT-2's printable characters (`ByteLevel` without its own regex or prefix space).
pub(crate) fn byte_level_pre_tokenizer(regexes: &[&str]) -> Result<PreSequence> {
    let mut steps = splits(regexes)?;
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(PreSequence::new(steps))
}

/// Byte-level BPE from GPT-2-style token strings and `"left right"` merges.
pub(crate) fn byte_level_bpe(
    source: &str,
    tokens: &[String],
    merges: &[String],
    regexes: &[&str],
    ignore_merges: bool,
) -> Result<tokenizers::Tokenizer> {
    let merges = merges
        .iter()
        .map(|m| {
            // llama.cpp splits at the first space after position 0 (a merge may start with one).
            let first = m.chars().next().map_or(0, char::len_utf8);
            let pos = m[first..].find(' ').map(|p| p + first);
            match pos {
                Some(p) => Ok((m[..p].to_string(), m[p + 1..].to_string())),
                None => Err(TokenizeError::vocab(
                    source,
                    format!("merge without a space: {m:?}"),
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| TokenizeError::vocab(source, e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(byte_level_pre_tokenizer(regexes)?));
    tk.with_decoder(Some(ByteLevel::default()));
    Ok(tk)
}

/// Merges implied by SentencePiece scores, in HF `SentencePieceExtractor.extract(vocab_scores)`
/// order: for each piece (in id order) every split into two pieces of the vocabulary, ordered
/// by the ids of the halves; then a stable sort by the merged piece's score, highest first.
pub(crate) fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids = vocab_map(tokens);
    let mut all: Vec<(u32, u32, f32)> = Vec::new();
    for (piece, score) in tokens.iter().zip(scores) {
        let mut local: Vec<(u32, u32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*ids.get(&piece[..at])?, *ids.get(&piece[at..])?)))
            .collect();
        local.sort_unstable();
        all.extend(local.into_iter().map(|(l, r)| (l, r, *score)));
    }
    all.sort_by(|a, b| b.2.total_cmp(&a.2));
    all.into_iter()
        .map(|(l, r, _)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

/// SentencePiece BPE (pieces use "▁" for spaces; bytes as `<0xNN>` pieces).
pub(crate) fn sentencepiece_bpe(
    source: &str,
    tokens: &[String],
    scores: &[f32],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    if scores.len() != tokens.len() {
        return Err(TokenizeError::vocab(
            source,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges_from_scores(tokens, scores))
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| TokenizeError::vocab(source, e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", "▁").map_err(|e| TokenizeError::tk("normalizer", e))?;
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new("▁".to_string()).into());
    }
    norm.push(replace.into());
    tk.with_normalizer(Some(NormalizerSequence::new(norm)))
        .map_err(|e| TokenizeError::tk("normalizer", e))?;
    let unspace = Replace::new("▁", " ").map_err(|e| TokenizeError::tk("decoder", e))?;
    let mut dec: Vec<DecoderWrapper> = vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(tk)
}

/// Registers control/unknown tokens as special added tokens and user-defined ones as plain added
/// tokens, none of them normalized (llama.cpp `tokenizer_st_partition` matches raw text).
pub(crate) fn add_tokens(
    tk: &mut tokenizers::Tokenizer,
    special: &[String],
    user_defined: &[String],
) -> Result<()> {
    let sp = special
        .iter()
        .map(|t| AddedToken::from(t.clone(), true).normalized(false));
    tk.add_special_tokens(sp.collect::<Vec<_>>())
        .map_err(|e| TokenizeError::tk("special tokens", e))?;
    let ud = user_defined
        .iter()
        .map(|t| AddedToken::from(t.clone(), false).normalized(false));
    tk.add_tokens(ud.collect::<Vec<_>>())
        .map_err(|e| TokenizeError::tk("added tokens", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2() {
        let t = byte_to_char();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte().len(), 256);
    }

    #[test]
    fn merges_follow_scores() {
        let toks: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = merges_from_scores(&toks, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0x0A"), None);
    }
}
