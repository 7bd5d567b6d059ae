//! fwknopd's flags and outputs, on posternd (issue 10), each checked from outside:
//!
//! - `--dump-serv-err-codes` prints what the real `fwknopd --dump-serv-err-codes` prints.
//! - `-D` on the same fwknopd.conf + `-O` override + access.conf prints what the
//!   real `fwknopd -D` prints, byte for byte (keys as `<see the access.conf file>`),
//!   with TZ set: ACCESS_EXPIRE is local midnight, as fwknopd's mktime().
//! - `-O` errors name the override file and line.
//! - `--exit-parse-digest-cache` exits 0 on a good fwknopd digest cache and
//!   non-zero naming the line of a malformed one.
//! - `-C 2`: posternd stops by itself after two captured packets (a knock and
//!   its replay) and the port it opened is closed again.
//! - `--rotate-digest-cache`: after a rotation the replay store starts empty
//!   (`replay.redb-old` is there) and the old packet opens again, as fwknopd's.
//! - `-R`: access.conf re-read (a new REQUIRE_USERNAME refuses the next knock),
//!   while the grant already open stays open.
//! - `--fw-list-all`: lists the chains posternd did not create (the tutorial's
//!   DROP rule in INPUT), not only FWKNOP_INPUT.
//! - Refusal logs: real refused knocks (replay, wrong user, port not allowed,
//!   too old, wrong HMAC key) each match examples/fail2ban's filter in the real
//!   `fail2ban-regex` with the client's address as <HOST>; the granted knock does not.

use postern_e2e::posternd::{
    access_conf, knock, knock_ok, posternd_bin, runnable, saved_packet, udp_send_all, ConfDir,
    Posternd, Service, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaKeys};
use postern_e2e::wait_until;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PORT: u16 = 22022;

fn fwknopd_conf(dir: &ConfDir) -> String {
    format!(
        "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {SPA_PORT};\nMAX_SPA_PACKET_AGE 120;\n\
         FWKNOP_RUN_DIR {run};\nFLUSH_IPT_AT_INIT Y;\nFLUSH_IPT_AT_EXIT Y;\n",
        run = dir.run_dir().display()
    )
}

/// fwknopd.conf + access.conf for `keys`, opening tcp/PORT for `timeout` s.
fn files(keys: &SpaKeys, timeout: u64, extra: &str) -> (ConfDir, PathBuf, PathBuf) {
    let dir = ConfDir::new();
    let conf = dir.write("fwknopd.conf", &fwknopd_conf(&dir));
    let access = dir.write(
        "access.conf",
        &access_conf(keys, Some(&format!("tcp/{PORT}")), timeout, extra),
    );
    (dir, conf, access)
}

