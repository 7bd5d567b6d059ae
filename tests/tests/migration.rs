//! A fwknop user migrates: Debian's stock /etc/fwknop/fwknopd.conf (every line a
//! comment: pcap on eth0, `udp port 62201`, iptables with FWKNOP_INPUT) and
//! access.conf (`SOURCE ANY`, the two `__CHANGEME__` keys filled in) at their
//! default paths, `posternd` started with no arguments as Debian's fwknop-server
//! unit starts fwknopd (`Type=forking`, `ExecStart=/usr/sbin/fwknopd`), and the
//! real fwknop client knocking with its own ~/.fwknoprc stanza. The port that was
//! closed opens and closes again; the daemon logs to syslog as fwknopd
//! (identity `fwknopd`, LOG_DAEMON) and writes /var/run/fwknop/fwknopd.pid.
//!
//! The default paths are the server's own, made private to the test: in a mount
//! namespace the test's directory is bound over /etc/fwknop, a tmpfs covers /run and
//! /dev/log is the test's syslog socket. The server's veth is renamed eth0, the
//! stock PCAP_INTF.

use postern_e2e::posternd::{posternd_bin, runnable, Service};
use postern_e2e::scenario::{describe, Secret, SpaClient, SpaKeys};
use postern_e2e::wait_until;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const PORT: u16 = 22051;
const STOCK: &str = "/etc/fwknop";

fn base64_of(secret: &Secret) -> &str {
    match secret {
        Secret::Base64(k) => k,
        Secret::Passphrase(_) => unreachable!("generated keys are base64"),
    }
}

/// The server namespace's processes named `posternd`.
fn posternd_pids(svc: &Service) -> Vec<u32> {
    svc.server()
        .pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "posternd")
        })
        .collect()
}

