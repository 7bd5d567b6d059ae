//! NFQUEUE capture (fwknopd's ENABLE_NFQ_CAPTURE): posternd started from a
//! fwknopd.conf with `ENABLE_NFQ_CAPTURE Y` adds fwknopd's queue rule (chain
//! FWKNOP_NFQ in mangle, jumped to from INPUT), and the real fwknop client's UDP
//! knock, queued by the kernel, opens the port: closed → open → closed.
//! Garbage and a replayed packet sent through the queue open nothing, each gets
//! its verdict (drop: no ICMP answer, nothing left in the kernel's queue), and a
//! later knock still opens. The rule is there while posternd runs, gone after
//! SIGTERM; after a kill -9 the next start leaves exactly one rule set.
//!
//! The real fwknopd is not run here: Debian's fwknopd 2.6.10 is built without
//! libnetfilter_queue (no `--nfq-capture` in its `--help`, not linked to it), so
//! it cannot capture from a queue.

use postern_e2e::posternd::{
    access_conf, cap_eff, caps_list, caps_mask, knock_ok, nftables_action, postern_toml, runnable,
    saved_packet, udp_send_all, ConfDir, Posternd, Service, CAP_NET_ADMIN, CAP_NET_RAW, SPA_PORT,
};
use postern_e2e::scenario::SpaKeys;
use postern_e2e::{Netns, Pair};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const PORT: u16 = 22022;
const TIMEOUT: u64 = 2;

/// A service guarded like the fwknop tutorials, fresh keys, an access.conf
/// opening it, and a fwknopd.conf asking for NFQ capture on the server's veth.
struct NfqSetup {
    svc: Service,
    keys: SpaKeys,
    dir: ConfDir,
    args: Vec<String>,
}

impl NfqSetup {
    fn new(tag: &str) -> NfqSetup {
        let svc = Service::iptables_guarded(tag, PORT);
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let dir = ConfDir::new();
        let access = dir.write(
            "access.conf",
            &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
        );
        let conf = dir.write(
            "fwknopd.conf",
            &format!(
                "ENABLE_NFQ_CAPTURE Y;\nNFQ_INTERFACE {iface};\nNFQ_QUEUE_NUMBER 1;\n\
                 MAX_SPA_PACKET_AGE 120;\nFWKNOP_RUN_DIR {run};\n\
                 FWKNOP_PID_FILE {run}/fwknopd.pid;\nDIGEST_FILE {run}/digest.cache;\n",
                iface = Pair::SERVER_IF,
                run = dir.run_dir().display()
            ),
        );
        let args = vec![
            "-c".into(),
            conf.display().to_string(),
            "-a".into(),
            access.display().to_string(),
            "-v".into(),
        ];
        NfqSetup {
            svc,
            keys,
            dir,
            args,
        }
    }

    fn start(&self) -> Posternd {
        Posternd::start(self.svc.server(), &self.args, self.dir.dir.path())
    }

    fn context(&self, d: &Posternd) -> String {
        format!(
            "--- posternd log ---\n{}\n--- iptables-save ---\n{}\n--- queues ---\n{}",
            d.log_text(),
            self.svc.iptables_save(),
            queue_list(self.svc.server())
        )
    }

    fn spa_target(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.svc.pair.server_ip), SPA_PORT)
    }

    /// Opens within a few seconds, then closes again after FW_ACCESS_TIMEOUT.
    fn opens_then_closes(&self, d: &Posternd, what: &str) {
        assert!(
            self.svc.wait_reachable(true, Duration::from_secs(6)),
            "{what}: port not opened\n{}",
            self.context(d)
        );
        assert!(
            self.svc
                .wait_reachable(false, Duration::from_secs(TIMEOUT + 10)),
            "{what}: port still open long after FW_ACCESS_TIMEOUT\n{}",
            self.context(d)
        );
    }
}

/// The kernel's queue list in `ns` (queue, listener port id, packets waiting, …).
fn queue_list(ns: &Netns) -> String {
    let out = ns.run(&["cat", "/proc/net/netfilter/nfnetlink_queue"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (packets waiting for a verdict, packets ever queued) for queue `n`.
fn queue_counts(ns: &Netns, n: u32) -> Option<(u64, u64)> {
    queue_list(ns).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<u32>().ok()? == n)
            .then(|| Some((f[2].parse().ok()?, f[7].parse().ok()?)))?
    })
}

/// fwknopd's queue rule in iptables-save's form, and the jump to its chain.
const QUEUE_RULE: &str = "-A FWKNOP_NFQ -i v1 -p udp -m udp --dport 62201 -j NFQUEUE --queue-num 1";
const JUMP: &str = "-A INPUT -j FWKNOP_NFQ";

