//! `[attack]`: posternd counts refused packets per source and blocks a source
//! in the real firewall (nftables sets, iptables with ipset) once it has
//! `threshold` of them, checked from outside:
//!
//! - a client that knocked, then sends forged packets, is not blocked and its
//!   grant stays open (the grace period);
//! - an attacker namespace floods forged packets (bad HMAC) from one address:
//!   the kernel's set lists it, its later packets no longer reach posternd (no
//!   new refusal in the log) and a TCP service it reached before refuses it,
//!   while another address of the same attacker still gets through;
//! - another address replays a captured knock: blocked too, at `replay`;
//! - the client still knocks and opens; the kernel lifts the block on time;
//!   a source blocked again is lifted by `posternd --fw-flush`;
//! - the hook ran for each block with the detection in its environment; the
//!   metrics count the blocks;
//! - 200 addresses each below the threshold block nothing (counts are per
//!   source); each crossing it later gets blocked, and posternd's memory stays
//!   flat;
//! - bad `[attack]` values and an action that cannot block are refused at
//!   start, naming the file and the key.

use postern_e2e::attacker::{connects_from, udp_send_from, vm_rss_kib, Attacker};
use postern_e2e::posternd::{
    iptables_action, knock_ok, metric_sample, nftables_action, posternd_bin, runnable,
    saved_packet, scrape_metrics, udp_capture, udp_send_all, Posternd, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::describe;
use postern_e2e::{tcp_listen, wait_until, Netns};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// The protected port (the access.conf opens it).
const PORT: u16 = 22141;
/// A TCP service nothing protects: anyone reaches it unless blocked.
const OPEN_PORT: u16 = 22142;
const THRESHOLD: usize = 5;
const BLOCK_SECS: u64 = 10;
/// Grants live this long, so a later knock must really open again.
const GRANT_SECS: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Nftables,
    Iptables,
}

/// A copy of `packet` with its last character changed: fails the HMAC.
fn forged(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    let last = p.len() - 1;
    p[last] = if p[last] == b'A' { b'B' } else { b'A' };
    p
}

/// The addresses in postern's block set for IPv4, as the kernel lists them.
fn block_set(backend: Backend, ns: &Netns) -> String {
    let out = match backend {
        Backend::Nftables => ns.run(&["nft", "list", "set", "inet", "postern", "block4"]),
        Backend::Iptables => ns.run(&["ipset", "list", "postern_block4"]),
    };
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(set: &str, addr: Ipv4Addr) -> bool {
    // `192.0.2.1 timeout 10s expires 9s` (nft) or `192.0.2.1 timeout 9` (ipset).
    set.split([' ', ',', '{', '\n', '\t'])
        .any(|w| w == addr.to_string())
}

/// posternd's refusal lines for packets from `src` (the UDP capture on `[::]`
/// sees IPv4 senders as `::ffff:a.b.c.d`).
fn refusals(d: &Posternd, src: Ipv4Addr) -> usize {
    let log = d.log_text();
    log.matches(&format!("refused packet from {src}:")).count()
        + log
            .matches(&format!("refused packet from [::ffff:{src}]:"))
            .count()
}

/// Wait until posternd logged at least `n` refusals of packets from `src`.
fn wait_refusals(d: &Posternd, src: Ipv4Addr, n: usize) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(25), || {
        refusals(d, src) >= n
    })
}

