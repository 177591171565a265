//! The float-weight kernel (F32, F16, BF16 rows read in place): the scalar reference against an f64 dot
//! product of the decoded values, the AVX-512 kernel against the reference bit for bit on awkward shapes, and
//! batch invariance (a row's outputs are the same bits alone and inside any batch).

use baimo_kernels::float::dot_ref;
use baimo_kernels::{
    float_matmul_nn_add, float_matmul_nn_with, float_matmul_nt_with, float_matmul_with,
    matmul_nn_ref, FloatFormat, Isa,
};
use rand::{Rng, SeedableRng};

const FORMATS: [FloatFormat; 3] = [FloatFormat::F32, FloatFormat::F16, FloatFormat::BF16];

fn random_rows(format: FloatFormat, rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut w = Vec::with_capacity(rows * cols * format.bytes());
    for _ in 0..rows * cols {
        let v: f32 = rng.gen_range(-1.0..1.0);
        match format {
            FloatFormat::F32 => w.extend_from_slice(&v.to_le_bytes()),
            FloatFormat::F16 => w.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            FloatFormat::BF16 => w.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
    w
}

fn random_acts(n: usize, cols: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect()
}

#[test]
fn reference_is_a_dot_product_of_the_stored_values() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for format in FORMATS {
        for cols in [1, 5, 16, 17, 100, 896] {
            let w = random_rows(format, 3, cols, &mut rng);
            let x = random_acts(1, cols, &mut rng);
            for r in 0..3 {
                let row = &w[r * cols * format.bytes()..(r + 1) * cols * format.bytes()];
                let vals = format.row_values(row);
                let want: f64 = vals
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                let scale: f64 = vals
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let got = dot_ref(format, row, &x) as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * scale.max(1.0),
                    "{format:?} cols {cols}: {got} vs {want}"
                );
            }
        }
    }
    // Decoding: F16 and BF16 values are exact in f32.
    let w = half::f16::from_f32(0.333).to_le_bytes();
    assert_eq!(
        FloatFormat::F16.value(&w, 0),
        half::f16::from_f32(0.333).to_f32()
    );
    let w = half::bf16::from_f32(-7.25).to_le_bytes();
    assert_eq!(FloatFormat::BF16.value(&w, 0), -7.25);
}

#[test]
fn simd_matches_the_reference_bit_for_bit_and_is_batch_invariant() {
    // Isa::Avx512Vnni is the AVX-512 kernel where the CPU has it (else AVX2); Isa::Avx2 the AVX2 kernel.
    let isas: Vec<Isa> = [Isa::Avx512Vnni, Isa::Avx2]
        .into_iter()
        .filter(|&i| Isa::supported(Isa::Avx2) && (i == Isa::Avx2 || Isa::supported(i)))
        .collect();
    if isas.is_empty() {
        eprintln!("skipping: no AVX2 on this CPU (the scalar reference is what runs here)");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for isa in isas {
        for format in FORMATS {
            for (rows, cols, n) in [
                (1, 1, 1),
                (3, 7, 2),
                (4, 16, 4),
                (5, 17, 5),
                (13, 100, 9),
                (37, 64, 1),
                (64, 896, 3),
                (70, 33, 70),
                // Batches over several column blocks (1,024) and several activation blocks (64).
                (9, 2100, 13),
                (5, 40, 130),
                // Chunks of 16 and more weight rows (reduced sixteen at a time), with partial groups.
                (300, 40, 20),
                (1030, 20, 7),
            ] {
                let w = random_rows(format, rows, cols, &mut rng);
                let x = random_acts(n, cols, &mut rng);
                let simd = float_matmul_with(isa, format, &w, rows, cols, &x).unwrap();
                let scalar = float_matmul_with(Isa::Scalar, format, &w, rows, cols, &x).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&simd),
                    bits(&scalar),
                    "{format:?} {rows}×{cols}, {n} rows"
                );
                // Each activation row alone: the same bits as in the batch.
                for t in 0..n {
                    let alone = float_matmul_with(
                        isa,
                        format,
                        &w,
                        rows,
                        cols,
                        &x[t * cols..(t + 1) * cols],
                    )
                    .unwrap();
                    assert_eq!(bits(&alone), bits(&simd[t * rows..(t + 1) * rows]));
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let w = vec![0u8; 2 * 8 * 2];
    let e = float_matmul_with(Isa::Scalar, FloatFormat::F16, &w, 2, 9, &[0.0; 9]).unwrap_err();
    assert!(e.to_string().contains("expected 36"), "{e}");
    let e = float_matmul_with(Isa::Scalar, FloatFormat::F16, &w, 2, 8, &[0.0; 9]).unwrap_err();
    assert!(e.to_string().contains("not a multiple"), "{e}");
}

#[test]
fn nn_product_matches_its_reference_and_a_float64_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Odd shapes: partial column blocks (64) and vectors (16), row tiles of every height, more rows of `w`
    // than one pass (512).
    for (n, k, cols) in [
        (1, 1, 1),
        (2, 3, 17),
        (7, 33, 64),
        (13, 100, 130),
        (6, 700, 50),
        (20, 576, 200),
        // One column block: the rows split among the threads.
        (100, 40, 20),
        // A `w` of more than 2 MiB, read through packed copies of its blocks (three passes, the last
        // partial; a partial column block).
        (9, 1100, 530),
    ] {
        let g: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..k * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let reference = matmul_nn_ref(&g, n, k, &w, cols);
        for t in 0..n {
            for c in 0..cols {
                let exact: f64 = (0..k)
                    .map(|r| g[t * k + r] as f64 * w[r * cols + c] as f64)
                    .sum();
                let got = reference[t * cols + c] as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * (k as f64).sqrt(),
                    "{n}×{k}×{cols} at ({t},{c})"
                );
            }
        }
        for isa in [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar] {
            let out = float_matmul_nn_with(isa, &g, n, k, &w, cols).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&reference), "{isa:?} {n}×{k}×{cols}");
        }
    }
    assert!(float_matmul_nn_with(Isa::Scalar, &[0.0; 5], 2, 3, &[0.0; 6], 2).is_err());
}