fn mangle(svc: &Service) -> String {
    let out = svc.server().run(&["iptables-save", "-t", "mangle"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fwknop_knocks_through_the_queue_garbage_and_replays_open_nothing() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let s = NfqSetup::new("nfq");
    let mut d = s.start();
    let rules = mangle(&s.svc);
    assert!(
        rules.contains(QUEUE_RULE) && rules.matches(JUMP).count() == 1,
        "queue rule or jump missing while posternd runs\n{}",
        s.context(&d)
    );
    assert!(
        d.log_text().contains("nfqueue: listening on queue 1"),
        "{}",
        s.context(&d)
    );

    // closed → the real client knocks (UDP, queued) → open → closed.
    assert!(
        !s.svc.reachable(Duration::from_millis(700)),
        "open before any knock"
    );
    knock_ok(&s.svc, &s.keys, &[]);
    s.opens_then_closes(&d, "fwknop knock");

    // Garbage of every length through the queue: nothing opens, every packet gets
    // its verdict, and the verdict is drop (no ICMP port unreachable comes back).
    let (_, queued_before) = queue_counts(s.svc.server(), 1).expect("queue 1 listed");
    let garbage: Vec<Vec<u8>> = (1..=300usize)
        .map(|i| (0..i * 5).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let sent = garbage.len() as u64;
    let ex = udp_send_all(
        s.svc.client(),
        s.spa_target(),
        garbage,
        50,
        Duration::from_millis(10),
        Duration::from_millis(300),
    );
    assert!(
        ex.errors.is_empty() && ex.answers.is_empty(),
        "garbage was answered (not dropped): {ex:?}"
    );
    let (waiting, queued_after) = queue_counts(s.svc.server(), 1).expect("queue 1 listed");
    assert!(
        queued_after - queued_before >= sent && waiting == 0,
        "queued {} of {sent} garbage packets, {waiting} still waiting for a verdict\n{}",
        queued_after - queued_before,
        s.context(&d)
    );
    assert!(
        s.svc.stays_closed(Duration::from_millis(800)),
        "garbage opened the port"
    );

    // A packet opens once; the same bytes again open nothing.
    let packet = saved_packet(&s.svc, &s.keys, &[]);
    let send = |p: &Vec<u8>| {
        udp_send_all(
            s.svc.client(),
            s.spa_target(),
            vec![p.clone()],
            0,
            Duration::ZERO,
            Duration::ZERO,
        )
    };
    send(&packet);
    s.opens_then_closes(&d, "first use of a saved packet");
    send(&packet);
    assert!(
        s.svc.stays_closed(Duration::from_secs(2)),
        "a replayed packet opened the port\n{}",
        s.context(&d)
    );
    assert!(
        d.wait_log("Replay detected from source IP", 1, Duration::from_secs(3)),
        "the replay was not refused as one\n{}",
        s.context(&d)
    );

    // The queue still flows: a later knock opens.
    knock_ok(&s.svc, &s.keys, &[]);
    s.opens_then_closes(&d, "knock after garbage and replay");

    // SIGTERM: posternd exits cleanly and takes its rule and chain away.
    let st = d.terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "posternd did not exit cleanly: {st:?}"
    );
    let rules = mangle(&s.svc);
    assert!(
        !rules.contains("FWKNOP_NFQ"),
        "queue rule left after SIGTERM:\n{rules}"
    );
    assert_eq!(queue_counts(s.svc.server(), 1), None, "queue still bound");
}

#[test]
fn after_kill_9_the_next_start_leaves_one_rule_and_serves() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let s = NfqSetup::new("nfqk");
    let mut first = s.start();
    first.kill9();
    let left = mangle(&s.svc);
    assert!(
        left.contains(QUEUE_RULE) && left.contains(JUMP),
        "kill -9 should leave the rule (nothing cleans up):\n{left}"
    );
    // With no listener, the queue drops (fail closed, no --queue-bypass): no ICMP.
    let ex = udp_send_all(
        s.svc.client(),
        s.spa_target(),
        vec![b"nobody listens".to_vec()],
        0,
        Duration::ZERO,
        Duration::from_millis(300),
    );
    assert!(
        ex.errors.is_empty() && ex.answers.is_empty(),
        "a packet passed the queue while no posternd listened: {ex:?}"
    );

    let mut d = s.start();
    let rules = mangle(&s.svc);
    assert_eq!(
        (
            rules.matches(QUEUE_RULE).count(),
            rules.matches(JUMP).count()
        ),
        (1, 1),
        "restart after kill -9 did not leave exactly one rule and one jump\n{}",
        s.context(&d)
    );
    knock_ok(&s.svc, &s.keys, &[]);
    s.opens_then_closes(&d, "knock after a restart");
    assert!(d.terminate(Duration::from_secs(10)).is_some());
    assert!(!mangle(&s.svc).contains("FWKNOP_NFQ"));
}

/// A start that fails after the queue rule was added (here a second capture
/// cannot bind its port) takes the rule away again: nothing is left half made.
#[test]
fn a_start_failing_after_the_rule_was_added_leaves_none() {
    if !runnable(&["iptables"]) {
        return;
    }
    let s = NfqSetup::new("nfqe");
    let udp = "[[capture]]\ntype = \"udp\"\nlisten = \"0.0.0.0:40123\"\n";
    let body = format!(
        "[[capture]]\ntype = \"nfqueue\"\n\n{udp}\n{udp}\n[[action]]\ntype = \"iptables\"\nipv6 = false\n"
    );
    s.dir.write(
        "postern.toml",
        &postern_toml(&s.dir, "access.conf", "memory", &body),
    );
    let args = vec!["-c".to_string(), s.dir.arg("postern.toml"), "-v".into()];
    let err = match Posternd::try_start(s.svc.server(), &args, s.dir.dir.path()) {
        Ok(_) => panic!("posternd started with two captures on one port"),
        Err(e) => e,
    };
    assert!(
        err.contains("nfqueue: listening on queue 1") && err.contains("40123"),
        "the failure should come after the queue rule was added:\n{err}"
    );
    let rules = mangle(&s.svc);
    assert!(
        !rules.contains("FWKNOP_NFQ"),
        "queue rule left by a failed start:\n{rules}\n{err}"
    );
}

/// Under the shipped unit's sandbox (examples/posternd.service: its system-call
/// filter, address families, bounding set; see tests/tests/systemd_unit.rs) the
/// queue is bound, its rule added, and a knock through it opens.
#[test]
fn the_queue_works_under_the_shipped_units_sandbox() {
    if !runnable(&["fwknop", "iptables", "systemd-analyze"]) {
        return;
    }
    let s = NfqSetup::new("nfqu");
    let sandbox = [
        postern_e2e::workspace_bin("unit-sandbox")
            .display()
            .to_string(),
        postern_e2e::workspace_root()
            .join("examples/posternd.service")
            .display()
            .to_string(),
    ];
    let mut d = Posternd::try_start_wrapped(s.svc.server(), &sandbox, &s.args, s.dir.dir.path())
        .unwrap_or_else(|e| panic!("posternd did not start under the unit's sandbox: {e}"));
    assert!(mangle(&s.svc).contains(QUEUE_RULE), "{}", s.context(&d));
    knock_ok(&s.svc, &s.keys, &[]);
    s.opens_then_closes(&d, "knock under the unit's sandbox");
    assert!(d.terminate(Duration::from_secs(10)).is_some());
    assert!(!mangle(&s.svc).contains("FWKNOP_NFQ"));
}

/// Whether this kernel can run nftables' `queue` statement (nft_queue).
fn nft_can_queue() -> bool {
    let ns = Netns::new("nfqprobe");
    ns.cmd("nft")
        .args([
            "add table inet probe ; add chain inet probe c { type filter hook input priority 0 ; } ; \
             add rule inet probe c udp dport 9 queue num 9",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// With the nftables action the queue rule lives in a table of the capture's
/// own. Where the kernel lacks nft_queue posternd refuses to start, naming the
/// rule, and leaves no table; where it has it, a knock opens and the table goes
/// at exit.
#[test]
fn with_the_nftables_action_the_rule_is_an_nft_table_of_its_own() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let svc = Service::open("nfqn", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let body = format!(
        "[[capture]]\ntype = \"nfqueue\"\nqueue = 4\n\n{}",
        nftables_action(PORT)
    );
    dir.write(
        "postern.toml",
        &postern_toml(&dir, "access.conf", "memory", &body),
    );
    let args = vec!["-c".to_string(), dir.arg("postern.toml"), "-v".into()];
    let table_listed = || {
        svc.server()
            .run(&["nft", "list", "table", "inet", "postern_nfq_4"])
            .status
            .success()
    };
    if !nft_can_queue() {
        let err = match Posternd::try_start(svc.server(), &args, dir.dir.path()) {
            Ok(_) => panic!("posternd started although nft cannot queue here"),
            Err(e) => e,
        };
        assert!(err.contains("cannot add the queue rule"), "{err}");
        assert!(!table_listed(), "a half-made table was left");
        println!("this kernel has no nft_queue: posternd refused to start, as it should");
        return;
    }
    let mut d = Posternd::start(svc.server(), &args, dir.dir.path());
    assert!(table_listed(), "{}", svc.nft_ruleset());
    assert!(!svc.reachable(Duration::from_millis(700)));
    knock_ok(&svc, &keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "{}\n{}",
        d.log_text(),
        svc.nft_ruleset()
    );
    assert!(d.terminate(Duration::from_secs(10)).is_some());
    assert!(!table_listed(), "table left after SIGTERM");
}

/// The queue needs CAP_NET_ADMIN even when no firewall action does (here only
/// `log`), and iptables-legacy, which may add the rule, CAP_NET_RAW: posternd keeps
/// exactly those, and the queue works with them.
#[test]
fn the_queue_keeps_net_admin_without_a_firewall_action() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::open("nfqc", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let body = "[[capture]]\ntype = \"nfqueue\"\nqueue = 5\n\n[[action]]\ntype = \"log\"\n";
    dir.write(
        "postern.toml",
        &postern_toml(&dir, "access.conf", "memory", body),
    );
    let args = vec!["-c".to_string(), dir.arg("postern.toml"), "-v".into()];
    let mut d = Posternd::start(svc.server(), &args, dir.dir.path());
    let held = cap_eff(d.pid());
    assert_eq!(
        held,
        caps_mask(&[CAP_NET_ADMIN, CAP_NET_RAW]),
        "capabilities held: {:?}\n{}",
        caps_list(held),
        d.log_text()
    );
    knock_ok(&svc, &keys, &[]);
    assert!(
        d.wait_log("test mode, not applied", 1, Duration::from_secs(5)),
        "the knock did not come through the queue\n{}",
        d.log_text()
    );
    assert!(d.terminate(Duration::from_secs(10)).is_some());
}

/// 10,000 garbage datagrams sent as fast as one socket can: the queue drains
/// (every packet gets its verdict) and a knock right after still opens. The
/// kernel's counters are printed (queued, dropped at a full queue, lost on the
/// socket).
#[test]
fn a_knock_after_a_garbage_flood_through_the_queue_still_opens() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let s = NfqSetup::new("nfqf");
    let mut d = s.start();
    let garbage: Vec<Vec<u8>> = (0..10_000usize)
        .map(|i| vec![(i % 251) as u8; 200 + i % 300])
        .collect();
    let t = std::time::Instant::now();
    let ex = udp_send_all(
        s.svc.client(),
        s.spa_target(),
        garbage,
        0,
        Duration::ZERO,
        Duration::from_millis(200),
    );
    let sent_in = t.elapsed();
    assert!(ex.errors.is_empty(), "{ex:?}");
    let drained =
        postern_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            queue_counts(s.svc.server(), 1).is_some_and(|(waiting, _)| waiting == 0)
        });
    assert!(drained, "packets left without a verdict\n{}", s.context(&d));
    println!(
        "flood of {} sent in {} ms; queue, portid, waiting, copy, range, dropped (full), \
         lost on socket, queued:\n{}",
        ex.sent,
        sent_in.as_millis(),
        queue_list(s.svc.server())
    );
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(6)),
        "knock after the flood did not open\n{}",
        s.context(&d)
    );
    assert!(d.terminate(Duration::from_secs(10)).is_some());
}

