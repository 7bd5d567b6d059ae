//! posternd's life cycle, end to end with the real fwknop client:
//!
//! - SIGKILL while an nftables grant is live: the grant still expires on time (a
//!   kernel timeout), and `grants4` is empty afterwards, with no posternd running;
//! - SIGHUP: new access.conf keys apply (also when their packets have other
//!   lengths: the UDP and pcap kernel length filters are refitted), old keys stop
//!   working, a grant made before the reload lives until its own timeout;
//! - SIGTERM: exit code 0 within a second, with a live grant (UDP + nftables,
//!   TCP + iptables, pcap + nftables);
//! - SIGTERM drains: knocks taken in before it, still waiting for a slow
//!   action, are all applied and audited before posternd exits;
//! - the pcap capture resumes by itself after `ip link set v1 down; … up`, and
//!   after the interface was deleted and re-created;
//! - "posternd ready" means serving: a packet sent the moment it is logged opens
//!   the port (UDP and pcap captures);
//! - after start only the needed capabilities remain (CapEff/CapPrm/CapBnd):
//!   CAP_NET_ADMIN for nftables with a UDP or TCP capture, plus CAP_NET_RAW for pcap.

use postern_e2e::posternd::{
    access_conf, caps_list, caps_mask, iptables_action, knock_ok, nft_grants4, nftables_action,
    pcap_capture, run_scenarios, runnable, saved_packet, tcp_capture, udp_capture, udp_send_all,
    Posternd, Service, Setup, CAP_NET_ADMIN, CAP_NET_RAW, SPA_PORT,
};
use postern_e2e::scenario::SpaKeys;
use postern_e2e::{wait_until, Pair};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PORT: u16 = 22022;
const TIMEOUT: u64 = 3;

/// A service (open, or guarded by iptables DROP), keys and a postern.toml with `body`.
fn setup(tag: &str, iptables_guard: bool, body: &str) -> Setup {
    let svc = if iptables_guard {
        Service::iptables_guarded(tag, PORT)
    } else {
        Service::open(tag, PORT)
    };
    Setup::new(svc, TIMEOUT, "memory", body)
}

fn udp_nftables() -> String {
    format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT))
}

fn ctx(what: &str, d: &Posternd, svc: &Service) -> String {
    format!(
        "{what}\n--- posternd log ---\n{}\n--- nft ---\n{}",
        d.log_text(),
        svc.nft_ruleset()
    )
}

#[test]
fn sigkill_leaves_the_nftables_grant_to_expire_by_itself() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let s = setup("lk", false, &udp_nftables());
    let svc = &s.svc;
    let mut d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    knock_ok(svc, &s.keys, &[]);
    let t0 = Instant::now();
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("not opened", &d, svc)
    );
    let log = d.log_text();
    d.kill9();
    assert!(!d.is_running());
    assert!(
        svc.server().pids().is_empty(),
        "processes left in the server namespace: {:?}",
        svc.server().pids()
    );
    // The grant outlives the daemon…
    if t0.elapsed() < Duration::from_secs(TIMEOUT - 1) {
        assert!(
            svc.reachable(Duration::from_millis(700)),
            "the grant vanished with posternd\n{log}"
        );
    }
    // …and the kernel ends it on time.
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 6)),
        "port still open long after the timeout with posternd killed\n{log}\n{}",
        svc.nft_ruleset()
    );
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_secs(TIMEOUT - 1),
        "closed after only {closed:?}"
    );
    assert_eq!(
        nft_grants4(svc.server()),
        Ok(vec![]),
        "grants4 not empty after the timeout\n{}",
        svc.nft_ruleset()
    );
    println!("grant closed {closed:?} after the knock, posternd killed");
}

