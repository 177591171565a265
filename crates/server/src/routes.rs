//! The router: endpoints, the API-key check, request metrics, the body limit, and a last layer that turns every
//! non-JSON error response (axum's 405, tower-http's 413, a caught panic) into OpenAI's error JSON, so a
//! client never sees plain text.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::{ApiError, ApiResult};
use crate::openai::{ModelList, ModelObject};
use crate::state::{AppState, Route, ServedModel};
use crate::{admin, chat, completions, validate};

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/adapters", get(admin::list).post(admin::load))
        .route(
            "/admin/adapters/{*id}",
            axum::routing::delete(admin::unload),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// The request body of a JSON endpoint, read under the body limit; [`JsonBody::parse`] reports an oversized,
/// unreadable, mislabelled or malformed body as OpenAI errors instead of axum's plain-text rejections.
pub struct JsonBody {
    body: Result<Bytes, BytesRejection>,
    limit: usize,
}

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = Infallible;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Infallible> {
        Ok(JsonBody {
            body: Bytes::from_request(req, state).await,
            limit: state.cfg.max_body_bytes,
        })
    }
}

impl JsonBody {
    pub fn parse<T: DeserializeOwned>(self, headers: &HeaderMap) -> ApiResult<T> {
        let body = self.body.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: self.limit }
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
        // A missing Content-Type is tolerated (some clients omit it); a wrong one is not.
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let mime = ct.split(';').next().unwrap_or("").trim();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType(mime.to_string()));
            }
        }
        if body.is_empty() {
            return Err(ApiError::invalid(
                "the request body is empty: send a JSON object",
            ));
        }
        validate::parse_json(&body)
    }
}

/// Every request passes here: API key, metrics by route and status, JSON error bodies.
async fn front(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_label(&path);
    let key = if path.starts_with("/admin/") {
        state.cfg.admin_key.as_ref().or(state.cfg.api_key.as_ref())
    } else if path.starts_with("/v1/") {
        state.cfg.api_key.as_ref()
    } else {
        None
    };
    let resp = if key.is_some_and(|k| !authorized(k, req.headers())) {
        ApiError::Unauthorized.into_response()
    } else {
        next.run(req).await
    };
    let resp = json_errors(resp, &method, &path, state.cfg.max_body_bytes);
    state.metrics.count_request(route, resp.status().as_u16());
    resp
}

fn authorized(key: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), key.as_bytes())
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed key is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A bounded set of route labels for the request counter (unknown paths must not grow it).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        "/admin/adapters" => "/admin/adapters",
        p if p.starts_with("/admin/adapters/") => "/admin/adapters/{id}",
        _ => "other",
    }
}

fn json_errors(resp: Response, method: &Method, path: &str, limit: usize) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::RouteNotFound {
            method: method.to_string(),
            path: path.to_string(),
        },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
        },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(String::new()),
        s if s.is_client_error() => ApiError::invalid(format!("the request was rejected ({s})")),
        _ => ApiError::Internal("the server failed while handling the request".into()),
    };
    let mut out = err.into_response();
    *out.status_mut() = status;
    for h in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

fn model_object(m: &ServedModel) -> ModelObject {
    ModelObject {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "baimo",
        parent: None,
    }
}

fn route_object(r: &Route) -> ModelObject {
    match &r.adapter {
        None => model_object(r.served),
        Some(a) => ModelObject {
            id: r.id(),
            object: "model",
            created: a.created,
            owned_by: "baimo",
            parent: Some(r.served.id.clone()),
        },
    }
}

/// The models, each followed by its adapters (`MODEL:ADAPTER`, with `parent` naming the model).
async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let mut data = Vec::new();
    for m in &state.models {
        data.push(model_object(m));
        for a in m.adapters() {
            data.push(route_object(&Route {
                served: m,
                adapter: Some(a),
            }));
        }
    }
    Json(ModelList {
        object: "list",
        data,
    })
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelObject>> {
    Ok(Json(route_object(&state.route(Some(&id))?)))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
    if state.is_closing() {
        return ApiError::ShuttingDown.into_response();
    }
    if models.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no model loaded"})),
        )
            .into_response();
    }
    Json(json!({"status": "ready", "models": models})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state.models);
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
