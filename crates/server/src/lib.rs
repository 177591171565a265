//! Baimo's OpenAI-compatible HTTP server: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`,
//! `/ready` and `/metrics` over one [`baimo_engine::ServingEngine`] per model, with LoRA adapters served over
//! each model as `MODEL:ADAPTER` and managed at runtime under [`admin`].
//!
//! The layering follows TGI's router: [`validate`] turns requests into engine options (every rejection a 400
//! naming the field), [`gen`] talks to the engine, [`error::ApiError`] maps every failure to a status and
//! OpenAI's error JSON in one place, and [`routes`] wires it up.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod error;
pub mod gen;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod state;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use error::ApiError;
pub use routes::router;
pub use state::{AppState, ServedModel, ServerConfig};

/// Serves `state` on `listener` until `shutdown` resolves; then stops admitting generation requests (they get
/// 503 with `Retry-After` while the listener stays open), waits up to `drain` for requests in flight to
/// finish, closes the listener and returns once every connection is done.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let signal = async move {
        shutdown.await;
        state.begin_shutdown();
        tracing::info!(
            in_flight = state.in_flight(),
            "shutting down: draining requests in flight"
        );
        if !state.drained(drain).await {
            tracing::warn!(
                in_flight = state.in_flight(),
                "drain timeout: closing with requests in flight"
            );
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}
