//! LoRA fine-tuning (Hu et al. 2021) on a company's own chat data, with the same decoder and chat template
//! that serve the model.
//!
//! [`data`] reads OpenAI-chat, alpaca and sharegpt JSONL and turns conversations into token ids with a loss
//! mask by rendering them through the model's chat template; [`params`] holds the trainable LoRA matrices,
//! initialises them as PEFT does and saves/loads PEFT's format; [`trainer`] computes the loss with
//! [`baimo_models::Transformer::forward_train`] and candle's autograd and steps AdamW.

pub mod data;
pub mod error;
pub mod loss;
pub mod params;
pub mod run;
pub mod trainer;

pub use data::{BadRecord, DataFormat, Example};
pub use error::TrainError;
pub use params::{LoraParams, LoraSpec};
pub use trainer::{batch_loss_and_grads, cosine_lr, StepStats, Trainer, TrainerConfig};

pub type Result<T> = std::result::Result<T, TrainError>;
