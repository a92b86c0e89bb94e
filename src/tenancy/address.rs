//! What an IP address is, for the endpoint policy: the IPv4 address an IPv6 form
//! carries (mapped, IPv4-compatible, NAT64, 6to4, Teredo), and the special-purpose
//! ranges (IANA's registries) that are never a tenant's target. Pure logic.
//!
//! An IPv6 address that embeds an IPv4 address reaches that IPv4 address through a
//! translator or a tunnel, so it is judged as that address: `[64:ff9b::a9fe:a9fe]`
//! is the cloud metadata service, `[2002:7f00:1::]` is loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d` (RFC 4291): the IPv4 address itself, as a dual stack sees it.
    Mapped,
    /// `::a.b.c.d` (RFC 4291, deprecated): still routed as the IPv4 address by some stacks.
    Compatible,
    /// `64:ff9b::a.b.c.d` (RFC 6052): a NAT64 translator's well-known prefix.
    Nat64,
    /// `64:ff9b:1::/48` (RFC 8215): NAT64 prefixes for local use (the IPv4 address in
    /// the last 32 bits, the usual /96 form).
    Nat64Local,
    /// `2002:a.b.c.d::/48` (RFC 3056): 6to4.
    SixToFour,
    /// `2001:0::/32` (RFC 4380): Teredo; the client's address, bit-inverted, in the
    /// last 32 bits, and the server's in bits 32..64.
    Teredo,
}

impl Embedding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mapped => "IPv4-mapped",
            Self::Compatible => "IPv4-compatible",
            Self::Nat64 => "NAT64",
            Self::Nat64Local => "local-use NAT64",
            Self::SixToFour => "6to4",
            Self::Teredo => "Teredo",
        }
    }

    /// Whether the IPv6 address is just another spelling of the IPv4 address (the
    /// same host, reached directly or through a translator), rather than a tunnel
    /// endpoint whose own IPv6 address matters too.
    pub fn is_translation(self) -> bool {
        !matches!(self, Self::SixToFour | Self::Teredo)
    }
}

/// The IPv4 addresses `v6` carries, with how (Teredo carries two).
pub fn embedded(v6: Ipv6Addr) -> Vec<(Embedding, Ipv4Addr)> {
    let s = v6.segments();
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from(bits as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return vec![(Embedding::Mapped, v4)];
    }
    // `::` and `::1` are the unspecified and loopback addresses, not IPv4-compatible.
    if bits >> 32 == 0 && bits > 1 {
        return vec![(Embedding::Compatible, low32)];
    }
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => vec![(Embedding::Nat64, low32)],
        [0x64, 0xff9b, 1, ..] => vec![(Embedding::Nat64Local, low32)],
        [0x2002, hi, lo, ..] => vec![(
            Embedding::SixToFour,
            Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)),
        )],
        [0x2001, 0, hi, lo, ..] => vec![
            (Embedding::Teredo, Ipv4Addr::from(!(bits as u32))),
            (
                Embedding::Teredo,
                Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)),
            ),
        ],
        _ => Vec::new(),
    }
}

/// The address `ip` reaches as one host: an IPv6 spelling of an IPv4 address
/// (mapped, compatible, NAT64) is that IPv4 address; anything else is itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded(v6).as_slice() {
            [(how, v4)] if how.is_translation() => IpAddr::V4(*v4),
            _ => ip,
        },
        v4 => v4,
    }
}

/// Special-purpose ranges that are never a target unless a cluster admin's
/// `allowedCIDRs` names them: the name of the range, or None.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    Some(match (a, b, c) {
        _ if v4.is_loopback() => "loopback",
        _ if v4.is_link_local() => "link-local (cloud metadata lives here)",
        _ if v4.is_broadcast() => "broadcast",
        (0, ..) => "unspecified (\"this network\")",
        (224..=239, ..) => "multicast",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18 | 19, _) => "benchmarking",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn special_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let s = v6.segments();
    Some(match s[0] {
        _ if v6.is_loopback() => "loopback",
        _ if v6.is_unspecified() => "unspecified",
        first if first & 0xffc0 == 0xfe80 => "link-local",
        first if first & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        first if first & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x3fff if s[1] & 0xf000 == 0 => "documentation",
        0x2001 if s[1] == 0x0002 && s[2] == 0 => "benchmarking",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
        _ => return None,
    })
}

/// Whether `ip` is reachable on the public internet: not private, shared,
/// unique-local, special-purpose, nor an IPv6 form of such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    if special_purpose(ip).is_some() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private() || (a == 100 && (64..128).contains(&b)) || (a == 192 && b == 0))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if first & 0xfe00 == 0xfc00 {
                return false;
            }
            let carried = embedded(v6);
            // Local-use NAT64 prefixes are not globally reachable (RFC 8215).
            carried
                .iter()
                .all(|(how, v4)| *how != Embedding::Nat64Local && is_public(IpAddr::V4(*v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn every_ipv6_form_of_an_ipv4_address_is_decoded() {
        let metadata: Ipv4Addr = "169.254.169.254".parse().unwrap();
        for (form, how) in [
            ("::ffff:169.254.169.254", Embedding::Mapped),
            ("::a9fe:a9fe", Embedding::Compatible),
            ("64:ff9b::a9fe:a9fe", Embedding::Nat64),
            ("64:ff9b:1::a9fe:a9fe", Embedding::Nat64Local),
            ("2002:a9fe:a9fe::1", Embedding::SixToFour),
        ] {
            assert_eq!(embedded(v6(form)), [(how, metadata)], "{form}");
        }
        // Teredo: server 65.54.227.120, client 192.0.2.45 stored inverted (RFC 4380).
        assert_eq!(
            embedded(v6("2001:0:4136:e378:8000:63bf:3fff:fdd2")),
            [
                (Embedding::Teredo, "192.0.2.45".parse().unwrap()),
                (Embedding::Teredo, "65.54.227.120".parse().unwrap())
            ]
        );
        assert!(embedded(v6("::")).is_empty());
        assert!(embedded(v6("::1")).is_empty());
        assert!(embedded(v6("2606:4700::1111")).is_empty());
    }

    #[test]
    fn translations_are_judged_as_their_ipv4_address() {
        assert_eq!(canonical(ip("64:ff9b::7f00:1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("::10.0.0.1")), ip("10.0.0.1"));
        // A tunnel endpoint stays itself (its IPv4 address is judged separately).
        assert_eq!(canonical(ip("2002:a9fe:a9fe::1")), ip("2002:a9fe:a9fe::1"));
        assert_eq!(canonical(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn special_purpose_ranges_are_named() {
        for (addr, name) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local (cloud metadata lives here)"),
            ("0.1.2.3", "unspecified (\"this network\")"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.251", "multicast"),
            ("239.255.255.250", "multicast"),
            ("192.0.2.7", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.7", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("100::1", "discard-only"),
        ] {
            assert_eq!(special_purpose(ip(addr)), Some(name), "{addr}");
        }
        for addr in ["10.0.0.1", "93.184.216.34", "fd00::1", "2606:4700::1111"] {
            assert_eq!(special_purpose(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn public_means_globally_reachable() {
        for addr in [
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip(addr)), "{addr}");
        }
        for addr in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.9",
            "192.0.0.8",
            "fd00::1",
            "64:ff9b::a01:203",
            "::ffff:10.1.2.3",
            "2002:a01:203::1",
            "64:ff9b:1::5db8:d822",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip(addr)), "{addr}");
        }
    }
}
