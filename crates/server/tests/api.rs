//! Routing, validation and response shapes, driven through the router in-process (`tower::ServiceExt::oneshot`)
//! on the tiny quantized Qwen2 fixture (`fixtures/tiny/qwen2-q`, made by `tools/make_tiny_models.py`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use baimo_engine::{EngineConfig, LoadOptions, LoadedModel, ServingEngine};
use baimo_server::{AppState, ServedModel, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const MODEL: &str = "tiny";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny/qwen2-q/qwen2-q-Q4_K_M.gguf")
}

fn load() -> Arc<LoadedModel> {
    static CACHE: std::sync::OnceLock<Arc<LoadedModel>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            Arc::new(
                baimo_engine::load(&fixture(), &LoadOptions::default()).expect("fixture model"),
            )
        })
        .clone()
}

struct Server {
    app: Router,
    state: Arc<AppState>,
    _engine: ServingEngine,
}

fn server_with(cfg: ServerConfig, engine_cfg: EngineConfig) -> Server {
    let lm = load();
    let engine = ServingEngine::start(lm.clone(), engine_cfg);
    let state = AppState::new(vec![ServedModel::new(MODEL, lm, engine.handle())], cfg);
    Server {
        app: baimo_server::router(state.clone()),
        state,
        _engine: engine,
    }
}

