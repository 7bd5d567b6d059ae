//! Three namespaces for NAT tests: client — gateway (runs the backend) — internal.

use crate::{pair, wait_until, Netns, Pair};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// `client` reaches `gateway` over the pair's veth; `gateway` reaches `internal`
/// over a second veth (`v2` in the gateway, `v3` in internal) on its own subnet.
/// Only `gateway` forwards. Namespaces are private, so fixed inner addresses
/// cannot collide with other tests.
pub struct Routed {
    pub pair: Pair,
    pub internal: Netns,
    pub gateway_inner: Ipv4Addr,
    pub internal_ip: Ipv4Addr,
    pub gateway_inner6: Ipv6Addr,
    pub internal_ip6: Ipv6Addr,
}

impl Routed {
    pub fn client(&self) -> &Netns {
        &self.pair.client
    }
    pub fn gateway(&self) -> &Netns {
        &self.pair.server
    }
    /// The client's address and the gateway address it connects to, per family.
    pub fn outer(&self, v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            (self.pair.client_ip6.into(), self.pair.server_ip6.into())
        } else {
            (self.pair.client_ip.into(), self.pair.server_ip.into())
        }
    }
    /// The internal host's address, per family.
    pub fn internal_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.internal_ip6.into()
        } else {
            self.internal_ip.into()
        }
    }
}

/// Build the topology. With `route_back`, internal's default route points at
/// the gateway; without, internal cannot answer the client unless the gateway
/// rewrites the source (SNAT/MASQUERADE).
pub fn routed(tag: &str, route_back: bool) -> Routed {
    let pair = pair(tag);
    let internal = Netns::new(&format!("{tag}i"));
    let gw = &pair.server;
    let (gateway_inner, internal_ip) = (Ipv4Addr::new(172, 31, 0, 1), Ipv4Addr::new(172, 31, 0, 2));
    let (gateway_inner6, internal_ip6): (Ipv6Addr, Ipv6Addr) =
        ("fd01::1".parse().unwrap(), "fd01::2".parse().unwrap());
    gw.run_ok(&[
        "ip",
        "link",
        "add",
        "v2",
        "type",
        "veth",
        "peer",
        "name",
        "v3",
        "netns",
        &internal.name,
    ]);
    gw.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{gateway_inner}/30"),
        "dev",
        "v2",
    ]);
    gw.run_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{gateway_inner6}/64"),
        "dev",
        "v2",
        "nodad",
    ]);
    internal.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{internal_ip}/30"),
        "dev",
        "v3",
    ]);
    internal.run_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{internal_ip6}/64"),
        "dev",
        "v3",
        "nodad",
    ]);
    gw.run_ok(&["ip", "link", "set", "v2", "up"]);
    internal.run_ok(&["ip", "link", "set", "v3", "up"]);
    gw.run_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    gw.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    if route_back {
        internal.run_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &gateway_inner.to_string(),
        ]);
        internal.run_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway_inner6.to_string(),
        ]);
    }
    let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let o = internal.run(&["ip", "-o", "link", "show", "v3"]);
        String::from_utf8_lossy(&o.stdout).contains("LOWER_UP")
    });
    assert!(
        up,
        "veth between {} and {} did not come up",
        gw.name, internal.name
    );
    // IPv6 on a fresh link works only once the kernel's link watch has seen the
    // carrier (up to a second later): wait until the gateway reaches internal
    // (a refused connection is an answer) over both families.
    for addr in [IpAddr::from(internal_ip), IpAddr::from(internal_ip6)] {
        let answered = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            gw.in_ns(move || {
                match TcpStream::connect_timeout(
                    &SocketAddr::new(addr, 9),
                    Duration::from_millis(200),
                ) {
                    Ok(_) => true,
                    Err(e) => e.kind() == ErrorKind::ConnectionRefused,
                }
            })
        });
        assert!(answered, "{addr} does not answer the gateway {}", gw.name);
    }
    Routed {
        pair,
        internal,
        gateway_inner,
        internal_ip,
        gateway_inner6,
        internal_ip6,
    }
}
