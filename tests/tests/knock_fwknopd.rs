//! SPA knocks through the real fwknopd 2.6.10 (UDP-server mode, iptables) inside a
//! network namespace: before the knock the guarded TCP port is closed, after it the
//! port opens, and after FW_ACCESS_TIMEOUT it closes again.
//!
//! The client is a parameter: the real `fwknop` client (proves the harness and the
//! configuration) and `postern` (the workspace binary, same flags).

use postern_e2e::scenario::{describe, guarded_service, Fwknopd, Secret, SpaClient, SpaKeys};
use postern_e2e::{require_program, require_root, tempfile};
use std::time::{Duration, Instant};

const PORT: u16 = 22022;
const ACCESS_TIMEOUT: u64 = 3;

#[derive(Clone, Debug)]
struct Variant {
    name: String,
    keys: SpaKeys,
    /// SPA message digest (-m).
    digest: String,
}

fn variant(mode: &str, hmac: Option<&str>, digest: &str) -> Variant {
    Variant {
        name: format!("{mode}/{}/{digest}", hmac.unwrap_or("none")),
        keys: SpaKeys::generate(mode, hmac),
        digest: digest.to_string(),
    }
}

fn passphrase_variant(mode: &str, hmac: Option<&str>, digest: &str, pass: &str) -> Variant {
    let mut v = variant(mode, hmac, digest);
    v.name = format!("{}(passphrase rc)", v.name);
    v.keys.key = Secret::Passphrase(pass.to_string());
    v
}

fn runnable() -> bool {
    require_root()
        && require_program("fwknop")
        && require_program("fwknopd")
        && require_program("iptables")
}

fn access_conf(keys: &SpaKeys) -> String {
    format!(
        "SOURCE ANY\n{}FW_ACCESS_TIMEOUT {ACCESS_TIMEOUT}\n",
        keys.access_conf_lines()
    )
}

/// Client arguments for one knock (keys on the command line or in an rc file in `home`).
fn client_args(v: &Variant, home: &std::path::Path, allow: &str, server: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-A",
        &format!("tcp/{PORT}"),
        "-a",
        allow,
        "-D",
        server,
        "-m",
        &v.digest,
    ]
    .map(String::from)
    .to_vec();
    match v.keys.client_key_args() {
        Some(k) => {
            a.extend(k);
            a.push("--no-rc-file".into());
        }
        None => {
            // Passphrases go through an rc file (postern has no --key-rijndael).
            let rc = home.join("keys.rc");
            std::fs::write(&rc, format!("[default]\n{}", v.keys.rc_lines())).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
            a.extend([
                "--rc-file".to_string(),
                rc.display().to_string(),
                "-M".into(),
                v.keys.mode.clone(),
            ]);
        }
    }
    a
}

type CycleResult = Result<(Duration, Duration), String>;

/// Full cycle for one variant: closed, knock, open, closed after the timeout.
/// Returns the time from knock to open and from open to closed.
fn knock_cycle(client: &SpaClient, v: &Variant, tag: &str) -> CycleResult {
    let svc = guarded_service(tag, PORT);
    let fwknopd = Fwknopd::start(&svc.pair.server, &access_conf(&v.keys), "");
    let ctx = |msg: &str| format!("{msg}\n--- fwknopd log ---\n{}", fwknopd.log_text());
    if svc.reachable(Duration::from_millis(700)) {
        return Err(ctx("port reachable before the knock"));
    }
    let home = tempfile::tempdir().unwrap();
    let args = client_args(
        v,
        home.path(),
        &svc.pair.client_ip.to_string(),
        &svc.pair.server_ip.to_string(),
    );
    let out = client.run(&svc.pair.client, home.path(), &args);
    if !out.status.success() {
        return Err(ctx(&format!(
            "{} {args:?} failed: {}",
            client.name(),
            describe(&out)
        )));
    }
    let t0 = Instant::now();
    if !svc.wait_reachable(true, Duration::from_secs(6)) {
        return Err(ctx(&format!(
            "port not opened after the knock ({} {args:?}: {})",
            client.name(),
            describe(&out)
        )));
    }
    let opened = t0.elapsed();
    let t1 = Instant::now();
    if !svc.wait_reachable(false, Duration::from_secs(ACCESS_TIMEOUT + 12)) {
        return Err(ctx("port still open long after FW_ACCESS_TIMEOUT"));
    }
    Ok((opened, t1.elapsed()))
}

/// Run variants concurrently (each with its own namespaces and fwknopd); panic with
/// every failure listed.
fn run_matrix(client: &SpaClient, variants: &[Variant], tag: &str) {
    let results: Vec<(String, CycleResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let tag = format!("{tag}{i}");
                (
                    v.name.clone(),
                    s.spawn(move || knock_cycle(client, v, &tag)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                let r = h.join().unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into()))
                });
                (n, r)
            })
            .collect()
    });
    let mut failures = Vec::new();
    println!(
        "{} -> fwknopd 2.6.10 (mode/hmac/digest): knock->open, open->closed",
        client.name()
    );
    for (n, r) in &results {
        match r {
            Ok((o, c)) => println!(
                "  {n:<36} ok  open after {:>5} ms, closed after {:>5} ms",
                o.as_millis(),
                c.as_millis()
            ),
            Err(e) => {
                println!("  {n:<36} FAILED");
                failures.push(format!("=== {n} ===\n{e}"));
            }
        }
    }
    println!(
        "  {}/{} variants passed",
        results.len() - failures.len(),
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} -> fwknopd failures:\n{}",
        client.name(),
        failures.join("\n")
    );
}

