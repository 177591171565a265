//! baimo-tokenize: text <-> token ids for Baimo.
//!
//! * [`Tokenizer`]: built on the `tokenizers` crate from a `tokenizer.json` directory
//!   ([`Tokenizer::from_hf_dir`]), GGUF metadata ([`Tokenizer::from_gguf`]) or a llama2.c
//!   `tokenizer.bin` ([`Tokenizer::from_llama2c`]); the pipelines are assembled from HF stages,
//!   never a BPE of our own.
//! * [`StreamDecoder`]: incremental detokenization that only emits complete UTF-8.
//! * [`template::ChatTemplate`]: HF-compatible chat templates on minijinja.
//! * [`gguf_vocab_from_hf_dir`]: a Hugging Face tokenizer as the GGUF metadata llama.cpp's converter writes;
//!   [`Tokenizer::hf_files`] the other way, a GGUF vocabulary as Hugging Face tokenizer files.

mod build;
mod error;
mod gguf;
mod gguf_hf;
mod hf;
mod hf_gguf;
mod llama2c;
mod pretok;
mod spm_gguf;
mod stream;
pub mod template;
mod tokenizer;

pub use error::{Result, TokenizeError};
pub use gguf_hf::HfTokenizerFiles;
pub use hf_gguf::GgufVocab;
pub use stream::StreamDecoder;
pub use template::{ChatTemplate, Message};
pub use tokenizer::{SpecialIds, Tokenizer};

use baimo_formats::gguf::{GgufFile, GgufHeader};
use std::path::Path;

impl Tokenizer {
    /// Builds the tokenizer stored in GGUF metadata (`tokenizer.ggml.model` = `gpt2` | `llama`,
    /// pre-tokenizer from `tokenizer.ggml.pre`), as llama.cpp's `llama_vocab::impl::load` does.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        gguf::from_header(g.header())
    }

    /// [`Tokenizer::from_gguf`] on a parsed header alone (e.g. `GgufFile::from_bytes`).
    pub fn from_gguf_header(h: &GgufHeader) -> Result<Self> {
        gguf::from_header(h)
    }

    /// Opens (memory-maps) a GGUF file and builds its tokenizer.
    pub fn from_gguf_path(path: &Path) -> Result<Self> {
        gguf::from_header(GgufFile::open(path)?.header())
    }

    /// Loads `tokenizer.json` from `dir` plus `tokenizer_config.json` (chat template, BOS/EOS,
    /// `add_bos_token`) and `generation_config.json` (`eos_token_id`s) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        hf::from_hf_dir(dir)
    }

    /// `tokenizer.json` and `tokenizer_config.json` with which transformers' `AutoTokenizer` tokenizes as this
    /// tokenizer does (for one built from GGUF metadata: as llama.cpp does); `model_max_length` is the model's
    /// context length.
    pub fn hf_files(&self, model_max_length: Option<usize>) -> Result<HfTokenizerFiles> {
        gguf_hf::hf_files(self, model_max_length)
    }

    /// Loads a llama2.c `tokenizer.bin` / `tok*.bin` with `vocab_size` entries.
    pub fn from_llama2c(path: &Path, vocab_size: usize) -> Result<Self> {
        llama2c::from_llama2c(path, vocab_size)
    }
}

/// The `tokenizer.*` GGUF metadata llama.cpp's `convert_hf_to_gguf.py` writes for the Hugging Face folder
/// `dir` of a model with `vocab_size` embedding rows: SentencePiece (`tokenizer.model`, or a `tokenizer.json`
/// of BPE with byte fallback: Llama 2, Mistral style) or byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM2
/// style); others are [`TokenizeError::Unconvertible`], naming what is unsupported.
pub fn gguf_vocab_from_hf_dir(dir: &Path, vocab_size: usize) -> Result<GgufVocab> {
    hf_gguf::gguf_vocab(dir, vocab_size)
}
