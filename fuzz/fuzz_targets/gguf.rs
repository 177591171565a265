//! GGUF header parser on arbitrary bytes: must return Ok or Err, never panic or over-allocate;
//! when it accepts a file, every tensor's data slice must be exactly its declared size.
#![no_main]

use baimo_formats::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_vec(data.to_vec()) else {
        return;
    };
    let _ = file.architecture();
    for (key, value) in &file.metadata {
        let _ = (
            file.get_u32(key),
            file.get_f32(key),
            file.get_str(key),
            value.as_array().map(<[_]>::len),
        );
    }
    for t in &file.tensors {
        assert_eq!(file.tensor(&t.name), Some(t));
        assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes(), "{}", t.name);
        assert_eq!(t.offset % file.alignment, 0);
    }
    assert_eq!(file.data_offset % file.alignment, 0);
});
