//! Checkpoints and `--resume`: a run stopped at a checkpoint and resumed from it ends with exactly the
//! parameters of the uninterrupted run (same seed, dropout on, several epochs so the data order matters),
//! and resuming from the output folder picks its newest complete checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use baimo_models::Transformer;
use baimo_train::run::{finetune, latest_checkpoint, RunOptions};
use baimo_train::{Example, LoraSpec};
use candle_core::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn model() -> Transformer {
    Transformer::from_hf_dir(&fixtures().join("tiny/llama-gqa/hf")).unwrap()
}

fn examples(vocab: u32) -> Vec<Example> {
    (0..7u32)
        .map(|k| {
            let n = 6 + (k as usize * 3) % 9;
            let tokens: Vec<u32> = (0..n as u32)
                .map(|i| (i * 31 + k * 17 + 3) % vocab)
                .collect();
            let labels = tokens
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < 3 { -100 } else { t as i64 })
                .collect();
            Example { tokens, labels }
        })
        .collect()
}

fn opts(out: &Path, resume: Option<PathBuf>) -> RunOptions {
    RunOptions {
        lora: LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            ..LoraSpec::default()
        },
        epochs: 3,
        max_steps: None,
        batch_size: 2,
        grad_accum: 1,
        lr: 5e-3,
        warmup_steps: 2,
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        seed: 11,
        eval_every: 0,
        save_every: 5,
        out: out.to_path_buf(),
        base_name: "tiny".into(),
        resume,
        pack_tokens: 64,
    }
}

fn params_bits(p: &baimo_train::LoraParams) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = p
        .peft_tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let bits = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect();
    v.sort();
    v
}

/// Runs 12 steps, then again from the step-5 checkpoint into another folder, on models from `model`;
/// checks the resumed run retraces the uninterrupted one bit for bit and returns the losses.
fn run_and_resume(root: &Path, model: impl Fn() -> Transformer) -> Vec<f64> {
    let stop = AtomicBool::new(false);
    let mut m = model();
    let data = examples(m.config().vocab_size as u32);

    // Uninterrupted: 7 examples, batch 2 → 4 steps per epoch, 12 steps; checkpoints at 5 and 10.
    let full_out = root.join("full");
    let mut losses = Vec::new();
    let full = finetune(&mut m, &data, &[], &opts(&full_out, None), &stop, |p| {
        if let baimo_train::run::Progress::Step { stats, .. } = p {
            losses.push(stats.loss);
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 12);
    assert!(full_out.join("checkpoint-5/optimizer.safetensors").exists());
    assert_eq!(
        latest_checkpoint(&full_out.join("checkpoint-5")),
        full_out.join("checkpoint-5")
    );

    // "Killed" after step 5: resume from that checkpoint in a fresh process-like setup.
    let mut m2 = model();
    let resumed_out = root.join("resumed");
    let mut resumed_losses = Vec::new();
    let resumed = finetune(
        &mut m2,
        &data,
        &[],
        &opts(&resumed_out, Some(full_out.join("checkpoint-5"))),
        &stop,
        |p| {
            if let baimo_train::run::Progress::Step { stats, .. } = p {
                resumed_losses.push(stats.loss);
            }
        },
    )
    .unwrap();
    assert_eq!(
        resumed_losses,
        losses[5..],
        "steps 6..12 see the same batches, dropout and optimizer state"
    );
    assert_eq!(
        params_bits(&resumed),
        params_bits(&full),
        "the same final adapter, bit for bit"
    );
    losses
}

// One test, not two: the dropout masks draw from one process-wide seed counter, which runs in parallel
// would share.
#[test]
fn resumed_run_ends_exactly_where_the_uninterrupted_one_does() {
    let root = std::env::temp_dir().join(format!("baimo-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let losses = run_and_resume(&root, model);
    let full_out = root.join("full");

    // The same with candle's operations (what a GPU runs): it resumes exactly too, and trains as the
    // kernels do (the two differ only in rounding).
    let candle = run_and_resume(&root.join("candle"), || {
        model().to_device(&Device::Cpu).unwrap()
    });
    let worst = losses
        .iter()
        .zip(&candle)
        .map(|(k, c)| (k - c).abs() / k.abs())
        .fold(0f64, f64::max);
    println!("losses, kernels against candle's operations: worst relative difference {worst:.2e}");
    for (step, (k, c)) in losses.iter().zip(&candle).enumerate() {
        assert!(
            (k - c).abs() <= 1e-4 * k.abs(),
            "step {}: loss {k} with the kernels, {c} with candle's operations",
            step + 1
        );
    }

    // A half-written checkpoint (as a kill during saving leaves) is ignored: the output folder resumes from
    // its newest complete one.
    std::fs::create_dir_all(full_out.join("checkpoint-11.partial")).unwrap();
    std::fs::create_dir_all(full_out.join("checkpoint-12")).unwrap(); // no adapter inside
    std::fs::remove_file(full_out.join("adapter_config.json")).unwrap();
    assert_eq!(latest_checkpoint(&full_out), full_out.join("checkpoint-10"));
    let _ = std::fs::remove_dir_all(&root);
}
