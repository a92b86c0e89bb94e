//! Mina's base58check identifiers: a version byte and a payload, followed by the
//! first four bytes of their double SHA-256, in Bitcoin's base58 alphabet. The
//! simulator's hashes and keys use Mina's version bytes and payload layouts, so a
//! client that decodes them (o1js does) reads them as it reads a daemon's.

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// The longest text [`decode`] looks at: Mina's identifiers are shorter, and the
/// conversion is quadratic in the length.
const MAX_TEXT: usize = 128;

/// Mina's version bytes (`base58_check/version_bytes.ml`) for what the simulator
/// encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LedgerHash = 0x05,
    /// Also the pending coinbase hash's (a quirk of Mina's).
    ReceiptChainHash = 0x0c,
    EpochSeed = 0x0d,
    StagedLedgerAuxHash = 0x0e,
    PendingCoinbaseAuxHash = 0x0f,
    StateHash = 0x10,
    Memo = 0x14,
    VrfOutput = 0x15,
    TokenId = 0x1c,
    TransactionHash = 0x1d,
    Signature = 0x9a,
    PublicKey = 0xcb,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

fn checksum(data: &[u8]) -> [u8; 4] {
    let twice = sha256(&sha256(data));
    [twice[0], twice[1], twice[2], twice[3]]
}

