//! GFLOP/s of the quantized matmul on the 0.5B models' FFN-down shape (896 × 4864), for one activation row
//! (decode) and 512 (prefill), scalar reference vs SIMD, with candle's `QMatMul` on the same bytes beside it
//! (what `Linear` used before). Not a test: speeds are printed, never asserted.
//!
//! `cargo run --release -p baimo-kernels --example matmul_speed [-- FORMAT...]` (RAYON_NUM_THREADS sets the
//! thread count, `SPEED_M=1,8,512` the activation rows, `SPEED_SIMD_ONLY=1` skips scalar and candle
//! and times the pre-packed weights instead).

use std::time::{Duration, Instant};

use baimo_kernels::{quant_matmul_packed, quant_matmul_with, BlockFormat, Isa, PackedWeights};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rand::{Rng, SeedableRng};

const ROWS: usize = 896;
const COLS: usize = 4864;

fn parse(name: &str) -> Option<(BlockFormat, GgmlDType, &'static [usize])> {
    Some(match name {
        "Q4_0" => (BlockFormat::Q4_0, GgmlDType::Q4_0, &[0]),
        "Q4_1" => (BlockFormat::Q4_1, GgmlDType::Q4_1, &[0, 2]),
        "Q5_0" => (BlockFormat::Q5_0, GgmlDType::Q5_0, &[0]),
        "Q8_0" => (BlockFormat::Q8_0, GgmlDType::Q8_0, &[0]),
        "Q4_K" => (BlockFormat::Q4K, GgmlDType::Q4K, &[0, 2]),
        "Q5_K" => (BlockFormat::Q5K, GgmlDType::Q5K, &[0, 2]),
        "Q6_K" => (BlockFormat::Q6K, GgmlDType::Q6K, &[208]),
        _ => return None,
    })
}

/// Median seconds per call over repetitions filling about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = if args.is_empty() {
        vec!["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    println!(
        "{ROWS}x{COLS}, {} threads; GFLOP/s (2·M·rows·cols / median time)",
        rayon::current_num_threads()
    );
    println!(
        "{:<5} {:>5} {:>9} {:>9} {:>9}",
        "type", "M", "scalar", "simd", "candle"
    );
    for name in names {
        let Some((format, dtype, f16s)) = parse(name) else {
            eprintln!("unknown format {name}");
            continue;
        };
        let mut w = vec![0u8; ROWS * COLS / format.block_len() * format.block_bytes()];
        rng.fill(&mut w[..]);
        for b in w.chunks_exact_mut(format.block_bytes()) {
            for &o in f16s {
                b[o..o + 2]
                    .copy_from_slice(&f16::from_f32(rng.gen_range(0.001..0.02)).to_le_bytes());
            }
        }
        let q =
            qtensor_from_ggml(dtype, &w, vec![ROWS, COLS], &Device::Cpu).expect("candle tensor");
        let candle = QMatMul::from_qtensor(q).expect("QMatMul");
        let ms: Vec<usize> = std::env::var("SPEED_M")
            .ok()
            .map(|v| v.split(',').filter_map(|m| m.parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 512]);
        for &m in &ms {
            let x: Vec<f32> = (0..m * COLS).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let xt = Tensor::from_vec(x.clone(), (m, COLS), &Device::Cpu).expect("tensor");
            let flop = 2.0 * (m * ROWS * COLS) as f64;
            let budget = Duration::from_millis(if m == 1 { 300 } else { 1500 });
            let g = |isa| {
                flop / time(budget, || {
                    quant_matmul_with(isa, format, &w, ROWS, COLS, &x).expect("matmul");
                }) / 1e9
            };
            let simd = g(Isa::detect());
            if std::env::var("SPEED_SIMD_ONLY").is_ok() {
                // With the weights packed beforehand (`PackedWeights`, the server's `--pack-weights`).
                let packed = PackedWeights::new(format, &w, ROWS, COLS).map(|p| {
                    flop / time(budget, || {
                        quant_matmul_packed(&p, &w, &x).expect("matmul");
                    }) / 1e9
                });
                let packed = packed.map_or("-".to_string(), |g| format!("{g:.1}"));
                println!("{name:<5} {m:>5} {:>9} {simd:>9.1} {packed:>9}", "-");
                continue;
            }
            let scalar = g(Isa::Scalar);
            let c =
                flop / time(budget, || {
                    candle.forward(&xt).expect("candle forward");
                }) / 1e9;
            println!("{name:<5} {m:>5} {scalar:>9.1} {simd:>9.1} {c:>9.1}");
        }
    }
}
