//! Pre-tokenizer split rules for byte-level BPE vocabularies, keyed by GGUF `tokenizer.ggml.pre`.
//!
//! Mirrors llama.cpp `llama_vocab::impl::load` (name -> pre type, plus `ignore_merges` / `add_bos`
//! defaults) and `llm_tokenizer_bpe` (pre type -> `regex_exprs`). Where llama.cpp rewrote a
//! Hugging Face regex for its own engine (case-insensitive contractions, `\p{M}` tricks, possessive
//! quantifiers) we use the publisher's original `tokenizer.json` pattern, which Oniguruma (the
//! engine behind HF `tokenizers`) runs as is. Every regex becomes a `Split(regex, Isolated)`,
//! applied in order, as both HF's `Sequence` pre-tokenizers and llama.cpp's `unicode_regex_split`
//! do (matched and unmatched pieces are both kept).

/// The GPT-2 rule, as HF's `ByteLevel(use_regex=true)`.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's spelling of the GPT-2 rule inside multi-regex lists (no trailing `|\s+`; unmatched
/// whitespace stays its own piece anyway).
const GPT2_LC: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// `\s?` + the cased letters (Lu/Ll/Lt) of DeepSeek's tokenizer.json, written as escapes
/// because several of them (U+1FBE, U+2126, U+212A, ...) change under Unicode normalization.
const DEEPSEEK_LLM_LETTERS: &str = concat!(
    "\\s?[",
    "A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}",
    "\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}",
    "\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}",
    "\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}",
    "\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}",
    "\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}",
    "\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}",
    "\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}",
    "\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}",
    "\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}",
    "\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}",
    "\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}",
    "\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}",
    "\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}",
    "\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}",
    "\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}",
    "\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}",
    "\u{1E900}-\u{1E943}",
    "]+"
);
const DEEPSEEK_PUNCT: &str =
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";
const CJK_HANGUL: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const PORO: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";
const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One llama.cpp pre-tokenizer type: its split rules and the vocabulary flags llama.cpp sets
/// alongside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreSpec {
    /// llama.cpp's name for the type (`LLAMA_VOCAB_PRE_TYPE_*`, lower-cased).
    pub kind: &'static str,
    pub regexes: &'static [&'static str],
    /// Look a whole pre-token up in the vocabulary before merging (llama3, tekken).
    pub ignore_merges: bool,
    /// Default for `add_bos` before `tokenizer.ggml.add_bos_token` overrides it.
    pub add_bos: bool,
    /// llama.cpp clears the BOS id for this type (chatglm4).
    pub no_bos: bool,
}

