//! safetensors: single files, sharded indexes and their failure modes, on files written here
//! with the `safetensors` crate's own serializer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baimo_formats::safetensors::{read_header, Dtype, SafeTensorsFiles};
use baimo_formats::FormatError;
use safetensors::tensor::TensorView as StView;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baimo-formats-st-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, StView<'_>> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), StView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn single_file_and_dir() {
    let dir = tmpdir("single");
    let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let h = vec![0x3c, 0x00, 0x00, 0x3c]; // f16 1.0, 0.0 (as raw bytes)
    write(
        &dir.join("model.safetensors"),
        &[
            ("w", Dtype::F32, vec![2, 3], w.clone()),
            ("h", Dtype::F16, vec![2], h.clone()),
            ("b", Dtype::BF16, vec![1], vec![0x80, 0x3f]),
        ],
    );
    for p in [dir.clone(), dir.join("model.safetensors")] {
        let f = SafeTensorsFiles::open(&p).unwrap();
        assert_eq!(f.len(), 3);
        let mut names = f.names().to_vec();
        names.sort();
        assert_eq!(names, ["b", "h", "w"]);
        let v = f.get("w").unwrap();
        assert_eq!(
            (v.dtype, v.shape.as_slice(), v.data),
            (Dtype::F32, &[2usize, 3][..], w.as_slice())
        );
        let v = f.get("h").unwrap();
        assert_eq!((v.dtype, v.data), (Dtype::F16, h.as_slice()));
        assert_eq!(f.get("b").unwrap().dtype, Dtype::BF16);
        assert!(f.get("nope").is_none());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_index() {
    let dir = tmpdir("sharded");
    write(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))],
    );
    write(
        &dir.join("model-00002-of-00002.safetensors"),
        &[
            ("b", Dtype::F32, vec![1], f32_bytes(&[3.0])),
            ("c", Dtype::F32, vec![1], f32_bytes(&[4.0])),
        ],
    );
    let index = r#"{"metadata": {"total_size": 16}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    let f = SafeTensorsFiles::open(&dir).unwrap();
    assert_eq!(f.names(), ["a", "b", "c"]);
    assert_eq!(f.shard_paths().count(), 2);
    assert_eq!(f.get("c").unwrap().data, f32_bytes(&[4.0]).as_slice());
    assert_eq!(f.get("a").unwrap().shape, [2]);

    // A tensor mapped to a shard that does not exist, or that lacks it.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "gone.safetensors"}}"#,
    )
    .unwrap();
    let e = SafeTensorsFiles::open(&dir).unwrap_err();
    assert!(
        matches!(&e, FormatError::MissingShard { tensor, .. } if tensor == "a"),
        "{e}"
    );
    assert!(e.to_string().contains("gone.safetensors"), "{e}");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"z": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = SafeTensorsFiles::open(&dir).unwrap_err();
    assert!(e.to_string().contains("does not contain"), "{e}");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../x.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(
        SafeTensorsFiles::open(&dir).unwrap_err(),
        FormatError::BadIndex { .. }
    ));
    std::fs::write(dir.join("model.safetensors.index.json"), "{not json").unwrap();
    let e = SafeTensorsFiles::open(&dir).unwrap_err();
    assert!(
        matches!(e, FormatError::BadIndex { .. }) && e.to_string().contains("index.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_and_bad_files() {
    let dir = tmpdir("bad");
    let e = SafeTensorsFiles::open(&dir).unwrap_err();
    assert!(matches!(e, FormatError::MissingFile { .. }), "{e}");
    let e = SafeTensorsFiles::open(dir.join("x.safetensors")).unwrap_err();
    assert!(matches!(e, FormatError::MissingFile { .. }), "{e}");
    let p = dir.join("model.safetensors");
    write(&p, &[("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]);
    let good = std::fs::read(&p).unwrap();
    for len in 0..good.len() {
        assert!(read_header(&good[..len]).is_err(), "prefix {len}");
    }
    std::fs::write(&p, &good[..good.len() - 1]).unwrap();
    let e = SafeTensorsFiles::open(&p).unwrap_err();
    assert!(
        matches!(e, FormatError::BadSafetensors { .. })
            && e.to_string().contains("model.safetensors"),
        "{e}"
    );
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(read_header(&huge).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