fn server() -> Server {
    server_with(
        ServerConfig::default(),
        EngineConfig {
            ctx: 256,
            ..EngineConfig::default()
        },
    )
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn error_type(&self) -> String {
        self.json()["error"]["type"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

async fn send(s: &Server, req: Request<Body>) -> Reply {
    let resp = s.app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn post(s: &Server, path: &str, body: Value) -> Reply {
    send(
        s,
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request"),
    )
    .await
}

async fn get(s: &Server, path: &str) -> Reply {
    send(s, Request::get(path).body(Body::empty()).expect("request")).await
}

fn chat_body(extra: Value) -> Value {
    let mut v = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "temperature": 0});
    for (k, x) in extra.as_object().expect("object") {
        v[k] = x.clone();
    }
    v
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn health_ready_models_metrics() {
    let s = server();
    assert_eq!(get(&s, "/health").await.status, StatusCode::OK);
    let r = get(&s, "/ready").await;
    assert_eq!(
        (r.status, r.json()["models"][0].as_str()),
        (StatusCode::OK, Some(MODEL))
    );
    let m = get(&s, "/v1/models").await.json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(get(&s, "/v1/models/tiny").await.json()["id"], MODEL);
    let r = get(&s, "/v1/models/nope").await;
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (StatusCode::NOT_FOUND, "not_found_error")
    );
    let r = get(&s, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains("baimo_kv_blocks_used{model=\"tiny\"}"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("baimo_http_requests_total{route=\"/v1/models\",status=\"200\"} 1"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let s = server();
    let r = get(&s, "/v2/nothing").await;
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (StatusCode::NOT_FOUND, "not_found_error")
    );
    let r = get(&s, "/v1/chat/completions").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_type(), "invalid_request_error");
    assert!(r.headers.contains_key(header::ALLOW));
}

#[tokio::test]
async fn api_key() {
    let s = server_with(
        ServerConfig {
            api_key: Some("sekret".into()),
            ..ServerConfig::default()
        },
        EngineConfig::default(),
    );
    let r = get(&s, "/v1/models").await;
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (StatusCode::UNAUTHORIZED, "authentication_error")
    );
    let wrong = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .expect("req");
    assert_eq!(send(&s, wrong).await.status, StatusCode::UNAUTHORIZED);
    let right = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer sekret")
        .body(Body::empty())
        .expect("req");
    assert_eq!(send(&s, right).await.status, StatusCode::OK);
    assert_eq!(get(&s, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_are_400_json() {
    let s = server();
    let raw = |body: &'static str, ct: &'static str| {
        Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .expect("req")
    };
    for (req, status) in [
        (
            raw("{not json", "application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (raw("", "application/json"), StatusCode::BAD_REQUEST),
        (raw("[1,2]", "application/json"), StatusCode::BAD_REQUEST),
        (
            raw(r#"{"messages": "hi"}"#, "application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
                "application/json",
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "text/plain",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let r = send(&s, req).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.error_type(), "invalid_request_error", "{}", r.text);
        assert!(r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    for bad in [
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
        json!({"max_tokens": -1}),
        json!({"max_tokens": 0}),
        json!({"n": 0}),
        json!({"temperature": 3}),
        json!({"top_p": 0}),
        json!({"logprobs": true, "top_logprobs": 50}),
    ] {
        let r = post(&s, "/v1/chat/completions", chat_body(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert_eq!(r.error_type(), "invalid_request_error");
    }
    let r = post(
        &s,
        "/v1/chat/completions",
        chat_body(json!({"model": "gpt-9"})),
    )
    .await;
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (StatusCode::NOT_FOUND, "not_found_error")
    );
}

#[tokio::test]
async fn body_limit_is_413_json() {
    let s = server_with(
        ServerConfig {
            max_body_bytes: 1000,
            ..ServerConfig::default()
        },
        EngineConfig::default(),
    );
    let big = chat_body(json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}));
    let r = post(&s, "/v1/chat/completions", big.clone()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.error_type(), "invalid_request_error");
    // Chunked, without a Content-Length.
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(big.to_string())]);
    let req = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("req");
    let r = send(&s, req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.error_type(), "invalid_request_error");
}

#[tokio::test]
async fn prompt_over_context_names_both_numbers() {
    let s = server_with(
        ServerConfig::default(),
        EngineConfig {
            ctx: 64,
            ..EngineConfig::default()
        },
    );
    let r = post(
        &s,
        "/v1/chat/completions",
        chat_body(json!({"messages": [{"role": "user", "content": "word ".repeat(100)}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "context_length_exceeded");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(msg.contains("64") && msg.contains("prompt has"), "{msg}");
    // A prompt that fits with max_tokens beyond the window ends with `length`.
    let r = post(
        &s,
        "/v1/chat/completions",
        chat_body(json!({"max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["total_tokens"], 64);
}

#[tokio::test]
async fn queue_full_is_429_and_shutdown_503() {
    let s = server_with(
        ServerConfig::default(),
        EngineConfig {
            max_queue: 0,
            ..EngineConfig::default()
        },
    );
    let r = post(&s, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
    );
    assert_eq!(
        r.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );

    let s = server();
    s.state.begin_shutdown();
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let r = post(&s, path, chat_body(json!({"prompt": "x"}))).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert!(r.headers.contains_key(header::RETRY_AFTER));
    }
    assert_eq!(
        get(&s, "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&s, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn chat_shape_and_stream_equals_non_stream() {
    let s = server();
    let body = chat_body(
        json!({"max_tokens": 12, "temperature": 1.0, "seed": 42, "logprobs": true, "top_logprobs": 3}),
    );
    let r = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["logprobs"]["content"]
        .as_array()
        .expect("logprobs")
        .clone();
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64(),
        Some(content.len() as u64)
    );
    for t in &content {
        assert!(t["logprob"].as_f64().is_some_and(|x| x <= 0.0));
        let top = t["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    let text = choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = post(&s, "/v1/chat/completions", sbody).await;
    assert_eq!(r.status, StatusCode::OK);
    let data = sse_data(&r.text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let n_lp: usize = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(n_lp, content.len());
    let usage = &chunks.last().expect("usage chunk")["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], v["usage"][k], "{k}");
    }
    // The second request with the same prompt reuses the first one's full KV blocks.
    let block = 16;
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some((prompt - 1) / block * block)
    );
    assert_eq!(chunks.last().expect("usage")["choices"], json!([]));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == choice["finish_reason"]));
}

#[tokio::test]
async fn completions_echo_and_n() {
    let s = server();
    let r = post(&s, "/v1/completions", json!({"model": MODEL, "prompt": ["ab", "cd"], "n": 2, "max_tokens": 4, "echo": true, "logprobs": 2, "seed": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let prompt = if i < 2 { "ab" } else { "cd" };
        assert!(c["text"].as_str().is_some_and(|t| t.starts_with(prompt)));
        let lp = &c["logprobs"];
        let n = lp["tokens"].as_array().map(Vec::len);
        assert_eq!(n, lp["token_logprobs"].as_array().map(Vec::len));
        assert_eq!(n, lp["text_offset"].as_array().map(Vec::len));
        assert_eq!(lp["text_offset"][0], 0);
    }
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": [999999], "max_tokens": 2}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}
