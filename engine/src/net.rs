//! The outbound address policy: connector requests may not reach loopback,
//! private, link-local, shared (CGNAT), multicast or cloud-metadata
//! addresses unless private networks are explicitly allowed
//! (`CONVEYOR_ALLOW_PRIVATE_NETWORKS=true`, for development and tests).
//!
//! The check runs on the *resolved* address: [`GuardedResolver`] filters
//! what DNS returns (so `localhost` or a name pointing at 10.0.0.1 is
//! refused), and [`check_host`] covers URLs whose host is an IP literal,
//! which never reach a resolver.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is outside the public internet (loopback, private,
/// link-local, metadata, CGNAT, multicast, unspecified, documentation,
/// benchmarking or reserved ranges; IPv4-mapped IPv6 is checked as IPv4).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || seg[0] == 0x2001 && seg[1] == 0x0db8 // documentation
                || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64 can reach private v4
                || (seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0 && seg[5] == 0) // IPv4-compatible
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, incl. 169.254.169.254 metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0) // IETF protocol assignments (192.0.0.0/24 …)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
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
    use std::net::Ipv6Addr;

    use super::*;

    const PUBLIC_V6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111);

    #[test]
    fn refuses_non_public_addresses() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(is_private(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in ["1.1.1.1", "8.8.8.8", "151.101.1.1", "172.32.0.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!is_private(ip), "{ip} should be allowed");
        }
        assert!(!is_private(IpAddr::V6(PUBLIC_V6)));
    }

    #[test]
    fn ip_literal_hosts_are_checked() {
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").expect("url");
        let err = check_host(&url.host().expect("host")).expect_err("refused");
        assert!(err.to_string().contains("169.254.169.254"));
        let url = url::Url::parse("https://api.example.com/").expect("url");
        assert!(check_host(&url.host().expect("host")).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_loopback_addresses() {
        let name: Name = "localhost".parse().expect("name");
        let Err(err) = GuardedResolver.resolve(name).await else {
            panic!("localhost must be refused");
        };
        assert!(err.downcast_ref::<PrivateNetworkRefused>().is_some());
    }
}
