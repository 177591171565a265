//! KV block bookkeeping for the serving scheduler: a free list, reference counts, and the prefix cache.
//!
//! A full block is identified by a hash chained over every token from the start of the sequence to the end of
//! the block (vLLM's automatic prefix caching), so two prompts share a block exactly when they agree on all
//! tokens up to its end. Blocks nobody references keep their contents and hash until memory is needed; they are
//! then evicted least-recently-used first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

pub(crate) struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    /// Never used or evicted: no contents worth keeping.
    free: VecDeque<u32>,
    /// Unreferenced blocks that still hold a cached prefix, by last use.
    evictable: BTreeMap<u64, u32>,
    last_use: Vec<u64>,
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, u32>,
    /// The tokens of each hashed block (guards against hash collisions).
    tokens_of: Vec<Vec<u32>>,
    clock: u64,
}

/// The root of a sequence's hash chain: what its keys and values depend on besides the tokens (a LoRA adapter
/// changes every layer's keys and values, so its sequences never share blocks with the base model's).
pub(crate) fn chain_root(adapter: Option<u64>) -> Option<u64> {
    adapter.map(|id| {
        let mut h = DefaultHasher::new();
        ("baimo-lora-adapter", id).hash(&mut h);
        h.finish()
    })
}

/// Chained hash of a full block: its parent's hash (or the chain root) and its own tokens.
pub(crate) fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        BlockManager {
            block_size,
            refs: vec![0; num_blocks],
            free: (0..num_blocks as u32).collect(),
            evictable: BTreeMap::new(),
            last_use: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            tokens_of: vec![Vec::new(); num_blocks],
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }
    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }
    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// A block for new contents, evicting the least recently used cached block if needed.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop_front() {
            Some(b) => b,
            None => {
                let (&t, &b) = self.evictable.iter().next()?;
                self.evictable.remove(&t);
                if let Some(h) = self.hash_of[b as usize].take() {
                    if self.by_hash.get(&h) == Some(&b) {
                        self.by_hash.remove(&h);
                    }
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "double release of block {b}");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.hash_of[i].is_some() {
                self.clock += 1;
                self.last_use[i] = self.clock;
                self.evictable.insert(self.clock, b);
            } else {
                self.free.push_back(b);
            }
        }
    }

    /// The cached blocks covering the longest run of full blocks of `tokens` in the chain starting at `root`
    /// ([`chain_root`]), each referenced once more.
    pub fn match_prefix(&mut self, root: Option<u64>, tokens: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut parent = root;
        for chunk in tokens.chunks_exact(self.block_size) {
            let h = block_hash(parent, chunk);
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            if self.tokens_of[b as usize] != chunk {
                break;
            }
            let i = b as usize;
            if self.refs[i] == 0 {
                self.evictable.remove(&self.last_use[i]);
            }
            self.refs[i] += 1;
            out.push(b);
            parent = Some(h);
        }
        out
    }

    /// Records that block `b` now holds the full block `tokens` whose chained hash is `h`.
    pub fn register(&mut self, b: u32, h: u64, tokens: &[u32]) {
        let i = b as usize;
        if self.hash_of[i].is_some() || self.by_hash.contains_key(&h) {
            return;
        }
        self.hash_of[i] = Some(h);
        self.tokens_of[i] = tokens.to_vec();
        self.by_hash.insert(h, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse_prefixes() {
        let mut m = BlockManager::new(4, 2);
        let toks = [1, 2, 3, 4, 5];
        let a = m.allocate().unwrap();
        let b = m.allocate().unwrap();
        let h0 = block_hash(None, &toks[0..2]);
        let h1 = block_hash(Some(h0), &toks[2..4]);
        m.register(a, h0, &toks[0..2]);
        m.register(b, h1, &toks[2..4]);
        assert_eq!(m.used(), 2);
        // Another sequence with the same first block but a different second one.
        assert_eq!(m.match_prefix(None, &[1, 2, 9, 9]), vec![a]);
        m.release(a);
        m.release(a);
        m.release(b);
        assert_eq!(m.used(), 0);
        assert_eq!(m.available(), 4);
        // Cached blocks survive release and are found again.
        assert_eq!(m.match_prefix(None, &toks), vec![a, b]);
        m.release(a);
        m.release(b);
        // Allocation uses free blocks first, then evicts the least recently released cached block (a).
        let c = m.allocate().unwrap();
        let d = m.allocate().unwrap();
        assert!(c != a && c != b && d != a && d != b);
        assert_eq!(m.allocate(), Some(a));
        assert_eq!(
            m.match_prefix(None, &toks),
            Vec::<u32>::new(),
            "a was evicted, so the chain breaks at its start"
        );
        assert_eq!(m.allocate(), Some(b));
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn adapter_chains_do_not_share_blocks() {
        let mut m = BlockManager::new(4, 2);
        let toks = [1, 2, 3, 4];
        let (r1, r2) = (chain_root(Some(1)), chain_root(Some(2)));
        assert!(r1 != r2 && r1.is_some());
        let a = m.allocate().unwrap();
        m.register(a, block_hash(r1, &toks[..2]), &toks[..2]);
        assert!(m.match_prefix(None, &toks).is_empty());
        assert!(m.match_prefix(r2, &toks).is_empty());
        assert_eq!(m.match_prefix(r1, &toks), vec![a]);
    }
}
