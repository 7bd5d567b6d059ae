//! postern's native protocol end to end, in network namespaces, with the real
//! binaries: keys from `posternd key generate` and `postern --gen-client-key`,
//! clients registered with `posternd client add`, knocks from `postern
//! --native` in the client namespace, grants by posternd with nftables.
//!
//! - a native knock opens the port, which closes again after the timeout;
//! - the same packet sent again (a replay) opens nothing;
//! - garbage of a native packet's length, and a packet sealed to another
//!   server's key, get no answer and open nothing;
//! - a client removed with `posternd client remove` (then SIGHUP) is refused
//!   while another still opens;
//! - REQUIRE_TOTP: a wrong code is refused, the current one opens;
//! - the packet sets `user` in the audit log to the client's name;
//! - over the TCP capture (`-P tcp`) too, binary as the packet is;
//! - `--pin-source-port`: only connections from that source port get in;
//! - `postern --native --connect`: the knock is pinned to the source port of
//!   the connection it then makes, which reaches the service;
//! - a fwknop stanza and a native one in the same access.conf, on the same
//!   port: the real fwknop client's knock and a native knock each open.

use postern_e2e::native::{bin, connects_from, ok, Native};
use postern_e2e::posternd::{runnable, tcp_capture, SPA_PORT};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn a_native_knock_opens_replays_and_garbage_do_not_and_a_revoked_client_is_refused() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start(
        "nk",
        22131,
        &[("alice", false), ("bob", false)],
        "NATIVE_CLIENTS alice,bob\n",
    );
    assert!(
        !n.svc.reachable(Duration::from_millis(400)),
        "open before any knock"
    );

    let packet = n.saved("alice");
    assert_eq!(packet[0], 0xF1, "not a classic native packet");
    assert_eq!(n.send(vec![packet.clone()]), 0, "posternd answered");
    assert!(n.opens(), "{}", n.context("the native knock did not open"));
    assert!(n.closes(), "{}", n.context("not closed after the timeout"));

    // Replays of it, garbage of its length, and a packet for another server.
    let mut garbage = vec![0xF1];
    garbage.extend((1..packet.len()).map(|i| (i * 31 % 251) as u8));
    let other = Native::start("nk2", 22132, &[("alice", false)], "NATIVE_CLIENTS alice\n");
    let foreign = other.saved("alice");
    let answers = n.send(vec![packet.clone(), packet.clone(), garbage, foreign]);
    assert_eq!(answers, 0, "posternd answered");
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("a replay, garbage or a foreign packet opened")
    );
    let log = n.posternd.log_text();
    assert!(log.contains("Replay detected"), "{log}");

    // bob is revoked (file removed, SIGHUP); alice still opens.
    let clients = n.conf.dir.path().join("clients");
    let out = std::process::Command::new(bin("posternd"))
        .args([
            "client",
            "remove",
            "bob",
            "--clients-dir",
            clients.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(out, "posternd client remove");
    n.posternd.signal(libc::SIGHUP);
    assert!(
        n.posternd
            .wait_log("SIGHUP: reloaded", 1, Duration::from_secs(5)),
        "{}",
        n.context("no reload")
    );
    n.knock_ok("bob", &[]);
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("a revoked client opened")
    );
    n.knock_ok("alice", &[]);
    assert!(
        n.opens(),
        "{}",
        n.context("alice refused after bob's removal")
    );
    // The audit line follows the open port (see below): wait for it.
    let granted = || -> Vec<String> {
        n.posternd
            .audit_lines()
            .iter()
            .filter(|l| l["outcome"] == "granted")
            .filter_map(|l| l["user"].as_str().map(str::to_string))
            .collect()
    };
    postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(25), || {
        granted().len() >= 2
    });
    assert_eq!(granted(), ["alice", "alice"], "{}", n.context("audit"));
}

#[test]
fn require_totp_refuses_a_wrong_code_and_takes_the_current_one() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start(
        "nt",
        22133,
        &[("carol", true)],
        "NATIVE_CLIENTS carol\nREQUIRE_TOTP Y\n",
    );
    let uri = std::fs::read_to_string(n.conf.path("carol.totp")).unwrap();
    let secret = spa_native::TotpSecret::from_uri(uri.trim()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let right = secret.code_at(now);
    let wrong = format!("{:06}", (right + 500_000) % 1_000_000);
    n.knock_ok("carol", &[]);
    n.knock_ok("carol", &["--totp", &wrong]);
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("opened without the right TOTP code")
    );
    let log = n.posternd.log_text();
    assert!(log.contains("REQUIRE_TOTP"), "{log}");
    let right = format!("{:06}", secret.code_at(now));
    n.knock_ok("carol", &["--totp", &right]);
    assert!(
        n.opens(),
        "{}",
        n.context("the right TOTP code did not open")
    );
}

