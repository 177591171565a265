//! Streaming stop strings.
//!
//! Text arrives in pieces (one detokenized token at a time) and a stop string can straddle pieces, so the matcher
//! holds back the longest tail of what it has seen that could still grow into a stop string, and emits the
//! rest. This is llama.cpp server's `find_partial_stop_string` approach: once a stop string completes, the text
//! before it is emitted, the stop string and everything after it are dropped, and the matcher stays stopped.
//!
//! All slicing happens on `char` boundaries, so multi-byte stop strings (Chinese, emoji) work and the emitted
//! text is always whole characters.

/// What one [`StopMatcher::push`] releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is certainly not part of a stop string (before it, when one completed).
    pub emit: String,
    /// A stop string completed; generation should end. Later pushes emit nothing.
    pub stopped: bool,
}

/// Finds the first stop string in streamed text. Empty stop strings are ignored.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text seen but not emitted: always a proper prefix of some stop string (or empty).
    held: String,
    /// The stop string that ended the stream, once one has.
    matched: Option<usize>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.dedup();
        StopMatcher {
            stops,
            held: String::new(),
            matched: None,
        }
    }

    /// Feeds the next piece of text; returns what can be released now.
    ///
    /// When several stop strings occur, the one starting earliest in the text wins (ties: the shortest, which
    /// completed first); everything from its start on is dropped.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.matched.is_some() {
            return StopOutput {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutput {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);

        if let Some((start, which)) = self.first_match() {
            self.matched = Some(which);
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
            return StopOutput {
                emit,
                stopped: true,
            };
        }

        let keep_from = self.partial_start();
        let rest = self.held.split_off(keep_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopOutput {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        if self.matched.is_some() {
            self.held.clear();
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// True once a stop string has completed.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended the stream (for a `stop_reason` / `stopping_word` field).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Earliest complete stop string in `held` as `(byte offset, stop index)`.
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, s.len(), i)))
            .min()
            .map(|(pos, _, i)| (pos, i))
    }

    /// Byte offset where the longest suffix of `held` that is a proper prefix of some stop string begins
    /// (`held.len()` when there is none). Only suffixes shorter than the longest stop string are candidates.
    fn partial_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lowest = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= lowest)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> StopMatcher {
        StopMatcher::new(s.iter().map(|x| x.to_string()).collect())
    }

    /// Feeds the pieces; returns everything emitted (finish included if never stopped) and whether it stopped.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_chunk_boundaries() {
        let mut m = stops(&["o w"]);
        let a = m.push("Hel");
        assert_eq!(
            a,
            StopOutput {
                emit: "Hel".into(),
                stopped: false
            }
        );
        let b = m.push("lo wor");
        // "Hel" + "l": the "o w" and what follows it are dropped.
        assert_eq!(
            b,
            StopOutput {
                emit: "l".into(),
                stopped: true
            }
        );
        assert_eq!(m.matched(), Some("o w"));
        assert!(m.is_stopped());
        // After the stop nothing more comes out.
        assert_eq!(
            m.push("ld"),
            StopOutput {
                emit: String::new(),
                stopped: true
            }
        );
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn holds_back_a_possible_prefix_then_releases_it() {
        let mut m = stops(&["o w"]);
        assert_eq!(m.push("Hello").emit, "Hell"); // "o" could start "o w"
        assert_eq!(m.push(" ").emit, ""); // "o " still could
        assert_eq!(m.push("there").emit, "o there"); // "o t" cannot
        assert_eq!(m.finish(), "");
        let mut m = stops(&["o w"]);
        assert_eq!(m.push("Hello").emit, "Hell");
        assert_eq!(m.finish(), "o"); // end of stream: the held text is released
    }

    #[test]
    fn stop_split_one_char_per_push() {
        let mut m = stops(&["</s>"]);
        let (out, stopped) = run(&mut m, &["a", "b", "<", "/", "s", ">", "c"]);
        assert_eq!((out.as_str(), stopped), ("ab", true));
        let mut m = stops(&["</s>"]);
        let (out, stopped) = run(&mut m, &["a", "<", "/", "x", ">"]);
        assert_eq!((out.as_str(), stopped), ("a</x>", false));
    }

    #[test]
    fn stop_inside_one_chunk_drops_the_rest() {
        let mut m = stops(&["STOP"]);
        assert_eq!(
            m.push("abcSTOPdef"),
            StopOutput {
                emit: "abc".into(),
                stopped: true
            }
        );
        let mut m = stops(&["STOP"]);
        assert_eq!(
            m.push("STOP"),
            StopOutput {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn multiple_stops_earliest_wins() {
        let mut m = stops(&["world", "lo"]);
        assert_eq!(
            m.push("hello world"),
            StopOutput {
                emit: "hel".into(),
                stopped: true
            }
        );
        assert_eq!(m.matched(), Some("lo"));
        let mut m = stops(&["\n\n", "User:", "###"]);
        let (out, stopped) = run(&mut m, &["Sure.", "\n", "Us", "er", ":", " hi"]);
        assert_eq!((out.as_str(), stopped), ("Sure.\n", true));
        assert_eq!(m.matched(), Some("User:"));
        // Same start: the shorter one completed first.
        let mut m = stops(&["abcd", "ab"]);
        assert_eq!(m.push("xabcd").emit, "x");
        assert_eq!(m.matched(), Some("ab"));
    }

    #[test]
    fn overlapping_prefixes() {
        // "aab" after "a": the held "a" must not hide a match that starts one char later.
        let mut m = stops(&["aab"]);
        let (out, stopped) = run(&mut m, &["a", "a", "a", "b", "z"]);
        assert_eq!((out.as_str(), stopped), ("a", true));
        // A self-overlapping stop string.
        let mut m = stops(&["abab"]);
        let (out, stopped) = run(&mut m, &["ab", "a", "bab"]);
        assert_eq!((out.as_str(), stopped), ("", true));
        let mut m = stops(&["abab"]);
        let (out, stopped) = run(&mut m, &["aba", "c", "abab"]);
        assert_eq!((out.as_str(), stopped), ("abac", true));
        // One stop is a prefix of another: the longest possible prefix is held back.
        let mut m = stops(&["<|im", "<|im_end|>x"]);
        assert_eq!(m.push("hi <|").emit, "hi ");
        assert_eq!(m.push("i").emit, "");
        assert_eq!(m.push("m").emit, "");
        assert_eq!(m.matched(), Some("<|im"));
    }

    #[test]
    fn chinese_and_multibyte() {
        let mut m = stops(&["结束"]);
        let (out, stopped) = run(&mut m, &["你好", "，结", "束了"]);
        assert_eq!((out.as_str(), stopped), ("你好，", true));
        let mut m = stops(&["结束"]);
        let o = m.push("世界结");
        assert_eq!(o.emit, "世界");
        let o = m.push("果");
        assert_eq!(o.emit, "结果");
        assert_eq!(m.finish(), "");
        // Stop string sharing a leading byte with other characters (U+7ED3 vs U+7ED9) must not be held.
        let mut m = stops(&["结束"]);
        assert_eq!(m.push("给").emit, "给");
        // Emoji and mixed scripts.
        let mut m = stops(&["🙂x"]);
        let (out, stopped) = run(&mut m, &["a🙂", "🙂", "x"]);
        assert_eq!((out.as_str(), stopped), ("a🙂", true));
    }

    #[test]
    fn empty_stops_are_ignored_and_no_stops_pass_through() {
        let mut m = stops(&["", ""]);
        assert_eq!(
            m.push("anything"),
            StopOutput {
                emit: "anything".into(),
                stopped: false
            }
        );
        assert_eq!(m.finish(), "");
        let mut m = stops(&["", "x"]);
        assert_eq!(run(&mut m, &["abc", "dxe"]), ("abcd".to_string(), true));
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(run(&mut m, &["a", "", "b"]), ("ab".to_string(), false));
        assert_eq!(m.matched(), None);
    }

    #[test]
    fn emitted_text_is_the_input_up_to_the_first_stop_for_every_split() {
        let text = "The answer: 42.\n\nUser: next 问题结束 tail";
        let stop_sets: [&[&str]; 4] = [&["\n\nUser:"], &["结束"], &["nope"], &["42", "swer"]];
        for set in stop_sets {
            let want_end = set.iter().filter_map(|s| text.find(s)).min();
            let want = &text[..want_end.unwrap_or(text.len())];
            // Every way of cutting the text into three pieces on char boundaries.
            let bounds: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect();
            for (ai, &a) in bounds.iter().enumerate() {
                for &b in &bounds[ai..] {
                    let mut m = stops(set);
                    let (out, stopped) = run(&mut m, &[&text[..a], &text[a..b], &text[b..]]);
                    assert_eq!(out, want, "stops {set:?}, cuts {a} {b}");
                    assert_eq!(stopped, want_end.is_some());
                }
            }
        }
    }
}