fn args(conf: &Path, access: &Path, more: &[&str]) -> Vec<String> {
    let mut a = vec![
        "-c".to_string(),
        conf.display().to_string(),
        "-a".into(),
        access.display().to_string(),
    ];
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

/// Run a program here (no namespace) with TZ set.
fn run(program: &Path, argv: &[String], tz: &str) -> Output {
    Command::new(program)
        .args(argv)
        .env("TZ", tz)
        .env_remove("POSTERN_LOG")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn send(svc: &Service, packet: &[u8]) {
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let ex = udp_send_all(
        svc.client(),
        to,
        vec![packet.to_vec()],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    assert!(ex.errors.is_empty(), "sending: {:?}", ex.errors);
}

#[test]
fn dump_serv_err_codes_is_fwknopds() {
    if !runnable(&["fwknopd"]) {
        return;
    }
    let ours = run(&posternd_bin(), &["--dump-serv-err-codes".into()], "UTC");
    let theirs = run(
        Path::new("fwknopd"),
        &["--dump-serv-err-codes".into()],
        "UTC",
    );
    assert!(ours.status.success(), "{}", describe(&ours));
    assert_eq!(text(&ours), text(&theirs));
    assert!(text(&ours).contains("err code: 4103, err string: 'Detected SPA message replay'"));
}

#[test]
fn dump_config_is_fwknopds_with_overrides_and_local_expiry() {
    if !runnable(&["fwknopd"]) {
        return;
    }
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(
        &keys,
        30,
        "ACCESS_EXPIRE 12/31/2030\nREQUIRE_USERNAME root\n",
    );
    // Later files win; $VAR expands with the value set so far (main file's).
    let o1 = dir.write("o1.conf", "MAX_SPA_PACKET_AGE 60;\nPCAP_INTF lo;\n");
    let o2 = dir.write(
        "o2.conf",
        "MAX_SPA_PACKET_AGE 45;\nDIGEST_FILE $FWKNOP_RUN_DIR/other.cache;\n",
    );
    let overrides = format!("{},{}", o1.display(), o2.display());
    for tz in ["UTC", "Asia/Tokyo", "America/New_York"] {
        let argv = args(&conf, &access, &["-D", "-O", &overrides]);
        let ours = run(&posternd_bin(), &argv, tz);
        let theirs = run(Path::new("fwknopd"), &argv, tz);
        assert!(ours.status.success(), "posternd -D: {}", describe(&ours));
        assert!(theirs.status.success(), "fwknopd -D: {}", describe(&theirs));
        assert_eq!(
            text(&ours),
            text(&theirs),
            "posternd -D differs from fwknopd -D (TZ={tz})"
        );
        let dump = text(&ours);
        assert!(
            dump.contains("MAX_SPA_PACKET_AGE           =  '45'"),
            "{dump}"
        );
        assert!(dump.contains("/other.cache'"), "{dump}");
        assert!(
            dump.contains("KEY_BASE64:  <see the access.conf file>"),
            "{dump}"
        );
        assert!(
            !dump.contains(&keys.access_conf_lines()[11..30]),
            "a key was printed:\n{dump}"
        );
    }
    // The policy uses the same local midnight: 9 h earlier in Tokyo than in UTC.
    let epoch = |tz: &str| -> i64 {
        let out = run(
            &posternd_bin(),
            &args(&conf, &access, &["--dump-config-toml"]),
            tz,
        );
        let t = text(&out);
        t.lines()
            .find_map(|l| l.strip_prefix("access_expire_epoch = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no access_expire_epoch in:\n{t}"))
    };
    assert_eq!(epoch("UTC"), 1_924_905_600, "12/31/2030 00:00 UTC");
    assert_eq!(epoch("UTC") - epoch("Asia/Tokyo"), 9 * 3600);
}

#[test]
fn override_errors_name_the_override_file_and_line() {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let bad = dir.write("bad.conf", "# override\nMAX_SPA_PACKET_AGE soon;\n");
    let out = run(
        &posternd_bin(),
        &args(
            &conf,
            &access,
            &["--exit-parse-config", "-O", &bad.display().to_string()],
        ),
        "UTC",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad override was accepted");
    assert!(
        err.contains(&format!("{}:2", bad.display())),
        "the error does not name bad.conf:2: {err}"
    );
}

#[test]
fn exit_parse_digest_cache_names_a_malformed_line() {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    std::fs::create_dir_all(dir.run_dir()).unwrap();
    let cache = dir.run_dir().join("digest.cache");
    let good = "7XgadOyqv0tF5xG8uhg2iIrheeNKglCWKmxQDgYP1dY 17 127.0.0.1 40305 127.0.0.1 62201 1313283481\n";
    let argv = args(&conf, &access, &["--exit-parse-digest-cache"]);
    std::fs::write(&cache, good).unwrap();
    let out = run(&posternd_bin(), &argv, "UTC");
    assert!(
        out.status.success(),
        "good cache refused: {}",
        describe(&out)
    );
    assert!(text(&out).contains("1 digests"), "{}", describe(&out));

    std::fs::write(
        &cache,
        format!("{good}\n7XgadOyqv0tF5xG8uhg2 17 127.0.0.1\n"),
    )
    .unwrap();
    let out = run(&posternd_bin(), &argv, "UTC");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "malformed cache accepted");
    assert!(
        err.contains(&format!("{}:3:", cache.display())),
        "line 3 not named: {err}"
    );
}

/// fwknopd's `--no-ipt-check-support` / `--no-firewd-check-support` only stop it
/// using `iptables -C`; a unit passing them must still start posternd.
#[test]
fn fwknopds_check_support_switches_are_accepted() {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (_dir, conf, access) = files(&keys, 30, "");
    for flag in ["--no-ipt-check-support", "--no-firewd-check-support"] {
        let out = run(
            &posternd_bin(),
            &args(&conf, &access, &[flag, "--exit-parse-config"]),
            "UTC",
        );
        assert!(out.status.success(), "{flag}: {}", describe(&out));
    }
}

/// Paths given on the command line are checked at start (as fwknopd), and
/// flags that cannot apply to this configuration say so instead of vanishing.
#[test]
fn command_line_paths_are_checked_and_idle_flags_named() {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let plain = dir
        .write("plain-file", "not a program\n")
        .display()
        .to_string();
    for (flag, value, want) in [
        ("--sudo-exe", plain.as_str(), "not an executable file"),
        ("--gpg-exe", "/nonexistent/gpg", "/nonexistent/gpg:"),
        ("--gpg-home-dir", plain.as_str(), "not a directory"),
    ] {
        let out = run(
            &posternd_bin(),
            &args(&conf, &access, &[flag, value, "--exit-parse-config"]),
            "UTC",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("{flag} {value}")) && err.contains(want),
            "{flag} {value}: {}",
            describe(&out)
        );
    }
    let udp_conf = dir.write(
        "udp-fwknopd.conf",
        &format!(
            "{}ENABLE_UDP_SERVER Y;\n",
            std::fs::read_to_string(&conf).unwrap()
        ),
    );
    let out = run(
        &posternd_bin(),
        &args(&udp_conf, &access, &["-i", "eth9", "--exit-parse-config"]),
        "UTC",
    );
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("-i has no effect: no pcap capture is configured"),
        "{}",
        describe(&out)
    );
}

/// As fwknopd, `-r DIR` moves fwknopd's digest cache (the one posternd imports)
/// and `-D` shows the run dir in effect; a DIGEST_FILE the file names stays.
#[test]
fn run_dir_flag_moves_the_digest_cache_as_fwknopd() {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let moved = dir.dir.path().join("run2");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::write(moved.join("digest.cache"), "not a digest line\n").unwrap();
    let moved_s = moved.display().to_string();
    let out = run(
        &posternd_bin(),
        &args(
            &conf,
            &access,
            &["-r", &moved_s, "--exit-parse-digest-cache"],
        ),
        "UTC",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("{moved_s}/digest.cache:1")),
        "-r did not move the digest cache: {}",
        describe(&out)
    );
    let out = run(
        &posternd_bin(),
        &args(&conf, &access, &["-r", &moved_s, "-D"]),
        "UTC",
    );
    assert!(
        text(&out).lines().any(
            |l| l.contains(" DIGEST_FILE ") && l.contains(&format!("'{moved_s}/digest.cache'"))
        ),
        "{}",
        describe(&out)
    );
}