#[test]
fn a_fwknop_user_switches_to_posternd_changing_nothing_but_the_keys() {
    if !runnable(&["fwknop", "iptables", "unshare"]) {
        return;
    }
    let stock_conf = Path::new(STOCK).join("fwknopd.conf");
    let stock_access = Path::new(STOCK).join("access.conf");
    if !stock_conf.exists() || !stock_access.exists() {
        eprintln!("skipped: no stock {STOCK} (fwknop-server not installed)");
        return;
    }
    let svc = Service::iptables_guarded("mig", PORT);
    let server = svc.server();
    for step in [
        &["ip", "link", "set", "v1", "down"][..],
        &["ip", "link", "set", "v1", "name", "eth0"],
        &["ip", "link", "set", "eth0", "up"],
    ] {
        server.run_ok(step);
    }

    // /etc/fwknop as the package installed it, only the keys filled in.
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let (_, hmac) = keys.hmac.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc-fwknop");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&stock_conf, etc.join("fwknopd.conf")).unwrap();
    let access: String = std::fs::read_to_string(&stock_access)
        .unwrap()
        .lines()
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["KEY_BASE64", "__CHANGEME__"] => format!("KEY_BASE64 {}\n", base64_of(&keys.key)),
            ["HMAC_KEY_BASE64", "__CHANGEME__"] => {
                format!("HMAC_KEY_BASE64 {}\n", base64_of(hmac))
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let active = |l: &&str| !l.trim_start().starts_with('#') && !l.trim().is_empty();
    assert!(
        !access
            .lines()
            .filter(active)
            .any(|l| l.contains("__CHANGEME__")),
        "{access}"
    );
    std::fs::write(etc.join("access.conf"), access).unwrap();
    std::fs::set_permissions(
        etc.join("access.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let log_sock = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&log_sock).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let dev = dir.path().join("dev");
    let script = format!(
        "set -e; mount --make-rprivate /; mount --bind {etc} /etc/fwknop; \
         mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p {dev}; \
         for n in null zero urandom random; do touch {dev}/$n; mount --bind /dev/$n {dev}/$n; done; \
         ln -s /proc/self/fd {dev}/fd; ln -s /proc/self/fd/0 {dev}/stdin; \
         ln -s /proc/self/fd/1 {dev}/stdout; ln -s /proc/self/fd/2 {dev}/stderr; \
         ln -s {sock} {dev}/log; mount --rbind {dev} /dev; exec \"$@\"",
        etc = etc.display(),
        dev = dev.display(),
        sock = log_sock.display()
    );
    let bin = posternd_bin().display().to_string();
    // `posternd` and nothing else, as the unit's ExecStart; it forks once serving.
    let out = server
        .cmd("unshare")
        .args(["-m", "sh", "-c", &script, "sh", &bin])
        .env_remove("POSTERN_LOG")
        .output()
        .unwrap();
    let mut lines: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut drain =
        |lines: &mut Vec<String>, until: &dyn Fn(&[String]) -> bool, within: Duration| {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline && !until(lines) {
                if let Ok(n) = syslog.recv(&mut buf) {
                    lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        };
    drain(
        &mut lines,
        &|l| l.iter().any(|l| l.contains("posternd ready")),
        Duration::from_secs(5),
    );
    assert!(
        out.status.success(),
        "{}\nsyslog: {lines:#?}",
        describe(&out)
    );
    let pids = posternd_pids(&svc);
    assert_eq!(
        pids.len(),
        1,
        "one daemon in the namespace: {pids:?}\nsyslog: {lines:#?}"
    );
    let pid = pids[0];
    let stop = || {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            posternd_pids(&svc).is_empty()
        })
    };
    let ctx = |lines: &[String]| {
        format!(
            "syslog:\n{}\niptables:\n{}",
            lines.join("\n"),
            server.run_ok(&["iptables", "-S"])
        )
    };
    let pid_file = std::fs::read_to_string(format!("/proc/{pid}/root/run/fwknop/fwknopd.pid"))
        .unwrap_or_else(|e| panic!("fwknopd.pid in the run dir: {e}\n{}", ctx(&lines)));
    assert_eq!(pid_file.trim(), pid.to_string());
    // fwknopd's syslog identity and facility: LOG_DAEMON (3) * 8 + notice (5).
    let ready = lines.iter().find(|l| l.contains("posternd ready")).unwrap();
    assert!(
        ready.starts_with("<29>") && ready.contains(&format!("fwknopd[{pid}]: ")),
        "{ready}"
    );

    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "open before the knock\n{}",
        ctx(&lines)
    );
    // The user's own rc stanza, as they had it for fwknopd.
    let home = tempfile::tempdir().unwrap();
    let rc = home.path().join(".fwknoprc");
    std::fs::write(
        &rc,
        format!(
            "[gateway]\nSPA_SERVER {server}\nACCESS tcp/{PORT}\nALLOW_IP {client}\nFW_TIMEOUT 3\n{keys}",
            server = svc.pair.server_ip,
            client = svc.pair.client_ip,
            keys = keys.rc_lines()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let knock = SpaClient::Fwknop.run(
        &svc.pair.client,
        home.path(),
        &["-n".into(), "gateway".into()],
    );
    assert!(knock.status.success(), "{}", describe(&knock));
    let opened = svc.wait_reachable(true, Duration::from_secs(5));
    drain(
        &mut lines,
        &|l| l.iter().any(|l| l.contains("granted")),
        Duration::from_secs(2),
    );
    assert!(opened, "the knock did not open the port\n{}", ctx(&lines));
    assert!(
        server
            .run_ok(&["iptables", "-S", "FWKNOP_INPUT"])
            .contains(&svc.pair.client_ip.to_string()),
        "the grant is not in fwknopd's chain\n{}",
        ctx(&lines)
    );
    let closed = svc.wait_reachable(false, Duration::from_secs(10));
    assert!(
        closed,
        "the port did not close after FW_TIMEOUT 3\n{}",
        ctx(&lines)
    );
    assert!(stop(), "posternd did not stop at SIGTERM\n{}", ctx(&lines));
    // FLUSH_IPT_AT_EXIT (default Y): fwknopd's chain is gone with the daemon.
    assert!(
        !server.run_ok(&["iptables", "-S"]).contains("FWKNOP_INPUT"),
        "{}",
        ctx(&lines)
    );
}
