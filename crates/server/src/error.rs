//! One error enum for everything a request can run into, mapped to an HTTP status and OpenAI's error JSON in
//! one place (`{"error": {"message", "type", "param", "code"}}`, as api.openai.com answers), the way TGI's router
//! maps its `InferError` variants.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baimo_engine::SubmitError;
use serde::Serialize;

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ApiError {
    /// The request is malformed or asks for something out of range.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("the prompt is too long: this model's maximum context length is {ctx} tokens, but the prompt has {prompt} tokens")]
    ContextLengthExceeded { prompt: usize, ctx: usize },
    #[error("missing or invalid API key: send it as `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("the model `{model}` has no adapter `{adapter}` (loaded: {})", if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") })]
    AdapterNotFound {
        model: String,
        adapter: String,
        loaded: Vec<String>,
    },
    /// The request conflicts with the server's state (an adapter name already in use).
    #[error("{0}")]
    Conflict(String),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type `{0}`: send JSON with `Content-Type: application/json`")]
    UnsupportedMediaType(String),
    #[error("the server is busy ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine failed on a valid request: the only 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body OpenAI's API answers with on an error.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// An invalid value of the request field `param`.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
            code: Some("invalid_value"),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::ContextLengthExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_)
            | ApiError::AdapterNotFound { .. }
            | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
            | ApiError::Conflict(_) => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::ModelNotFound(_)
            | ApiError::AdapterNotFound { .. }
            | ApiError::RouteNotFound { .. } => "not_found_error",
            ApiError::QueueFull(_) => "rate_limit_error",
            ApiError::ShuttingDown => "service_unavailable_error",
            ApiError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            ApiError::Unauthorized => Some("invalid_api_key"),
            ApiError::ModelNotFound(_) | ApiError::AdapterNotFound { .. } => {
                Some("model_not_found")
            }
            ApiError::Conflict(_) => Some("conflict"),
            ApiError::RouteNotFound { .. } => Some("unknown_url"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::UnsupportedMediaType(_) => Some("unsupported_media_type"),
            ApiError::QueueFull(_) => Some("queue_full"),
            ApiError::ShuttingDown => Some("shutting_down"),
            ApiError::Internal(_) => None,
        }
    }

    fn param_name(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::ContextLengthExceeded { .. } => Some("messages".into()),
            ApiError::ModelNotFound(_) | ApiError::AdapterNotFound { .. } => Some("model".into()),
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param_name(),
                code: self.code(),
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull(n) => ApiError::QueueFull(n),
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::PromptTooLong { prompt, ctx } => {
                ApiError::ContextLengthExceeded { prompt, ctx }
            }
            SubmitError::EmptyPrompt => ApiError::param("prompt", "the prompt is empty"),
            e @ SubmitError::TooBigForCache { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
                param: None,
                code: Some("context_length_exceeded"),
            },
            e @ SubmitError::BadToken { .. } => ApiError::param("prompt", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
        if matches!(self, ApiError::QueueFull(_) | ApiError::ShuttingDown) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