#[test]
fn packet_limit_stops_posternd_and_closes_its_grant() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fc", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 60, "");
    let mut d = Posternd::start(
        svc.server(),
        &args(&conf, &access, &["-C", "2"]),
        dir.dir.path(),
    );
    let ctx = |d: &Posternd| {
        format!(
            "--- log ---\n{}\n--- iptables ---\n{}",
            d.log_text(),
            svc.iptables_save()
        )
    };
    let packet = saved_packet(&svc, &keys, &[]);
    send(&svc, &packet);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "knock did not open\n{}",
        ctx(&d)
    );
    assert!(d.is_running(), "stopped after one packet\n{}", ctx(&d));
    send(&svc, &packet); // the second packet (a replay): the limit
    let exited = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        !d.is_running()
    });
    assert!(
        exited,
        "posternd -C 2 still runs after two packets\n{}",
        ctx(&d)
    );
    assert!(
        svc.stays_closed(Duration::from_millis(1000)),
        "the grant outlived posternd (60 s timeout)\n{}",
        ctx(&d)
    );
    assert!(
        d.log_text()
            .contains("Incoming packet count limit of 2 reached"),
        "{}",
        ctx(&d)
    );
}

#[test]
fn rotate_digest_cache_starts_an_empty_replay_store() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fr", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 2, "");
    let packet = saved_packet(&svc, &keys, &[]);
    let mut d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    send(&svc, &packet);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
    d.terminate(Duration::from_secs(5));
    // Without rotation the copy is a replay (posternd_replay checks that too).
    let mut d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    send(&svc, &packet);
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "replay opened\n{}",
        d.log_text()
    );
    d.terminate(Duration::from_secs(5));
    let d = Posternd::start(
        svc.server(),
        &args(&conf, &access, &["--rotate-digest-cache"]),
        dir.dir.path(),
    );
    assert!(
        dir.run_dir().join("replay.redb-old").exists(),
        "{}",
        d.log_text()
    );
    send(&svc, &packet);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "after --rotate-digest-cache the old packet is not forgotten\n{}",
        d.log_text()
    );
}