#[test]
fn a_native_knock_over_tcp_opens() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start_with(
        "nc",
        22134,
        &[("dave", false)],
        "NATIVE_CLIENTS *\n",
        &tcp_capture(SPA_PORT),
    );
    // Several knocks, each a new packet: whatever its last bytes, it is read whole.
    for _ in 0..3 {
        n.knock_ok("dave", &["-P", "tcp"]);
        assert!(
            n.opens(),
            "{}",
            n.context("the native knock over TCP did not open")
        );
        assert!(n.closes(), "{}", n.context("not closed after the timeout"));
    }
}

#[test]
fn a_pinned_knock_lets_in_only_its_source_port() {
    if !runnable(&["nft"]) {
        return;
    }
    const PIN: u16 = 40123;
    let n = Native::start("np", 22135, &[("erin", false)], "NATIVE_CLIENTS erin\n");
    n.knock_ok("erin", &["--pin-source-port", &PIN.to_string()]);
    assert!(
        postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            connects_from(&n, PIN)
        }),
        "{}",
        n.context("the pinned port did not get in")
    );
    for other in [PIN + 1, 0] {
        assert!(
            !connects_from(&n, other),
            "{}",
            n.context(&format!("source port {other} got in past a pin to {PIN}"))
        );
    }
    let rules = n.svc.nft_ruleset();
    assert!(rules.contains(&PIN.to_string()), "{rules}");
}

/// `postern --native --connect SERVER:PORT` (what `postern ssh` runs as
/// ssh's ProxyCommand) binds its socket first and pins the knock to that
/// port: the connection reaches the service, posternd's grant is pinned to
/// the port the connection came from, and no other source port gets in.
#[test]
fn a_native_connect_is_pinned_to_its_own_source_port() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start("nc", 22136, &[("fay", false)], "NATIVE_CLIENTS fay\n");
    let key = n.conf.path("fay.key");
    let target = SocketAddr::from((n.svc.pair.server_ip, n.svc.port)).to_string();
    let postern = bin("postern");
    let out = n
        .svc
        .client()
        .cmd(&postern)
        .args(["--no-rc-file", "--native", "--server-key", &n.server_line])
        .arg("--client-key")
        .arg(&key)
        .args([
            "-a",
            &n.svc.pair.client_ip.to_string(),
            "-v",
            "--connect",
            &target,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The listener accepted (and closed) the connection: `--connect` ended cleanly.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}",
        n.context(&format!("postern --connect:\n{stderr}"))
    );
    let said = stderr
        .lines()
        .find_map(|l| l.split("pinned to source port ").nth(1))
        .unwrap_or_else(|| panic!("no pin reported:\n{stderr}"));
    let pin: u16 = said
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad pin line:\n{stderr}"));
    let rules = n.svc.nft_ruleset();
    let element = format!(". {pin} . {}", n.svc.port);
    assert!(
        rules.contains(&element),
        "{}",
        n.context(&format!("no grant pinned to {pin} (`{element}`)"))
    );
    for other in [pin.wrapping_add(1), 0] {
        assert!(
            !connects_from(&n, other),
            "{}",
            n.context(&format!("source port {other} got in past a pin to {pin}"))
        );
    }
}

#[test]
fn fwknop_and_native_stanzas_serve_side_by_side_on_one_port() {
    if !runnable(&["nft", "fwknop"]) {
        return;
    }
    let n = Native::start("nf", 22137, &[("frank", false)], "NATIVE_CLIENTS frank\n");
    // A fwknop stanza first, the native one after it; reloaded with SIGHUP.
    let keys = postern_e2e::scenario::SpaKeys::generate("cbc", Some("sha256"));
    let native = std::fs::read_to_string(n.conf.path("access.conf")).unwrap();
    let fwknop =
        postern_e2e::posternd::access_conf(&keys, Some(&format!("tcp/{}", n.svc.port)), 3, "");
    n.conf.write("access.conf", &format!("{fwknop}\n{native}"));
    n.posternd.signal(libc::SIGHUP);
    assert!(
        n.posternd
            .wait_log("SIGHUP: reloaded", 1, Duration::from_secs(5)),
        "{}",
        n.context("no reload")
    );
    postern_e2e::posternd::knock_ok(&n.svc, &keys, &[]);
    assert!(n.opens(), "{}", n.context("the fwknop knock did not open"));
    assert!(n.closes(), "{}", n.context("not closed after the timeout"));
    n.knock_ok("frank", &[]);
    assert!(
        n.opens(),
        "{}",
        n.context("the native knock did not open beside a fwknop stanza")
    );
    // The port opens when the rule is in; the audit line follows from the
    // knock's own task, so wait for it (bounded).
    let granted = || -> Vec<String> {
        n.posternd
            .audit_lines()
            .iter()
            .filter(|l| l["outcome"] == "granted")
            .filter_map(|l| {
                l["stanza"]["number"]
                    .as_u64()
                    .map(|k| format!("{k}:{}", l["user"]))
            })
            .collect()
    };
    postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(25), || {
        granted().len() >= 2
    });
    let users = granted();
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(users[0].starts_with("1:"), "{users:?}");
    assert_eq!(users[1], "2:\"frank\"", "{users:?}");
}
