//! `/admin/adapters`: LoRA adapters loaded and unloaded while the server runs. Guarded by the admin key (or,
//! without one, the API key), since loading reads a folder on the server's disk.
//!
//! - `GET /admin/adapters`: every served adapter.
//! - `POST /admin/adapters` `{"name": "support", "path": "/adapters/support", "model": "qwen"}` (`model` defaults
//!   to the default model): 201 with the adapter; requests then reach it as `"model": "qwen:support"`.
//! - `DELETE /admin/adapters/{model}:{name}`: requests already running with it finish with it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::routes::JsonBody;
use crate::state::{Adapter, AdapterError, AppState, ServedModel};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAdapter {
    pub name: String,
    pub path: PathBuf,
    /// The base model's id; the default model when absent.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AdapterObject {
    /// What requests pass as `model`.
    pub id: String,
    pub object: &'static str,
    pub name: String,
    /// The base model.
    pub model: String,
    pub path: String,
    pub created: u64,
}

pub fn adapter_object(m: &ServedModel, a: &Adapter) -> AdapterObject {
    AdapterObject {
        id: format!("{}:{}", m.id, a.name),
        object: "lora_adapter",
        name: a.name.clone(),
        model: m.id.clone(),
        path: a.path.display().to_string(),
        created: a.created,
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<AdapterObject> = state
        .models
        .iter()
        .flat_map(|m| m.adapters().into_iter().map(move |a| adapter_object(m, &a)))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn load(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let req: LoadAdapter = body.parse(&headers)?;
    let model_index = match req.model.as_deref() {
        None | Some("") => 0,
        Some(id) => state
            .models
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| ApiError::ModelNotFound(id.to_string()))?,
    };
    if state.models.is_empty() {
        return Err(ApiError::ModelNotFound(String::new()));
    }
    let st = state.clone();
    let (name, path) = (req.name.clone(), req.path.clone());
    let loaded =
        tokio::task::spawn_blocking(move || st.models[model_index].load_adapter(&name, &path))
            .await
            .map_err(|e| ApiError::Internal(format!("loading the adapter: {e}")))?;
    let m = &state.models[model_index];
    match loaded {
        Ok(a) => {
            tracing::info!(
                "adapter `{}:{}` loaded from {}",
                m.id,
                a.name,
                a.path.display()
            );
            Ok((StatusCode::CREATED, Json(adapter_object(m, &a))).into_response())
        }
        Err(e @ AdapterError::Exists { .. }) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ AdapterError::BadName(_)) => Err(ApiError::param("name", e.to_string())),
        Err(AdapterError::Load(e)) => Err(ApiError::param(
            "path",
            format!(
                "cannot serve {} as an adapter of `{}`: {e}",
                req.path.display(),
                m.id
            ),
        )),
    }
}

pub async fn unload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let route = state.route(Some(&id))?;
    let Some(a) = route.adapter.as_ref() else {
        return Err(ApiError::invalid(format!(
            "`{id}` is a model, not an adapter: name one as MODEL:ADAPTER"
        )));
    };
    route.served.unload_adapter(&a.name);
    tracing::info!("adapter `{id}` unloaded");
    Ok(Json(
        json!({"id": route.id(), "object": "lora_adapter", "deleted": true}),
    ))
}
