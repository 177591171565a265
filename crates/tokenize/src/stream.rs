//! [`StreamDecoder`]: detokenize one id at a time without ever emitting broken UTF-8.
//!
//! Byte-level BPE and SentencePiece byte-fallback tokens can end in the middle of a character
//! (a CJK character or an emoji spans 3-4 bytes, often split over tokens). We accumulate raw
//! token bytes ([`Tokenizer::token_bytes`]), emit the longest valid UTF-8 prefix and hold back an
//! incomplete trailing sequence (at most 3 bytes). Invalid bytes become U+FFFD as in
//! `String::from_utf8_lossy`. The SentencePiece dummy-prefix space is dropped from the very first
//! byte, as the HF `Strip(" ", 1, 0)` decoder does, so the concatenated output equals
//! `Tokenizer::decode` on the same ids for valid text.

use crate::Tokenizer;

/// Incremental detokenizer over one [`Tokenizer`].
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    started: bool,
    skip_special: bool,
}

impl<'a> StreamDecoder<'a> {
    /// Emits every token, special ones as their text (like `decode(ids, false)`).
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self::with_skip_special(tok, false)
    }

    /// `skip_special = true` drops special (control) tokens, like `decode(ids, true)`.
    pub fn with_skip_special(tok: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tok,
            pending: Vec::new(),
            started: false,
            skip_special,
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        let mut bytes = self.tok.token_bytes_ref(id);
        if !self.started && !bytes.is_empty() {
            self.started = true;
            if self.tok.strips_leading_space() && bytes[0] == b' ' {
                bytes = &bytes[1..];
            }
        }
        self.pending.extend_from_slice(bytes);
        self.drain_complete()
    }

    /// Flushes whatever is held back (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back, waiting for the rest of a character (0..=3).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn drain_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &tail[bad..];
                        }
                        None => {
                            rest = tail; // incomplete character: wait for more bytes
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}
