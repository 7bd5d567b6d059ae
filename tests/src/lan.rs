//! A small LAN: a bridge in a namespace of its own and hosts on it, each in
//! its own namespace with one address of a unique /24 (for fleets of
//! gateways knocked by one client).

use crate::{next_id, wait_until, Netns};
use std::net::Ipv4Addr;
use std::time::Duration;

pub struct Lan {
    /// The hosts, in order, with their addresses (`.1`, `.2`, …).
    pub hosts: Vec<(Netns, Ipv4Addr)>,
    // Dropped last: the bridge the hosts hang on.
    _switch: Netns,
}

/// Interface name of each host's link to the LAN.
pub const HOST_IF: &str = "eth0";

/// `count` hosts on one bridge, addresses in a /24 of 172.16.0.0/12 unique
/// to this process and call.
pub fn lan(tag: &str, count: usize) -> Lan {
    assert!((1..=200).contains(&count));
    let switch = Netns::new(&format!("{tag}w"));
    let seed = (std::process::id() as u64)
        .wrapping_mul(7919)
        .wrapping_add(next_id() as u64);
    let (b, c) = (16 + (seed / 256 % 16) as u8, (seed % 256) as u8);
    switch.run_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    switch.run_ok(&["ip", "link", "set", "br0", "up"]);
    let hosts = (0..count)
        .map(|i| {
            let host = Netns::new(&format!("{tag}{i}"));
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(172, b, c, i as u8 + 1);
            switch.run_ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", HOST_IF, "netns",
                &host.name,
            ]);
            switch.run_ok(&["ip", "link", "set", &port, "master", "br0"]);
            switch.run_ok(&["ip", "link", "set", &port, "up"]);
            host.run_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", HOST_IF]);
            host.run_ok(&["ip", "link", "set", HOST_IF, "up"]);
            (host, addr)
        })
        .collect::<Vec<_>>();
    for (host, _) in &hosts {
        let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            let o = host.run(&["ip", "-o", "link", "show", HOST_IF]);
            String::from_utf8_lossy(&o.stdout).contains("LOWER_UP")
        });
        assert!(up, "the LAN link of {} did not come up", host.name);
    }
    Lan {
        hosts,
        _switch: switch,
    }
}
