//! Every kernel against its references, on random blocks and awkward shapes:
//! - our block decoding against candle's independent one (layouts, scales, minimums);
//! - the scalar kernels against a float dot product of the dequantized operands;
//! - the SIMD kernels against the scalar ones (K-quants bit for bit; 32-element formats to f32 summation
//!   order);
//! - batch invariance: a row's output is bit-identical whatever else is in the batch.

use baimo_kernels::q8::{Q8Acts, Q8KActs};
use baimo_kernels::{
    dequantize_row, quant_matmul, quant_matmul_many, quant_matmul_packed, quant_matmul_with,
    BlockFormat, Isa, PackedWeights, QuantMatrix, QK,
};
use half::f16;
use rand::{Rng, SeedableRng};

/// Byte offsets of the fp16 scale fields of each block layout (ggml-common.h).
fn f16_fields(format: BlockFormat) -> &'static [usize] {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
        BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => &[0, 2],
        BlockFormat::Q2K => &[80, 82],
        BlockFormat::Q3K => &[108],
        BlockFormat::Q6K => &[208],
    }
}

/// Random blocks with small, finite fp16 scales (random bytes elsewhere).
fn random_weights(format: BlockFormat, rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut w = vec![0u8; rows * cols / format.block_len() * format.block_bytes()];
    rng.fill(&mut w[..]);
    for b in w.chunks_exact_mut(format.block_bytes()) {
        for (k, &off) in f16_fields(format).iter().enumerate() {
            let v = if k == 0 {
                rng.gen_range(0.001..0.02)
            } else {
                rng.gen_range(-0.05..0.05)
            };
            b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

fn shapes(format: BlockFormat) -> Vec<(usize, usize, usize)> {
    let b = format.block_len();
    // (rows, cols, activation rows)
    vec![
        (1, b, 1),
        (31, 3 * b, 3),
        (33, 2 * b, 17),
        (7, 19 * b, 2),
        (65, b, 9),
    ]
}

fn candle_dtype(format: BlockFormat) -> candle_core::quantized::GgmlDType {
    use candle_core::quantized::GgmlDType as G;
    match format {
        BlockFormat::Q4_0 => G::Q4_0,
        BlockFormat::Q4_1 => G::Q4_1,
        BlockFormat::Q5_0 => G::Q5_0,
        BlockFormat::Q5_1 => G::Q5_1,
        BlockFormat::Q8_0 => G::Q8_0,
        BlockFormat::Q2K => G::Q2K,
        BlockFormat::Q3K => G::Q3K,
        BlockFormat::Q4K => G::Q4K,
        BlockFormat::Q5K => G::Q5K,
        BlockFormat::Q6K => G::Q6K,
    }
}

#[test]
fn block_decoding_matches_candle() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for format in BlockFormat::ALL {
        let (rows, cols) = (3, 2 * format.block_len());
        let w = random_weights(format, rows, cols, &mut rng);
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            candle_dtype(format),
            &w,
            vec![rows, cols],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let theirs: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours: Vec<f32> = w
            .chunks_exact(w.len() / rows)
            .flat_map(|r| dequantize_row(format, r))
            .collect();
        assert_eq!(ours.len(), rows * cols, "{format:?}");
        assert_eq!(ours.len(), theirs.len(), "{format:?}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{format:?} value {i}: ours {a}, candle {b}"
            );
        }
    }
}

/// The activations as the kernels see them (dequantized Q8), for the float reference.
fn dequantized_acts(format: BlockFormat, x: &[f32], cols: usize) -> Vec<f64> {
    if format.is_k() {
        let a = Q8KActs::quantize(x, cols);
        (0..x.len())
            .map(|i| a.q[i] as f64 * a.d[i / 256] as f64)
            .collect()
    } else {
        let a = Q8Acts::quantize(x, cols);
        (0..x.len())
            .map(|i| a.q[i] as f64 * a.d[i / QK] as f64)
            .collect()
    }
}

#[test]
fn scalar_kernels_match_float_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for format in BlockFormat::ALL {
        for (rows, cols, n) in shapes(format) {
            let w = random_weights(format, rows, cols, &mut rng);
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let got = quant_matmul_with(Isa::Scalar, format, &w, rows, cols, &x).unwrap();
            let xq = dequantized_acts(format, &x, cols);
            let row_bytes = w.len() / rows;
            for r in 0..rows {
                let wr = dequantize_row(format, &w[r * row_bytes..(r + 1) * row_bytes]);
                let scale: f64 = wr.iter().map(|v| v.abs() as f64).sum::<f64>() * 2.0;
                for t in 0..n {
                    let want: f64 = (0..cols).map(|c| wr[c] as f64 * xq[t * cols + c]).sum();
                    let g = got[t * rows + r] as f64;
                    // Q8_1's `s = fp16(d·Σq)` rounds the minimum's term to fp16 (ggml does the same).
                    let tol = 1e-5 * scale + if format.has_min() { 2e-2 } else { 0.0 };
                    assert!(
                        (g - want).abs() <= tol,
                        "{format:?} {rows}x{cols} n={n} ({r},{t}): {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// Every SIMD kernel this CPU runs gives the scalar reference's results bit for bit, for every format and
/// odd shapes, at batch sizes below and above the point where the packed kernels take over.
#[test]
fn simd_kernels_match_scalar() {
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|&i| Isa::supported(i))
        .collect();
    if isas.is_empty() {
        eprintln!("no SIMD kernel on this CPU; nothing to compare");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for format in BlockFormat::ALL {
        for (rows, cols, n) in shapes(format).into_iter().chain([
            (35, 2 * format.block_len(), 13),
            (19, 3 * format.block_len(), 5),
        ]) {
            let w = random_weights(format, rows, cols, &mut rng);
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let scalar = quant_matmul_with(Isa::Scalar, format, &w, rows, cols, &x).unwrap();
            for &isa in &isas {
                let simd = quant_matmul_with(isa, format, &w, rows, cols, &x).unwrap();
                for (i, (a, b)) in simd.iter().zip(&scalar).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{isa:?} {format:?} {rows}x{cols} n={n} output {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_are_batch_invariant() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
        for format in BlockFormat::ALL {
            let (rows, cols) = (37, 2 * format.block_len());
            let w = random_weights(format, rows, cols, &mut rng);
            let n = 19;
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let all = quant_matmul_with(isa, format, &w, rows, cols, &x).unwrap();
            for t in [0, 5, 8, 18] {
                let one =
                    quant_matmul_with(isa, format, &w, rows, cols, &x[t * cols..(t + 1) * cols])
                        .unwrap();
                let three = quant_matmul_with(isa, format, &w, rows, cols, &x[t * cols..]).unwrap();
                for r in 0..rows {
                    let v = all[t * rows + r].to_bits();
                    assert_eq!(v, one[r].to_bits(), "{isa:?} {format:?} row {t} alone");
                    assert_eq!(v, three[r].to_bits(), "{isa:?} {format:?} row {t} first");
                }
            }
        }
    }
}

/// Several matrices over the same activations in one call (q, k, v; gate and up), formats mixed as in a
/// Q4_K_M file: each output is its own `quant_matmul`'s, bit for bit, at decode and batch sizes.
#[test]
fn many_matrices_match_one_at_a_time() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let cols = 512; // a multiple of every block length
    let sets: [&[(BlockFormat, usize)]; 3] = [
        &[
            (BlockFormat::Q5_0, 40),
            (BlockFormat::Q5_0, 8),
            (BlockFormat::Q6K, 8),
        ],
        &[(BlockFormat::Q4K, 70), (BlockFormat::Q8_0, 33)],
        &[
            (BlockFormat::Q4_1, 17),
            (BlockFormat::Q4_1, 3),
            (BlockFormat::Q2K, 5),
        ],
    ];
    for set in sets {
        let ws: Vec<(BlockFormat, Vec<u8>, usize)> = set
            .iter()
            .map(|&(f, rows)| (f, random_weights(f, rows, cols, &mut rng), rows))
            .collect();
        let mats: Vec<QuantMatrix> = ws
            .iter()
            .map(|(format, data, rows)| QuantMatrix {
                format: *format,
                data,
                rows: *rows,
                packed: None,
            })
            .collect();
        for n in [1, 3, 12] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let many = quant_matmul_many(&mats, cols, &x).unwrap();
            assert_eq!(many.len(), mats.len());
            for (m, got) in mats.iter().zip(&many) {
                let want = quant_matmul(m.format, m.data, m.rows, cols, &x).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "{:?} × {n} rows", m.format);
            }
        }
    }
    // Shapes are checked per matrix.
    let w = vec![0u8; 34];
    let bad = [
        QuantMatrix {
            format: BlockFormat::Q8_0,
            data: &w,
            rows: 1,
            packed: None,
        },
        QuantMatrix {
            format: BlockFormat::Q8_0,
            data: &w,
            rows: 2,
            packed: None,
        },
    ];
    assert!(quant_matmul_many(&bad, 32, &[0.0; 32]).is_err());
}

/// Weights packed once give the same bits as packing per call, for every format, panels cut short (rows not
/// a multiple of sixteen) and activation counts below, at and above the packed kernels' threshold; through
/// `quant_matmul_many` too. Where the CPU has no packed kernels, `new` says so and nothing else runs.
#[test]
fn packed_weights_match_per_call_packing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    for format in BlockFormat::ALL {
        let cols = 2 * format.block_len();
        let rows = 37;
        let w = random_weights(format, rows, cols, &mut rng);
        let Some(p) = PackedWeights::new(format, &w, rows, cols) else {
            assert!(!Isa::supported(Isa::Avx512Vnni) || std::env::var("BAIMO_KERNELS").is_ok());
            continue;
        };
        assert!(
            p.bytes() >= rows * cols,
            "{format:?}: one byte per weight at least"
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for n in [1, 2, 3, 7, 8, 13, 40] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let want = quant_matmul(format, &w, rows, cols, &x).unwrap();
            let got = quant_matmul_packed(&p, &w, &x).unwrap();
            assert_eq!(bits(&got), bits(&want), "{format:?} × {n} rows");
            let m = QuantMatrix {
                format,
                data: &w,
                rows,
                packed: Some(&p),
            };
            let many = quant_matmul_many(&[m, m], cols, &x).unwrap();
            assert_eq!(bits(&many[1]), bits(&want), "{format:?} × {n} rows, many");
            // And close to the scalar reference (the kernels' own tests pin the bits).
            let reference = quant_matmul_with(Isa::Scalar, format, &w, rows, cols, &x).unwrap();
            for (a, b) in got.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "{format:?}: {a} vs {b}"
                );
            }
        }
        assert!(quant_matmul_packed(&p, &w[1..], &[0.0; 64]).is_err());
    }
}

#[test]
fn rejects_bad_shapes() {
    use baimo_kernels::KernelError;
    let f = BlockFormat::Q8_0;
    assert!(matches!(
        quant_matmul(f, &[0; 34], 1, 33, &[0.0; 33]),
        Err(KernelError::RaggedRow { .. })
    ));
    assert!(matches!(
        quant_matmul(f, &[0; 33], 1, 32, &[0.0; 32]),
        Err(KernelError::WeightSize { .. })
    ));
    assert!(matches!(
        quant_matmul(f, &[0; 34], 1, 32, &[0.0; 31]),
        Err(KernelError::ActivationSize { .. })
    ));
    assert!(matches!(
        quant_matmul(BlockFormat::Q4K, &[0; 144], 1, 128, &[0.0; 128]),
        Err(KernelError::RaggedRow { .. })
    ));
}
