//! The GGUF weight block layouts the kernels read (ggml-common.h `block_q*`), and the kernels' error type.

/// A quantized weight format: rows are sequences of blocks of [`BlockFormat::block_len`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Values per block of the 32-element formats.
pub const QK: usize = 32;
/// Values per super-block of the K-quants (`QK_K`).
pub const QK_K: usize = 256;

impl BlockFormat {
    /// Values per block.
    pub fn block_len(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            QK
        }
    }

    /// Bytes per block (`sizeof(block_q*)`).
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q2K => 84,
            BlockFormat::Q3K => 110,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
        }
    }

    /// K-quants pair with Q8_K activations; the others with Q8_0 / Q8_1.
    pub fn is_k(self) -> bool {
        matches!(
            self,
            BlockFormat::Q2K
                | BlockFormat::Q3K
                | BlockFormat::Q4K
                | BlockFormat::Q5K
                | BlockFormat::Q6K
        )
    }

    /// 32-element formats with a per-block minimum pair with Q8_1 activations.
    pub fn has_min(self) -> bool {
        matches!(self, BlockFormat::Q4_1 | BlockFormat::Q5_1)
    }

    /// Every format, for tests.
    pub const ALL: [BlockFormat; 10] = [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q2K,
        BlockFormat::Q3K,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("row length {cols} is not a multiple of the {format:?} block size {block}")]
    RaggedRow {
        cols: usize,
        block: usize,
        format: BlockFormat,
    },
    #[error("weight data is {len} bytes, expected {expected} for {rows}×{cols} {format:?}")]
    WeightSize {
        len: usize,
        expected: usize,
        rows: usize,
        cols: usize,
        format: BlockFormat,
    },
    #[error("weight data is {len} bytes, expected {expected} for {rows}×{cols} {format:?}")]
    FloatWeightSize {
        len: usize,
        expected: usize,
        rows: usize,
        cols: usize,
        format: crate::float::FloatFormat,
    },
    #[error("activations hold {len} values, not a multiple of the row length {cols}")]
    ActivationSize { len: usize, cols: usize },
    #[error("matrix holds {len} values, expected {rows}×{cols}")]
    MatrixSize {
        len: usize,
        rows: usize,
        cols: usize,
    },
    #[error(
        "packed panels hold a {rows}×{k} matrix; asked for {cols} of its rows over k = {want_k}"
    )]
    PanelShape {
        rows: usize,
        k: usize,
        cols: usize,
        want_k: usize,
    },
}

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}