/// The queue fails closed: packets beyond what it holds are dropped by the
/// kernel. posternd counts those drops and warns about them (knocks may have
/// been among them), and a knock after the flood still opens.
#[test]
fn drops_of_a_full_queue_are_warned_about() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let s = NfqSetup::new("nfqd");
    let mut d = s.start();
    let same_length = vec![b'A'; saved_packet(&s.svc, &s.keys, &[]).len()];
    d.signal(libc::SIGSTOP);
    // Well beyond the queue's 8,192.
    let n = 30_000;
    let ex = udp_send_all(
        s.svc.client(),
        s.spa_target(),
        vec![same_length; n],
        n,
        Duration::ZERO,
        Duration::ZERO,
    );
    d.signal(libc::SIGCONT);
    assert!(ex.errors.is_empty(), "{ex:?}");
    assert!(
        d.wait_log("its queue was full", 1, Duration::from_secs(10)),
        "{}",
        s.context(&d)
    );
    let warned = d.log_text();
    let line = warned
        .lines()
        .find(|l| l.contains("its queue was full"))
        .unwrap();
    assert!(line.contains(" WARN "), "{line}");
    let dropped: u64 = line
        .split("dropped ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 1 && dropped < ex.sent as u64,
        "{dropped} of {} told as dropped: {line}",
        ex.sent
    );
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(6)),
        "knock after the flood did not open\n{}",
        s.context(&d)
    );
    assert!(d.terminate(Duration::from_secs(10)).is_some());
}
