//! `--threads`: one number for every pool the CPU math runs on.
//!
//! Our kernels run on rayon's global pool; candle-core 0.11 runs its CPU ops on its own rayon pool and
//! its quantized matmuls on a barrier pool, sized from `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`
//! (`candle_core::utils::{get_num_threads, barrier_pool}`) when they are first used. So: set both
//! variables and build rayon's global pool before any of them starts.

use anyhow::{bail, Result};

/// Sizes every pool to `n` threads (default: all cores) and returns the count. Call before loading.
pub fn init(n: Option<usize>) -> Result<usize> {
    let n = match n {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    // Fails only if the pool already exists, in which case the variables above sized it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(n)
}
