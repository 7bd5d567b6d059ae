//! posternd run like fwknopd and like a systemd service:
//!
//! - without `-f` it forks: the command returns 0 once the daemon serves, the pid
//!   file (`-p`) names the daemon (a session leader of its own), a knock opens the
//!   port, `-K` stops it and the pid file goes; a daemon that cannot start makes the
//!   command fail with its error;
//! - in the background it logs to syslog: a real syslog socket (the test's, bound
//!   to /dev/log in a mount namespace) receives `<PRI>IDENT[PID]: …` lines with the
//!   configured identity and facility;
//! - with `-f` under systemd (`NOTIFY_SOCKET`, `WATCHDOG_USEC`): READY=1 once
//!   serving, WATCHDOG=1 pings, STOPPING=1 at SIGTERM;
//! - with stderr connected to the journal (`JOURNAL_STREAM`, as systemd sets it),
//!   a real systemd-journald (in a mount namespace of the test's) stores native
//!   entries: the identity as SYSLOG_IDENTIFIER, notice for info, warning for a
//!   refused knock.

use postern_e2e::posternd::{
    knock_ok, nftables_action, posternd_bin, run_scenarios, runnable, udp_capture, Service, Setup,
    SPA_PORT,
};
use postern_e2e::scenario::describe;
use postern_e2e::wait_until;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const PORT: u16 = 22041;
const TIMEOUT: u64 = 3;

fn setup(tag: &str) -> Setup {
    Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
    )
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Field 6 of /proc/PID/stat: the session id.
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(3)?.parse().ok()
}

fn forks_and_returns_when_ready(tag: &str) {
    let s = setup(tag);
    let pid_file = s.conf.path("posternd.pid");
    let bin = posternd_bin().display().to_string();
    let mut argv: Vec<String> = vec![bin.clone(), "-p".into(), pid_file.display().to_string()];
    argv.extend(s.args.iter().cloned());
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let out = s.svc.server().run(&argv_ref);
    assert!(out.status.success(), "{}", describe(&out));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file written by the daemon")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid), "the daemon {pid} is not running");
    assert_eq!(
        session_of(pid),
        Some(pid),
        "the daemon is not in a session of its own"
    );
    println!("  returned after {:?}, daemon pid {pid}", t0.elapsed());
    // It serves from the moment the command returned.
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(5)),
        "no grant from the daemon"
    );
    let mut stop: Vec<&str> = argv_ref.clone();
    stop.push("-K");
    let out = s.svc.server().run(&stop);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || !alive(pid)
        ),
        "-K did not stop the daemon"
    );
    assert!(
        wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
            !pid_file.exists()
        }),
        "the pid file outlived the daemon"
    );
}

fn a_daemon_that_cannot_start_fails_the_command(tag: &str) {
    let s = setup(tag);
    // An address this host does not have: the bind fails after the fork.
    s.conf.write(
        "postern.toml",
        &std::fs::read_to_string(s.conf.path("postern.toml"))
            .unwrap()
            .replace("[::]:62201", "192.0.2.77:62201"),
    );
    let bin = posternd_bin().display().to_string();
    let mut argv: Vec<&str> = vec![&bin];
    argv.extend(s.args.iter().map(String::as_str));
    let out = s.svc.server().run(&argv);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot bind"),
        "{}",
        describe(&out)
    );
}

fn logs_to_syslog_in_the_background(tag: &str) {
    let s = setup(tag);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pid_file = s.conf.path("posternd.pid");
    // A /dev of our own whose `log` is the test's socket; null etc. from the host.
    let dev = dir.path().join("dev");
    let script = format!(
        "set -e; mount --make-rprivate /; mkdir -p {dev}; \
         for n in null zero urandom random; do touch {dev}/$n; mount --bind /dev/$n {dev}/$n; done; \
         ln -s /proc/self/fd {dev}/fd; ln -s /proc/self/fd/0 {dev}/stdin; \
         ln -s /proc/self/fd/1 {dev}/stdout; ln -s /proc/self/fd/2 {dev}/stderr; \
         ln -s {sock} {dev}/log; mount --rbind {dev} /dev; exec \"$@\"",
        dev = dev.display(),
        sock = sock_path.display()
    );
    let bin = posternd_bin().display().to_string();
    let out = s
        .svc
        .server()
        .cmd("unshare")
        .args(["-m", "sh", "-c", &script, "sh", &bin, "-p"])
        .arg(&pid_file)
        .args(&s.args)
        .env("POSTERN_SERVER__SYSLOG_IDENTITY", "postern-test")
        .env("POSTERN_SERVER__SYSLOG_FACILITY", "LOG_LOCAL3")
        .env_remove("POSTERN_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !lines.iter().any(|l: &String| l.contains("posternd ready"))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let _ = std::process::Command::new("kill").arg(&pid).status();
    // LOG_LOCAL3 (19) * 8 + notice (5: syslog-tracing's level for INFO) = 157.
    let ready = lines
        .iter()
        .find(|l| l.contains("posternd ready"))
        .unwrap_or_else(|| panic!("no `posternd ready` on the syslog socket: {lines:?}"));
    assert!(
        ready.starts_with("<157>")
            && ready.contains(&format!("postern-test[{pid}]: posternd ready")),
        "{ready:?}"
    );
}

fn tells_systemd_ready_watchdog_and_stopping(tag: &str) {
    let s = setup(tag);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let bin = posternd_bin().display().to_string();
    let mut child = s
        .svc
        .server()
        .cmd(&bin)
        .arg("-f")
        .args(&s.args)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut recv_until = |want: &str, got: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                got.push(msg.clone());
                if msg.contains(want) {
                    return true;
                }
            }
        }
        false
    };
    let ready = recv_until("READY=1", &mut got);
    let watchdog = ready && recv_until("WATCHDOG=1", &mut got);
    if ready {
        knock_ok(&s.svc, &s.keys, &[]);
        assert!(
            s.svc.wait_reachable(true, Duration::from_secs(5)),
            "not serving after READY=1"
        );
    }
    // `ip netns exec` runs posternd as its child with the same pid (exec).
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let stopping = recv_until("STOPPING=1", &mut got);
    let _ = child.wait();
    assert!(ready && watchdog && stopping, "notifications: {got:?}");
}

