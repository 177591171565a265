//! `POST /v1/chat/completions`: messages → chat template → tokens → `n` engine submissions → one
//! `chat.completion` or a stream of `chat.completion.chunk`s.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use baimo_engine::{Event, GeneratedToken, LoadedModel};
use baimo_tokenize::Message;

use crate::error::{ApiError, ApiResult};
use crate::gen::{self, Chunker, Job};
use crate::openai::{
    finite_logprob, AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChatRequest,
    ChoiceLogprobs, ChunkChoice, Delta, TokenLogprob, TopLogprob, Usage,
};
use crate::routes::JsonBody;
use crate::state::{new_id, unix_now, AppState, InFlight};
use crate::validate;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let start = Instant::now();
    if state.is_closing() {
        return Err(ApiError::ShuttingDown);
    }
    let req: ChatRequest = body.parse(&headers)?;
    let plan = validate::chat(req)?;
    let route = state.route(plan.common.model.as_deref())?;
    let model = route.served;
    let prompt = chat_prompt(&model.model, &plan.messages)?;
    let ctx = model.ctx();
    if prompt.len() > ctx {
        return Err(ApiError::ContextLengthExceeded {
            prompt: prompt.len(),
            ctx,
        });
    }
    let common = &plan.common;
    let default_max = ctx - prompt.len();
    let jobs = (0..common.n)
        .map(|i| Job {
            index: i,
            prompt: prompt.clone(),
            opts: common.options_for(i, default_max),
            prompt_logprobs: None,
        })
        .collect();
    let in_flight = InFlight::new(&state);
    let seqs = gen::submit(&state, &route, jobs, start)?;
    let head = Head {
        id: new_id("chatcmpl-"),
        created: unix_now(),
        model: route.id(),
        fingerprint: state.fingerprint.clone(),
    };
    let logprobs = common.opts.logprobs.is_some();
    if common.stream {
        let chunker = ChatChunker {
            head,
            lm: model.model.clone(),
            n: common.n,
            logprobs,
            include_usage: common.include_usage,
        };
        return Ok(gen::sse_response(
            seqs,
            chunker,
            common.n,
            common.include_usage,
            in_flight,
        ));
    }
    let finished = gen::collect_all(seqs).await?;
    drop(in_flight);
    let usages: Vec<_> = finished.iter().map(|f| (f.index, f.usage)).collect();
    let choices = finished
        .into_iter()
        .map(|f| ChatChoice {
            index: f.index,
            message: AssistantMessage {
                role: "assistant",
                content: f.text,
                refusal: None,
            },
            logprobs: logprobs.then(|| ChoiceLogprobs {
                content: f
                    .tokens
                    .iter()
                    .map(|t| token_logprob(&model.model, t))
                    .collect(),
                refusal: None,
            }),
            finish_reason: f.usage.finish_reason.into(),
        })
        .collect();
    Ok(axum::Json(ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        system_fingerprint: head.fingerprint,
        choices,
        usage: gen::total_usage(&usages, common.n),
    })
    .into_response())
}

/// Renders and tokenizes the conversation exactly as `baimo run` does (`crates/cli/src/commands.rs`,
/// `prompt_tokens`): the template with the generation prompt, special tokens parsed, and a BOS only when the
/// tokenizer adds one and the rendered text does not already start with it.
pub fn chat_prompt(lm: &LoadedModel, messages: &[Message]) -> ApiResult<Vec<u32>> {
    let text = lm.template.render(messages, true).map_err(|e| {
        ApiError::param(
            "messages",
            format!("the chat template rejected the messages: {e}"),
        )
    })?;
    let bos = lm.tokenizer.bos_token_str();
    let add_bos = !(lm.tokenizer.adds_bos() && !bos.is_empty() && text.starts_with(bos));
    lm.tokenizer
        .encode(&text, add_bos, true)
        .map_err(|e| ApiError::param("messages", format!("cannot tokenize the messages: {e}")))
}

/// Chat `logprobs.content[]` entry of one generated token.
pub fn token_logprob(lm: &LoadedModel, t: &GeneratedToken) -> TokenLogprob {
    TokenLogprob {
        token: t.text.clone(),
        logprob: finite_logprob(t.logprob),
        bytes: lm.tokenizer.token_bytes(t.id),
        top_logprobs: t
            .top_logprobs
            .iter()
            .map(|a| TopLogprob {
                token: a.text.clone(),
                logprob: finite_logprob(a.logprob),
                bytes: lm.tokenizer.token_bytes(a.id),
            })
            .collect(),
    }
}

/// What every chunk of one response repeats.
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
}

struct ChatChunker {
    head: Head,
    lm: Arc<LoadedModel>,
    n: usize,
    logprobs: bool,
    include_usage: bool,
}

impl ChatChunker {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> String {
        let c = ChatChunk {
            id: self.head.id.clone(),
            object: "chat.completion.chunk",
            created: self.head.created,
            model: self.head.model.clone(),
            system_fingerprint: self.head.fingerprint.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    fn delta(&self, index: usize, content: String, logprobs: Option<ChoiceLogprobs>) -> String {
        self.chunk(
            vec![ChunkChoice {
                index,
                delta: Delta {
                    role: None,
                    content: Some(content),
                },
                logprobs,
                finish_reason: None,
            }],
            None,
        )
    }
}

impl Chunker for ChatChunker {
    fn opening(&mut self) -> Vec<String> {
        (0..self.n)
            .map(|index| {
                self.chunk(
                    vec![ChunkChoice {
                        index,
                        delta: Delta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn event(&mut self, index: usize, ev: Event) -> Vec<String> {
        match ev {
            Event::Token { token, text } if self.logprobs => {
                let lp = ChoiceLogprobs {
                    content: vec![token_logprob(&self.lm, &token)],
                    refusal: None,
                };
                vec![self.delta(index, text, Some(lp))]
            }
            Event::Token { text, .. } | Event::Text(text) if !text.is_empty() => {
                vec![self.delta(index, text, None)]
            }
            Event::Done(u) => vec![self.chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: Some(u.finish_reason.into()),
                }],
                None,
            )],
            _ => Vec::new(),
        }
    }

    fn usage(&mut self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