#[test]
fn restart_rereads_access_conf_and_keeps_the_live_grant() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fR", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    knock_ok(&svc, &keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    std::fs::write(
        &access,
        access_conf(
            &keys,
            Some(&format!("tcp/{PORT}")),
            30,
            "REQUIRE_USERNAME nobody-here\n",
        ),
    )
    .unwrap();
    let out = svc.server().run(&[
        &posternd_bin().display().to_string(),
        "-R",
        "-c",
        &conf.display().to_string(),
        "-a",
        &access.display().to_string(),
    ]);
    assert!(out.status.success(), "posternd -R: {}", describe(&out));
    assert!(
        d.wait_log("SIGHUP: reloaded", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert!(
        svc.reachable(Duration::from_secs(1)),
        "the live grant was dropped\n{}",
        d.log_text()
    );
    knock_ok(&svc, &keys, &[]);
    assert!(
        d.wait_log(
            "does not match required username",
            1,
            Duration::from_secs(5)
        ),
        "the re-read REQUIRE_USERNAME was not applied\n{}",
        d.log_text()
    );
}

#[test]
fn fw_list_all_lists_chains_posternd_did_not_create() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fl", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let _d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    let bin = posternd_bin().display().to_string();
    let (c, a) = (conf.display().to_string(), access.display().to_string());
    let all = svc
        .server()
        .run(&[&bin, "--fw-list-all", "-c", &c, "-a", &a]);
    assert!(all.status.success(), "{}", describe(&all));
    let listing = text(&all);
    assert!(listing.contains("Chain INPUT"), "{listing}");
    assert!(listing.contains("Chain FWKNOP_INPUT"), "{listing}");
    assert!(
        listing.contains(&format!("dpt:{PORT}")),
        "the tutorial's DROP rule is missing:\n{listing}"
    );
    let own = svc.server().run(&[&bin, "--fw-list", "-c", &c, "-a", &a]);
    assert!(
        !text(&own).contains(&format!("dpt:{PORT}")),
        "{}",
        text(&own)
    );
}

