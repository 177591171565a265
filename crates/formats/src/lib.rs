//! baimo-formats: model-file readers (GGUF, safetensors, llama2.c).
//!
//! Parsing and byte layouts only, no arithmetic: readers hand out zero-copy slices of memory-mapped
//! files plus the shape and type information the models crate needs to interpret them. Every
//! count and offset read from a file is validated before it is used to index or allocate.

mod error;
pub mod gguf;
pub mod llama2c;
mod mmap;
pub mod safetensors;

pub use error::{FormatError, Result};
pub use mmap::SharedBytes;
