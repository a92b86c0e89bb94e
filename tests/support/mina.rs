//! How Mina's client libraries read a daemon's answers: base58check identifiers
//! with Mina's version bytes and layouts, numbers as strings of digits, field
//! elements below the modulus. Written from Mina's formats, apart from the
//! simulator's encoder, so that a test checks the one against the other.

use serde_json::Value;

/// What a client makes of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `3N…`: version 0x10, version number 1, a field.
    StateHash,
    /// `j…`: version 0x05.
    LedgerHash,
    /// `2v…`: version 0x0d.
    EpochSeed,
    /// `2m…`/`2n…`: version 0x0c.
    ReceiptChainHash,
    /// `B62…`: version 0xcb, 1, 1, x, whether y is odd.
    PublicKey,
    /// `w…`: version 0x1c, a field.
    TokenId,
    /// `5J…`: version 0x1d, a 32-byte digest.
    TransactionHash,
    /// Base64 (transaction ids, verification keys).
    Base64,
    /// A JSON string of decimal digits (Mina's numeric scalars).
    Digits,
    /// A JSON integer (GraphQL `Int`).
    Int,
    Bool,
    /// A field element in decimal, below the Pallas base field's modulus.
    Field,
    /// `None`, `Either`, `Proof`, `Signature` or `Impossible`.
    AuthRequired,
    /// An ISO 8601 time that JavaScript's `Date.parse` reads.
    Date,
    /// `INCLUDED`, `PENDING` or `UNKNOWN`.
    TransactionStatus,
    /// One of Mina's `SyncStatus` values.
    SyncStatus,
    /// Any string.
    Text,
}

/// The Pallas base field's modulus.
const MODULUS: &str =
    "28948022309329048855892746252171976963363056481941560715954676764349967630337";

const ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// The data of a base58check text (version byte first) if its checksum holds.
pub fn base58check(text: &str) -> Option<Vec<u8>> {
    // Big-endian base-256 digits of the number the text writes.
    let mut number: Vec<u8> = Vec::new();
    for c in text.chars() {
        let mut carry = ALPHABET.find(c)? as u32;
        for byte in number.iter_mut().rev() {
            carry += u32::from(*byte) * 58;
            *byte = (carry % 256) as u8;
            carry /= 256;
        }
        while carry > 0 {
            number.insert(0, (carry % 256) as u8);
            carry /= 256;
        }
    }
    let mut data = vec![0; text.chars().take_while(|c| *c == '1').count()];
    data.extend(number);
    let (payload, checksum) = data.split_at(data.len().checked_sub(4)?);
    let once = ring::digest::digest(&ring::digest::SHA256, payload);
    let twice = ring::digest::digest(&ring::digest::SHA256, once.as_ref());
    (&twice.as_ref()[..4] == checksum).then(|| payload.to_vec())
}

/// The modulus, big-endian.
const MODULUS_BYTES: [u8; 32] = [
    0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x22, 0x46, 0x98, 0xfc, 0x09, 0x4c, 0xf9,
    0x1b, 0x99, 0x2d, 0x30, 0xed, 0, 0, 0, 1,
];

/// Whether 32 little-endian bytes are a field element.
fn field_below_modulus(le: &[u8]) -> bool {
    let be: Vec<u8> = le.iter().rev().copied().collect();
    be.len() == 32 && be.as_slice() < MODULUS_BYTES.as_slice()
}

fn digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn below_modulus(text: &str) -> bool {
    let text = text.trim_start_matches('0');
    text.len() < MODULUS.len() || (text.len() == MODULUS.len() && text < MODULUS)
}

/// Whether `value` is what a client reads as `format` (`null` is not).
pub fn check(format: Format, value: &Value) -> Result<(), String> {
    let text = value.as_str();
    let base58 = |layout: &dyn Fn(&[u8]) -> bool| {
        text.and_then(base58check).is_some_and(|data| layout(&data))
    };
    let field = |version: u8| {
        move |data: &[u8]| {
            data.len() == 34 && data[..2] == [version, 1] && field_below_modulus(&data[2..])
        }
    };
    let ok = match format {
        Format::StateHash => base58(&field(0x10)),
        Format::LedgerHash => base58(&field(0x05)),
        Format::EpochSeed => base58(&field(0x0d)),
        Format::ReceiptChainHash => base58(&field(0x0c)),
        Format::PublicKey => {
            text.is_some_and(|t| t.len() == 55 && t.starts_with("B62"))
                && base58(&|d: &[u8]| d.len() == 36 && d[..3] == [0xcb, 1, 1] && d[35] <= 1)
        }
        Format::TokenId => {
            base58(&|d: &[u8]| d.len() == 33 && d[0] == 0x1c && field_below_modulus(&d[1..]))
        }
        Format::TransactionHash => base58(&|d: &[u8]| d.len() == 34 && d[..2] == [0x1d, 32]),
        Format::Base64 => text.is_some_and(|t| {
            !t.is_empty()
                && t.len() % 4 == 0
                && t.trim_end_matches('=')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        }),
        Format::Digits => text.is_some_and(digits),
        Format::Int => value.is_i64(),
        Format::Bool => value.is_boolean(),
        Format::Field => text.is_some_and(|t| digits(t) && below_modulus(t)),
        Format::AuthRequired => text
            .is_some_and(|t| ["None", "Either", "Proof", "Signature", "Impossible"].contains(&t)),
        Format::Date => text.is_some_and(|t| {
            regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
                .is_ok_and(|r| r.is_match(t))
        }),
        Format::TransactionStatus => {
            text.is_some_and(|t| ["INCLUDED", "PENDING", "UNKNOWN"].contains(&t))
        }
        Format::SyncStatus => text.is_some_and(|t| {
            [
                "CONNECTING",
                "LISTENING",
                "OFFLINE",
                "BOOTSTRAP",
                "SYNCED",
                "CATCHUP",
            ]
            .contains(&t)
        }),
        Format::Text => value.is_string(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value} is not a {format:?}"))
    }
}

/// How a client reads a field: its format, and whether it copes with `null`.
pub type Rule = (Format, bool);

/// Checks every leaf of a GraphQL answer's `data` against `rules`, found by
/// `parent.field` (the object holding the field, lists skipped) or by `field`.
/// A leaf without a rule is an error, so that a client's new field is noticed.
pub fn check_answer(data: &Value, rules: &dyn Fn(&str, &str) -> Option<Rule>) -> Vec<String> {
    let mut problems = Vec::new();
    walk(data, "", &mut problems, rules);
    problems
}

fn walk(
    value: &Value,
    parent: &str,
    problems: &mut Vec<String>,
    rules: &dyn Fn(&str, &str) -> Option<Rule>,
) {
    let Value::Object(map) = value else {
        return;
    };
    for (field, item) in map {
        if item.as_array().is_some_and(|items| items.is_empty()) {
            continue;
        }
        let nested = match item {
            Value::Object(_) => true,
            Value::Array(items) => items.iter().any(|i| i.is_object()),
            _ => false,
        };
        if nested {
            match item {
                Value::Array(items) => items.iter().for_each(|i| walk(i, field, problems, rules)),
                _ => walk(item, field, problems, rules),
            }
            continue;
        }
        let Some((format, nullable)) = rules(parent, field) else {
            problems.push(format!("{parent}.{field}: no rule for {item}"));
            continue;
        };
        let values: Vec<&Value> = match item {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for value in values {
            if value.is_null() {
                if !nullable {
                    problems.push(format!("{parent}.{field} is null"));
                }
            } else if let Err(e) = check(format, value) {
                problems.push(format!("{parent}.{field}: {e}"));
            }
        }
    }
}
