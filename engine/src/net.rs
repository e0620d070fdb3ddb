//! The outbound policy: where connector requests may go, and which headers
//! they may not set.
//!
//! Requests may not reach loopback, private, link-local, shared (CGNAT),
//! multicast, cloud-metadata, documentation, benchmarking, reserved or
//! transition-mechanism addresses (the full list, one row per RFC range, is
//! [`REFUSED_V4`] and [`REFUSED_V6`], and docs/network-policy.md) unless
//! private networks are explicitly allowed
//! (`CONVEYOR_ALLOW_PRIVATE_NETWORKS=true`, for development and tests).
//!
//! The check runs on the *resolved* address: [`GuardedResolver`] filters
//! what DNS returns (so `localhost` or a name pointing at 10.0.0.1 is
//! refused), and [`check_host`] covers URLs whose host is an IP literal,
//! which never reach a resolver.
//!
//! Steps may not set the headers that frame the request or belong to one
//! connection ([`FORBIDDEN_REQUEST_HEADERS`]): `Host` would point the
//! request at another virtual host than the one the address check saw, and
//! `Content-Length`, `Transfer-Encoding` and the hop-by-hop headers could
//! smuggle a second request through a proxy in front of the provider.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// One refused address range: its first address, prefix length and what it
/// is (with the RFC or provider that defines it).
pub type Range<A> = (A, u32, &'static str);

/// The refused IPv4 ranges.
pub const REFUSED_V4: &[Range<Ipv4Addr>] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (RFC 791)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space, CGNAT (RFC 6598); includes Alibaba Cloud metadata 100.100.100.200",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (RFC 1122)"),
    (
        Ipv4Addr::new(168, 63, 129, 16),
        32,
        "Azure WireServer and metadata",
    ),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (RFC 3927); includes the 169.254.169.254 metadata service",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (RFC 1918)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (RFC 6890); includes Oracle Cloud's 192.0.0.192",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation TEST-NET-1 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (RFC 7526, deprecated)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation TEST-NET-2 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation TEST-NET-3 (RFC 5737)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved (RFC 1112); includes broadcast 255.255.255.255",
    ),
];

/// The refused IPv6 ranges. IPv4 written as IPv6 (mapped, translated,
/// compatible, NAT64, 6to4, Teredo) is refused whole rather than decoded:
/// a connector has no reason to name an IPv4 host that way, and each form
/// could otherwise reach a private IPv4 address.
pub const REFUSED_V6: &[Range<Ipv6Addr>] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible (RFC 4291, deprecated); includes unspecified :: and loopback ::1",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated, SIIT (RFC 2765)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        32,
        "NAT64 (RFC 6052, RFC 8215: well-known and local-use prefixes)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (RFC 6666)",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (RFC 2928); includes Teredo 2001::/32, benchmarking 2001:2::/48 and ORCHID",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (RFC 3849)",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (RFC 3056), refused whole: it embeds any IPv4 address",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (RFC 9637)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "SRv6 SIDs (RFC 9602)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (RFC 4193); includes AWS metadata fd00:ec2::254",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (RFC 3879, deprecated)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (RFC 4291)",
    ),
];

/// Whether `ip` is outside the public internet: inside one of the
/// [`REFUSED_V4`] or [`REFUSED_V6`] ranges.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4
            .iter()
            .any(|&(net, len, _)| in_prefix(v4_bits(v4), v4_bits(net), len)),
        IpAddr::V6(v6) => REFUSED_V6
            .iter()
            .any(|&(net, len, _)| in_prefix(v6.to_bits(), net.to_bits(), len)),
    }
}

/// An IPv4 address in the top 32 of 128 bits, so that an IPv4 prefix of
/// `len` bits is a prefix of the same length here.
fn v4_bits(ip: Ipv4Addr) -> u128 {
    u128::from(ip.to_bits()) << 96
}

/// Whether the first `len` bits of `addr` and `net` agree.
fn in_prefix(addr: u128, net: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    addr & mask == net & mask
}

/// Request headers a step may not set (lower case): `Host`, the message
/// framing headers, and the hop-by-hop headers of RFC 9110 section 7.6.1
/// and RFC 2616 section 13.5.1 (with the legacy `Proxy-Connection`). The
/// HTTP client sets the ones a request needs.
pub const FORBIDDEN_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a step may not set the header `name` (any letter case); see
/// [`FORBIDDEN_REQUEST_HEADERS`].
pub fn is_forbidden_request_header(name: &str) -> bool {
    FORBIDDEN_REQUEST_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// The error a refused destination produces. The runner recognises it in a
/// request error's source chain and fails the step without retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateNetworkRefused {
    /// The host that was refused.
    pub host: String,
}

