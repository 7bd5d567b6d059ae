//! `-P icmp|tcpraw|udpraw` and `-Q` on 127.0.0.1: the datagram a raw socket
//! receives carries the packet saved with `-B` after the ICMP/TCP/UDP header,
//! with fwknop's header fields and right checksums; `-v` names the source
//! written and the datagram's size. Without CAP_NET_RAW the
//! client says so in one line. These need root (raw sockets); elsewhere they
//! print a skip note (and fail when CI=true).

mod common;

use common::*;
use spa_client::raw;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

const CAP_NET_RAW: libc::c_ulong = 13;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // CI runs as root: there a skip would hide a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root: raw-socket tests cannot run"
        );
        eprintln!("SKIPPED: raw sockets need root");
    }
    root
}

/// A raw socket receiving every IPv4 datagram of `proto` on this host.
fn raw_receiver(proto: libc::c_int) -> socket2::Socket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(proto)),
    )
    .expect("raw socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// The first datagram on `rx` whose payload is `wire` (other traffic on the
/// loopback is skipped), within a few seconds.
fn receive(rx: &socket2::Socket, wire: &str) -> raw::Parsed {
    let end = Instant::now() + Duration::from_secs(5);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    while Instant::now() < end {
        let Ok(n) = rx.recv(&mut buf) else { continue };
        // SAFETY: recv initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(p) = raw::parse(&bytes).filter(|p| p.payload == wire.as_bytes()) {
            return p;
        }
    }
    panic!("no datagram carrying the packet arrived");
}

/// Knock with `-v`; returns the packet (as saved with -B) and the output.
fn knock_verbose(env: &Env, extra: &[&str]) -> (String, String) {
    let pkt = env.path("raw.pkt");
    let mut args = vec![
        "--no-rc-file",
        "-D",
        "127.0.0.1",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-B",
        pkt.to_str().unwrap(),
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        HMAC_B64,
        "-v",
    ];
    args.extend_from_slice(extra);
    let out = env.ok(&args);
    (read_packet(&pkt), out)
}

fn knock(env: &Env, extra: &[&str]) -> String {
    knock_verbose(env, extra).0
}

#[test]
fn raw_modes_carry_the_packet_with_fwknops_headers() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let localhost = Ipv4Addr::LOCALHOST;
    // (flags, IP protocol, TCP flags or ICMP type and code, ports or echo id/seq)
    type Case<'a> = (&'a [&'a str], libc::c_int, (u8, u8), (u16, u16));
    let cases: [Case; 3] = [
        (
            &["-P", "tcpraw", "-S", "41001", "-p", "41002"],
            libc::IPPROTO_TCP,
            (0x02, 0),
            (41001, 41002),
        ),
        (
            &["-P", "udpraw", "-S", "41003", "-p", "41004"],
            libc::IPPROTO_UDP,
            (0, 0),
            (41003, 41004),
        ),
        // fwknop's default ICMP type: 0 (echo reply), identifier and sequence 0.
        (&["-P", "icmp"], libc::IPPROTO_ICMP, (0, 0), (0, 0)),
    ];
    for (args, proto, detail, ports) in cases {
        let rx = raw_receiver(proto);
        let wire = knock(&env, args);
        let p = receive(&rx, &wire);
        assert_eq!(
            (p.source, p.destination),
            (localhost, localhost),
            "{args:?}"
        );
        assert_eq!((p.ttl, p.detail, p.ports), (255, detail, ports), "{args:?}");
        assert!(p.checksums_ok, "{args:?}");
    }
    // An echo request carries an identifier and sequence 1.
    let rx = raw_receiver(libc::IPPROTO_ICMP);
    let wire = knock(&env, &["-P", "icmp", "--icmp-type", "8"]);
    let p = receive(&rx, &wire);
    assert_eq!((p.detail, p.ports.1), ((8, 0), 1));
}

#[test]
fn spoofed_source_is_written_in_the_ip_header() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    // A loopback address other than 127.0.0.1 (the whole /8 is local).
    let rx = raw_receiver(libc::IPPROTO_UDP);
    let (wire, out) = knock_verbose(&env, &["-P", "udpraw", "-Q", "127.0.0.77", "-p", "41005"]);
    let p = receive(&rx, &wire);
    assert_eq!(p.source, Ipv4Addr::new(127, 0, 0, 77));
    assert!(p.checksums_ok);
    // -v names the written source and port, and the datagram's size (IP and
    // UDP headers, 28 bytes, then the packet).
    let sent = format!(
        "[+] Sent {} bytes over udpraw from 127.0.0.77:{} to 127.0.0.1:41005",
        28 + wire.len(),
        p.ports.0
    );
    assert!(out.lines().any(|l| l == sent), "no `{sent}` in\n{out}");
    let rx = raw_receiver(libc::IPPROTO_ICMP);
    let (wire, out) = knock_verbose(&env, &["-P", "icmp", "-Q", "127.0.0.78"]);
    let p = receive(&rx, &wire);
    assert_eq!(p.source, Ipv4Addr::new(127, 0, 0, 78));
    let sent = format!(
        "[+] Sent {} bytes over icmp from 127.0.0.78 to 127.0.0.1",
        28 + wire.len()
    );
    assert!(out.lines().any(|l| l == sent), "no `{sent}` in\n{out}");
}

#[test]
fn without_cap_net_raw_the_error_says_what_is_needed() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    for proto in ["icmp", "tcpraw", "udpraw"] {
        let mut cmd = env.command(&[
            "--no-rc-file",
            "-D",
            "127.0.0.1",
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "--key-base64-rijndael",
            KEY_B64,
            "-P",
            proto,
        ]);
        // SAFETY: prctl in the child before exec; root keeps every capability
        // across exec except those dropped from the bounding set.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let line = one_line_failure(cmd.output().unwrap(), &[proto]);
        assert!(
            line.contains(&format!("-P {proto}"))
                && line.contains("root")
                && line.contains("CAP_NET_RAW"),
            "{line}"
        );
    }
}
