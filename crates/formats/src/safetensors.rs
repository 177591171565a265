//! safetensors models, single-file or sharded, memory-mapped.
//!
//! The header is parsed and validated by the `safetensors` crate (`SafeTensors::read_metadata`:
//! u64 header length, JSON header, contiguous in-bounds data offsets, whole-buffer length); we
//! keep the absolute byte ranges it vouches for, so [`SafeTensorsFiles::get`] is a slice, not a
//! re-parse. Sharded checkpoints follow transformers' `model.safetensors.index.json`
//! (`{"metadata": {...}, "weight_map": {tensor: shard file}}`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::mmap::Bytes;
use crate::{FormatError, Result};

/// Element type, as named in the safetensors header. The models crate accepts F32, F16 and BF16.
pub use ::safetensors::Dtype;

/// `transformers.utils.SAFE_WEIGHTS_NAME` and `SAFE_WEIGHTS_INDEX_NAME`.
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor as described by a header: byte range relative to the start of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Absolute `[start, end)` in the file.
    pub range: (usize, usize),
}

/// A borrowed tensor: dtype, shape and its little-endian bytes in the mapped file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorView<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Parses and validates a whole safetensors file held in `bytes`; tensors are sorted by offset.
/// Used for each shard, and directly by the fuzz target.
pub fn read_header(bytes: &[u8]) -> std::result::Result<Vec<TensorHeader>, String> {
    let (n, meta) = ::safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    // read_metadata checked 8 + n + data_len == bytes.len(), so this cannot overflow.
    let base = 8 + n;
    let mut out: Vec<TensorHeader> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorHeader {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            range: (base + info.data_offsets.0, base + info.data_offsets.1),
        })
        .collect();
    out.sort_by_key(|t| t.range);
    Ok(out)
}

/// Parses an index file's `weight_map` (tensor name to shard file name), in name order.
pub fn parse_index(json: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(json).map_err(|e| e.to_string())?;
    for shard in index.weight_map.values() {
        let p = Path::new(shard);
        if shard.is_empty() || p.components().count() != 1 || p.file_name().is_none() {
            return Err(format!("shard name {shard:?} is not a plain file name"));
        }
    }
    Ok(index.weight_map)
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    bytes: std::sync::Arc<Bytes>,
}

/// A single- or multi-file safetensors checkpoint, every shard memory-mapped.
#[derive(Debug)]
pub struct SafeTensorsFiles {
    shards: Vec<Shard>,
    /// Name to (shard index, header). Name order is kept separately.
    tensors: HashMap<String, (usize, TensorHeader)>,
    names: Vec<String>,
}

impl SafeTensorsFiles {
    /// Opens a directory (`model.safetensors.index.json` if present, else `model.safetensors`),
    /// an index `.json` file, or a single `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensorsFiles> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return SafeTensorsFiles::open_index(&index);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return SafeTensorsFiles::open_single(&single);
            }
            return Err(FormatError::MissingFile {
                path: single,
                what: "no model.safetensors or its index in the directory",
            });
        }
        if !path.exists() {
            return Err(FormatError::MissingFile {
                path: path.to_path_buf(),
                what: "safetensors model",
            });
        }
        if path.extension().is_some_and(|e| e == "json") {
            SafeTensorsFiles::open_index(path)
        } else {
            SafeTensorsFiles::open_single(path)
        }
    }

    fn open_single(path: &Path) -> Result<SafeTensorsFiles> {
        let mut files = SafeTensorsFiles {
            shards: Vec::new(),
            tensors: HashMap::new(),
            names: Vec::new(),
        };
        for t in files.add_shard(path)? {
            files.names.push(t.name.clone());
            files.tensors.insert(t.name.clone(), (0, t));
        }
        Ok(files)
    }

    fn open_index(index_path: &Path) -> Result<SafeTensorsFiles> {
        let json =
            std::fs::read_to_string(index_path).map_err(|e| FormatError::io(index_path, e))?;
        let bad = |reason: String| FormatError::BadIndex {
            path: index_path.to_path_buf(),
            reason,
        };
        let weight_map = parse_index(&json).map_err(bad)?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files = SafeTensorsFiles {
            shards: Vec::new(),
            tensors: HashMap::new(),
            names: Vec::new(),
        };
        // Shard file name to (shard index, its tensors by name).
        let mut loaded: HashMap<&str, (usize, HashMap<String, TensorHeader>)> = HashMap::new();
        for (tensor, shard) in &weight_map {
            if !loaded.contains_key(shard.as_str()) {
                let p = dir.join(shard);
                if !p.is_file() {
                    return Err(FormatError::MissingShard {
                        tensor: tensor.clone(),
                        shard: shard.clone(),
                        reason: "does not exist",
                    });
                }
                let headers = files.add_shard(&p)?;
                let by_name = headers.into_iter().map(|t| (t.name.clone(), t)).collect();
                loaded.insert(shard, (files.shards.len() - 1, by_name));
            }
            let Some((idx, by_name)) = loaded.get_mut(shard.as_str()) else {
                continue;
            };
            let Some(header) = by_name.remove(tensor) else {
                return Err(FormatError::MissingShard {
                    tensor: tensor.clone(),
                    shard: shard.clone(),
                    reason: "does not contain it",
                });
            };
            files.names.push(tensor.clone());
            files.tensors.insert(tensor.clone(), (*idx, header));
        }
        Ok(files)
    }

    /// Maps and validates one shard, returning its tensors.
    fn add_shard(&mut self, path: &Path) -> Result<Vec<TensorHeader>> {
        let bytes = Bytes::map(path)?;
        let headers =
            read_header(bytes.as_slice()).map_err(|reason| FormatError::BadSafetensors {
                path: path.to_path_buf(),
                reason,
            })?;
        self.shards.push(Shard {
            path: path.to_path_buf(),
            bytes: std::sync::Arc::new(bytes),
        });
        Ok(headers)
    }

    /// Tensor names: file order for a single file, name order for an index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The mapped shard files, in the order they were opened.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// A zero-copy view of tensor `name`.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let (shard, h) = self.tensors.get(name)?;
        let data = self
            .shards
            .get(*shard)?
            .bytes
            .as_slice()
            .get(h.range.0..h.range.1)?;
        Some(TensorView {
            dtype: h.dtype,
            shape: h.shape.clone(),
            data,
        })
    }

    /// Tensor `name` as a range of its mapped shard that keeps the map alive (weights used in place).
    pub fn get_shared(&self, name: &str) -> Option<(&TensorHeader, crate::SharedBytes)> {
        let (shard, h) = self.tensors.get(name)?;
        let bytes = &self.shards.get(*shard)?.bytes;
        bytes.as_slice().get(h.range.0..h.range.1)?;
        let shared = crate::SharedBytes::new(bytes.clone(), h.range.0, h.range.1 - h.range.0);
        Some((h, shared))
    }

    /// The header entry of tensor `name` (no data).
    pub fn info(&self, name: &str) -> Option<&TensorHeader> {
        self.tensors.get(name).map(|(_, h)| h)
    }
}