/// Modes with sha256 HMAC, every HMAC type with CBC, every digest; legacy with a
/// passphrase (no HMAC); passphrase keys through an rc file.
fn matrix() -> Vec<Variant> {
    let mut v = Vec::new();
    for mode in ["cbc", "ecb", "cfb", "ofb", "ctr"] {
        v.push(variant(mode, Some("sha256"), "sha256"));
    }
    for h in ["md5", "sha1", "sha384", "sha512", "sha3_256", "sha3_512"] {
        v.push(variant("cbc", Some(h), "sha256"));
    }
    for d in ["md5", "sha1", "sha384", "sha512", "sha3_256", "sha3_512"] {
        v.push(variant("cbc", Some("sha256"), d));
    }
    v.push(variant("ctr", None, "sha512"));
    v.push(passphrase_variant("legacy", None, "sha256", "legacypw"));
    v.push(passphrase_variant(
        "cbc",
        Some("sha256"),
        "sha1",
        "s3cr3t-pass",
    ));
    v
}

#[test]
fn fwknop_client_knocks_fwknopd() {
    if !runnable() {
        return;
    }
    // The same matrix with the real client: proves the harness and every config.
    run_matrix(&SpaClient::Fwknop, &matrix(), "fk");
}

#[test]
fn fwknop_client_with_wrong_hmac_key_is_refused() {
    if !runnable() {
        return;
    }
    let v = variant("cbc", Some("sha256"), "sha256");
    let svc = guarded_service("wk", PORT);
    let fwknopd = Fwknopd::start(&svc.pair.server, &access_conf(&v.keys), "");
    let mut wrong = v.clone();
    wrong.keys.hmac = Some((
        "sha256".into(),
        Secret::Base64(postern_e2e::scenario::random_b64(64)),
    ));
    let home = tempfile::tempdir().unwrap();
    let args = client_args(
        &wrong,
        home.path(),
        &svc.pair.client_ip.to_string(),
        &svc.pair.server_ip.to_string(),
    );
    let out = SpaClient::Fwknop.run(&svc.pair.client, home.path(), &args);
    assert!(out.status.success(), "{}", describe(&out));
    // Give fwknopd time to see and refuse the packet.
    let refused =
        postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            let log = fwknopd.log_text();
            log.contains("HMAC_COMPAREFAIL") || log.contains("Non-corresponding HMAC")
        });
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "opened with a wrong HMAC key"
    );
    assert!(
        refused,
        "fwknopd did not log an HMAC failure:\n{}",
        fwknopd.log_text()
    );
}

#[test]
fn postern_knocks_fwknopd() {
    if !runnable() {
        return;
    }
    let client = SpaClient::postern();
    run_matrix(&client, &matrix(), "pk");
}

/// Keys saved with `CLIENT --save-rc-stanza -n NAME ... -T` (test mode: nothing is
/// sent) into ~/.fwknoprc, then `CLIENT -n NAME` knocks. With `reader` set, that
/// client performs the second step (reads the rc file written by `writer`).
fn rc_stanza_knock(writer: &SpaClient, reader: &SpaClient, tag: &str) {
    let v = variant("cfb", Some("sha384"), "sha512");
    let svc = guarded_service(tag, PORT);
    let fwknopd = Fwknopd::start(&svc.pair.server, &access_conf(&v.keys), "");
    let home = tempfile::tempdir().unwrap();
    let mut save = client_args(
        &v,
        home.path(),
        &svc.pair.client_ip.to_string(),
        &svc.pair.server_ip.to_string(),
    );
    save.retain(|a| a != "--no-rc-file");
    save.extend(["--save-rc-stanza", "-n", "e2esrv", "-T"].map(String::from));
    let out = writer.run(&svc.pair.client, home.path(), &save);
    assert!(
        out.status.success(),
        "{} {save:?}: {}",
        writer.name(),
        describe(&out)
    );
    let rc = std::fs::read_to_string(home.path().join(".fwknoprc")).unwrap_or_else(|e| {
        panic!(
            "{} --save-rc-stanza wrote no ~/.fwknoprc: {e}",
            writer.name()
        )
    });
    assert!(
        rc.contains("[e2esrv]"),
        "no [e2esrv] stanza in ~/.fwknoprc:\n{rc}"
    );
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{} --save-rc-stanza -T must not send a packet (port opened)",
        writer.name()
    );
    let out = reader.run(
        &svc.pair.client,
        home.path(),
        &["-n".to_string(), "e2esrv".to_string()],
    );
    assert!(
        out.status.success(),
        "{} -n e2esrv: {}\n~/.fwknoprc:\n{rc}",
        reader.name(),
        describe(&out)
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "{} -n e2esrv did not open the port\n~/.fwknoprc:\n{rc}\n--- fwknopd log ---\n{}",
        reader.name(),
        fwknopd.log_text()
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(ACCESS_TIMEOUT + 12)),
        "did not close again"
    );
}

#[test]
fn fwknop_rc_stanza_knocks_fwknopd() {
    if !runnable() {
        return;
    }
    rc_stanza_knock(&SpaClient::Fwknop, &SpaClient::Fwknop, "fr");
}

#[test]
fn postern_rc_stanza_knocks_fwknopd() {
    if !runnable() {
        return;
    }
    let p = SpaClient::postern();
    rc_stanza_knock(&p, &p, "pr");
}

#[test]
fn postern_rc_stanza_is_usable_by_fwknop() {
    if !runnable() {
        return;
    }
    rc_stanza_knock(&SpaClient::postern(), &SpaClient::Fwknop, "px");
}
