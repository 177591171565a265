//! The decoder, written once, and the architectures it serves.
//!
//! An architecture is a [`ModelConfig`] (norms, biases, rope variant, q/k norm, tied embeddings) plus a
//! weight-name map ([`weights`]); [`Transformer`] is the one decoder that reads like the Llama paper and
//! Hugging Face's `modeling_llama.py` / `modeling_qwen2.py` / `modeling_qwen3.py`.

pub mod config;
pub mod error;
mod gguf_hf;
mod hf_gguf;
pub mod kv_cache;
pub mod layers;
pub mod lora;
pub mod merge;
pub mod paged;
mod train_attention;
pub mod transformer;
pub mod weights;

pub use config::{Arch, ModelConfig, RopeAngles, RopeScaling, RopeStyle};
pub use error::ModelError;
pub use kv_cache::KvCache;
pub use lora::{LoraAdapter, ServedAdapter};
pub use paged::{PagedKvCache, SeqSlice};
pub use transformer::{Logits, LoraTarget, Transformer};
pub use weights::{ModelFormat, WeightInfo};

pub type Result<T> = std::result::Result<T, ModelError>;
