//! `baimo bench` end to end on a tiny fixture model: the JSON report's shape and consistency.
//! Speeds are never asserted, only that they are finite, positive and ordered min ≤ median ≤ max.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny")
        .join(rel)
}

fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_baimo"))
        .arg("bench")
        .args(args)
        .env(
            "BAIMO_MODELS_DIR",
            std::env::temp_dir().join("baimo-bench-test-store"),
        )
        .output()
        .expect("run baimo");
    assert!(
        out.status.success(),
        "baimo bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn assert_spread(v: &Value, what: &str) {
    let (min, med, max) = (
        v["min"].as_f64().unwrap_or(f64::NAN),
        v["median"].as_f64().unwrap_or(f64::NAN),
        v["max"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        min > 0.0 && min <= med && med <= max && max.is_finite(),
        "{what}: {v}"
    );
}

#[test]
fn json_report_has_the_issue_fields() {
    let model = fixture("qwen2-q/qwen2-q-Q4_K_M.gguf");
    let j = bench_json(&[
        model.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "0,16",
        "-t",
        "1",
        "-r",
        "2",
        "--mem-bw",
        "10",
        "--cpu-ghz",
        "2",
        "--json",
    ]);
    assert_spread(&j["prompt_tokens_per_s"], "prompt_tokens_per_s");
    assert_spread(&j["gen_tokens_per_s"], "gen_tokens_per_s");
    assert_eq!(j["threads"], 1);
    assert_eq!(j["n_prompt"], 8);
    assert_eq!(j["n_gen"], 4);
    assert_eq!(j["depth"], 0);
    assert_eq!(j["reps"], 2);
    assert!(j["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert!(j["load_s"].as_f64().unwrap() > 0.0);
    let file_len = std::fs::metadata(&model).unwrap().len();
    assert_eq!(j["file_bytes"].as_u64(), Some(file_len));
    // Largest test: 16 tokens of depth + 8 prompt tokens.
    assert_eq!(j["ctx"], 24);

    let names: Vec<&str> = j["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pp8", "tg4", "pp8 @ d16", "tg4 @ d16"]);
    for t in j["tests"].as_array().unwrap() {
        assert_eq!(t["samples_tokens_per_s"].as_array().unwrap().len(), 2);
        assert_spread(&t["tokens_per_s"], t["name"].as_str().unwrap());
    }

    // Decode limits: tied-embedding model, so every weight byte of the file's tensors is read per token.
    let lim = &j["decode_limits"];
    let w = lim["weight_bytes_per_token"].as_u64().unwrap();
    assert!(w > 0 && w < file_len, "weight bytes {w}, file {file_len}");
    assert_eq!(lim["mem_bw_gbs"], 10.0);
    let bw_limit = lim["bandwidth_limit_tokens_per_s"].as_f64().unwrap();
    let bytes = lim["bytes_per_token"].as_f64().unwrap();
    assert!((bw_limit - 10e9 / bytes).abs() / bw_limit < 1e-3);
    // 1 thread × 2 GHz × 2 FMA units × 16 f32 lanes with AVX-512 (8 without) × 2 flops.
    let lanes = if baimo_kernels::float_kernels_fast() {
        16.0
    } else {
        8.0
    };
    assert_eq!(lim["peak_gflops"], 2.0 * 2.0 * lanes * 2.0);
    let med = j["gen_tokens_per_s"]["median"].as_f64().unwrap();
    let frac = lim["bandwidth_fraction"].as_f64().unwrap();
    assert!((frac - med / bw_limit).abs() < 1e-3 * frac.max(1.0));
}

#[test]
fn zero_lengths_skip_tests() {
    let model = fixture("qwen2-gqa/qwen2-gqa-F32.gguf");
    let j = bench_json(&[
        model.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "3",
        "-r",
        "1",
        "--json",
    ]);
    assert!(j["prompt_tokens_per_s"].is_null());
    assert_spread(&j["gen_tokens_per_s"], "gen_tokens_per_s");
    assert_eq!(j["tests"].as_array().unwrap().len(), 1);
    // Default threads: all cores.
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(j["threads"].as_u64(), Some(cores as u64));
}
