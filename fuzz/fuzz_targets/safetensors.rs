//! safetensors header and index parsers on arbitrary bytes: every accepted tensor range must lie
//! inside the buffer and match its dtype and shape.
#![no_main]

use baimo_formats::safetensors::{parse_index, read_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = read_header(data) {
        for t in tensors {
            assert!(
                t.range.0 <= t.range.1 && t.range.1 <= data.len(),
                "{}",
                t.name
            );
            let n: usize = t.shape.iter().product();
            assert_eq!(
                (t.range.1 - t.range.0) * 8,
                n * t.dtype.bitsize(),
                "{}",
                t.name
            );
        }
    }
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = parse_index(json);
    }
});
