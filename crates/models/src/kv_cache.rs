//! Per-sequence key/value cache: one growable buffer per layer, written in place.

use candle_core::{DType, Device, Tensor};

use crate::{ModelConfig, ModelError, Result};

struct LayerCache {
    k: Tensor, // (kv_heads, capacity, head_dim)
    v: Tensor,
}

/// Keys and values of every layer for one sequence, up to `max_len` positions (the context size).
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    capacity: usize,
    max_len: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, max_len: usize) -> KvCache {
        KvCache {
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
            len: 0,
            capacity: 0,
            max_len,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        }
    }
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Drops cached positions from `len` on (to re-run a suffix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn check_room(&self, new: usize) -> Result<()> {
        if self.len + new > self.max_len {
            return Err(ModelError::ContextOverflow {
                needed: self.len + new,
                ctx: self.max_len,
            });
        }
        Ok(())
    }

    /// Appends `k`, `v` (kv_heads, seq, head_dim) for `layer` at the current position and returns the whole
    /// cached keys and values including them. Call [`KvCache::advance`] once all layers are done.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(1)?;
        let need = self.len + seq;
        if need > self.capacity {
            let new_cap = need
                .max(self.capacity * 2)
                .max(256)
                .min(self.max_len.max(need));
            for l in self.layers.iter_mut() {
                if let Some(c) = l.as_mut() {
                    let nk = Tensor::zeros(
                        (self.kv_heads, new_cap, self.head_dim),
                        DType::F32,
                        &Device::Cpu,
                    )?;
                    let nv = nk.zeros_like()?;
                    if self.len > 0 {
                        nk.slice_set(&c.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                        nv.slice_set(&c.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                    *c = LayerCache { k: nk, v: nv };
                }
            }
            self.capacity = new_cap;
        }
        if self.layers[layer].is_none() {
            let z = Tensor::zeros(
                (self.kv_heads, self.capacity, self.head_dim),
                DType::F32,
                &Device::Cpu,
            )?;
            self.layers[layer] = Some(LayerCache {
                k: z.clone(),
                v: z.zeros_like()?,
            });
        }
        let Some(entry) = self.layers[layer].as_mut() else {
            unreachable!("inserted above")
        };
        entry.k.slice_set(&k.contiguous()?, 1, self.len)?;
        entry.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((entry.k.narrow(1, 0, need)?, entry.v.narrow(1, 0, need)?))
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
