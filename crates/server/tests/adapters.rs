//! LoRA adapters over the API: `--adapter`-style loading, `MODEL:ADAPTER` routing, listing, the admin endpoints
//! (load, conflicts, bad folders, unload while the base keeps serving) and their key, on the tiny Qwen2 fixture
//! with the PEFT adapters `tools/make_lora_refs.py` made for it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use baimo_engine::{EngineConfig, LoadOptions, ServingEngine};
use baimo_server::{AppState, ServedModel, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn tiny(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny/qwen2-gqa")
        .join(rel)
}

struct Server {
    app: Router,
    _engine: ServingEngine,
}

fn server(cfg: ServerConfig) -> Server {
    let lm =
        Arc::new(baimo_engine::load(&tiny("qwen2-gqa-F32.gguf"), &LoadOptions::default()).unwrap());
    let engine = ServingEngine::start(
        lm.clone(),
        EngineConfig {
            ctx: 128,
            ..EngineConfig::default()
        },
    );
    let m = ServedModel::new("tiny", lm, engine.handle());
    m.load_adapter("all", &tiny("lora-all")).unwrap();
    let state = AppState::new(vec![m], cfg);
    Server {
        app: baimo_server::router(state),
        _engine: engine,
    }
}

async fn send(s: &Server, req: Request<Body>) -> (StatusCode, Value) {
    let resp = s.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

fn request(method: &str, path: &str, body: Option<Value>, key: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        r = r.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    match body {
        Some(b) => r
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => r.body(Body::empty()).unwrap(),
    }
}

async fn complete(s: &Server, model: &str) -> (StatusCode, Value) {
    let body = json!({"model": model, "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0});
    send(s, request("POST", "/v1/completions", Some(body), None)).await
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn adapters_route_list_load_and_unload() {
    let s = server(ServerConfig::default());
    let (st, models) = send(&s, request("GET", "/v1/models", None, None)).await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "tiny:all"]);
    assert_eq!(models["data"][1]["parent"], "tiny");
    let (st, m) = send(&s, request("GET", "/v1/models/tiny:all", None, None)).await;
    assert_eq!((st, m["parent"].as_str()), (StatusCode::OK, Some("tiny")));

    // The adapter answers differently from the base, and names itself in the response.
    let (st, base) = complete(&s, "tiny").await;
    assert_eq!(st, StatusCode::OK, "{base}");
    let (st, adapted) = complete(&s, "tiny:all").await;
    assert_eq!(st, StatusCode::OK, "{adapted}");
    assert_eq!(adapted["model"], "tiny:all");
    assert_ne!(
        text(&base),
        text(&adapted),
        "the adapter changes the greedy continuation"
    );

    // Unknown adapters name the model's loaded ones.
    let (st, e) = complete(&s, "tiny:nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "model_not_found");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`nope`") && msg.contains("all"), "{msg}");

    // Load a second adapter at runtime; it serves at once, under its own name.
    let load = |name: &str, path: PathBuf| {
        request(
            "POST",
            "/admin/adapters",
            Some(json!({"name": name, "path": path})),
            None,
        )
    };
    let (st, a) = send(&s, load("qv", tiny("lora-qv-rs"))).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["id"], "tiny:qv");
    let (st, qv) = complete(&s, "tiny:qv").await;
    assert_eq!(st, StatusCode::OK, "{qv}");
    let (_, list) = send(&s, request("GET", "/admin/adapters", None, None)).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // Refusals: a taken name, a folder that is not an adapter, a bad name, an unknown model, unknown fields.
    let (st, e) = send(&s, load("qv", tiny("lora-qv-rs"))).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (st, e) = send(&s, load("x", tiny("hf"))).await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("path"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("adapter_config.json"),
        "{e}"
    );
    let (st, e) = send(&s, load("bad name", tiny("lora-all"))).await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    let body = json!({"name": "y", "path": tiny("lora-all"), "model": "gpt-9"});
    let (st, _) = send(&s, request("POST", "/admin/adapters", Some(body), None)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let body = json!({"name": "y", "path": tiny("lora-all"), "rank": 3});
    let (st, _) = send(&s, request("POST", "/admin/adapters", Some(body), None)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Unload: the adapter is gone, the base and the other adapter keep answering as before.
    let (st, d) = send(&s, request("DELETE", "/admin/adapters/tiny:qv", None, None)).await;
    assert_eq!((st, d["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(complete(&s, "tiny:qv").await.0, StatusCode::NOT_FOUND);
    let (st, _) = send(&s, request("DELETE", "/admin/adapters/tiny:qv", None, None)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = send(&s, request("DELETE", "/admin/adapters/tiny", None, None)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(text(&complete(&s, "tiny").await.1), text(&base));
    assert_eq!(text(&complete(&s, "tiny:all").await.1), text(&adapted));
    // Reloaded under the same name: the same answers as the first time.
    assert_eq!(
        send(&s, load("qv", tiny("lora-qv-rs"))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(text(&complete(&s, "tiny:qv").await.1), text(&qv));
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_key() {
    // With only an API key, it guards /admin too.
    let s = server(ServerConfig {
        api_key: Some("user".into()),
        ..ServerConfig::default()
    });
    assert_eq!(
        send(&s, request("GET", "/admin/adapters", None, None))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&s, request("GET", "/admin/adapters", None, Some("user")))
            .await
            .0,
        StatusCode::OK
    );
    // With an admin key, the API key no longer opens /admin.
    let s = server(ServerConfig {
        api_key: Some("user".into()),
        admin_key: Some("root".into()),
        ..ServerConfig::default()
    });
    let (st, e) = send(
        &s,
        request("DELETE", "/admin/adapters/tiny:all", None, Some("user")),
    )
    .await;
    assert_eq!(
        (st, e["error"]["type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("authentication_error"))
    );
    assert_eq!(
        send(&s, request("GET", "/v1/models", None, Some("user")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&s, request("GET", "/admin/adapters", None, Some("root")))
            .await
            .0,
        StatusCode::OK
    );
}
