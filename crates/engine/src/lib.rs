//! The engine: loads a model with its tokenizer and chat template, generates with a KV cache and a
//! sampler, and measures perplexity. The CLI and (later) the server sit on top of it.

pub mod bench;
mod blocks;
pub mod error;
pub mod generate;
pub mod loader;
pub mod logprobs;
pub mod perplexity;
pub mod sampler;
mod scheduler;
pub mod serving;
pub mod stepper;
pub mod stop;

pub use error::EngineError;
pub use generate::{
    FinishReason, GenerateOptions, GeneratedToken, Generation, Session, TopLogprob,
};
pub use loader::{load, LoadOptions, LoadedModel, ModelInfo};
pub use perplexity::{perplexity, PerplexityReport};
pub use sampler::{Sampler, SamplingParams};
pub use serving::{
    EngineConfig, EngineHandle, Event, GenRequest, PromptTokenLogprob, ServingEngine,
    StatsSnapshot, SubmitError, Usage,
};
pub use stepper::Stepper;
pub use stop::StopMatcher;

pub type Result<T> = std::result::Result<T, EngineError>;
