//! From validated requests to engine submissions and back: one [`Sequence`] per choice, read either to the end
//! (non-streaming) or as a merged SSE stream. Both read the same events, so streamed text is the non-streamed
//! text cut into pieces.
//!
//! Cancellation is by ownership: each sequence owns its engine receiver, and the SSE body owns the sequences,
//! so a client that goes away drops the body, the receivers with it, and the engine frees the sequence at its
//! next step.

use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use baimo_engine::{Event, GenRequest, GenerateOptions, GeneratedToken, PromptTokenLogprob};
use futures_util::stream::{self, BoxStream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ApiResult};
use crate::metrics::{ModelLabels, TokenClock};
use crate::openai::Usage;
use crate::state::{AppState, InFlight, Route};

/// One submission: choice `index` of the response.
pub struct Job {
    pub index: usize,
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub prompt_logprobs: Option<usize>,
}

/// A submitted choice with its event stream.
pub struct Sequence {
    pub index: usize,
    rx: UnboundedReceiver<Event>,
    clock: TokenClock,
    prompt_tokens: Counter,
    completion_tokens: Counter,
}

/// Submits every job; on the first refusal the sequences already submitted are dropped (and so cancelled).
pub fn submit(
    state: &AppState,
    route: &Route,
    jobs: Vec<Job>,
    start: Instant,
) -> ApiResult<Vec<Sequence>> {
    let model = route.served;
    let id = route.id();
    let label = ModelLabels { model: id.clone() };
    let adapter = route.adapter.as_ref().map(|a| a.served.clone());
    let mut seqs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let rx = model.engine.submit(GenRequest {
            prompt: job.prompt,
            opts: job.opts,
            prompt_logprobs: job.prompt_logprobs,
            adapter: adapter.clone(),
        })?;
        seqs.push(Sequence {
            index: job.index,
            rx,
            clock: TokenClock::new(&state.metrics, &id, start),
            prompt_tokens: state.metrics.prompt_tokens.get_or_create(&label).clone(),
            completion_tokens: state
                .metrics
                .completion_tokens
                .get_or_create(&label)
                .clone(),
        });
    }
    Ok(seqs)
}

impl Sequence {
    /// The events of this sequence tagged with its index, always ending in `Done` or `Error` (a channel closed
    /// early reads as an error). Token and usage metrics are recorded as events pass.
    pub fn into_stream(self) -> BoxStream<'static, (usize, Event)> {
        stream::unfold(Some(self), |seq| async move {
            let mut seq = seq?;
            let index = seq.index;
            let ev = match seq.rx.recv().await {
                Some(ev) => ev,
                None => Event::Error("the engine stopped before the request finished".into()),
            };
            match &ev {
                Event::Token { .. } => seq.clock.on_token(),
                Event::Done(u) => {
                    seq.prompt_tokens.inc_by(u.prompt_tokens as u64);
                    seq.completion_tokens.inc_by(u.completion_tokens as u64);
                }
                _ => {}
            }
            let next = match ev {
                Event::Done(_) | Event::Error(_) => None,
                _ => Some(seq),
            };
            Some(((index, ev), next))
        })
        .boxed()
    }
}

/// A finished choice.
pub struct Finished {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    pub prompt_logprobs: Option<Vec<PromptTokenLogprob>>,
    pub usage: baimo_engine::Usage,
}

/// Reads every sequence to its end, concurrently.
pub async fn collect_all(seqs: Vec<Sequence>) -> ApiResult<Vec<Finished>> {
    let results = futures_util::future::join_all(seqs.into_iter().map(collect)).await;
    let mut out = results.into_iter().collect::<ApiResult<Vec<_>>>()?;
    out.sort_by_key(|f| f.index);
    Ok(out)
}

