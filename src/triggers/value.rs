//! Comparing leaves: JSON values where Mina's numeric scalars (UInt32, Length,
//! Balance, ...) arrive as strings of digits and must compare as numbers.

use std::cmp::Ordering;

use serde_json::Value;

/// A number read from a leaf: exact for integers (Mina's UInt64 amounts exceed
/// f64's 53 bits), floating point otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// The number in a JSON number, or in a string of digits (`"1000"`, `"-3"`,
    /// `"2.5"`). Anything else (`"NaN"`, `"1e3"`, `" 7"`, booleans) is not a number.
    pub fn from_value(value: &Value) -> Option<Num> {
        match value {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(Num::Int(i128::from(i))),
                None => match n.as_u64() {
                    Some(u) => Some(Num::Int(i128::from(u))),
                    None => n.as_f64().filter(|f| f.is_finite()).map(Num::Float),
                },
            },
            Value::String(s) => Num::parse(s),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Num> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        let (whole, fraction) = match digits.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (digits, None),
        };
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return None;
        }
        match fraction {
            None => s.parse::<i128>().ok().map(Num::Int),
            Some(_) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Num::Float),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            // Precision loss only matters beyond 2^53, where both sides are then floats.
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// This number plus `offset`, exact while both are integers.
    pub fn plus(self, offset: f64) -> Num {
        match self {
            Num::Int(i) if offset.fract() == 0.0 && offset.abs() < 9.0e15 => {
                match i.checked_add(offset as i128) {
                    Some(sum) => Num::Int(sum),
                    None => Num::Float(i as f64 + offset),
                }
            }
            other => Num::Float(other.as_f64() + offset),
        }
    }

    /// Numeric order on the numbers we produce (all finite): `-0.0` equals `0`.
    pub fn compare(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => {
                let (a, b) = (a.as_f64(), b.as_f64());
                a.partial_cmp(&b).unwrap_or_else(|| a.total_cmp(&b))
            }
        }
    }
}

/// Equality as a trigger sees it: numbers (and digit strings) by value, the rest
/// as JSON.
pub fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (Num::from_value(a), Num::from_value(b)) {
        (Some(x), Some(y)) => x.compare(y) == Ordering::Equal,
        _ => a == b,
    }
}

/// Whether `haystack` contains `needle`: a substring of a string, or an element of a list.
pub fn contains(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::String(h), Value::String(n)) => h.contains(n.as_str()),
        (Value::Array(items), n) => items.iter().any(|item| loosely_equal(item, n)),
        _ => false,
    }
}

/// A leaf as text for `matches`: strings as they are, numbers and booleans printed.
pub fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