/// The new keys have another HMAC type, so other packet lengths: the capture's
/// kernel length filter must be refitted for them to get through.
fn sighup_case(tag: &str, capture: String) {
    let s = setup(tag, false, &format!("{capture}\n{}", nftables_action(PORT)));
    let svc = &s.svc;
    let d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    knock_ok(svc, &s.keys, &[]);
    let t0 = Instant::now();
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("old keys did not open before the reload", &d, svc)
    );

    // sha1 HMACs are 27 characters: no such packet has a length the old keys take.
    let new_keys = SpaKeys::generate("ctr", Some("sha1"));
    s.conf.write(
        "access.conf",
        &access_conf(&new_keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log("SIGHUP: reloaded", 1, Duration::from_secs(5)),
        "{}",
        ctx("no reload logged after SIGHUP", &d, svc)
    );
    // The grant made before the reload is still there…
    let reload_at = t0.elapsed();
    if reload_at < Duration::from_secs(TIMEOUT - 1) {
        assert!(
            svc.reachable(Duration::from_millis(700)),
            "{}",
            ctx("the live grant was dropped by the reload", &d, svc)
        );
    }
    // …until its own timeout.
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 6)),
        "{}",
        ctx("the old grant did not expire", &d, svc)
    );
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_secs(TIMEOUT - 1),
        "{}",
        ctx(
            &format!("the old grant closed after only {closed:?}"),
            &d,
            svc
        )
    );

    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        ctx("the old keys still open after SIGHUP", &d, svc)
    );
    knock_ok(svc, &new_keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("the new keys do not open after SIGHUP", &d, svc)
    );
    println!("reloaded {reload_at:?} after the knock; old grant closed after {closed:?}");
}

#[test]
fn sighup_swaps_keys_and_keeps_live_grants() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    run_scenarios(
        "SIGHUP with other keys",
        vec![
            (
                "udp".into(),
                Box::new(|| sighup_case("lh", udp_capture(SPA_PORT))),
            ),
            (
                "pcap".into(),
                Box::new(|| sighup_case("lhp", pcap_capture(Pair::SERVER_IF, SPA_PORT))),
            ),
        ],
    );
}

/// Start, knock (grant live), SIGTERM: exit 0 within a second, pid file gone.
fn sigterm_case(tag: &str, capture: String, iptables: bool, knock_args: &[&str]) {
    let action = if iptables {
        iptables_action()
    } else {
        nftables_action(PORT)
    };
    let s = setup(tag, iptables, &format!("{capture}\n{action}"));
    let svc = &s.svc;
    let mut d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    if capture.contains("pcap") {
        assert!(
            d.wait_pcap_capturing(1),
            "{}",
            ctx("pcap never capturing", &d, svc)
        );
    }
    knock_ok(svc, &s.keys, knock_args);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("not opened", &d, svc)
    );
    let pid_file = s.conf.run_dir().join("posternd.pid");
    assert!(pid_file.is_file(), "no pid file {}", pid_file.display());
    let t = Instant::now();
    let st = d.terminate(Duration::from_secs(1));
    let took = t.elapsed();
    assert!(
        st.is_some(),
        "{}",
        ctx("posternd still running 1 s after SIGTERM", &d, svc)
    );
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{}",
        ctx(&format!("exit status {st:?}"), &d, svc)
    );
    assert!(!pid_file.exists(), "pid file left behind after SIGTERM");
    println!("  {tag}: exited {took:?} after SIGTERM");
}

