//! `POST /v1/completions`, OpenAI's legacy text completions: raw prompts (no chat template), `n` choices per
//! prompt (choice `k * n + i` is the `i`-th of prompt `k`), `echo`, and the legacy logprobs shape
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
//!
//! `text_offset` counts characters (Python `str` indices) of the token pieces before each token, from the start
//! of the returned `text` (prompt pieces included with `echo`). With `echo` and
//! `logprobs`, prompt log-probabilities come from the engine's `PromptLogprobs` event; an engine that sends
//! none leaves them `null`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use baimo_engine::{Event, GeneratedToken, LoadedModel, PromptTokenLogprob, TopLogprob};
use serde_json::{Map, Value};

use crate::chat::Head;
use crate::error::{ApiError, ApiResult};
use crate::gen::{self, Chunker, Job};
use crate::openai::{
    finite_logprob, Completion, CompletionChoice, CompletionRequest, FinishReason, LegacyLogprobs,
    Usage,
};
use crate::routes::JsonBody;
use crate::state::{new_id, unix_now, AppState, InFlight};
use crate::validate::{self, PromptInput};

/// One tokenized prompt and the text `echo` returns for it.
struct Prompt {
    tokens: Vec<u32>,
    text: String,
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let start = Instant::now();
    if state.is_closing() {
        return Err(ApiError::ShuttingDown);
    }
    let req: CompletionRequest = body.parse(&headers)?;
    let plan = validate::completion(req)?;
    let route = state.route(plan.common.model.as_deref())?;
    let model = route.served;
    let lm = &model.model;
    let ctx = model.ctx();
    let prompts = plan
        .prompts
        .iter()
        .map(|p| {
            let prompt = match p {
                // As `baimo run --raw`: BOS only when the tokenizer adds one, special-token text kept as text.
                PromptInput::Text(s) => Prompt {
                    tokens: lm.tokenizer.encode(s, true, false).map_err(|e| {
                        ApiError::param("prompt", format!("cannot tokenize the prompt: {e}"))
                    })?,
                    text: s.clone(),
                },
                PromptInput::Tokens(ids) => Prompt {
                    tokens: ids.clone(),
                    text: ids.iter().map(|&id| piece(lm, id)).collect(),
                },
            };
            if prompt.tokens.len() > ctx {
                return Err(ApiError::ContextLengthExceeded {
                    prompt: prompt.tokens.len(),
                    ctx,
                });
            }
            Ok(prompt)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let common = &plan.common;
    let n = common.n;
    let want_prompt_logprobs = plan.echo && plan.logprobs.is_some();
    let mut jobs = Vec::with_capacity(prompts.len() * n);
    for (k, p) in prompts.iter().enumerate() {
        for i in 0..n {
            jobs.push(Job {
                index: k * n + i,
                prompt: p.tokens.clone(),
                opts: common.options_for(i, ctx.saturating_sub(p.tokens.len())),
                prompt_logprobs: want_prompt_logprobs.then_some(plan.logprobs.unwrap_or(0)),
            });
        }
    }
    let in_flight = InFlight::new(&state);
    let seqs = gen::submit(&state, &route, jobs, start)?;
    let head = Head {
        id: new_id("cmpl-"),
        created: unix_now(),
        model: route.id(),
        fingerprint: state.fingerprint.clone(),
    };
    let choices_n = prompts.len() * n;
    if common.stream {
        let chunker = CompletionChunker {
            head,
            lm: lm.clone(),
            prompts,
            n,
            echo: plan.echo,
            logprobs: plan.logprobs,
            include_usage: common.include_usage,
            echoed: vec![false; choices_n],
            offset: vec![0; choices_n],
        };
        return Ok(gen::sse_response(
            seqs,
            chunker,
            n,
            common.include_usage,
            in_flight,
        ));
    }
    let finished = gen::collect_all(seqs).await?;
    drop(in_flight);
    let usages: Vec<_> = finished.iter().map(|f| (f.index, f.usage)).collect();
    let choices = finished
        .into_iter()
        .map(|f| {
            let prompt = &prompts[f.index / n];
            let mut lp = Legacy::new(plan.logprobs);
            let mut text = String::new();
            if plan.echo {
                text.push_str(&prompt.text);
                lp.prompt(lm, &prompt.tokens, f.prompt_logprobs.as_deref());
            }
            text.push_str(&f.text);
            for t in &f.tokens {
                lp.token(t);
            }
            CompletionChoice {
                text,
                index: f.index,
                logprobs: lp.done(),
                finish_reason: Some(f.usage.finish_reason.into()),
            }
        })
        .collect();
    Ok(axum::Json(Completion {
        id: head.id,
        object: "text_completion",
        created: head.created,
        model: head.model,
        system_fingerprint: head.fingerprint,
        choices,
        usage: Some(Some(gen::total_usage(&usages, n))),
    })
    .into_response())
}

fn piece(lm: &LoadedModel, id: u32) -> String {
    String::from_utf8_lossy(&lm.tokenizer.token_bytes(id)).into_owned()
}

/// Builds the legacy logprobs object of one choice (or of one chunk), tracking character offsets.
struct Legacy {
    k: Option<usize>,
    lp: LegacyLogprobs,
    offset: usize,
}

impl Legacy {
    fn new(k: Option<usize>) -> Self {
        Self::at(k, 0)
    }

    fn at(k: Option<usize>, offset: usize) -> Self {
        Legacy {
            k,
            lp: LegacyLogprobs::default(),
            offset,
        }
    }

    fn push(&mut self, text: String, logprob: Option<f32>, top: Option<&[TopLogprob]>) {
        let k = self.k.unwrap_or(0);
        self.lp.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.lp.tokens.push(text);
        self.lp.token_logprobs.push(logprob.map(finite_logprob));
        self.lp.top_logprobs.push(top.map(|top| {
            top.iter()
                .take(k)
                .map(|a| (a.text.clone(), Value::from(finite_logprob(a.logprob))))
                .collect::<Map<String, Value>>()
        }));
    }

    fn prompt(&mut self, lm: &LoadedModel, ids: &[u32], engine: Option<&[PromptTokenLogprob]>) {
        match engine {
            Some(pl) => {
                for p in pl {
                    self.push(
                        p.text.clone(),
                        p.logprob,
                        p.logprob.map(|_| p.top_logprobs.as_slice()),
                    );
                }
            }
            None => {
                for &id in ids {
                    self.push(piece(lm, id), None, None);
                }
            }
        }
    }

    fn token(&mut self, t: &GeneratedToken) {
        self.push(t.text.clone(), Some(t.logprob), Some(&t.top_logprobs));
    }

    fn done(self) -> Option<LegacyLogprobs> {
        self.k.map(|_| self.lp)
    }
}

struct CompletionChunker {
    head: Head,
    lm: Arc<LoadedModel>,
    prompts: Vec<Prompt>,
    n: usize,
    echo: bool,
    logprobs: Option<usize>,
    include_usage: bool,
    /// Per choice: whether the echoed prompt was sent, and the character offset reached.
    echoed: Vec<bool>,
    offset: Vec<usize>,
}

impl CompletionChunker {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        let c = Completion {
            id: self.head.id.clone(),
            object: "text_completion",
            created: self.head.created,
            model: self.head.model.clone(),
            system_fingerprint: self.head.fingerprint.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    fn text(
        &mut self,
        index: usize,
        text: String,
        lp: Legacy,
        finish: Option<FinishReason>,
    ) -> String {
        if let Some(o) = self.offset.get_mut(index) {
            *o = lp.offset;
        }
        self.chunk(
            vec![CompletionChoice {
                text,
                index,
                logprobs: lp.done(),
                finish_reason: finish,
            }],
            None,
        )
    }

    fn echo(&mut self, index: usize, engine: Option<&[PromptTokenLogprob]>) -> Option<String> {
        if !self.echo || self.echoed.get(index).copied().unwrap_or(true) {
            return None;
        }
        self.echoed[index] = true;
        let prompt = self.prompts.get(index / self.n.max(1))?;
        let mut lp = Legacy::new(self.logprobs);
        lp.prompt(&self.lm, &prompt.tokens, engine);
        let text = prompt.text.clone();
        Some(self.text(index, text, lp, None))
    }
}

impl Chunker for CompletionChunker {
    fn opening(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn event(&mut self, index: usize, ev: Event) -> Vec<String> {
        if let Event::PromptLogprobs(pl) = &ev {
            return self.echo(index, Some(pl)).into_iter().collect();
        }
        let mut out: Vec<String> = self.echo(index, None).into_iter().collect();
        let offset = self.offset.get(index).copied().unwrap_or(0);
        let mut lp = Legacy::at(self.logprobs, offset);
        match ev {
            Event::Token { token, text } => {
                lp.token(&token);
                if self.logprobs.is_some() || !text.is_empty() {
                    out.push(self.text(index, text, lp, None));
                }
            }
            Event::Text(text) if !text.is_empty() => {
                out.push(self.text(index, text, Legacy::at(None, offset), None))
            }
            Event::Done(u) => out.push(self.text(
                index,
                String::new(),
                Legacy::at(None, offset),
                Some(u.finish_reason.into()),
            )),
            _ => {}
        }
        out
    }

    fn usage(&mut self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
