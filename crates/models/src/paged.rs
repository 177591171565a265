//! Paged key/value storage for many sequences (Kwon et al. 2023, "vLLM / PagedAttention").
//!
//! The cache is a pool of fixed-size blocks per layer; a sequence owns a block table (block ids in position
//! order), so sequences grow without copying, share identical prefix blocks, and free memory block by block.
//! Attention reads keys and values through the block table. Every query is computed on its own with a fixed
//! summation order, so a sequence's outputs do not depend on which other sequences share the batch.

use rayon::prelude::*;

use crate::layers::softmax_row;
use crate::{ModelConfig, ModelError, Result};

/// The block pool. Layout per layer: `[block][slot][kv_head][head_dim]`, f32.
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// One sequence's part of a batched forward pass: `tokens` at positions `start..start + tokens.len()`, with
/// keys/values read from and written to the blocks of `block_table` (which must cover every position).
#[derive(Debug, Clone, Copy)]
pub struct SeqSlice<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub block_table: &'a [u32],
    pub logits: crate::Logits,
    /// A LoRA adapter for this sequence's rows only (none: the base model). Its keys and values differ from
    /// the base model's, so a cache of them must be kept per adapter.
    pub adapter: Option<&'a crate::lora::ServedAdapter>,
}

impl PagedKvCache {
    /// Bytes one block takes over all layers (keys and values).
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize) -> usize {
        cfg.num_hidden_layers * 2 * block_size * cfg.num_key_value_heads * cfg.head_dim * 4
    }

    /// How many blocks fit in `budget_mb` MiB.
    pub fn blocks_for_budget(cfg: &ModelConfig, block_size: usize, budget_mb: usize) -> usize {
        (budget_mb << 20) / Self::block_bytes(cfg, block_size).max(1)
    }

    /// Reserves the pool. Pages are touched only when written, so an unused budget costs no resident memory.
    pub fn new(cfg: &ModelConfig, block_size: usize, num_blocks: usize) -> Result<PagedKvCache> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::BadConfig(format!(
                "paged KV cache needs at least one block of at least one token (got {num_blocks} blocks of {block_size})"
            )));
        }
        let per_layer = num_blocks * block_size * cfg.num_key_value_heads * cfg.head_dim;
        let alloc = || -> Vec<Vec<f32>> {
            (0..cfg.num_hidden_layers)
                .map(|_| vec![0f32; per_layer])
                .collect()
        };
        Ok(PagedKvCache {
            block_size,
            num_blocks,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            k: alloc(),
            v: alloc(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Checks that every slice's block table covers its positions with valid block ids.
    pub(crate) fn check(&self, seqs: &[SeqSlice]) -> Result<()> {
        for s in seqs {
            let end = s.start + s.tokens.len();
            let need = end.div_ceil(self.block_size);
            if s.block_table.len() < need {
                return Err(ModelError::BadConfig(format!(
                    "block table of {} blocks cannot hold {end} positions",
                    s.block_table.len()
                )));
            }
            if let Some(&b) = s.block_table[..need]
                .iter()
                .find(|&&b| b as usize >= self.num_blocks)
            {
                return Err(ModelError::BadConfig(format!(
                    "block {b} is outside the pool of {}",
                    self.num_blocks
                )));
            }
        }
        Ok(())
    }

    fn offset(&self, table: &[u32], pos: usize) -> usize {
        let block = table[pos / self.block_size] as usize;
        (block * self.block_size + pos % self.block_size) * self.kv_heads * self.head_dim
    }

    /// Writes the new keys/values of `layer` and returns attention outputs.
    ///
    /// `q`: (q_heads, rows, head_dim), `k`, `v`: (kv_heads, rows, head_dim), where rows are the batch's tokens,
    /// sequence after sequence in `seqs` order. Returns (rows, q_heads · head_dim).
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqSlice],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        q_heads: usize,
    ) -> Vec<f32> {
        let (hd, nkv) = (self.head_dim, self.kv_heads);
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        // 1. Store this step's keys and values.
        let mut row = 0;
        for s in seqs {
            for i in 0..s.tokens.len() {
                let base = self.offset(s.block_table, s.start + i);
                for h in 0..nkv {
                    let src = (h * rows + row) * hd;
                    let dst = base + h * hd;
                    self.k[layer][dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    self.v[layer][dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
                row += 1;
            }
        }
        // 2. Causal attention, one (query row, head) at a time.
        let group = q_heads / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut work = Vec::with_capacity(rows);
        let mut row = 0;
        for s in seqs {
            for i in 0..s.tokens.len() {
                work.push((row, s.block_table, s.start + i));
                row += 1;
            }
        }
        let (kl, vl) = (&self.k[layer], &self.v[layer]);
        let mut out = vec![0f32; rows * q_heads * hd];
        out.par_chunks_mut(hd).enumerate().for_each(|(idx, oh)| {
            let (row, h) = (idx / q_heads, idx % q_heads);
            let (_, table, pos) = work[row];
            let kvh = h / group;
            let qv = &q[(h * rows + row) * hd..(h * rows + row + 1) * hd];
            let mut scores = vec![0f32; pos + 1];
            for (j, sc) in scores.iter_mut().enumerate() {
                let off = self.offset(table, j) + kvh * hd;
                *sc = dot(qv, &kl[off..off + hd]) * scale;
            }
            softmax_row(&mut scores);
            oh.fill(0.0);
            for (j, &w) in scores.iter().enumerate() {
                let off = self.offset(table, j) + kvh * hd;
                for (a, &b) in oh.iter_mut().zip(&vl[off..off + hd]) {
                    *a += w * b;
                }
            }
        });
        out
    }
}

/// Dot product in a fixed order (8 independent lanes, then summed), vectorizable and deterministic.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}