/// A graceful stop loses nothing accepted: five knocks arrive while a slow
/// script action (0.3 s a grant) works through them; SIGTERM comes right
/// after. Every knock is still applied (the script ran for each) and audited
/// as granted before posternd exits 0.
#[test]
fn sigterm_applies_every_knock_already_taken_in() {
    if !runnable(&["fwknop"]) {
        return;
    }
    let svc = Service::open("dr", PORT);
    let conf = postern_e2e::posternd::ConfDir::new();
    let opened = conf.dir.path().join("opened.txt");
    let script = conf.dir.path().join("slow-open.sh");
    std::fs::write(&script, "#!/bin/sh\nsleep 0.3\necho \"$1\" >> \"$2\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    conf.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), 30, ""),
    );
    let action = format!(
        "[[action]]\ntype = \"script\"\nopen = \"{} $SRC {}\"\nclose = \"/bin/true\"\n",
        script.display(),
        opened.display()
    );
    let toml = postern_e2e::posternd::postern_toml(
        &conf,
        "access.conf",
        "memory",
        &format!("{}\n{action}", udp_capture(SPA_PORT)),
    );
    conf.write("postern.toml", &toml);
    let mut d = Posternd::start(
        svc.server(),
        &["-c".into(), conf.arg("postern.toml"), "-v".into()],
        conf.dir.path(),
    );
    let knocks: Vec<Vec<u8>> = (1..=5)
        .map(|i| saved_packet(&svc, &keys, &["-a", &format!("198.18.7.{i}")]))
        .collect();
    let to = SocketAddr::from((svc.pair.server_ip, SPA_PORT));
    // Apart enough that the action task takes them in several batches.
    udp_send_all(
        svc.client(),
        to,
        knocks,
        1,
        Duration::from_millis(30),
        Duration::ZERO,
    );
    // The first grant is applied (0.3 s after the first knock): all five are
    // in by now, four still waiting for the action.
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            std::fs::read_to_string(&opened).is_ok_and(|t| !t.is_empty())
        }),
        "{}",
        ctx("no knock applied", &d, &svc)
    );
    let st = d.terminate(Duration::from_secs(10));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{}",
        ctx("no clean exit", &d, &svc)
    );
    let mut applied: Vec<String> = std::fs::read_to_string(&opened)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    applied.sort();
    let want: Vec<String> = (1..=5).map(|i| format!("198.18.7.{i}")).collect();
    assert_eq!(applied, want, "{}", ctx("knocks lost at SIGTERM", &d, &svc));
    let granted = d
        .audit_lines()
        .iter()
        .filter(|l| l["outcome"] == "granted")
        .count();
    assert_eq!(granted, 5, "{}", ctx("grants not audited", &d, &svc));
}

#[test]
fn sigterm_exits_cleanly_within_a_second() {
    if !runnable(&["fwknop", "nft", "iptables"]) {
        return;
    }
    run_scenarios(
        "SIGTERM with a live grant",
        vec![
            (
                "udp + nftables".into(),
                Box::new(|| sigterm_case("lt0", udp_capture(SPA_PORT), false, &[])),
            ),
            (
                "tcp + iptables".into(),
                Box::new(|| sigterm_case("lt1", tcp_capture(SPA_PORT), true, &["-P", "tcp"])),
            ),
            (
                "pcap + nftables".into(),
                Box::new(|| {
                    sigterm_case("lt2", pcap_capture(Pair::SERVER_IF, SPA_PORT), false, &[])
                }),
            ),
        ],
    );
}

/// Knock after the interface trouble; the pcap capture must have resumed.
fn pcap_resume_case(tag: &str, recreate: bool) {
    let body = format!(
        "{}\n{}",
        pcap_capture(Pair::SERVER_IF, SPA_PORT),
        nftables_action(PORT)
    );
    let s = setup(tag, false, &body);
    let svc = &s.svc;
    let d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    let ifc = Pair::SERVER_IF;
    let what = if recreate {
        // The interface goes away (libpcap reports an error) and comes back.
        svc.client().run_ok(&["ip", "link", "del", Pair::CLIENT_IF]);
        std::thread::sleep(Duration::from_millis(1000));
        recreate_veth(&svc.pair);
        "the veth deleted and re-created"
    } else {
        svc.server().run_ok(&["ip", "link", "set", ifc, "down"]);
        std::thread::sleep(Duration::from_millis(1000));
        svc.server().run_ok(&["ip", "link", "set", ifc, "up"]);
        "`ip link set v1 down; … up`"
    };
    let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let o = svc.server().run(&["ip", "-o", "link", "show", ifc]);
        String::from_utf8_lossy(&o.stdout).contains("LOWER_UP")
    });
    assert!(up, "{ifc} did not come back up");
    // Give the capture its reopen interval (posternd retries every 500 ms).
    std::thread::sleep(Duration::from_millis(1000));
    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx(
            &format!("after {what} the pcap capture no longer opens the port"),
            &d,
            svc
        )
    );
}

