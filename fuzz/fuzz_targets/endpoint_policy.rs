//! The endpoint policy on generated URLs and addresses: the input's first 16
//! bytes are an IPv6 address and the next 4 an IPv4 address, one byte picks a
//! policy and a purpose, and the rest is a URL.
//!
//! Invariants: nothing panics; a URL whose host is an address and that passes at
//! admission passes again at connect time (the resolver sees the same address);
//! every IPv6 spelling of an IPv4 address (mapped, compatible, NAT64) gets the
//! IPv4 address's verdict, for both reaches and every policy; an address that
//! carries a never-allowed IPv4 address (6to4, Teredo too) is never allowed
//! without an allowed range; public addresses are never special-purpose.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kco::tenancy::address::{canonical, embedded, is_public, special_purpose};
use kco::tenancy::endpoint::{EndpointCheck, EndpointPolicy, Purpose, Reach, always_forbidden};
use libfuzzer_sys::fuzz_target;

const APISERVER: &[IpAddr] = &[IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))];

fn policies() -> Vec<EndpointPolicy> {
    vec![
        EndpointPolicy::default(),
        EndpointPolicy {
            allow_external: true,
            ..EndpointPolicy::default()
        },
        EndpointPolicy {
            allowed_hosts: vec!["*.monitoring.svc".into(), "rpc.example.org".into()],
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            allow_external: true,
            webhook_allowed_hosts: Some(vec!["hooks.example.com".into()]),
        },
        EndpointPolicy {
            webhook_allowed_hosts: Some(Vec::new()),
            ..EndpointPolicy::default()
        },
    ]
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 21 {
        return;
    }
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&input[..16]);
    let v6 = Ipv6Addr::from(v6);
    let v4 = Ipv4Addr::new(input[16], input[17], input[18], input[19]);
    let choice = input[20];
    let url = String::from_utf8_lossy(&input[21..]);
    let policies = policies();
    let policy = &policies[usize::from(choice) % policies.len()];
    let purpose = if choice & 0x80 == 0 {
        Purpose::Graphql
    } else {
        Purpose::Webhook
    };
    let check = EndpointCheck {
        policy,
        namespace: "chain",
        purpose,
        apiserver: APISERVER,
    };

    // Admission and connect time agree on an address written in the URL.
    if let Ok(reach) = check.url(&url)
        && let Ok(parsed) = url::Url::parse(&url)
    {
        let written = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = written {
            assert_eq!(check.address(ip, reach), Ok(()), "{url} passed admission only");
        }
    }

    // Every IPv6 spelling of an IPv4 address is judged as that address.
    for spelling in [
        v4.to_ipv6_mapped(),
        v4.to_ipv6_compatible(),
        Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(u32::from(v4))),
    ] {
        if spelling.is_unspecified() || spelling.is_loopback() {
            continue; // `::` and `::1` are themselves, not IPv4-compatible
        }
        assert_eq!(canonical(IpAddr::V6(spelling)), IpAddr::V4(v4));
        for reach in [Reach::Internal, Reach::Public] {
            assert_eq!(
                check.address(IpAddr::V6(spelling), reach).is_ok(),
                check.address(IpAddr::V4(v4), reach).is_ok(),
                "{spelling} and {v4}"
            );
        }
    }

    // An address carrying a never-allowed IPv4 address is never allowed, unless a
    // range names it.
    let ip = IpAddr::V6(v6);
    let carries_forbidden = embedded(v6)
        .iter()
        .any(|(_, inner)| special_purpose(IpAddr::V4(*inner)).is_some());
    if carries_forbidden {
        assert!(always_forbidden(ip).is_some(), "{v6}");
        let open = policy
            .allowed_cidrs
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical(ip)));
        if !open {
            assert!(check.address(ip, Reach::Internal).is_err(), "{v6}");
        }
    }
    for any in [ip, IpAddr::V4(v4)] {
        if is_public(any) {
            assert!(special_purpose(any).is_none() && always_forbidden(any).is_none());
        }
    }
});