const fn spec(kind: &'static str, regexes: &'static [&'static str]) -> PreSpec {
    PreSpec {
        kind,
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

const S_DEFAULT: PreSpec = spec(
    "default",
    &[
        r"[\p{P}\$\+<=>\^~\|]+",
        GPT2_LC,
        r"\p{N}+",
        "[0-9][0-9][0-9]",
    ],
);
const S_LLAMA3: PreSpec = PreSpec {
    kind: "llama3",
    regexes: &[LLAMA3],
    ignore_merges: true,
    add_bos: true,
    no_bos: false,
};
const S_DBRX: PreSpec = spec("dbrx", &[LLAMA3]);
const S_DEEPSEEK_LLM: PreSpec = spec(
    "deepseek-llm",
    &[
        "[\r\n]",
        DEEPSEEK_LLM_LETTERS,
        DEEPSEEK_PUNCT,
        r"\s+$",
        CJK_HANGUL,
        r"\p{N}+",
    ],
);
const S_DEEPSEEK_CODER: PreSpec = spec(
    "deepseek-coder",
    &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"],
);
const S_DEEPSEEK3: PreSpec = spec(
    "deepseek-v3",
    &[
        r"\p{N}{1,3}",
        "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
        DEEPSEEK3,
    ],
);
const S_FALCON: PreSpec = spec(
    "falcon",
    &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_LC, "[0-9][0-9][0-9]"],
);
const S_STARCODER: PreSpec = spec("starcoder", &[r"\p{N}", GPT2_LC]);
const S_GPT2: PreSpec = spec("gpt-2", &[GPT2]);
const S_QWEN2: PreSpec = spec("qwen2", &[QWEN2]);
const S_QWEN35: PreSpec = spec("qwen35", &[QWEN35]);
const S_PORO: PreSpec = spec("poro", &[PORO]);
const S_CHATGLM4: PreSpec = PreSpec {
    kind: "chatglm4",
    regexes: &[LLAMA3],
    ignore_merges: false,
    add_bos: false,
    no_bos: true,
};
const S_VIKING: PreSpec = spec("viking", &[PORO, r"\p{N}"]);
const S_TEKKEN: PreSpec = PreSpec {
    kind: "tekken",
    regexes: &[TEKKEN],
    ignore_merges: true,
    add_bos: true,
    no_bos: false,
};
const S_GPT4O: PreSpec = spec("gpt-4o", &[GPT4O]);
const S_SEED_CODER: PreSpec = spec("seed-coder", &[SEED_CODER]);
const S_BAILINGMOE: PreSpec = spec("bailingmoe", &[BAILINGMOE]);

/// `tokenizer.ggml.pre` names accepted, with the llama.cpp type each maps to.
const TABLE: &[(&str, PreSpec)] = &[
    ("default", S_DEFAULT),
    ("llama3", S_LLAMA3),
    ("llama-v3", S_LLAMA3),
    ("llama-bpe", S_LLAMA3),
    ("falcon3", S_LLAMA3),
    ("falcon-h1", S_LLAMA3),
    ("pixtral", S_LLAMA3),
    ("midm-2.0", S_LLAMA3),
    ("lfm2", S_LLAMA3),
    ("dbrx", S_DBRX),
    ("smaug-bpe", S_DBRX),
    ("deepseek-llm", S_DEEPSEEK_LLM),
    ("deepseek-coder", S_DEEPSEEK_CODER),
    ("deepseek-v3", S_DEEPSEEK3),
    ("hunyuan-dense", S_DEEPSEEK3),
    ("falcon", S_FALCON),
    ("mpt", S_GPT2),
    ("starcoder", S_STARCODER),
    ("refact", S_STARCODER),
    ("command-r", S_STARCODER),
    ("smollm", S_STARCODER),
    ("codeshell", S_STARCODER),
    ("exaone", S_STARCODER),
    ("minerva-7b", S_STARCODER),
    ("gpt-2", S_GPT2),
    ("phi-2", S_GPT2),
    ("jina-es", S_GPT2),
    ("jina-de", S_GPT2),
    ("gigachat", S_GPT2),
    ("jina-v2-es", S_GPT2),
    ("jina-v2-de", S_GPT2),
    ("jina-v1-en", S_GPT2),
    ("jina-v2-code", S_GPT2),
    ("roberta-bpe", S_GPT2),
    ("a.x-4.0", S_GPT2),
    ("mellum", S_GPT2),
    ("olmo", S_GPT2),
    ("jais", S_GPT2),
    ("trillion", S_GPT2),
    ("granite-docling", S_GPT2),
    ("exaone4", S_GPT2),
    ("qwen2", S_QWEN2),
    ("deepseek-r1-qwen", S_QWEN2),
    ("kormo", S_QWEN2),
    ("megrez", S_QWEN2),
    ("stablelm2", S_QWEN2),
    ("hunyuan", S_QWEN2),
    ("grok-2", S_QWEN2),
    ("qwen35", S_QWEN35),
    ("poro-chat", S_PORO),
    ("bloom", S_PORO),
    ("gpt3-finnish", S_PORO),
    ("glm4", S_CHATGLM4),
    ("chatglm-bpe", S_CHATGLM4),
    ("viking", S_VIKING),
    ("tekken", S_TEKKEN),
    ("gpt-4o", S_GPT4O),
    ("llama4", S_GPT4O),
    ("minimax-m2", S_GPT4O),
    ("seed-coder", S_SEED_CODER),
    ("bailingmoe", S_BAILINGMOE),
    ("bailingmoe2", S_BAILINGMOE),
    ("llada-moe", S_BAILINGMOE),
];

/// Looks a `tokenizer.ggml.pre` value up. `None` for names llama.cpp would silently replace
/// with `default` (we refuse those instead) and for types that need custom code in llama.cpp
/// (chameleon, kimi-k2, superbpe, afmoe).
pub(crate) fn lookup(name: &str) -> Option<PreSpec> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Names llama.cpp's `convert_hf_to_gguf.py` writes for the families Baimo converts (Llama 3, Qwen2/2.5/3,
/// Qwen3.5, SmolLM/SmolLM2, GPT-2), in the order they are tried when a `tokenizer.json`'s pre-tokenizer is
/// recognised by what it does; several names share one rule, and these are the converter's spellings.
const CONVERTER_NAMES: &[&str] = &["llama-bpe", "qwen2", "qwen35", "smollm", "gpt-2"];

/// Every accepted name with its rules: the converter's own names first, then the rest of the table.
pub(crate) fn candidates() -> impl Iterator<Item = (&'static str, PreSpec)> {
    let preferred = CONVERTER_NAMES
        .iter()
        .filter_map(|&n| lookup(n).map(|s| (n, s)));
    let rest = TABLE
        .iter()
        .filter(|(n, _)| !CONVERTER_NAMES.contains(n))
        .copied();
    preferred.chain(rest)
}

/// All accepted names, for error messages.
pub(crate) fn known_names() -> String {
    TABLE.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_regex_compiles_in_oniguruma() {
        for (name, spec) in TABLE {
            for re in spec.regexes {
                let split = tokenizers::pre_tokenizers::split::Split::new(
                    tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_string()),
                    tokenizers::SplitDelimiterBehavior::Isolated,
                    false,
                );
                assert!(split.is_ok(), "{name}: {re}: {:?}", split.err());
            }
        }
    }

    #[test]
    fn aliases_share_rules() {
        assert_eq!(lookup("llama-bpe"), lookup("llama3"));
        assert!(lookup("llama-bpe").is_some_and(|s| s.ignore_merges && s.add_bos));
        assert_eq!(lookup("deepseek-r1-qwen").map(|s| s.kind), Some("qwen2"));
        assert!(lookup("no-such-pre").is_none());
    }
}