#[test]
fn nn_product_adds_to_what_the_output_holds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    // The second `w` is over 2 MiB: its blocks are read through packed copies.
    for (n, k, cols) in [(9, 70, 90), (7, 1100, 530)] {
        let g: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..k * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let init: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = init.clone();
        float_matmul_nn_add(&mut out, &g, n, k, &w, cols).unwrap();
        let product = matmul_nn_ref(&g, n, k, &w, cols);
        for ((o, i), p) in out.iter().zip(&init).zip(&product) {
            assert!(
                (o - (i + p)).abs() <= 1e-5 * (1.0 + p.abs()),
                "{o} vs {i} + {p}"
            );
        }
        assert!(float_matmul_nn_add(&mut out[1..], &g, n, k, &w, cols).is_err());
    }
}

#[test]
fn nt_product_is_the_nn_product_with_w_transposed() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Partial column blocks and vectors, row tiles of every height, several 512-row panels of wᵀ (k = 1100)
    // with a short last one, and one column block split among the threads.
    for (n, k, rows) in [
        (1, 1, 1),
        (2, 3, 17),
        (7, 33, 64),
        (13, 100, 130),
        (6, 1100, 50),
        (20, 576, 200),
        (100, 40, 20),
    ] {
        let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut wt = vec![0f32; k * rows];
        for r in 0..rows {
            for c in 0..k {
                wt[c * rows + r] = w[r * k + c];
            }
        }
        let reference = matmul_nn_ref(&x, n, k, &wt, rows);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for isa in [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar] {
            let out = float_matmul_nt_with(isa, &x, n, k, &w, rows).unwrap();
            assert_eq!(bits(&out), bits(&reference), "{isa:?} {n}×{k}×{rows}");
        }
    }
    assert!(float_matmul_nt_with(Isa::Scalar, &[0.0; 6], 2, 3, &[0.0; 5], 2).is_err());
    // No terms (k = 0): zeros, from every kernel.
    for isa in [Isa::Avx512Vnni, Isa::Scalar] {
        assert_eq!(
            float_matmul_nt_with(isa, &[], 3, 0, &[], 5).unwrap(),
            vec![0.0; 15]
        );
        assert_eq!(
            float_matmul_nn_with(isa, &[], 3, 0, &[], 5).unwrap(),
            vec![0.0; 15]
        );
    }
}

#[test]
fn transpose_moves_every_value() {
    // Whole 16 × 16 squares, partial edges on either side, and empty matrices.
    for (rows, cols) in [
        (0, 5),
        (5, 0),
        (1, 1),
        (16, 16),
        (17, 33),
        (64, 150),
        (150, 64),
        (3, 100),
    ] {
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = baimo_kernels::transpose(&m, rows, cols).unwrap();
        assert_eq!(t.len(), m.len());
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    t[c * rows + r],
                    m[r * cols + c],
                    "{rows}×{cols} at ({r},{c})"
                );
            }
        }
    }
    assert!(baimo_kernels::transpose(&[0.0; 5], 2, 3).is_err());
}

#[test]
fn nt_product_over_packed_panels_is_the_nt_product_bit_for_bit() {
    use baimo_kernels::{float_matmul_nt_packed_with, float_matmul_nt_with, NtPanels};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // Attention's shapes (k = head size 64, a query block against a key prefix) and ragged edges: a partial
    // last block, a prefix ending inside a block, a k that is not a multiple of 16, one row.
    for (n, k, rows, prefixes) in [
        (64, 64, 150, vec![1, 63, 64, 65, 128, 150]),
        (7, 33, 70, vec![5, 70]),
        (1, 16, 16, vec![16]),
        (23, 80, 129, vec![129]),
    ] {
        let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let panels = NtPanels::new(&w, rows, k).unwrap();
        for isa in [Isa::Avx512Vnni, Isa::Scalar] {
            let full = float_matmul_nt_with(isa, &x, n, k, &w, rows).unwrap();
            for &cols in &prefixes {
                let got = float_matmul_nt_packed_with(isa, &x, n, k, &panels, cols).unwrap();
                let want: Vec<u32> = full
                    .chunks_exact(rows)
                    .flat_map(|r| r[..cols].iter().map(|v| v.to_bits()))
                    .collect();
                let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, want, "{isa:?} {n}×{k} against {cols} of {rows} rows");
            }
        }
        let e = float_matmul_nt_packed_with(Isa::Scalar, &x, n, k, &panels, rows + 1).unwrap_err();
        assert!(e.to_string().contains("packed panels"), "{e}");
    }
    // An empty inner dimension: zeros, as the unpacked product gives.
    let empty = NtPanels::new(&[], 3, 0).unwrap();
    let got = float_matmul_nt_packed_with(Isa::Avx512Vnni, &[], 2, 0, &empty, 3).unwrap();
    assert_eq!(got, vec![0f32; 6]);
}
