//! Throughput of the float-weight kernel: `cargo run --release -p baimo-kernels --example float_speed`
//! (SPEED_M activation rows, default 512; RAYON_NUM_THREADS threads), the 0.5B models' FFN shapes (up/gate
//! 4864×896 and down 896×4864) in F16, BF16 and F32.

use baimo_kernels::{float_matmul, FloatFormat};
use std::time::Instant;

fn main() {
    let m: usize = std::env::var("SPEED_M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    for (rows, cols) in [(4864, 896), (896, 4864)] {
        shape(m, rows, cols);
    }
}

fn shape(m: usize, rows: usize, cols: usize) {
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
        for _ in 0..9 {
            let t = Instant::now();
            let y = float_matmul(format, &w, rows, cols, &x).unwrap();
            times.push(t.elapsed().as_secs_f64());
            std::hint::black_box(y);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let best = times[0]; // the fastest of 9: this machine is shared and noisy
        println!(
            "{format:?} {rows}x{cols} m={m}: {:.2} ms, {:.1} GFLOP/s",
            best * 1e3,
            2.0 * (m * rows * cols) as f64 / best / 1e9
        );
    }
}