/// The base58check text of `data` (version byte included).
pub fn encode(data: &[u8]) -> String {
    let mut bytes = data.to_vec();
    bytes.extend_from_slice(&checksum(data));
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // The number in limbs of nine base-58 digits, least significant first (a
    // limb times 256 still fits in a u64).
    const LIMB: u64 = 58_u64.pow(9);
    let mut limbs: Vec<u64> = Vec::with_capacity(bytes.len() / 6 + 1);
    for &byte in &bytes {
        let mut carry = u64::from(byte);
        for limb in &mut limbs {
            carry += *limb << 8;
            *limb = carry % LIMB;
            carry /= LIMB;
        }
        while carry > 0 {
            limbs.push(carry % LIMB);
            carry /= LIMB;
        }
    }
    let mut digits: Vec<u8> = Vec::with_capacity(limbs.len() * 9);
    for mut limb in limbs {
        for _ in 0..9 {
            digits.push((limb % 58) as u8);
            limb /= 58;
        }
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let mut text = "1".repeat(zeros);
    text.extend(
        digits
            .iter()
            .rev()
            .map(|d| char::from(ALPHABET[usize::from(*d)])),
    );
    text
}

/// The data (version byte included) of a base58check text whose checksum holds.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.len() > MAX_TEXT {
        return None;
    }
    let zeros = text.bytes().take_while(|b| *b == b'1').count();
    // Bytes, least significant first.
    let mut bytes: Vec<u8> = Vec::with_capacity(text.len());
    for c in text.bytes() {
        let mut carry = u32::try_from(ALPHABET.iter().position(|a| *a == c)?).ok()?;
        for byte in &mut bytes {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut data = vec![0; zeros];
    data.extend(bytes.iter().rev());
    let split = data.len().checked_sub(4)?;
    let (payload, sum) = data.split_at(split);
    (checksum(payload) == sum).then(|| payload.to_vec())
}

/// A hash that is a field element (state, ledger, epoch seed, receipt chain):
/// the version byte, Mina's version number 1, the field's 32 bytes
/// (little-endian).
pub fn field(kind: Kind, field: &[u8; 32]) -> String {
    let mut data = vec![kind as u8, 1];
    data.extend_from_slice(field);
    encode(&data)
}

/// The field of a text [`field`] made of `kind`.
pub fn decode_field(kind: Kind, text: &str) -> Option<[u8; 32]> {
    let data = decode(text)?;
    match data.as_slice() {
        [version, 1, rest @ ..] if *version == kind as u8 => rest.try_into().ok(),
        _ => None,
    }
}

/// A digest serialized as a string (transaction hashes, VRF outputs): the
/// version byte, the length 32, the digest.
pub fn digest(kind: Kind, digest: &[u8; 32]) -> String {
    let mut data = vec![kind as u8, 32];
    data.extend_from_slice(digest);
    encode(&data)
}

/// Raw bytes after the version byte (token ids, the staged ledger's auxiliary
/// hashes).
pub fn raw(kind: Kind, bytes: &[u8; 32]) -> String {
    let mut data = vec![kind as u8];
    data.extend_from_slice(bytes);
    encode(&data)
}

/// The bytes of a text [`raw`] made of `kind`.
pub fn decode_raw(kind: Kind, text: &str) -> Option<[u8; 32]> {
    let data = decode(text)?;
    match data.as_slice() {
        [version, rest @ ..] if *version == kind as u8 => rest.try_into().ok(),
        _ => None,
    }
}

/// A compressed public key (`B62…`, 55 characters): the x coordinate and
/// whether y is odd.
pub fn public_key(x: &[u8; 32], odd: bool) -> String {
    let mut data = vec![Kind::PublicKey as u8, 1, 1];
    data.extend_from_slice(x);
    data.push(u8::from(odd));
    encode(&data)
}

/// A transaction memo (`E4Y…`): up to 32 bytes of text.
pub fn memo(text: &str) -> String {
    let bytes = &text.as_bytes()[..text.len().min(32)];
    let mut data = vec![Kind::Memo as u8, 1, bytes.len() as u8];
    data.extend_from_slice(bytes);
    data.resize(35, 0);
    encode(&data)
}

/// A signature (`7mX…`): the field r and the scalar s.
pub fn signature(r: &[u8; 32], s: &[u8; 32]) -> String {
    let mut data = vec![Kind::Signature as u8, 1];
    data.extend_from_slice(r);
    data.extend_from_slice(s);
    encode(&data)
}

/// A field element of Mina's base field (below 2^254, so below its modulus)
/// derived from `seed`, little-endian.
pub fn field_from(seed: &str) -> [u8; 32] {
    let mut bytes = sha256(seed.as_bytes());
    bytes[31] &= 0x3f;
    bytes
}

/// The decimal digits of a little-endian 256-bit number (how Mina writes a field
/// element as a `Field` or `FieldElem`).
pub fn decimal(le: &[u8; 32]) -> String {
    let mut limbs: Vec<u64> = le
        .chunks(8)
        .rev()
        .map(|c| c.iter().rev().fold(0, |n, b| (n << 8) | u64::from(*b)))
        .collect();
    let mut groups = Vec::new();
    const TEN_19: u128 = 10_000_000_000_000_000_000;
    while limbs.iter().any(|l| *l != 0) {
        let mut rest: u128 = 0;
        for limb in &mut limbs {
            let current = (rest << 64) | u128::from(*limb);
            *limb = (current / TEN_19) as u64;
            rest = current % TEN_19;
        }
        groups.push(rest as u64);
    }
    let Some((last, lower)) = groups.split_last() else {
        return "0".to_owned();
    };
    let mut text = last.to_string();
    for group in lower.iter().rev() {
        text.push_str(&format!("{group:019}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mina_identifiers_round_trip_and_keep_their_prefixes() {
        let zero = [0; 32];
        assert_eq!(
            field(Kind::StateHash, &zero),
            "3NK2tkzqqK5spR2sZ7tujjqPksL45M3UUrcA4WhCkeiPtnugyE2x"
        );
        assert_eq!(
            field(Kind::EpochSeed, &zero),
            "2va9BGv9JrLTtrzZttiEMDYw1Zj6a6EHzXjmP9evHDTG3oEquURA"
        );
        let mut one = [0; 32];
        one[0] = 1;
        // MINA's token id is the field 1.
        assert_eq!(
            raw(Kind::TokenId, &one),
            "wSHV2S4qX9jFsLjQo8r1BsMLH2ZRKsZx6EJd1sbozGPieEC4Jf"
        );
        assert_eq!(
            memo(""),
            "E4YM2vTHhWEg66xpj52JErHUBU4pZ1yageL4TVDDpTTSsv8mK6YaH"
        );
        for seed in ["a", "b", "genesis", "producer-3"] {
            let f = field_from(seed);
            for (kind, prefix) in [
                (Kind::StateHash, "3N"),
                (Kind::LedgerHash, "j"),
                (Kind::EpochSeed, "2v"),
                (Kind::ReceiptChainHash, "2"),
            ] {
                let text = field(kind, &f);
                assert!(text.starts_with(prefix), "{text}");
                assert_eq!(decode_field(kind, &text), Some(f));
            }
            assert!(digest(Kind::TransactionHash, &f).starts_with("5J"));
            let key = public_key(&f, true);
            assert!(key.starts_with("B62") && key.len() == 55, "{key}");
        }
    }

    #[test]
    fn a_mangled_text_does_not_decode() {
        let text = field(Kind::StateHash, &field_from("x"));
        let mut mangled = text.clone().into_bytes();
        mangled[10] = if mangled[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(decode(&String::from_utf8(mangled).unwrap()), None);
        assert_eq!(decode("0OIl"), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode(&"z".repeat(10_000)), None);
        assert_eq!(decode_field(Kind::LedgerHash, &text), None);
    }

    #[test]
    fn any_bytes_round_trip() {
        for data in [
            vec![],
            vec![0],
            vec![0, 0, 1, 2],
            vec![0xff; 64],
            field_from("round trip").to_vec(),
        ] {
            let text = encode(&data);
            assert_eq!(decode(&text), Some(data.clone()), "{text}");
            assert_eq!(
                text.bytes().take_while(|b| *b == b'1').count(),
                data.iter().take_while(|b| **b == 0).count()
            );
        }
    }

    #[test]
    fn decimal_writes_256_bit_numbers() {
        let mut n = [0; 32];
        assert_eq!(decimal(&n), "0");
        n[0] = 1;
        assert_eq!(decimal(&n), "1");
        n = [0xff; 32];
        assert_eq!(
            decimal(&n),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
        n = [0; 32];
        n[8] = 1; // 2^64
        assert_eq!(decimal(&n), "18446744073709551616");
    }
}
