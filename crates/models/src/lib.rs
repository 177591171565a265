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
pub use transformer::{Logits, LoraTarget, TrainOps, Transformer};
pub use weights::{ModelFormat, WeightInfo};

pub type Result<T> = std::result::Result<T, ModelError>;

/// The device `name` names: `cpu`, `cuda` (the first GPU) or `cuda:N`. A GPU needs a build with the `cuda`
/// feature (`cargo build --release --features cuda`, with the CUDA toolkit installed).
pub fn device(name: &str) -> Result<candle_core::Device> {
    let err = |message: String| ModelError::Device {
        name: name.to_string(),
        message,
    };
    let ordinal = match name.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(err("expected `cpu`, `cuda` or `cuda:N`".into())),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(err(
            "this build has no CUDA support (rebuild with `--features cuda`)".into(),
        ));
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| match e {
        // The driver's words, without the backtrace candle attaches under RUST_BACKTRACE.
        candle_core::Error::WithBacktrace { inner, .. } => err(inner.to_string()),
        e => err(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_names() {
        assert!(super::device("cpu").unwrap().is_cpu());
        assert!(super::device(" CPU ").unwrap().is_cpu());
        for bad in ["tpu", "cuda:x", "cuda:", "metal"] {
            let e = super::device(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected `cpu`, `cuda` or `cuda:N`"),
                "{bad}: {e}"
            );
        }
        if !candle_core::utils::cuda_is_available() {
            let e = super::device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