fn case(backend: Backend, tag: &str) {
    let tools: &[&str] = match backend {
        Backend::Nftables => &["nft", "fwknop", "curl"],
        Backend::Iptables => &["iptables", "ipset", "fwknop", "curl"],
    };
    if !runnable(tools) {
        return;
    }
    let (svc, action) = match backend {
        Backend::Nftables => (Service::open(tag, PORT), nftables_action(PORT)),
        Backend::Iptables => (Service::iptables_guarded(tag, PORT), iptables_action()),
    };
    let _open = tcp_listen(svc.server(), OPEN_PORT);
    let attacker = Attacker::new(tag, svc.server(), 3);
    let (flooder, replayer, bystander) = (attacker.addrs[0], attacker.addrs[1], attacker.addrs[2]);
    let metrics = "127.0.0.1:19651";
    let conf_dir = tempfile::tempdir().unwrap();
    let hook_out = conf_dir.path().join("detections");
    let hook = conf_dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$POSTERN_SOURCE|$POSTERN_FAILURES|$POSTERN_WINDOW_SECS|$POSTERN_STAGE|\
             $POSTERN_BLOCK_SECS|$POSTERN_REASON|$(grep CapEff /proc/self/status)\" >> {}\n",
            hook_out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).unwrap();
    let s = Setup::new(
        svc,
        GRANT_SECS,
        "memory",
        &format!(
            "{}\n{action}\n[attack]\nthreshold = {THRESHOLD}\nwindow_secs = 60\nblock_secs = {BLOCK_SECS}\n\
             hook = [\"{}\"]\n\n[metrics]\nlisten = \"{metrics}\"\n",
            udp_capture(SPA_PORT),
            hook.display()
        ),
    );
    let svc = &s.svc;
    let d: Posternd = s.start();
    let ctx = |what: &str| {
        format!(
            "{backend:?}: {what}\n--- block set ---\n{}\n--- posternd log ---\n{}",
            block_set(backend, svc.server()),
            d.log_text()
        )
    };
    let open_from = |src: Ipv4Addr| {
        connects_from(
            &attacker.ns,
            src,
            SocketAddrV4::new(attacker.server_ip, OPEN_PORT),
            Duration::from_millis(400),
        )
    };
    let spa = SocketAddrV4::new(attacker.server_ip, SPA_PORT);
    let refused_from = |src: Ipv4Addr| refusals(&d, src);
    assert!(
        open_from(flooder),
        "{}",
        ctx("the open service is not reachable")
    );

    // A client that knocked is not blocked by forged packets from its address.
    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        ctx("the knock did not open the port")
    );
    // The grant's outcome reaches the detector right after the firewall took it.
    std::thread::sleep(Duration::from_millis(200));
    let valid = saved_packet(svc, &s.keys, &[]);
    let client_ip = svc.pair.client_ip;
    udp_send_all(
        svc.client(),
        SocketAddr::from((svc.pair.server_ip, SPA_PORT)),
        vec![forged(&valid); 3 * THRESHOLD],
        0,
        Duration::ZERO,
        Duration::from_millis(100),
    );
    assert!(
        wait_refusals(&d, client_ip, 3 * THRESHOLD),
        "{}",
        ctx("the client's forged packets were not judged")
    );
    assert!(
        !listed(&block_set(backend, svc.server()), client_ip),
        "{}",
        ctx("the client was blocked right after its knock")
    );
    assert!(
        svc.reachable(Duration::from_millis(400)),
        "{}",
        ctx("the client's grant closed after its forged packets")
    );

    // A flood of forged packets from one address: blocked.
    udp_send_from(&attacker.ns, flooder, spa, vec![forged(&valid); 200]);
    assert!(
        d.wait_log(&format!("blocked {flooder} for {BLOCK_SECS} s: {THRESHOLD} refused packets within 60 s (last at hmac:"), 1, Duration::from_secs(10)),
        "{}",
        ctx("the flooder was not blocked")
    );
    assert!(
        listed(&block_set(backend, svc.server()), flooder),
        "{}",
        ctx("the kernel set does not list the flooder")
    );
    // Its later packets no longer reach posternd.
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(500), {
        let mut last = usize::MAX;
        move || {
            let now = refused_from(flooder);
            std::mem::replace(&mut last, now) == now
        }
    });
    assert!(settled, "{}", ctx("posternd kept judging the flood"));
    let before = refused_from(flooder);
    udp_send_from(&attacker.ns, flooder, spa, vec![forged(&valid); 50]);
    // (One forged packet: below the threshold. Random bytes of a wrong length
    // would not even pass the capture's kernel filter.)
    udp_send_from(&attacker.ns, bystander, spa, vec![forged(&valid)]);
    assert!(
        wait_refusals(&d, bystander, 1),
        "{}",
        ctx("a packet from another attacker address did not reach posternd")
    );
    assert_eq!(
        refused_from(flooder),
        before,
        "{}",
        ctx("packets of a blocked source still reached posternd")
    );
    assert!(
        !open_from(flooder),
        "{}",
        ctx("a blocked source still connects")
    );
    assert!(
        open_from(bystander),
        "{}",
        ctx("another address was blocked too")
    );

    // Replays of a knock another client made: blocked too.
    let knock = saved_packet(svc, &s.keys, &[]);
    udp_send_all(
        svc.client(),
        SocketAddr::from((svc.pair.server_ip, SPA_PORT)),
        vec![knock.clone()],
        0,
        Duration::ZERO,
        Duration::from_millis(100),
    );
    assert!(
        d.wait_log("granted:", 2, Duration::from_secs(10)),
        "{}",
        ctx("the second knock was not granted")
    );
    udp_send_from(&attacker.ns, replayer, spa, vec![knock; 2 * THRESHOLD]);
    assert!(
        d.wait_log(&format!("blocked {replayer} for {BLOCK_SECS} s: {THRESHOLD} refused packets within 60 s (last at replay:"), 1, Duration::from_secs(10)),
        "{}",
        ctx("the replayer was not blocked")
    );
    assert!(
        !open_from(replayer),
        "{}",
        ctx("the replayer still connects")
    );

    // The client still knocks and opens once its earlier grants closed.
    assert!(
        svc.wait_reachable(false, Duration::from_secs(GRANT_SECS + 5)),
        "{}",
        ctx("the grants did not close")
    );
    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        ctx("the client's knock did not open during the attack")
    );

    // The kernel lifts the block on time.
    assert!(
        wait_until(
            Duration::from_secs(BLOCK_SECS + 5),
            Duration::from_millis(250),
            || open_from(flooder)
        ),
        "{}",
        ctx("the block was not lifted")
    );
    assert!(
        !listed(&block_set(backend, svc.server()), flooder),
        "{}",
        ctx("the kernel set still lists the flooder")
    );

    // Blocked again after the block ended; --fw-flush lifts it at once.
    udp_send_from(
        &attacker.ns,
        flooder,
        spa,
        vec![forged(&valid); 2 * THRESHOLD],
    );
    assert!(
        d.wait_log(
            &format!("blocked {flooder} for"),
            2,
            Duration::from_secs(10)
        ),
        "{}",
        ctx("the flooder was not blocked again")
    );
    assert!(
        !open_from(flooder),
        "{}",
        ctx("the flooder connects while blocked again")
    );
    let bin = posternd_bin().display().to_string();
    let flushed = svc
        .server()
        .run(&[&bin, "-c", &s.conf.arg("postern.toml"), "--fw-flush"]);
    assert!(
        flushed.status.success(),
        "--fw-flush: {}",
        describe(&flushed)
    );
    assert!(
        open_from(flooder),
        "{}",
        ctx("--fw-flush did not lift the block")
    );

    // The hook ran for each block.
    let lines = || std::fs::read_to_string(&hook_out).unwrap_or_default();
    // The detection in the environment; no capabilities.
    let want = [
        format!("{flooder}|{THRESHOLD}|60|hmac|{BLOCK_SECS}|HMAC verification failed|CapEff:\t0000000000000000"),
        format!("{replayer}|{THRESHOLD}|60|replay|{BLOCK_SECS}|packet seen before (replay)|CapEff:\t0000000000000000"),
    ];
    let ran = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let l = lines();
        l.lines().filter(|x| *x == want[0]).count() == 2 && l.lines().any(|x| x == want[1])
    });
    assert!(ran, "{}", ctx(&format!("hook output:\n{}", lines())));
    assert!(
        !lines().contains(&client_ip.to_string()),
        "{}",
        ctx("the hook ran for the client")
    );

    let text = scrape_metrics(svc.server(), metrics);
    assert!(
        metric_sample(&text, "postern_blocks_total") >= 3.0,
        "{text}"
    );
    assert!(
        metric_sample(&text, "postern_attacks_total") >= 3.0,
        "{text}"
    );
    assert!(text.contains("postern_blocked_sources "), "{text}");
}

