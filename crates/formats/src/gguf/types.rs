//! ggml tensor types: ids, block sizes and bytes per block.
//!
//! Must agree with `enum ggml_type` in ggml/include/ggml.h and the `type_traits` table
//! (`blck_size`, `type_size`) in ggml/src/ggml.c. Ids 4, 5, 31-33 and 36-38 were removed upstream.

use crate::{FormatError, Result};

/// Elements per block of the k-quants (`QK_K` in ggml-common.h).
pub const QK_K: usize = 256;

/// A ggml tensor type that this crate can lay out. The IQ*, TQ* and MXFP4 types exist in ggml
/// but are rejected by [`GgmlType::from_u32`] with an error naming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

/// (type, ggml id, name, elements per block, bytes per block), from ggml.c `type_traits`.
const TABLE: [(GgmlType, u32, &str, usize, usize); 20] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2K, 10, "Q2_K", QK_K, 84),
    (GgmlType::Q3K, 11, "Q3_K", QK_K, 110),
    (GgmlType::Q4K, 12, "Q4_K", QK_K, 144),
    (GgmlType::Q5K, 13, "Q5_K", QK_K, 176),
    (GgmlType::Q6K, 14, "Q6_K", QK_K, 210),
    (GgmlType::Q8K, 15, "Q8_K", QK_K, 292),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::BF16, 30, "BF16", 1, 2),
];

/// Names of ggml types that exist but are not supported here, for error messages.
const UNSUPPORTED: [(u32, &str); 13] = [
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (4, "Q4_2 (removed)"),
];

impl GgmlType {
    /// Every supported type, in ggml id order.
    pub const ALL: [GgmlType; 20] = {
        let mut all = [GgmlType::F32; 20];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    const fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        let mut i = 0;
        while i < TABLE.len() - 1 && TABLE[i].0 as u8 != self as u8 {
            i += 1;
        }
        &TABLE[i]
    }

    /// The type with ggml id `id`. Known-but-unsupported and unknown ids give
    /// [`FormatError::UnsupportedTensorType`] with an empty tensor name; [`GgmlType::from_id`]
    /// is the form that names the tensor.
    pub fn from_u32(id: u32) -> Result<GgmlType> {
        GgmlType::from_id(id, "")
    }

    /// Like [`GgmlType::from_u32`], with `tensor` named in the error.
    pub fn from_id(id: u32, tensor: &str) -> Result<GgmlType> {
        TABLE
            .iter()
            .find(|r| r.1 == id)
            .map(|r| r.0)
            .ok_or_else(|| FormatError::UnsupportedTensorType {
                name: tensor.to_string(),
                type_id: id,
                type_name: ggml_type_name(id),
            })
    }

    /// The ggml id (`enum ggml_type`).
    pub const fn id(self) -> u32 {
        self.row().1
    }

    /// The ggml name (`type_traits[t].type_name`, upper-cased as in gguf-py), e.g. "Q4_K".
    pub const fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (`ggml_blck_size`).
    pub const fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block (`ggml_type_size`).
    pub const fn type_size(self) -> usize {
        self.row().4
    }

    /// True for the block-quantized types (everything with more than one element per block).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is not a whole number
    /// of blocks or the size overflows (`ggml_row_size`).
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n_elements.checked_rem(bs) != Some(0) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The ggml name of any type id this crate knows of, supported or not.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    TABLE
        .iter()
        .find(|r| r.1 == id)
        .map(|r| r.2)
        .or_else(|| UNSUPPORTED.iter().find(|r| r.0 == id).map(|r| r.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        let expect = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q2K, 256, 84),
            (GgmlType::Q3K, 256, 110),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q5K, 256, 176),
            (GgmlType::Q6K, 256, 210),
            (GgmlType::Q8K, 256, 292),
            (GgmlType::BF16, 1, 2),
            (GgmlType::F16, 1, 2),
            (GgmlType::F32, 1, 4),
        ];
        for (t, bs, ts) in expect {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
        }
    }

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(t.id()).ok(), Some(t));
        }
        assert_eq!(GgmlType::Q4K.id(), 12);
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(GgmlType::I8.id(), 24);
    }

    #[test]
    fn unsupported_types_are_named() {
        let err = GgmlType::from_id(23, "blk.0.ffn_down.weight").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("IQ4_XS") && msg.contains("23") && msg.contains("blk.0.ffn_down"),
            "{msg}"
        );
        assert!(matches!(
            err,
            FormatError::UnsupportedTensorType { type_id: 23, .. }
        ));
        assert!(GgmlType::from_u32(1000)
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }

    #[test]
    fn bytes_for_requires_whole_blocks() {
        assert_eq!(GgmlType::Q4K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
