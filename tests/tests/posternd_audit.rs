//! posternd's decision audit log (docs/audit-log.md), through the real binary
//! with the real fwknop client, in namespaces the tests make:
//!
//! - a granted knock is a line with its stanza (`file:line`), user, request,
//!   grant, expiry and backend; a replay is a refused line; a knock with the
//!   wrong keys and a flood of garbage (base64 and binary, of a knock's length)
//!   are counted, exactly, in summary lines: a handful of lines in all;
//! - no key, HMAC key or packet is in the file;
//! - logrotate (the real one, its postrotate sending SIGUSR1) and a rename plus
//!   SIGHUP: the next decision goes to the new file, created 0640;
//! - `--audit-log -` writes the lines to stdout, and is refused in the background;
//! - `[audit] path` and `--audit-log` show in check-config; a path posternd
//!   cannot open stops the start, naming it.
//!
//! Every line read is checked against docs/audit-log.schema.json by the harness.

use postern_e2e::posternd::{
    audit_file_lines, knock, knock_ok, nftables_action, posternd_bin, runnable, saved_packet,
    udp_capture, udp_send_all, AuditLog, ConfDir, Posternd, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::{describe, random_b64, random_bytes, Secret, SpaKeys};
use serde_json::Value;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PORT: u16 = 22101;

fn setup(tag: &str, extra: &str) -> Setup {
    Setup::new(
        Service::open(tag, PORT),
        30,
        "memory",
        &format!(
            "{}\n{}\n{extra}",
            udp_capture(SPA_PORT),
            nftables_action(PORT)
        ),
    )
}

fn decisions(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["event"] == "decision").collect()
}

/// Packets counted in every summary line under `kind` (`unauthenticated`,
/// `unlogged`) for `stage`.
fn counted(lines: &[Value], kind: &str, stage: &str) -> u64 {
    lines.iter().filter_map(|l| l[kind][stage].as_u64()).sum()
}

fn secret_text(s: &Secret) -> &str {
    match s {
        Secret::Base64(t) | Secret::Passphrase(t) => t,
    }
}