async fn collect(seq: Sequence) -> ApiResult<Finished> {
    let index = seq.index;
    let mut events = seq.into_stream();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut prompt_logprobs = None;
    while let Some((_, ev)) = events.next().await {
        match ev {
            Event::PromptLogprobs(p) => prompt_logprobs = Some(p),
            Event::Token { token, text: t } => {
                text.push_str(&t);
                tokens.push(token);
            }
            Event::Text(t) => text.push_str(&t),
            Event::Done(usage) => {
                return Ok(Finished {
                    index,
                    text,
                    tokens,
                    prompt_logprobs,
                    usage,
                })
            }
            Event::Error(e) => return Err(ApiError::Internal(e)),
        }
    }
    Err(ApiError::Internal(
        "the sequence ended without a result".into(),
    ))
}

/// Usage of a whole response: every choice's completion tokens, and each distinct prompt once (choices
/// `k * n .. (k + 1) * n` share prompt `k`).
pub fn total_usage(per_choice: &[(usize, baimo_engine::Usage)], n: usize) -> Usage {
    let n = n.max(1);
    let first_of_prompt = per_choice.iter().filter(|(i, _)| i % n == 0);
    let prompt: usize = first_of_prompt.clone().map(|(_, u)| u.prompt_tokens).sum();
    let cached: usize = first_of_prompt.map(|(_, u)| u.cached_tokens).sum();
    let completion = per_choice.iter().map(|(_, u)| u.completion_tokens).sum();
    Usage::new(prompt, completion, cached)
}

/// Turns engine events into the JSON `data:` payloads of one endpoint's SSE format.
pub trait Chunker: Send + 'static {
    /// Payloads sent before any event (chat: the role chunk of every choice).
    fn opening(&mut self) -> Vec<String>;
    /// Payloads for one event of choice `index` (`Done` gives the finish chunk).
    fn event(&mut self, index: usize, ev: Event) -> Vec<String>;
    /// The final usage-only chunk (`stream_options.include_usage`).
    fn usage(&mut self, usage: Usage) -> String;
}

struct StreamState<C> {
    events: stream::SelectAll<BoxStream<'static, (usize, Event)>>,
    chunker: C,
    usages: Vec<(usize, baimo_engine::Usage)>,
    n: usize,
    include_usage: bool,
    opened: bool,
    finished: bool,
    _in_flight: InFlight,
}

/// The SSE response of a streaming request: the chunker's payloads, an error object if the engine fails,
/// the usage chunk when asked for, then `data: [DONE]`.
pub fn sse_response<C: Chunker>(
    seqs: Vec<Sequence>,
    chunker: C,
    n: usize,
    include_usage: bool,
    in_flight: InFlight,
) -> Response {
    let st = StreamState {
        events: stream::select_all(seqs.into_iter().map(Sequence::into_stream)),
        chunker,
        usages: Vec::new(),
        n,
        include_usage,
        opened: false,
        finished: false,
        _in_flight: in_flight,
    };
    let body = stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        if !st.opened {
            st.opened = true;
            let out = st.chunker.opening();
            return Some((out, st));
        }
        let out = match st.events.next().await {
            Some((_, Event::Error(e))) => {
                st.finished = true;
                let err = ApiError::Internal(e);
                vec![serde_json::to_string(&err.body()).unwrap_or_default()]
            }
            Some((i, ev)) => {
                if let Event::Done(u) = &ev {
                    st.usages.push((i, *u));
                }
                st.chunker.event(i, ev)
            }
            None => {
                st.finished = true;
                let mut out = Vec::new();
                if st.include_usage {
                    st.usages.sort_by_key(|(i, _)| *i);
                    out.push(st.chunker.usage(total_usage(&st.usages, st.n)));
                }
                out.push("[DONE]".to_string());
                out
            }
        };
        Some((out, st))
    })
    .flat_map(|payloads| {
        stream::iter(
            payloads
                .into_iter()
                .map(|p| Ok::<_, Infallible>(SseEvent::default().data(p))),
        )
    });
    Sse::new(body).into_response()
}
