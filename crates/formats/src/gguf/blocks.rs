//! Quantized block layouts, field for field as `block_q4_0` etc. in ggml/src/ggml-common.h.
//!
//! Layouts only: the dequantization arithmetic lives with the kernels. Each struct is
//! `#[repr(C)]`, made of byte arrays and `f16`/`f32`/`i16` scalars (every bit pattern valid),
//! and its size is checked at compile time against [`GgmlType::type_size`]. Multi-byte scalars
//! are little-endian in the file, so viewing bytes as blocks is only offered on little-endian
//! targets.

use half::f16;

use super::types::{GgmlType, QK_K};

/// `K_SCALE_SIZE` in ggml-common.h: packed 6-bit scales and mins of Q4_K / Q5_K.
pub const K_SCALE_SIZE: usize = 12;

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    /// d * sum(qs)
    pub s: f16,
    pub qs: [i8; 32],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

mod sealed {
    pub trait Sealed {}
}

/// A ggml block type: plain old data whose size is its type's `type_size`.
pub trait Block: sealed::Sealed + Copy + 'static {
    const TYPE: GgmlType;
}

macro_rules! blocks {
    ($($t:ty => $g:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Block for $t { const TYPE: GgmlType = GgmlType::$g; }
        const _: () = assert!(std::mem::size_of::<$t>() == GgmlType::$g.type_size());
    )*};
}

blocks! {
    BlockQ4_0 => Q4_0, BlockQ4_1 => Q4_1, BlockQ5_0 => Q5_0, BlockQ5_1 => Q5_1,
    BlockQ8_0 => Q8_0, BlockQ8_1 => Q8_1, BlockQ2K => Q2K, BlockQ3K => Q3K,
    BlockQ4K => Q4K, BlockQ5K => Q5K, BlockQ6K => Q6K, BlockQ8K => Q8K,
}

/// Views tensor bytes as blocks without copying. `None` if the length is not a whole number of
/// blocks or the bytes are not aligned for `B` (memory-mapped GGUF data always is; an owned
/// buffer may not be). Always `None` on big-endian targets.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    if cfg!(target_endian = "big") || !bytes.len().is_multiple_of(std::mem::size_of::<B>()) {
        return None;
    }
    // SAFETY: `B` is sealed to the `#[repr(C)]` structs above, built only from integers, byte
    // arrays and floats, so every bit pattern is a valid `B` and there is no padding (sizes are
    // asserted equal to the packed ggml sizes). `align_to` handles alignment; we reject any
    // unaligned prefix or trailing remainder.
    let (head, blocks, tail) = unsafe { bytes.align_to::<B>() };
    (head.is_empty() && tail.is_empty()).then_some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_blocks() {
        // 2-aligned storage holding two Q4_0 blocks.
        let mut storage = vec![0u16; 18];
        let bytes: &mut [u8] = {
            let p = storage.as_mut_ptr().cast::<u8>();
            // SAFETY: a u16 buffer is valid as twice as many bytes for the same lifetime.
            unsafe { std::slice::from_raw_parts_mut(p, 36) }
        };
        bytes[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        bytes[2] = 0x21;
        bytes[18..20].copy_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        let b = as_blocks::<BlockQ4_0>(bytes).unwrap();
        assert_eq!(
            (b.len(), b[0].d.to_f32(), b[0].qs[0], b[1].d.to_f32()),
            (2, 0.5, 0x21, -2.0)
        );
        assert!(as_blocks::<BlockQ4_0>(&bytes[..35]).is_none());
        assert!(as_blocks::<BlockQ4_0>(&bytes[1..19]).is_none());
        assert_eq!(<BlockQ6K as Block>::TYPE.type_size(), 210);
    }
}
