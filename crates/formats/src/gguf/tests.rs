//! Unit tests: round trips through the writer, truncation at every offset, hostile headers.

use super::*;
use crate::FormatError;

fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("llama"))
        .add_kv("llama.block_count", Value::U32(2))
        .add_kv("llama.context_length", Value::U64(4096))
        .add_kv("llama.rope.freq_base", Value::F32(10000.0))
        .add_kv(
            "tokenizer.ggml.tokens",
            Value::Array(vec!["a".into(), "b".into(), "é".into()]),
        )
        .add_kv(
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.5), Value::F32(-1.0)]),
        )
        .add_kv(
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::I8(-1)]),
                Value::Array(vec![]),
            ]),
        )
        .add_kv("flag", Value::Bool(true));
    w.add_tensor(
        "f32",
        GgmlType::F32,
        &[3, 2],
        (0..6u8).flat_map(|i| f32::from(i).to_le_bytes()).collect(),
    )
    .unwrap();
    w.add_tensor("q4k", GgmlType::Q4K, &[256], vec![7u8; 144])
        .unwrap();
    w.add_tensor("q8", GgmlType::Q8_0, &[32, 2], vec![9u8; 68])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn round_trip() {
    let f = GgufFile::from_vec(small_file()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u32("llama.block_count"), Some(2));
    assert_eq!(f.get_u32("llama.context_length"), Some(4096));
    assert_eq!(f.get_u64("llama.block_count"), Some(2));
    assert_eq!(f.get_f32("llama.rope.freq_base"), Some(10000.0));
    assert_eq!(f.get_bool("flag"), Some(true));
    assert_eq!(f.get_str("llama.block_count"), None);
    let toks = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        toks.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
        ["a", "b", "é"]
    );
    assert_eq!(
        f.get("nested"),
        Some(&Value::Array(vec![
            Value::Array(vec![Value::I8(-1)]),
            Value::Array(vec![])
        ]))
    );
    assert_eq!(f.metadata[0].0, "general.architecture");
    assert_eq!(f.tensors.len(), 3);

    let (t, data) = f.tensor_bytes("f32").unwrap();
    assert_eq!(
        (
            t.dims.as_slice(),
            t.dtype,
            t.n_elements(),
            t.n_bytes(),
            t.row_bytes()
        ),
        (&[3, 2][..], GgmlType::F32, 6, 24, 12)
    );
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let q = f.tensor("q4k").unwrap();
    assert_eq!(q.offset % 32, 0);
    assert_eq!(f.tensor_data(q), &[7u8; 144][..]);
    assert_eq!(f.tensor_data(f.tensor("q8").unwrap()), &[9u8; 68][..]);
    assert!(f.tensor("missing").is_none());

    // An info that is not from this file never panics.
    let bogus = TensorInfo {
        name: "x".into(),
        dims: vec![u64::MAX, 2],
        dtype: GgmlType::F32,
        offset: 1 << 60,
    };
    assert!(f.tensor_data(&bogus).is_empty());
}

#[test]
fn version_2_and_custom_alignment() {
    let mut w = GgufWriter::new().with_version(2);
    w.add_kv("general.alignment", Value::U32(64));
    w.add_tensor("a", GgmlType::F16, &[3], vec![1; 6]).unwrap();
    w.add_tensor("b", GgmlType::BF16, &[5], vec![2; 10])
        .unwrap();
    let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    assert_eq!((f.version, f.alignment, f.data_offset % 64), (2, 64, 0));
    assert_eq!(f.tensor("b").unwrap().offset, 64);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[2; 10][..]);
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = small_file();
    let last_tensor_end = {
        let f = GgufFile::from_bytes(&bytes).unwrap();
        f.tensors
            .iter()
            .map(|t| f.data_offset + t.offset + t.n_bytes())
            .max()
            .unwrap()
    };
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes(&bytes[..len]);
        if (len as u64) < last_tensor_end {
            let e = r.expect_err(&format!("prefix of {len} bytes parsed"));
            assert!(!e.to_string().is_empty());
        } else {
            // Only trailing padding was cut off.
            assert!(r.is_ok(), "{len}: {:?}", r.err());
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = small_file();
    b[..4].copy_from_slice(b"GGML");
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(
        matches!(e, FormatError::BadMagic { found } if &found == b"GGML"),
        "{e}"
    );
    assert!(e.to_string().contains("GGML"));

    let mut b = small_file();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(&b),
        Err(FormatError::UnsupportedVersion { version: 1 })
    ));
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(&b),
        Err(FormatError::UnsupportedVersion { version: 4 })
    ));
}

fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let e = GgufFile::from_bytes(&header(u64::MAX, 0)).unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::CountTooLarge {
                count: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    let e = GgufFile::from_bytes(&header(0, 1 << 40)).unwrap_err();
    assert!(matches!(e, FormatError::CountTooLarge { .. }), "{e}");

    // An array claiming 2^60 u32 elements.
    let mut b = header(0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(
        matches!(e, FormatError::CountTooLarge { count, .. } if count == 1 << 60),
        "{e}"
    );
    assert!(e.to_string().contains("\"k\""), "{e}");

    // A string claiming u64::MAX bytes.
    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(
        matches!(e, FormatError::Truncated { need: u64::MAX, .. }),
        "{e}"
    );
}

#[test]
fn deep_nesting_is_bounded() {
    let mut b = header(0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..10_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(matches!(e, FormatError::NestingTooDeep { .. }), "{e}");
}

fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}

#[test]
fn tensor_validation() {
    assert!(GgufFile::from_bytes(&one_tensor(&[4, 2], 0, 0, 32)).is_ok());
    let e = GgufFile::from_bytes(&one_tensor(&[4, 2], 0, 0, 31)).unwrap_err();
    assert!(
        matches!(&e, FormatError::TensorOutOfBounds { name, len: 32, .. } if name == "t"),
        "{e}"
    );
    let e = GgufFile::from_bytes(&one_tensor(&[4, 2], 0, u64::MAX - 4, 32)).unwrap_err();
    assert!(matches!(e, FormatError::MisalignedTensor { .. }), "{e}");
    let e = GgufFile::from_bytes(&one_tensor(&[4, 2], 0, u64::MAX - 31, 32)).unwrap_err();
    assert!(matches!(e, FormatError::TensorOutOfBounds { .. }), "{e}");
    let e = GgufFile::from_bytes(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 32)).unwrap_err();
    assert!(matches!(e, FormatError::BadTensorShape { .. }), "{e}");
    let e = GgufFile::from_bytes(&one_tensor(&[1 << 62, 1], 0, 0, 32)).unwrap_err();
    assert!(
        matches!(e, FormatError::BadTensorShape { .. }),
        "{e}: bytes overflow"
    );
    let e = GgufFile::from_bytes(&one_tensor(&[100], 12, 0, 1000)).unwrap_err();
    assert!(e.to_string().contains("block size 256"), "{e}");
    let e = GgufFile::from_bytes(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 32)).unwrap_err();
    assert!(matches!(e, FormatError::BadTensorShape { .. }), "{e}");
    let e = GgufFile::from_bytes(&one_tensor(&[256], 16, 0, 1000)).unwrap_err();
    assert!(e.to_string().contains("IQ2_XXS"), "{e}");
    // A scalar (0 dims) and an empty tensor are fine.
    assert_eq!(
        GgufFile::from_bytes(&one_tensor(&[], 0, 0, 4))
            .unwrap()
            .tensors[0]
            .n_bytes(),
        4
    );
    assert_eq!(
        GgufFile::from_bytes(&one_tensor(&[0, 5], 0, 0, 0))
            .unwrap()
            .tensors[0]
            .n_bytes(),
        0
    );
}

#[test]
fn duplicates_and_bad_utf8() {
    let mut w = GgufWriter::new();
    w.add_kv("a", Value::U8(1)).add_kv("b", Value::U8(2));
    let mut b = w.to_bytes().unwrap();
    // Rename key "b" to "a".
    let pos = b.windows(1).rposition(|x| x == b"b").unwrap();
    b[pos] = b'a';
    assert!(matches!(
        GgufFile::from_bytes(&b),
        Err(FormatError::DuplicateKey { .. })
    ));
    b[pos] = 0xff;
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(matches!(e, FormatError::InvalidUtf8 { .. }), "{e}");
}

#[test]
fn bad_alignment_and_value_type() {
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", Value::U32(24));
    assert!(w.to_bytes().is_err());
    let mut b = GgufWriter::new().to_bytes().unwrap();
    b.truncate(24);
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&17u64.to_le_bytes());
    b.extend_from_slice(b"general.alignment");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&24u32.to_le_bytes());
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(matches!(e, FormatError::BadMetadata { .. }), "{e}");
    let n = b.len();
    b[n - 8..n - 4].copy_from_slice(&13u32.to_le_bytes());
    let e = GgufFile::from_bytes(&b).unwrap_err();
    assert!(
        matches!(e, FormatError::BadValueType { type_id: 13, .. }),
        "{e}"
    );
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("x", GgmlType::F32, &[2], vec![0; 7]).is_err());
    assert!(w
        .add_tensor("x", GgmlType::Q4_0, &[16], vec![0; 9])
        .is_err());
    w.add_tensor("x", GgmlType::F32, &[2], vec![0; 8]).unwrap();
    assert!(w.add_tensor("x", GgmlType::F32, &[2], vec![0; 8]).is_err());
    w.add_kv("mixed", Value::Array(vec![Value::U8(1), Value::I8(1)]));
    assert!(w.to_bytes().unwrap_err().to_string().contains("mixed"));
}

#[test]
fn open_reports_path() {
    let dir = std::env::temp_dir().join(format!("baimo-formats-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("ok.gguf");
    std::fs::write(&p, small_file()).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.path(), Some(p.as_path()));
    assert_eq!(f.file_len(), small_file().len() as u64);
    assert_eq!(
        f.tensor_data(f.tensor("q4k").unwrap()).as_ptr() as usize % 32,
        0
    );
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x01\0\0\0").unwrap();
    let e = GgufFile::open(&bad).unwrap_err();
    assert!(
        e.to_string().contains("bad.gguf") && e.to_string().contains("version 1"),
        "{e}"
    );
    assert!(matches!(
        e.innermost(),
        FormatError::UnsupportedVersion { version: 1 }
    ));
    let e = GgufFile::open(dir.join("missing.gguf")).unwrap_err();
    assert!(
        matches!(e, FormatError::Io { .. }) && e.to_string().contains("missing.gguf"),
        "{e}"
    );
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty).unwrap_err().innermost(),
        FormatError::Truncated { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
