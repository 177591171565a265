//! Throughput of the two f32 products of a LoRA training step on a small model's shapes:
//! `cargo run --release -p baimo-kernels --example train_speed` (SPEED_M rows, default 210 — a step of four
//! short chats; RAYON_NUM_THREADS threads). `x·Wᵀ` (the forward, [`float_matmul`]) and `g·W` (the input
//! gradient, [`float_matmul_nn`]), and the forward on the NN kernel ([`float_matmul_nt`]) for SmolLM2-135M's projections (576 wide, FFN 1536) and its output head.

use baimo_kernels::{float_matmul, float_matmul_nn, float_matmul_nt, FloatFormat};
use std::time::Instant;

fn main() {
    let m: usize = std::env::var("SPEED_M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(210);
    let (mut fwd_s, mut nt_s, mut bwd_s, mut flop) = (0.0, 0.0, 0.0, 0.0);
    for (out, inp, count) in [(576, 576, 2), (192, 576, 2), (1536, 576, 2), (576, 1536, 1)] {
        let (f, nt, b) = shape(m, out, inp);
        fwd_s += f * count as f64;
        nt_s += nt * count as f64;
        bwd_s += b * count as f64;
        flop += (2 * m * out * inp * count) as f64;
    }
    // The output head over the trained positions only (about 80 of a step's 210 tokens).
    shape(m * 80 / 210, 49152, 576);
    println!(
        "one layer: forward {:.1} GFLOP/s (dot kernel), {:.1} GFLOP/s (NN kernel, wᵀ packed), input gradient {:.1} GFLOP/s",
        flop / fwd_s / 1e9,
        flop / nt_s / 1e9,
        flop / bwd_s / 1e9
    );
}

fn best<T>(mut f: impl FnMut() -> T) -> f64 {
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        std::hint::black_box(f());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn shape(m: usize, out: usize, inp: usize) -> (f64, f64, f64) {
    let x: Vec<f32> = (0..m * inp)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let g: Vec<f32> = (0..m * out)
        .map(|i| ((i * 7901) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 7907) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let fwd = best(|| float_matmul(FloatFormat::F32, &bytes, out, inp, &x).unwrap());
    let nt = best(|| float_matmul_nt(&x, m, inp, &w, out).unwrap());
    let bwd = best(|| float_matmul_nn(&g, m, out, &w, inp).unwrap());
    let flop = (2 * m * out * inp) as f64;
    println!(
        "m={m} W {out}×{inp}: x·Wᵀ {:6.1} GFLOP/s ({:.2} ms), packed {:6.1} GFLOP/s, g·W {:6.1} GFLOP/s ({:.2} ms)",
        flop / fwd / 1e9,
        fwd * 1e3,
        flop / nt / 1e9,
        flop / bwd / 1e9,
        bwd * 1e3
    );
    (fwd, nt, bwd)
}
