//! `baimo finetune` end to end on a tiny model: bad records are reported by line, the loss on held-out data
//! falls, and the adapter it writes is PEFT's format and changes what `baimo run --adapter` generates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn eval_losses(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter_map(|l| l.split("eval loss ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[test]
fn finetune_learns_and_writes_a_peft_adapter() {
    let dir = std::env::temp_dir().join(format!("baimo-ft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The company dataset plus two bad records.
    let mut data = std::fs::read_to_string(root().join("fixtures/finetune/train.jsonl")).unwrap();
    data.push_str(
        "{not json\n{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}\n",
    );
    let data_path = dir.join("train.jsonl");
    std::fs::write(&data_path, data).unwrap();
    let out = dir.join("adapter");
    let model = root().join("fixtures/tiny/qwen2-gqa/hf");
    let r = Command::new(env!("CARGO_BIN_EXE_baimo"))
        .args(["finetune", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data_path)
        .arg("--eval-file")
        .arg(root().join("fixtures/finetune/heldout.jsonl"))
        .arg("--out")
        .arg(&out)
        .args([
            "--max-steps",
            "24",
            "--lr",
            "5e-3",
            "--batch-size",
            "4",
            "--eval-every",
            "8",
            "--seed",
            "7",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 25: skipped: invalid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 26: skipped: no assistant message"),
        "{stderr}"
    );
    let losses = eval_losses(&stderr);
    assert!(losses.len() >= 3, "{stderr}");
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.9),
        "held-out loss did not fall: {losses:?}"
    );
    assert!(out.join("adapter_config.json").is_file());
    assert!(out.join("adapter_model.safetensors").is_file());

    // Runs that fail before any work: --on-bad-record fail names the line; a device this build cannot use
    // is named.
    let failing = |args: &[&str]| {
        let r = Command::new(env!("CARGO_BIN_EXE_baimo"))
            .args(["finetune", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data_path)
            .arg("--out")
            .arg(dir.join("never"))
            .args(args)
            .args(["--max-steps", "1"])
            .output()
            .unwrap();
        assert!(!r.status.success());
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let e = failing(&["--on-bad-record", "fail"]);
    assert!(e.contains("train.jsonl:25"), "{e}");
    let e = failing(&["--device", "tpu"]);
    assert!(e.contains("expected `cpu`, `cuda` or `cuda:N`"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = failing(&["--device", "cuda:0"]);
        assert!(e.contains("rebuild with `--features cuda`"), "{e}");
    }
    assert!(!dir.join("never").exists());

    // The adapter changes greedy output.
    let run = |adapter: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_baimo"));
        c.arg("run").arg(&model).args([
            "-p",
            "How much is the DustFox?",
            "-n",
            "12",
            "--temperature",
            "0",
            "--json",
        ]);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_ne!(run(None), run(Some(&out)));
    std::fs::remove_dir_all(&dir).ok();
}

/// Training restarts itself once with glibc's transparent-huge-page tunable where the kernel gives huge pages
/// only to memory that asks for them, adding to the user's tunables and never overriding a choice made there;
/// other commands never restart.
#[test]
fn finetune_restarts_with_huge_pages_where_they_must_be_asked_for() {
    let dir = std::env::temp_dir().join(format!("baimo-ft-thp-{}", std::process::id()));
    let model = root().join("fixtures/tiny/qwen2-gqa/hf");
    // The GLIBC_TUNABLES the (possibly restarted) process ran with, from its debug log.
    let tunables_seen = |args: Vec<std::ffi::OsString>, tunables: Option<&str>| -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_baimo"));
        c.args(args).env("BAIMO_LOG", "debug");
        match tunables {
            Some(t) => c.env("GLIBC_TUNABLES", t),
            None => c.env_remove("GLIBC_TUNABLES"),
        };
        let r = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(r.status.success(), "{stderr}");
        let start = stderr.lines().find(|l| l.contains("glibc_tunables"));
        start
            .unwrap_or_else(|| panic!("no start line: {stderr}"))
            .into()
    };
    let finetune = |out: &str| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["finetune".into(), "--model".into()];
        v.push(model.clone().into());
        v.push("--data".into());
        v.push(root().join("fixtures/finetune/train.jsonl").into());
        v.push("--out".into());
        v.push(dir.join(out).into());
        v.extend(["--max-steps", "1", "--batch-size", "2"].map(Into::into));
        v
    };
    let madvise = cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|m| m.contains("[madvise]"));
    let line = tunables_seen(finetune("a"), None);
    assert_eq!(line.contains("glibc.malloc.hugetlb=1"), madvise, "{line}");
    // The restart says so (the line is printed by the first process, before the exec).
    let mut c = Command::new(env!("CARGO_BIN_EXE_baimo"));
    let r = c
        .args(finetune("d"))
        .env_remove("GLIBC_TUNABLES")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(
        stderr.contains("note: restarting on transparent huge pages"),
        madvise,
        "{stderr}"
    );
    let line = tunables_seen(finetune("b"), Some("glibc.malloc.arena_max=2"));
    assert!(line.contains("glibc.malloc.arena_max=2"), "{line}");
    assert_eq!(line.contains("glibc.malloc.hugetlb=1"), madvise, "{line}");
    let line = tunables_seen(finetune("c"), Some("glibc.malloc.hugetlb=0"));
    assert!(
        line.contains("glibc.malloc.hugetlb=0") && !line.contains("hugetlb=1"),
        "{line}"
    );
    let line = tunables_seen(vec!["info".into(), model.clone().into()], None);
    assert!(!line.contains("hugetlb"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}