/// The veth of `p` again, same names and IPv4 addresses.
fn recreate_veth(p: &Pair) {
    let (c, s) = (&p.client, &p.server);
    c.run_ok(&[
        "ip",
        "link",
        "add",
        Pair::CLIENT_IF,
        "type",
        "veth",
        "peer",
        "name",
        Pair::SERVER_IF,
        "netns",
        &s.name,
    ]);
    c.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{}/30", p.client_ip),
        "dev",
        Pair::CLIENT_IF,
    ]);
    s.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{}/30", p.server_ip),
        "dev",
        Pair::SERVER_IF,
    ]);
    c.run_ok(&["ip", "link", "set", Pair::CLIENT_IF, "up"]);
    s.run_ok(&["ip", "link", "set", Pair::SERVER_IF, "up"]);
}

#[test]
fn pcap_capture_resumes_after_interface_down_and_up() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    run_scenarios(
        "pcap capture resumes",
        vec![
            (
                "v1 down, up".into(),
                Box::new(|| pcap_resume_case("lp0", false)),
            ),
            (
                "v1 deleted, re-created".into(),
                Box::new(|| pcap_resume_case("lp1", true)),
            ),
        ],
    );
}

/// Every thread's sets: effective, permitted and bounding all `want`, nothing
/// inheritable or ambient. Returns what is wrong, one line per thread and set.
fn threads_holding_other_than(pid: u32, want: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    for task in tasks.flatten() {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // the thread ended meanwhile
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        for (set, expected) in [
            ("CapEff", want),
            ("CapPrm", want),
            ("CapBnd", want),
            ("CapInh", 0),
            ("CapAmb", 0),
        ] {
            let have = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:")))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            if have != Some(expected) {
                wrong.push(format!(
                    "thread {tid} `{name}`: {set} = {:?}, expected {:?}",
                    have.map(caps_list),
                    caps_list(expected)
                ));
            }
        }
    }
    wrong
}

/// The capability numbers posternd's log line says it kept.
fn claimed_in_log(log: &str) -> Option<u64> {
    const NUMBERS: [(&str, u32); 6] = [
        ("CAP_KILL", 5),
        ("CAP_SETGID", 6),
        ("CAP_SETUID", 7),
        ("CAP_NET_BIND_SERVICE", 10),
        ("CAP_NET_ADMIN", 12),
        ("CAP_NET_RAW", 13),
    ];
    let line = log
        .lines()
        .find(|l| l.contains("capabilities reduced on every thread"))?;
    let list = line
        .split("effective, permitted and bounding sets: ")
        .nth(1)?;
    list.split(", ").try_fold(0u64, |mask, name| {
        let n = NUMBERS.iter().find(|(k, _)| *k == name.trim())?.1;
        Some(mask | 1 << n)
    })
}

fn caps_case(tag: &str, body: String, access_extra: &str, want: &[u32]) {
    let s = setup(tag, false, &body);
    if !access_extra.is_empty() {
        s.conf.write(
            "access.conf",
            &access_conf(&s.keys, Some(&format!("tcp/{PORT}")), TIMEOUT, access_extra),
        );
    }
    let d = Posternd::start(s.svc.server(), &s.args, s.conf.dir.path());
    let want = caps_mask(want);
    if body.contains("type = \"pcap\"") {
        assert!(
            d.wait_pcap_capturing(1),
            "{}",
            ctx("pcap never capturing", &d, &s.svc)
        );
    }
    assert_eq!(
        claimed_in_log(&d.log_text()),
        Some(want),
        "{}",
        ctx("the log does not claim the expected set", &d, &s.svc)
    );
    let wrong = threads_holding_other_than(d.pid(), want);
    assert!(wrong.is_empty(), "{}", ctx(&wrong.join("\n"), &d, &s.svc));
    // And it still works with what is left.
    let proto: &[&str] = if body.contains("type = \"tcp\"") {
        &["-P", "tcp"]
    } else {
        &[]
    };
    let spa_port = if body.contains(":443\"") {
        "443"
    } else {
        "62201"
    };
    knock_ok(&s.svc, &s.keys, &[proto, &["-p", spa_port]].concat());
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("no grant with the reduced capabilities", &d, &s.svc)
    );
    // Threads started for the work (blocking pool, …) inherit the same sets.
    let wrong = threads_holding_other_than(d.pid(), want);
    assert!(wrong.is_empty(), "{}", ctx(&wrong.join("\n"), &d, &s.svc));
}