#[test]
fn a_flooding_source_is_blocked_in_nftables_and_the_client_still_knocks() {
    case(Backend::Nftables, "atkn");
}

#[test]
fn a_flooding_source_is_blocked_with_ipset_and_the_client_still_knocks() {
    case(Backend::Iptables, "atki");
}

/// Forged packets from 200 addresses, each fewer than the threshold: counted
/// per source, nothing is blocked (800 in all). The same again: each source
/// crosses the threshold and all 200 are blocked; posternd's memory stays flat
/// and a knock still opens.
#[test]
fn many_sources_are_counted_apart_and_memory_stays_flat() {
    if !runnable(&["nft", "fwknop"]) {
        return;
    }
    let s = Setup::new(
        Service::open("atkm", PORT),
        30,
        "memory",
        &format!(
            "{}\n{}\n[attack]\nthreshold = {THRESHOLD}\nblock_secs = 60\n",
            udp_capture(SPA_PORT),
            nftables_action(PORT)
        ),
    );
    let attacker = Attacker::new("atkm", s.svc.server(), 200);
    let d = s.start();
    let valid = saved_packet(&s.svc, &s.keys, &[]);
    let spa = SocketAddrV4::new(attacker.server_ip, SPA_PORT);
    let round = || {
        for &src in &attacker.addrs {
            udp_send_from(&attacker.ns, src, spa, vec![forged(&valid); THRESHOLD - 1]);
        }
    };
    let blocked = || {
        block_set(Backend::Nftables, s.svc.server())
            .matches("192.0.2.")
            .count()
    };
    round();
    assert!(
        wait_refusals(&d, Ipv4Addr::new(192, 0, 2, 200), THRESHOLD - 1),
        "the flood was not judged\n{}",
        d.log_text()
    );
    assert_eq!(
        blocked(),
        0,
        "{}",
        block_set(Backend::Nftables, s.svc.server())
    );
    let rss_before = vm_rss_kib(d.pid());
    for _ in 0..5 {
        round();
    }
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || blocked() == 200
        ),
        "not all 200 sources were blocked: {}",
        block_set(Backend::Nftables, s.svc.server())
    );
    let rss_after = vm_rss_kib(d.pid());
    println!(
        "RSS {rss_before} KiB before, {rss_after} KiB after 4,800 forged packets from 200 addresses"
    );
    assert!(
        rss_after <= rss_before + 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
}