#[test]
fn grants_refusals_and_garbage_are_audited_without_secrets() {
    if !runnable(&["nft", "fwknop"]) {
        return;
    }
    let conf = ConfDir::new();
    let audit = conf.path("audit.jsonl");
    let s = setup("aud", &format!("[audit]\npath = \"{}\"\n", audit.display()));
    let started = std::time::Instant::now();
    let d = Posternd::try_start_audited(
        s.svc.server(),
        &[],
        &s.args,
        s.conf.dir.path(),
        AuditLog::File(audit.clone()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (client, server) = (
        s.svc.pair.client_ip.to_string(),
        s.svc.pair.server_ip.to_string(),
    );

    // A granted knock: who, what, until when, by what.
    knock_ok(&s.svc, &s.keys, &["-U", "aud1t"]);
    assert!(s.svc.wait_reachable(true, Duration::from_secs(5)));
    let granted = d
        .wait_audit(Duration::from_secs(5), |l| l["outcome"] == "granted")
        .unwrap_or_else(|| panic!("no granted line:\n{}", d.log_text()));
    assert_eq!(granted["capture"], "udp", "{granted}");
    assert_eq!(granted["source"]["address"], client.as_str(), "{granted}");
    assert_eq!(granted["destination"], server.as_str(), "{granted}");
    assert_eq!(granted["stanza"]["number"], 1, "{granted}");
    assert_eq!(
        granted["stanza"]["origin"],
        format!("{}:1", s.conf.arg("access.conf")).as_str(),
        "{granted}"
    );
    assert_eq!(granted["user"], "aud1t", "{granted}");
    assert_eq!(granted["request"]["type"], "access", "{granted}");
    assert_eq!(
        granted["request"]["message"],
        format!("{client},tcp/{PORT}").as_str(),
        "{granted}"
    );
    assert_eq!(granted["grant"]["allow"], client.as_str(), "{granted}");
    assert_eq!(granted["grant"]["ports"][0], format!("tcp/{PORT}").as_str());
    assert_eq!(granted["grant"]["timeout_seconds"], 30, "{granted}");
    assert_eq!(granted["backends"][0], "nftables", "{granted}");
    let expires = granted["grant"]["expires"].as_str().unwrap();
    let expires = chrono_free_unix(expires);
    let sent = granted["request"]["timestamp"].as_i64().unwrap();
    assert!(
        (expires - (sent + 30)).abs() <= 5,
        "expires {expires} for a knock sent at {sent} with a 30 s timeout"
    );

    // Another grant, then a copy of it: refused as a replay, with its own line.
    let valid = saved_packet(&s.svc, &s.keys, &["-a", "10.9.9.9"]);
    let to: SocketAddr = (s.svc.pair.server_ip, SPA_PORT).into();
    let send = |payloads: Vec<Vec<u8>>| {
        udp_send_all(
            s.svc.client(),
            to,
            payloads,
            200,
            Duration::from_millis(5),
            Duration::ZERO,
        )
    };
    send(vec![valid.clone()]);
    d.wait_audit(Duration::from_secs(5), |l| {
        l["grant"]["allow"] == "10.9.9.9"
    })
    .unwrap_or_else(|| panic!("the saved knock was not granted:\n{}", d.log_text()));
    send(vec![valid.clone()]);
    let replay = d
        .wait_audit(Duration::from_secs(5), |l| l["stage"] == "replay")
        .unwrap_or_else(|| panic!("no replay line:\n{}", d.log_text()));
    assert_eq!(replay["outcome"], "refused");
    assert_eq!(replay["reason"], "packet seen before (replay)");
    assert_eq!(replay["source"]["address"], client.as_str());
    assert_eq!(replay["candidates"], serde_json::json!([1]), "{replay}");

    // The wrong keys, then a flood of a knock's length: base64 (HMAC refuses
    // it) and binary (the charset check does). Counted, not written.
    let wrong = SpaKeys::generate("cbc", Some("sha256"));
    let out = knock(&s.svc, &wrong, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let (b64, binary) = (1500, 1500);
    let mut flood = Vec::new();
    while flood.len() < b64 {
        let text = random_b64(valid.len());
        let g = text.as_bytes()[..valid.len()].to_vec();
        // These prefixes are refused before the HMAC, as non-knocks.
        if !g.starts_with(b"hQ") && !g.starts_with(b"U2FsdGVkX1") {
            flood.push(g);
        }
    }
    flood.extend((0..binary).map(|_| random_bytes(valid.len())));
    send(flood);

    // SIGTERM: the last summary is written before posternd exits.
    let mut d = d;
    assert!(
        d.terminate(Duration::from_secs(10)).is_some(),
        "no clean stop"
    );
    let lines = d.audit_lines();
    let decided = decisions(&lines);
    assert_eq!(decided.len(), 3, "two grants and a replay: {decided:#?}");
    assert_eq!(
        counted(&lines, "unauthenticated", "hmac"),
        b64 as u64 + 1,
        "every base64 packet and the wrong key, counted at hmac: {lines:#?}"
    );
    assert_eq!(
        counted(&lines, "unauthenticated", "precheck"),
        binary as u64,
        "{lines:#?}"
    );
    // A summary per 10 s period with something counted, and the last one.
    let summaries = lines.len() - decided.len();
    let periods = started.elapsed().as_secs() / 10 + 1;
    assert!(
        (1..=periods as usize + 1).contains(&summaries),
        "{summaries} summary lines in {periods} periods, for {} counted packets",
        b64 + binary + 1
    );
    assert!(
        lines
            .iter()
            .any(|l| l["sources"][0]["address"] == client.as_str()),
        "the flooding sender is not named: {lines:#?}"
    );

    let written = std::fs::read_to_string(&audit).unwrap();
    let mut secrets = vec![secret_text(&s.keys.key), secret_text(&wrong.key)];
    secrets.extend([&s.keys.hmac, &wrong.hmac].map(|h| secret_text(&h.as_ref().unwrap().1)));
    for secret in secrets {
        assert!(!written.contains(secret), "a key is in the audit log");
    }
    let packet = String::from_utf8(valid).unwrap();
    assert!(!written.contains(&packet), "the packet is in the audit log");
    assert!(
        !written.contains(&packet[..40]),
        "part of the packet is in the audit log"
    );
}

/// `YYYY-MM-DDTHH:MM:SSZ` as Unix seconds (the tests crate has no date library).
fn chrono_free_unix(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { t[r].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

#[test]
fn the_audit_log_is_reopened_after_logrotate_and_after_sighup() {
    if !runnable(&["nft", "fwknop", "logrotate"]) {
        return;
    }
    let s = setup("aur", "");
    let d = s.start();
    let audit = d
        .audit
        .clone()
        .expect("the harness gives every posternd an audit log");
    let knock_granted = |n: usize| {
        knock_ok(&s.svc, &s.keys, &[]);
        assert!(
            d.wait_log("granted:", n, Duration::from_secs(5)),
            "knock {n} not granted:\n{}",
            d.log_text()
        );
    };
    let grants_in = |file: &Path| {
        audit_file_lines(file)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter(|l| l["outcome"] == "granted")
            .count()
    };
    knock_granted(1);
    assert!(postern_e2e::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(25),
        || grants_in(&audit) == 1
    ));

    // The real logrotate; its postrotate asks for a reopen with SIGUSR1.
    let state = s.conf.path("logrotate.state");
    let rules = s.conf.write(
        "logrotate.conf",
        &format!(
            "{} {{\n    rotate 3\n    missingok\n    nocompress\n    postrotate\n        \
             /bin/kill -USR1 {}\n    endscript\n}}\n",
            audit.display(),
            d.pid()
        ),
    );
    let out = Command::new("logrotate")
        .args(["-f", "-s"])
        .arg(&state)
        .arg(&rules)
        .output()
        .expect("run logrotate");
    assert!(out.status.success(), "logrotate: {}", describe(&out));
    let first = audit.with_extension("jsonl.1");
    assert_eq!(grants_in(&first), 1, "logrotate did not rename the log");
    assert!(
        d.wait_log("audit log reopened", 1, Duration::from_secs(5)),
        "no reopen after SIGUSR1:\n{}",
        d.log_text()
    );
    knock_granted(2);
    assert!(postern_e2e::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(25),
        || grants_in(&audit) == 1
    ));
    assert_eq!(
        grants_in(&first),
        1,
        "the second grant went to the rotated file"
    );

    // By hand: rename, SIGHUP (which also re-reads the configuration).
    let second = audit.with_extension("jsonl.old");
    std::fs::rename(&audit, &second).unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log("audit log reopened", 2, Duration::from_secs(5)),
        "no reopen after SIGHUP:\n{}",
        d.log_text()
    );
    knock_granted(3);
    assert!(postern_e2e::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(25),
        || grants_in(&audit) == 1
    ));
    assert_eq!(grants_in(&second), 1);
    let meta = std::fs::metadata(&audit).unwrap();
    assert_eq!(meta.uid(), 0, "the new file belongs to posternd's user");
    assert_eq!(
        meta.mode() & 0o777 & !0o640,
        0,
        "created {:o}",
        meta.mode() & 0o777
    );
    // SIGUSR1 did nothing else: posternd still serves.
    assert!(d.log_text().contains("Got SIGUSR1"));
}

#[test]
fn stdout_mode_writes_lines_there_and_is_refused_in_the_background() {
    if !runnable(&["nft", "fwknop"]) {
        return;
    }
    let s = setup("aus", "");
    let mut args = s.args.clone();
    args.extend(["--audit-log".into(), "-".into()]);
    let d = Posternd::try_start(s.svc.server(), &args, s.conf.dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.audit, None, "the lines are in posternd's output");
    knock_ok(&s.svc, &s.keys, &[]);
    let granted = d
        .wait_audit(Duration::from_secs(5), |l| l["outcome"] == "granted")
        .unwrap_or_else(|| panic!("no granted line on stdout:\n{}", d.log_text()));
    assert_eq!(
        granted["source"]["address"],
        s.svc.pair.client_ip.to_string().as_str()
    );
    drop(d);

    // Without -f posternd would go to the background, where there is no stdout.
    let out = s
        .svc
        .server()
        .cmd(&posternd_bin().display().to_string())
        .args(&args)
        .output()
        .expect("run posternd");
    if out.status.success() {
        // It went to the background after all: stop it before failing.
        let pid = std::fs::read_to_string(s.conf.run_dir().join("posternd.pid"));
        if let Ok(pid) = pid {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("stdout") && stderr.contains("-f"),
        "{}",
        describe(&out)
    );

    // A file posternd cannot open stops the start, naming it.
    let missing = s.conf.path("no/such/dir/audit.jsonl").display().to_string();
    let mut args = s.args.clone();
    args.extend(["--audit-log".into(), missing.clone()]);
    match Posternd::try_start(s.svc.server(), &args, s.conf.dir.path()) {
        Ok(_) => panic!("posternd started with an audit log it cannot open"),
        Err(log) => assert!(log.contains(&format!("audit log {missing}")), "{log}"),
    }
}

/// Nothing is started: check-config shows the audit log, and a relative path
/// or a misspelt key in the file is refused naming the key.
#[test]
fn the_audit_log_setting_is_shown_and_checked() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    dir.write(
        "access.conf",
        &format!(
            "SOURCE ANY\n{}OPEN_PORTS tcp/22\n",
            keys.access_conf_lines()
        ),
    );
    let toml = |audit: &str| {
        dir.write(
            "postern.toml",
            &format!(
                "access_file = \"{}\"\n[server]\nrun_dir = \"{}\"\n[[action]]\ntype = \"log\"\n{audit}",
                dir.arg("access.conf"),
                dir.run_dir().display()
            ),
        )
    };
    let posternd = |args: &[&str]| {
        let out = Command::new(posternd_bin())
            .args(args)
            .output()
            .expect("run posternd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let conf = toml("[audit]\npath = \"/var/log/postern/audit.jsonl\"\n")
        .display()
        .to_string();
    let (ok, text) = posternd(&["-c", &conf, "check-config"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("[audit]\npath = \"/var/log/postern/audit.jsonl\""),
        "{text}"
    );
    let (ok, text) = posternd(&["-c", &conf, "--audit-log", "/tmp/x.jsonl", "check-config"]);
    assert!(ok && text.contains("path = \"/tmp/x.jsonl\""), "{text}");
    let (ok, text) = posternd(&["-c", &conf, "--audit-log", "-", "check-config"]);
    assert!(ok && text.contains("path = \"-\""), "{text}");
    let (ok, text) = posternd(&[
        "-c",
        &toml("[audit]\npath = \"audit.jsonl\"\n")
            .display()
            .to_string(),
        "check-config",
    ]);
    assert!(
        !ok && text.contains("[audit] path `audit.jsonl` must be an absolute path"),
        "{text}"
    );
    let (ok, text) = posternd(&[
        "-c",
        &toml("[audit]\npaht = \"/x\"\n").display().to_string(),
        "check-config",
    ]);
    assert!(!ok && text.contains("paht"), "{text}");
}