/// A real systemd-journald in a mount namespace with a /run of its own (and the
/// cgroup tree it needs, which `ip netns exec`'s fresh /sys lacks);
/// posternd runs under `systemd-cat` (its stderr is a journal stream) with
/// JOURNAL_STREAM naming that stream, as systemd sets it for a unit.
fn logs_to_the_journal_under_systemd(tag: &str) {
    let journald = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(journald) = journald else {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-journald is missing (package systemd)"
        );
        return;
    };
    let s = setup(tag);
    let dir = tempfile::tempdir().unwrap();
    let knocked = dir.path().join("knocked");
    let entries = dir.path().join("journal.json");
    let bin = posternd_bin().display().to_string();
    // sh -c SCRIPT sh POSTERND ARGS…: "$@" is posternd's command line.
    let script = format!(
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run; \
         mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup; \
         mkdir -p /run/systemd/journal /run/log/journal; {journald} & J=$!; \
         for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done; \
         systemd-cat -t stream sh -c \
           'export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$@\"' sh \"$@\" & \
         P=$!; for i in $(seq 300); do [ -e {knocked} ] && break; sleep 0.05; done; \
         kill $P; wait $P || true; sleep 0.2; \
         journalctl -D /run/log/journal -o json --no-pager > {entries}; kill $J",
        knocked = knocked.display(),
        entries = entries.display(),
    );
    let mut child = s
        .svc
        .server()
        .cmd("unshare")
        .args(["-m", "sh", "-c", &script, "sh", &bin, "-f"])
        .args(&s.args)
        .env("POSTERN_SERVER__SYSLOG_IDENTITY", "postern-journal")
        .env("POSTERN_SERVER__SYSLOG_FACILITY", "LOG_LOCAL3")
        .env_remove("POSTERN_LOG")
        .spawn()
        .unwrap();
    // Serving: the port is closed by posternd's table and the SPA port is bound.
    let spa_bound = || {
        let out = s
            .svc
            .server()
            .run(&["ss", "-Hlun", &format!("sport = :{SPA_PORT}")]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    let serving = s.svc.wait_reachable(false, Duration::from_secs(10))
        && wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            spa_bound,
        );
    if !serving {
        std::fs::write(&knocked, "").unwrap();
        let status = child.wait();
        let journal = std::fs::read_to_string(&entries).unwrap_or_default();
        panic!("posternd did not start under systemd-cat ({status:?}); journal:\n{journal}");
    }
    // A port the stanza does not open: refused with a warning.
    let refused = postern_e2e::posternd::knock(&s.svc, &s.keys, &["-A", "tcp/1"]);
    assert!(refused.status.success(), "{}", describe(&refused));
    knock_ok(&s.svc, &s.keys, &[]);
    let opened = s.svc.wait_reachable(true, Duration::from_secs(5));
    std::fs::write(&knocked, "").unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&entries).unwrap_or_default();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"SYSLOG_IDENTIFIER\":\"postern-journal\""))
        .collect();
    let entry = |needle: &str| ours.iter().find(|l| l.contains(needle)).copied();
    let ready = entry("posternd ready");
    let denied = entry("was denied per access.conf");
    assert!(status.success() && opened, "{status}, opened {opened}");
    assert!(
        ready.is_some_and(|l| l.contains("\"PRIORITY\":\"5\"")
                && l.contains("\"_TRANSPORT\":\"journal\"")
                // LOG_LOCAL3 is facility 19.
                && l.contains("\"SYSLOG_FACILITY\":\"19\"")),
        "no native `posternd ready` entry at notice; posternd's entries: {ours:?}, \
         stderr lines: {:?}",
        text.lines()
            .filter(|l| l.contains("\"stream\""))
            .collect::<Vec<_>>()
    );
    assert!(
        denied
            .is_some_and(|l| l.contains("\"PRIORITY\":\"4\"")
                && l.contains(&s.svc.pair.client_ip.to_string())),
        "no warning for the refused knock: {ours:?}"
    );
}

#[test]
fn posternd_runs_as_a_service() {
    if !runnable(&["fwknop", "nft", "unshare"]) {
        return;
    }
    run_scenarios(
        "posternd as a service",
        vec![
            (
                "forks, -K stops".into(),
                Box::new(|| forks_and_returns_when_ready("sv0")),
            ),
            (
                "start failure".into(),
                Box::new(|| a_daemon_that_cannot_start_fails_the_command("sv1")),
            ),
            (
                "syslog".into(),
                Box::new(|| logs_to_syslog_in_the_background("sv2")),
            ),
            (
                "sd_notify".into(),
                Box::new(|| tells_systemd_ready_watchdog_and_stopping("sv3")),
            ),
            (
                "journal".into(),
                Box::new(|| logs_to_the_journal_under_systemd("sv4")),
            ),
        ],
    );
}