#[test]
fn refusals_match_the_fail2ban_filter_with_the_sender_as_host() {
    if !runnable(&["fwknop", "iptables", "fail2ban-regex"]) {
        return;
    }
    let svc = Service::iptables_guarded("fb", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "REQUIRE_USERNAME root\n");
    let d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    let client = svc.pair.client_ip.to_string();

    // Granted (the saved packet), then its replay.
    let packet = saved_packet(&svc, &keys, &["-U", "root"]);
    send(&svc, &packet);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    send(&svc, &packet);
    let mut wrong_hmac = keys.clone();
    wrong_hmac.hmac = Some((
        "sha256".into(),
        postern_e2e::scenario::Secret::Base64(postern_e2e::scenario::random_b64(64)),
    ));
    let refused: [(&str, &SpaKeys, &[&str]); 4] = [
        ("wrong user", &keys, &["-U", "bob"]),
        ("port not allowed", &keys, &["-U", "root", "-A", "tcp/23"]),
        (
            "too old",
            &keys,
            &["-U", "root", "--time-offset-minus", "300s"],
        ),
        ("wrong HMAC key", &wrong_hmac, &["-U", "root"]),
    ];
    for (what, k, extra) in refused {
        let out = knock(&svc, k, extra);
        assert!(out.status.success(), "{what}: {}", describe(&out));
    }
    // One WARN per refusal: replay + the four above.
    assert!(
        d.wait_log(" WARN ", 5, Duration::from_secs(5)),
        "not every refusal was logged at WARN\n{}",
        d.log_text()
    );

    // fail2ban-regex with the shipped filter, as installed next to common.conf.
    let f2b = tempfile::tempdir().unwrap();
    let filter_dir = f2b.path().join("filter.d");
    std::fs::create_dir_all(&filter_dir).unwrap();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fail2ban/filter.d/posternd.conf");
    std::fs::copy(&shipped, filter_dir.join("posternd.conf")).unwrap();
    std::fs::copy(
        "/etc/fail2ban/filter.d/common.conf",
        filter_dir.join("common.conf"),
    )
    .unwrap();
    let log = d.log_text();
    let warn_lines: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    let granted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("grant"))
        .collect();
    assert!(!granted.is_empty(), "no grant line in the log\n{log}");
    let logfile = f2b.path().join("posternd.log");
    std::fs::write(&logfile, log.as_bytes()).unwrap();
    let out = Command::new("fail2ban-regex")
        .args(["-o", "msg", &logfile.display().to_string()])
        .arg(filter_dir.join("posternd.conf"))
        .output()
        .expect("fail2ban-regex");
    let matched = text(&out);
    let ips = Command::new("fail2ban-regex")
        .args(["-o", "ip", &logfile.display().to_string()])
        .arg(filter_dir.join("posternd.conf"))
        .output()
        .expect("fail2ban-regex");
    let ips: Vec<String> = text(&ips).lines().map(str::to_string).collect();
    let ctx = format!("--- matched ---\n{matched}\n--- ips ---\n{ips:?}\n--- log ---\n{log}");
    for needle in [
        "Replay detected from source IP",
        "does not match required username",
        "protocol/ports was denied",
        "time difference is too great",
        "HMAC_COMPAREFAIL",
    ] {
        assert!(
            matched.contains(needle),
            "fail2ban did not match `{needle}`\n{ctx}"
        );
    }
    assert_eq!(
        ips.len(),
        warn_lines.len(),
        "a WARN refusal line did not match\n{ctx}"
    );
    assert!(
        ips.iter().all(|ip| *ip == client),
        "<HOST> is not the client {client}\n{ctx}"
    );
    for g in granted {
        assert!(
            !matched.contains(g.split_once(": ").map_or(g, |x| x.1)),
            "a grant matched: {g}\n{ctx}"
        );
    }
}

/// A flood of forged packets from a listed sender (SOURCE ANY) is not a flood of
/// WARN lines: beyond the burst they are counted, the count is logged, and a
/// valid knock still gets through.
#[test]
fn a_flood_of_forged_packets_is_counted_not_logged_line_by_line() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fl", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (dir, conf, access) = files(&keys, 30, "");
    let d = Posternd::start(svc.server(), &args(&conf, &access, &[]), dir.dir.path());
    let mut forged_keys = keys.clone();
    forged_keys.hmac = Some((
        "sha256".into(),
        postern_e2e::scenario::Secret::Base64(postern_e2e::scenario::random_b64(64)),
    ));
    let forged = saved_packet(&svc, &forged_keys, &[]);
    const FLOOD: usize = 3000;
    let started = std::time::Instant::now();
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let ex = udp_send_all(
        svc.client(),
        to,
        vec![forged.clone(); FLOOD],
        100,
        Duration::from_millis(1),
        Duration::ZERO,
    );
    assert!(ex.errors.is_empty(), "sending: {:?}", ex.errors);
    // One more forged packet a second later brings the count of the others out.
    std::thread::sleep(Duration::from_millis(1100));
    send(&svc, &forged);
    let counted = d.wait_log("refusal lines were not logged", 1, Duration::from_secs(5));
    let elapsed = started.elapsed().as_secs() + 1;
    let log = d.log_text();
    let warns = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("HMAC_COMPAREFAIL"))
        .count();
    assert!(counted, "no count of the lines not logged\n{log}");
    let allowed = 200 + 50 * elapsed as usize;
    assert!(
        (1..=allowed).contains(&warns),
        "{warns} WARN lines for {FLOOD} forged packets in {elapsed} s (at most {allowed})"
    );
    let out = knock(&svc, &keys, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "the valid knock after the flood did not open the port\n{}",
        d.log_text()
    );
}