impl fmt::Display for PrivateNetworkRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to connect to `{}`: it resolves to a loopback, private, link-local or metadata address (set CONVEYOR_ALLOW_PRIVATE_NETWORKS=true to allow)",
            self.host
        )
    }
}

impl StdError for PrivateNetworkRefused {}

/// Checks a URL host that is an IP literal. Host names pass here and are
/// checked by [`GuardedResolver`] once resolved.
///
/// # Errors
///
/// [`PrivateNetworkRefused`] when the literal address is not public.
pub fn check_host(host: &url::Host<&str>) -> Result<(), PrivateNetworkRefused> {
    let ip = match host {
        url::Host::Ipv4(v4) => IpAddr::V4(*v4),
        url::Host::Ipv6(v6) => IpAddr::V6(*v6),
        url::Host::Domain(_) => return Ok(()),
    };
    if is_private(ip) {
        Err(PrivateNetworkRefused {
            host: ip.to_string(),
        })
    } else {
        Ok(())
    }
}

/// A DNS resolver that drops non-public addresses and fails when none is
/// left, so a connection to a refused address is never attempted.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| !is_private(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(PrivateNetworkRefused { host }) as Box<dyn StdError + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per refused range: its name, addresses inside it (its first
    /// and last address at least) and the public addresses just outside it.
    const RANGES: &[(&str, &[&str], &[&str])] = &[
        (
            "this network 0/8",
            &["0.0.0.0", "0.255.255.255"],
            &["1.0.0.0"],
        ),
        (
            "RFC 1918 10/8",
            &["10.0.0.0", "10.255.255.255"],
            &["9.255.255.255", "11.0.0.0"],
        ),
        (
            "CGNAT 100.64/10",
            &["100.64.0.0", "100.100.100.200", "100.127.255.255"],
            &["100.63.255.255", "100.128.0.0"],
        ),
        (
            "loopback 127/8",
            &["127.0.0.0", "127.0.0.1", "127.255.255.255"],
            &["126.255.255.255", "128.0.0.0"],
        ),
        (
            "Azure WireServer",
            &["168.63.129.16"],
            &["168.63.129.15", "168.63.129.17"],
        ),
        (
            "link-local 169.254/16",
            &["169.254.0.0", "169.254.169.254", "169.254.255.255"],
            &["169.253.255.255", "169.255.0.0"],
        ),
        (
            "RFC 1918 172.16/12",
            &["172.16.0.0", "172.31.255.255"],
            &["172.15.255.255", "172.32.0.0"],
        ),
        (
            "IETF 192.0.0/24",
            &["192.0.0.0", "192.0.0.192", "192.0.0.255"],
            &["191.255.255.255", "192.0.1.0"],
        ),
        (
            "TEST-NET-1 192.0.2/24",
            &["192.0.2.0", "192.0.2.255"],
            &["192.0.1.255", "192.0.3.0"],
        ),
        (
            "6to4 relay 192.88.99/24",
            &["192.88.99.0", "192.88.99.255"],
            &["192.88.98.255", "192.88.100.0"],
        ),
        (
            "RFC 1918 192.168/16",
            &["192.168.0.0", "192.168.255.255"],
            &["192.167.255.255", "192.169.0.0"],
        ),
        (
            "benchmarking 198.18/15",
            &["198.18.0.0", "198.19.255.255"],
            &["198.17.255.255", "198.20.0.0"],
        ),
        (
            "TEST-NET-2 198.51.100/24",
            &["198.51.100.0", "198.51.100.255"],
            &["198.51.99.255", "198.51.101.0"],
        ),
        (
            "TEST-NET-3 203.0.113/24",
            &["203.0.113.0", "203.0.113.255"],
            &["203.0.112.255", "203.0.114.0"],
        ),
        (
            "multicast 224/4",
            &["224.0.0.0", "239.255.255.255"],
            &["223.255.255.255"],
        ),
        ("reserved 240/4", &["240.0.0.0", "255.255.255.255"], &[]),
        (
            "IPv4-compatible ::/96",
            &["::", "::1", "::a00:1", "::ffff:ffff"],
            &["0:0:0:0:0:1::"],
        ),
        (
            "IPv4-mapped ::ffff:0:0/96",
            &[
                "::ffff:0.0.0.0",
                "::ffff:127.0.0.1",
                "::ffff:10.1.1.1",
                "::ffff:8.8.8.8",
                "::ffff:255.255.255.255",
            ],
            &["::fffe:ffff:ffff", "::1:0:0:0"],
        ),
        (
            "SIIT ::ffff:0:0:0/96",
            &["::ffff:0:0:0", "::ffff:0:a00:1", "::ffff:0:ffff:ffff"],
            &["::fffe:ffff:ffff:ffff", "::ffff:1:0:0"],
        ),
        (
            "NAT64 64:ff9b::/32",
            &[
                "64:ff9b::",
                "64:ff9b::a00:1",
                "64:ff9b:1::a9fe:a9fe",
                "64:ff9b:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", "64:ff9c::"],
        ),
        (
            "discard 100::/64",
            &["100::", "100::ffff:ffff:ffff:ffff"],
            &["ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "100:0:0:1::"],
        ),
        (
            "IETF 2001::/23",
            &[
                "2001::",
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "2001:2::1",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:200::"],
        ),
        (
            "documentation 2001:db8::/32",
            &["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
        ),
        (
            "6to4 2002::/16",
            &[
                "2002::",
                "2002:a00:1::",
                "2002:808:808::",
                "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2003::"],
        ),
        (
            "documentation 3fff::/20",
            &["3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"],
        ),
        (
            "SRv6 5f00::/16",
            &["5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5f01::"],
        ),
        (
            "unique local fc00::/7",
            &[
                "fc00::",
                "fd00:ec2::254",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        ),
        (
            "link-local fe80::/10",
            &[
                "fe80::",
                "fe80::1",
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        ),
        (
            "site-local fec0::/10",
            &["fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "multicast ff00::/8",
            &[
                "ff00::",
                "ff02::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["fe00::"],
        ),
    ];

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|_| panic!("{text} is not an IP address"))
    }

    #[test]
    fn refuses_every_address_inside_each_range() {
        for (range, inside, _) in RANGES {
            for addr in *inside {
                assert!(is_private(ip(addr)), "{range}: {addr} must be refused");
            }
        }
    }

    #[test]
    fn allows_the_public_addresses_just_outside_each_range() {
        for (range, _, outside) in RANGES {
            for addr in *outside {
                assert!(!is_private(ip(addr)), "{range}: {addr} must be allowed");
            }
        }
    }

    #[test]
    fn allows_public_addresses() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "151.101.1.1",
            "2606:4700::1111",
            "2a00:1450:4001:82a::200e",
            "2001:4860:4860::8888",
        ] {
            assert!(!is_private(ip(addr)), "{addr} must be allowed");
        }
    }

    #[test]
    fn every_policy_range_has_a_test_row() {
        assert_eq!(REFUSED_V4.len() + REFUSED_V6.len(), RANGES.len());
        for (net, len, what) in REFUSED_V4 {
            assert!(len <= &32 && !what.is_empty(), "{net}/{len}");
        }
        for (net, len, what) in REFUSED_V6 {
            assert!(len <= &128 && !what.is_empty(), "{net}/{len}");
        }
    }

    #[test]
    fn ip_literal_hosts_are_checked() {
        for (url, refused) in [
            (
                "http://169.254.169.254/latest/meta-data",
                Some("169.254.169.254"),
            ),
            ("http://[::ffff:7f00:1]/", Some("::ffff:127.0.0.1")),
            ("http://[2002:a00:1::]/", Some("2002:a00:1::")),
            ("http://0x7f.1/", Some("127.0.0.1")),
            ("https://api.example.com/", None),
            ("https://localhost/", None),
            ("https://1.1.1.1/", None),
            ("https://[2606:4700::1111]/", None),
        ] {
            let url = url::Url::parse(url).expect("url");
            let result = check_host(&url.host().expect("host"));
            match refused {
                Some(host) => {
                    let err = result.expect_err(url.as_str());
                    assert_eq!(err.host, host);
                    assert!(err.to_string().contains(host), "{err}");
                    assert!(err.to_string().contains("CONVEYOR_ALLOW_PRIVATE_NETWORKS"));
                }
                None => assert_eq!(result, Ok(()), "{url}"),
            }
        }
    }

    #[test]
    fn steps_may_not_set_framing_or_hop_by_hop_headers() {
        for name in FORBIDDEN_REQUEST_HEADERS {
            assert!(is_forbidden_request_header(name), "{name}");
            assert!(is_forbidden_request_header(&name.to_uppercase()), "{name}");
        }
        for name in [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "TE",
        ] {
            assert!(is_forbidden_request_header(name), "{name}");
        }
        for name in [
            "content-type",
            "authorization",
            "idempotency-key",
            "x-host",
            "hosts",
            "",
        ] {
            assert!(!is_forbidden_request_header(name), "{name}");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_loopback_addresses() {
        let name: Name = "localhost".parse().expect("name");
        let Err(err) = GuardedResolver.resolve(name).await else {
            panic!("localhost must be refused");
        };
        let refused = err
            .downcast_ref::<PrivateNetworkRefused>()
            .expect("a PrivateNetworkRefused");
        assert_eq!(refused.host, "localhost");
    }
}
