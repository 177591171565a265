//! llama2.c checkpoint and tokenizer parsers on arbitrary bytes: never panic or over-allocate;
//! an accepted checkpoint hands out every tensor with exactly shape-many f32s.
#![no_main]

use baimo_formats::llama2c::{parse_vocab, Llama2cCheckpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Llama2cCheckpoint::from_vec(data.to_vec()) {
        let names: Vec<String> = c.tensor_names().map(str::to_string).collect();
        for name in names {
            let t = c.tensor(&name).expect("listed tensor");
            assert_eq!(
                t.data.len(),
                t.shape.iter().product::<usize>() * 4,
                "{name}"
            );
        }
    }
    // The vocabulary size comes from elsewhere (the checkpoint); take it from the first bytes.
    if let Some((n, rest)) = data.split_first_chunk::<2>() {
        let _ = parse_vocab(rest, u16::from_le_bytes(*n).into());
    }
});