/// Bad `[attack]` values are refused naming the file and the key; blocking with
/// an action that cannot block is refused at start, naming the action.
#[test]
fn bad_attack_settings_and_an_action_that_cannot_block_are_refused() {
    if !runnable(&["nft"]) {
        return;
    }
    let s = Setup::new(
        Service::open("atkc", PORT),
        30,
        "memory",
        &udp_capture(SPA_PORT),
    );
    let ns = s.svc.server();
    let base = std::fs::read_to_string(s.conf.path("postern.toml")).unwrap();
    for (attack, want) in [
        ("threshold = 0", "[attack] threshold must be at least 1"),
        (
            "block_secs = 9999999",
            "[attack] block_secs 9999999 is more than",
        ),
        (
            "count = [\"overload\"]",
            "[attack] count: `overload` refusals are not",
        ),
        (
            "hook = [\"relative/hook\"]",
            "[attack] hook: `relative/hook` must be an absolute path",
        ),
        ("treshold = 3", "unknown field: found `treshold`"),
    ] {
        let toml = s.conf.write(
            "bad.toml",
            &format!("{base}\n{}\n[attack]\n{attack}\n", nftables_action(PORT)),
        );
        let out = ns.run(&[
            &posternd_bin().display().to_string(),
            "-c",
            &toml.display().to_string(),
            "check-config",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attack}: accepted");
        assert!(
            stderr.contains("bad.toml") && stderr.contains(want),
            "{attack}: {stderr}"
        );
    }
    // The script action cannot block sources: refused before anything runs.
    let toml = s.conf.write(
        "script.toml",
        &format!(
            "{base}\n[[action]]\ntype = \"script\"\nopen = \"/bin/true $SRC $PORT\"\n\n[attack]\nblock_secs = 60\n"
        ),
    );
    let err = Posternd::try_start(
        ns,
        &["-c".into(), toml.display().to_string()],
        s.conf.dir.path(),
    )
    .err()
    .expect("posternd started with a script action and block_secs");
    assert!(
        err.contains(
            "[attack] block_secs needs actions that can block sources, and action `script` cannot"
        ),
        "{err}"
    );
    // Detection alone works with any action.
    let toml = s.conf.write(
        "detect.toml",
        &format!(
            "{base}\n[[action]]\ntype = \"script\"\nopen = \"/bin/true $SRC $PORT\"\n\n[attack]\nthreshold = 3\n"
        ),
    );
    let mut d = Posternd::start(
        ns,
        &["-c".into(), toml.display().to_string()],
        s.conf.dir.path(),
    );
    assert!(
        d.log_text().contains(
            "attack detection: 3 refused packets (hmac, decrypt, replay) within 60 s; detect only"
        ),
        "{}",
        d.log_text()
    );
    d.terminate(Duration::from_secs(10));
}