#[test]
fn only_needed_capabilities_remain_after_start() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    run_scenarios(
        "capabilities after start",
        vec![
            (
                "udp + nftables: NET_ADMIN".into(),
                Box::new(|| caps_case("lc0", udp_nftables(), "", &[CAP_NET_ADMIN])),
            ),
            (
                "tcp + nftables: NET_ADMIN".into(),
                Box::new(|| {
                    caps_case(
                        "lc1",
                        format!("{}\n{}", tcp_capture(SPA_PORT), nftables_action(PORT)),
                        "",
                        &[CAP_NET_ADMIN],
                    )
                }),
            ),
            (
                "pcap + nftables: NET_ADMIN, NET_RAW".into(),
                Box::new(|| {
                    caps_case(
                        "lc2",
                        format!(
                            "{}\n{}",
                            pcap_capture(Pair::SERVER_IF, SPA_PORT),
                            nftables_action(PORT)
                        ),
                        "",
                        &[CAP_NET_ADMIN, CAP_NET_RAW],
                    )
                }),
            ),
            (
                "udp + nftables, commands as nobody: + SETUID, SETGID, KILL".into(),
                Box::new(|| {
                    caps_case(
                        "lc3",
                        udp_nftables(),
                        "ENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\n",
                        &[CAP_NET_ADMIN, 5, 6, 7],
                    )
                }),
            ),
            (
                "udp on port 443 + nftables: + NET_BIND_SERVICE".into(),
                Box::new(|| {
                    caps_case(
                        "lc4",
                        format!("{}\n{}", udp_capture(443), nftables_action(PORT)),
                        "",
                        &[CAP_NET_ADMIN, 10],
                    )
                }),
            ),
        ],
    );
}

/// A packet built before the daemon starts and sent the moment `posternd ready`
/// appears in its log must be served.
fn knock_at_ready_case(tag: &str, capture: String) {
    let s = setup(tag, false, &format!("{capture}\n{}", nftables_action(PORT)));
    let svc = &s.svc;
    let packet = saved_packet(svc, &s.keys, &[]);
    let d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let ex = udp_send_all(
        svc.client(),
        to,
        vec![packet],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    assert!(ex.errors.is_empty(), "{:?}", ex.errors);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(4)),
        "{}",
        ctx(
            "a packet sent right after `posternd ready` was not served",
            &d,
            svc
        )
    );
}

#[test]
fn a_knock_right_after_ready_is_served() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let mut scenarios: Vec<(String, Box<dyn FnOnce() + Send>)> = vec![(
        "udp".into(),
        Box::new(|| knock_at_ready_case("lr0", udp_capture(SPA_PORT))),
    )];
    for i in 1..=3 {
        scenarios.push((
            format!("pcap v1 #{i}"),
            Box::new(move || {
                knock_at_ready_case(&format!("lr{i}"), pcap_capture(Pair::SERVER_IF, SPA_PORT))
            }),
        ));
    }
    scenarios.push((
        "pcap any".into(),
        Box::new(|| knock_at_ready_case("lr4", pcap_capture("any", SPA_PORT))),
    ));
    run_scenarios("a knock the moment posternd is ready", scenarios);
}
