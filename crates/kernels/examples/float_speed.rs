//! Throughput of the float-weight kernel: `cargo run --release -p baimo-kernels --example float_speed`
//! (SPEED_M activation rows, default 512; RAYON_NUM_THREADS threads), a 4864×896 F16, BF16 and F32 weight.

use baimo_kernels::{float_matmul, FloatFormat};
use std::time::Instant;

fn main() {
    let m: usize = std::env::var("SPEED_M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let (rows, cols) = (4864, 896);
    let x: Vec<f32> = (0..m * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    for format in [FloatFormat::F16, FloatFormat::BF16, FloatFormat::F32] {
        let w: Vec<u8> = (0..rows * cols)
            .flat_map(|i| {
                let v = ((i * 7907) % 2001) as f32 / 1000.0 - 1.0;
                match format {
                    FloatFormat::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    FloatFormat::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                    FloatFormat::F32 => v.to_le_bytes().to_vec(),
                }
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let y = float_matmul(format, &w, rows, cols, &x).unwrap();
            times.push(t.elapsed().as_secs_f64());
            std::hint::black_box(y);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = times[times.len() / 2];
        println!(
            "{format:?} m={m}: {:.2} ms, {:.1} GFLOP/s",
            med * 1e3,
            2.0 * (m * rows * cols) as f64 / med / 1e9
        );
    }
}
