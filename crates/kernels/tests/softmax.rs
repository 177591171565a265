//! The vector softmax and exponential against the scalar reference and against f64 `exp`.

use baimo_kernels::softmax::exp_with;
use baimo_kernels::{softmax_ref, softmax_with, Isa};
use rand::{Rng, SeedableRng};

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn exp_is_within_two_ulp_of_the_exact_value() {
    let mut xs: Vec<f32> = (0..200_000)
        .map(|i| -104.0 + 193.0 * i as f32 / 200_000.0)
        .collect();
    xs.extend([
        0.0, -0.0, 1e-30, -1e-30, -87.33655, -87.34, -103.97, 88.72, 88.73,
    ]);
    let mut got = xs.clone();
    exp_with(Isa::Avx512Vnni, &mut got);
    let mut worst = 0;
    for (&x, &y) in xs.iter().zip(&got) {
        let exact = (x as f64).exp() as f32;
        if exact.is_infinite() || exact == 0.0 {
            assert_eq!(y, exact, "exp({x})");
        } else if exact < f32::MIN_POSITIVE {
            // Subnormal results: within two of the smallest steps.
            assert!(ulps(y, exact) <= 2, "exp({x}) = {y:e}, exact {exact:e}");
        } else {
            let d = ulps(y, exact);
            worst = worst.max(d);
            assert!(d <= 2, "exp({x}) = {y}, exact {exact} ({d} ulp)");
        }
    }
    println!("worst error {worst} ulp over {} values", xs.len());
    let mut special = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -1e30, 1e30];
    exp_with(Isa::Avx512Vnni, &mut special);
    assert_eq!(special[0], 0.0);
    assert_eq!(special[1], f32::INFINITY);
    assert!(special[2].is_nan());
    assert_eq!((special[3], special[4]), (0.0, f32::INFINITY));
}

#[test]
fn softmax_agrees_with_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for len in [1, 2, 15, 16, 17, 33, 100, 1000, 4099] {
        for spread in [1.0f32, 10.0, 60.0] {
            let mut row: Vec<f32> = (0..len).map(|_| rng.gen_range(-spread..spread)).collect();
            // Masked-out scores, as attention never passes them but a caller may.
            if len > 3 {
                row[1] = f32::NEG_INFINITY;
            }
            let mut want = row.clone();
            softmax_ref(&mut want);
            for isa in [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar] {
                let mut got = row.clone();
                softmax_with(isa, &mut got);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 4e-7 * w + 1e-37,
                        "{isa:?} len {len} spread {spread} [{i}]: {g:e} vs {w:e}"
                    );
                }
                let sum: f64 = got.iter().map(|&v| v as f64).sum();
                assert!((sum - 1.0).abs() < 1e-5, "{isa:?} len {len}: sum {sum}");
            }
        }
    }
    // An empty row stays empty; a row of one value is [1].
    let mut empty: [f32; 0] = [];
    softmax_with(Isa::Avx512Vnni, &mut empty);
    let mut one = [-5.0f32];
    softmax_with(Isa::Avx512Vnni, &mut one);
    assert_eq!(one, [1.0]);
}

#[test]
fn sum_of_exponentials_agrees_with_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for len in [0, 1, 15, 16, 17, 1000, 49152] {
        let xs: Vec<f32> = (0..len).map(|_| rng.gen_range(-30.0..10.0)).collect();
        let shift = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = xs.iter().map(|&x| f64::from((x - shift).exp())).sum();
        let got = baimo_kernels::softmax::sum_exp(&xs, shift);
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "len {len}: {got} vs {want}"
        );
        let mut e = xs.clone();
        baimo_kernels::softmax::exp(&mut e);
        for (&x, &y) in xs.iter().zip(&e) {
            let exact = (x as f64).exp();
            assert!((y as f64 - exact).abs() <= 2.5e-7 * exact, "exp({x}) = {y}");
        }
    }
}
