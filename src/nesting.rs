//! How deep JSON nests, measured on the raw bytes without recursion.
//!
//! serde_json refuses to decode JSON nested more than 128 levels, and the apiserver
//! stores up to 10,000. Measuring first lets KCO refuse (or set aside) a value too
//! deep to decode instead of failing on the whole object that holds it.

use std::fmt;

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object's key (at most [`KEY_BYTES`] bytes of it, escapes as written).
    Key(String),
    /// A list's index.
    Index(usize),
}

/// The longest key kept in a [`Step`]: paths are for messages.
pub const KEY_BYTES: usize = 64;

/// Where a document nests deepest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deepest {
    /// Arrays and objects nested at the deepest point: 0 for a scalar, 1 for `[1]`.
    pub depth: usize,
    /// The first steps of the path to the first array or object at that depth.
    pub path: Vec<Step>,
}

/// The deepest nesting of arrays and objects in `json`: 0 for a scalar.
pub fn depth(json: &[u8]) -> usize {
    deepest(json, 0).depth
}

/// The deepest nesting of `json` and the first `keep` steps of the path to it.
///
/// A byte scanner aware of strings and escapes, linear in the input, whose memory
/// is bounded by `keep` however deep the input nests. It does not validate: on
/// invalid JSON it returns a depth and a path without panicking, meaningful only
/// as far as the input is JSON.
pub fn deepest(json: &[u8], keep: usize) -> Deepest {
    let mut found = Deepest::default();
    // One frame per open array or object, for the first `keep` levels only.
    let mut frames: Vec<Frame> = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Where the object key being read starts, if its level is kept: keys are
    // kept as places in `json`, and copied only into the path of a new deepest.
    let mut reading: Option<usize> = None;
    for (at, &byte) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                if let Some(start) = reading.take()
                    && let Some(Frame::Object { key, .. }) = frames.last_mut()
                {
                    *key = Some(start..at.min(start + KEY_BYTES));
                }
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                if depth <= keep
                    && let Some(Frame::Object { expect_key, .. }) = frames.last_mut()
                    && *expect_key
                {
                    *expect_key = false;
                    reading = Some(at + 1);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > found.depth {
                    found.depth = depth;
                    found.path = frames.iter().filter_map(|f| f.step(json)).collect();
                }
                if depth <= keep {
                    frames.push(if byte == b'{' {
                        Frame::Object {
                            key: None,
                            expect_key: true,
                        }
                    } else {
                        Frame::Array { index: 0 }
                    });
                }
            }
            b'}' | b']' => {
                if depth <= keep {
                    frames.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b',' if depth <= keep => match frames.last_mut() {
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
    }
    found
}

/// An open array or object of the first levels.
enum Frame {
    Object {
        /// Where in the document the key whose value is being read is written.
        key: Option<std::ops::Range<usize>>,
        /// Whether the next string is a key.
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

impl Frame {
    fn step(&self, json: &[u8]) -> Option<Step> {
        match self {
            Self::Object { key, .. } => {
                let bytes = json.get(key.clone()?)?;
                Some(Step::Key(String::from_utf8_lossy(bytes).into_owned()))
            }
            Self::Array { index } => Some(Step::Index(*index)),
        }
    }
}

/// A path as field paths are written in messages: `spec.actions[0].parameters`.
pub struct Path<'a>(pub &'a [Step]);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(json: &str, keep: usize) -> String {
        Path(&deepest(json.as_bytes(), keep).path).to_string()
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        for (json, want) in [
            ("1", 0),
            ("\"text\"", 0),
            ("", 0),
            ("[]", 1),
            ("{}", 1),
            ("[1, [2], {\"a\": [3]}]", 3),
            ("{\"a\": {\"b\": {\"c\": null}}, \"d\": []}", 3),
            (" [ [ ] , [ [ ] ] ] ", 3),
        ] {
            assert_eq!(depth(json.as_bytes()), want, "{json}");
        }
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        for (json, want) in [
            (r#"["[[[{{{"]"#, 1),
            (r#"{"[[[": "]]]}}}"}"#, 1),
            (r#"["a\"[[[", ["\\"], "\\\"[["]"#, 2),
            (r#"["\u005b\u005b", "\\\\\"[", []]"#, 2),
            (r#"{"k\"{": {"v": "}\\"}}"#, 2),
        ] {
            assert_eq!(depth(json.as_bytes()), want, "{json}");
        }
    }

    #[test]
    fn the_path_leads_to_the_first_deepest_point() {
        let json = r#"{"spec": {"actions": [{"x": [1]}, {"action": "a", "parameters": {"p": 1, "deep": {"a": {"a": 1}}}}]}}"#;
        assert_eq!(deepest(json.as_bytes(), 16).depth, 7);
        assert_eq!(path(json, 16), "spec.actions[1].parameters.deep.a");
        assert_eq!(path(json, 3), "spec.actions[1]");
        assert_eq!(path(json, 0), "");
        // The first of two equally deep points; keys with escapes kept as written.
        assert_eq!(path(r#"{"a": [[0]], "b": [[1]]}"#, 8), "a[0]");
        assert_eq!(path(r#"{"x\"y": {"z": {}}}"#, 8), "x\\\"y.z");
        assert_eq!(path(r#"[0, "s,t", [1, {"u": [2]}]]"#, 8), "[2][1].u");
        let long = format!(r#"{{"{}": []}}"#, "k".repeat(500));
        assert_eq!(path(&long, 8), "k".repeat(KEY_BYTES));
    }

    #[test]
    fn deep_documents_cost_no_memory_beyond_the_path_kept() {
        let depth_of = 1_000_000;
        let json = format!("{}1{}", "[".repeat(depth_of), "]".repeat(depth_of));
        let found = deepest(json.as_bytes(), 4);
        assert_eq!(found.depth, depth_of);
        assert_eq!(Path(&found.path).to_string(), "[0][0][0][0]");
    }

    #[test]
    fn invalid_input_does_not_panic() {
        for json in [
            &b"]]]}}}"[..],
            b"[[[",
            b"{\"a\":",
            b"{\"unterminated",
            b"\"\\",
            b"{,,,:,}",
            b"[\xff\xfe{\"\xc3\x28\": [}]",
            b"{\"\xe2\x82\": {}}",
            b"}{][",
        ] {
            let found = deepest(json, 8);
            assert!(found.depth <= json.len());
            let _ = Path(&found.path).to_string();
        }
        assert_eq!(depth(b"]]][["), 2);
    }
}
