//! Driving the real `posternd` (the workspace binary) in a server namespace, with
//! the real `fwknop` client knocking from the client namespace.
//!
//! - [`Service`]: a [`Pair`] with a TCP listener in the server namespace, optionally
//!   guarded by iptables (DROP + conntrack ESTABLISHED, like the fwknop tutorials);
//! - [`ConfDir`]: a temp dir for config files (written mode 0600) and a run dir;
//! - [`Posternd`]: the daemon, started with `ip netns exec`, waited for until it logs
//!   `posternd ready`, killed on drop; every one writes an audit log, each line of
//!   which is checked against docs/audit-log.schema.json when it is dropped;
//! - [`knock`]: one `fwknop` run from the client namespace;
//! - small probes: [`cap_eff`], [`nft_grants4`], [`udp_send_all`].

use crate::scenario::{describe, SpaClient, SpaKeys};
use crate::{pair, tcp_connect_ok, tcp_listen, wait_until, ChildGuard, Netns, Pair};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// fwknop's default SPA port.
pub const SPA_PORT: u16 = 62201;

/// Linux capability numbers used by the tests.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

/// The `posternd` binary, built once per test process.
pub fn posternd_bin() -> PathBuf {
    crate::workspace_bin("posternd")
}

/// True if everything an end-to-end posternd test needs is here. Like
/// [`crate::require_root`]: panics in CI (`CI=true`) when something is missing.
pub fn runnable(programs: &[&str]) -> bool {
    crate::require_root() && programs.iter().all(|p| crate::require_program(p))
}

/// A TCP service on `port` in the server namespace of a fresh [`Pair`].
pub struct Service {
    // Field order = drop order: stop the listener before the namespaces go.
    _listener: ChildGuard,
    pub pair: Pair,
    pub port: u16,
}

impl Service {
    /// Pair + listener, no firewall rule at all (postern's nftables action closes
    /// the port itself).
    pub fn open(tag: &str, port: u16) -> Service {
        let pair = pair(tag);
        let listener = tcp_listen(&pair.server, port);
        Service {
            _listener: listener,
            pair,
            port,
        }
    }

    /// Pair + listener guarded like the classic SPA tutorials:
    /// `iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    /// `iptables -A INPUT -p tcp --dport PORT -j DROP`.
    pub fn iptables_guarded(tag: &str, port: u16) -> Service {
        let s = Service::open(tag, port);
        let port_s = port.to_string();
        s.pair.server.run_ok(&[
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        s.pair.server.run_ok(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port_s, "-j", "DROP",
        ]);
        s
    }

    pub fn server(&self) -> &Netns {
        &self.pair.server
    }

    pub fn client(&self) -> &Netns {
        &self.pair.client
    }

    /// One new TCP connection from the client namespace to the service.
    pub fn reachable(&self, timeout: Duration) -> bool {
        tcp_connect_ok(
            &self.pair.client,
            IpAddr::V4(self.pair.server_ip),
            self.port,
            timeout,
        )
    }

    /// Poll until reachability equals `want` (each attempt waits up to 400 ms).
    pub fn wait_reachable(&self, want: bool, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(100), || {
            self.reachable(Duration::from_millis(400)) == want
        })
    }

    /// True if no connection attempt succeeds during `period` (attempts of 400 ms).
    pub fn stays_closed(&self, period: Duration) -> bool {
        let end = Instant::now() + period;
        while Instant::now() < end {
            if self.reachable(Duration::from_millis(400)) {
                return false;
            }
        }
        true
    }

    /// The iptables ruleset of the server namespace (for failure messages).
    pub fn iptables_save(&self) -> String {
        let o = self.pair.server.run(&["iptables-save"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The nftables ruleset of the server namespace (for failure messages).
    pub fn nft_ruleset(&self) -> String {
        let o = self.pair.server.run(&["nft", "list", "ruleset"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Write `text` to `path` with mode 0600 (files holding keys must not be readable
/// by group or others).
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A temp dir with the server's files: configs (0600) and `run/`.
pub struct ConfDir {
    pub dir: tempfile::TempDir,
}

impl Default for ConfDir {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfDir {
    pub fn new() -> ConfDir {
        let dir = tempfile::Builder::new()
            .prefix("pn-posternd")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("run")).expect("mkdir run");
        ConfDir { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<dir>/run`, the run dir (pid file, replay store).
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// Write a file (mode 0600) and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        write_private(&p, text);
        p
    }

    /// Path as a String, for argv.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// An access.conf with one `SOURCE ANY` stanza for `keys`.
pub fn access_conf(keys: &SpaKeys, open_ports: Option<&str>, timeout: u64, extra: &str) -> String {
    let mut s = format!("SOURCE ANY\n{}", keys.access_conf_lines());
    if let Some(p) = open_ports {
        s += &format!("OPEN_PORTS {p}\n");
    }
    s += &format!("FW_ACCESS_TIMEOUT {timeout}\n{extra}");
    s
}

/// A native postern.toml: `access_file`, `[server]` with the run dir and
/// `max_packet_age`, `[replay]`, then `body` (captures and actions, verbatim).
pub fn postern_toml(dir: &ConfDir, access_file: &str, replay: &str, body: &str) -> String {
    format!(
        "access_file = \"{access}\"\n\n[server]\nmax_packet_age = 120\nrun_dir = \"{run}\"\n\n\
         [replay]\ntype = \"{replay}\"\n\n{body}\n",
        access = dir.arg(access_file),
        run = dir.run_dir().display(),
    )
}

/// What most posternd tests start from: `svc`, fresh keys (CBC, HMAC-SHA256), an
/// access.conf opening `tcp/PORT` of the service for `timeout` seconds, and a
/// postern.toml with `replay` and `body` (captures and actions).
pub struct Setup {
    pub svc: Service,
    pub keys: SpaKeys,
    pub conf: ConfDir,
    /// posternd's arguments: `-c postern.toml -v`.
    pub args: Vec<String>,
}

impl Setup {
    pub fn new(svc: Service, timeout: u64, replay: &str, body: &str) -> Setup {
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let conf = ConfDir::new();
        conf.write(
            "access.conf",
            &access_conf(&keys, Some(&format!("tcp/{}", svc.port)), timeout, ""),
        );
        conf.write(
            "postern.toml",
            &postern_toml(&conf, "access.conf", replay, body),
        );
        let args = vec!["-c".to_string(), conf.arg("postern.toml"), "-v".into()];
        Setup {
            svc,
            keys,
            conf,
            args,
        }
    }

    /// Start posternd in the server namespace with [`Setup::args`].
    pub fn start(&self) -> Posternd {
        Posternd::start(self.svc.server(), &self.args, self.conf.dir.path())
    }
}

/// `[[capture]]` tables.
pub fn udp_capture(port: u16) -> String {
    format!("[[capture]]\ntype = \"udp\"\nlisten = \"[::]:{port}\"\n")
}

pub fn tcp_capture(port: u16) -> String {
    format!("[[capture]]\ntype = \"tcp\"\nlisten = \"[::]:{port}\"\n")
}

pub fn pcap_capture(interface: &str, port: u16) -> String {
    format!(
        "[[capture]]\ntype = \"pcap\"\ninterfaces = [\"{interface}\"]\nfilter = \"udp port {port}\"\n"
    )
}

/// `[[action]] type = "nftables"` closing `tcp/PORT` itself.
pub fn nftables_action(port: u16) -> String {
    format!("[[action]]\ntype = \"nftables\"\nprotected = [\"tcp/{port}\"]\n")
}

/// `[[action]] type = "iptables"` (own chain POSTERN_INPUT, jump at INPUT 1).
pub fn iptables_action() -> String {
    "[[action]]\ntype = \"iptables\"\nipv6 = false\n".to_string()
}

static START_NO: AtomicU32 = AtomicU32::new(0);

/// Where a posternd writes its audit log: what is validated when it is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditLog {
    /// The harness's own, `--audit-log <log dir>/posternd.N.audit.jsonl`:
    /// what every posternd gets unless its args give `--audit-log`.
    Harness,
    /// A file the test chose (`--audit-log FILE` in the args, or `[audit] path`
    /// in its config).
    File(PathBuf),
    /// `--audit-log -`: the lines are in [`Posternd::log`], with posternd's stderr.
    Stdout,
}

/// A running posternd in a namespace. SIGKILLed on drop, then every line of its
/// audit log is checked against the schema (a bad line fails the test).
pub struct Posternd {
    guard: ChildGuard,
    pub log: PathBuf,
    /// The arguments the test gave (without the harness's `--audit-log`).
    pub argv: Vec<String>,
    pub ns_name: String,
    /// The audit log file (for `--audit-log -`: None, the lines are in `log`).
    pub audit: Option<PathBuf>,
}

impl Posternd {
    /// Start `posternd ARGS` in `ns` (stdout+stderr to a new log file in `log_dir`)
    /// and wait until it logs `posternd ready`. Panics with the log if it does not.
    pub fn start(ns: &Netns, args: &[String], log_dir: &Path) -> Posternd {
        match Posternd::try_start(ns, args, log_dir) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Posternd::start`], returning the log as the error instead of panicking.
    pub fn try_start(ns: &Netns, args: &[String], log_dir: &Path) -> Result<Posternd, String> {
        Posternd::try_start_wrapped(ns, &[], args, log_dir)
    }

    /// Like [`Posternd::try_start`], run through `wrapper` (a program that execs
    /// the rest of its argv, e.g. `unit-sandbox UNIT`): `wrapper… posternd ARGS`.
    pub fn try_start_wrapped(
        ns: &Netns,
        wrapper: &[String],
        args: &[String],
        log_dir: &Path,
    ) -> Result<Posternd, String> {
        let given = args
            .iter()
            .position(|a| a == "--audit-log")
            .and_then(|i| args.get(i + 1));
        let audit = match given.map(String::as_str) {
            Some("-") => AuditLog::Stdout,
            Some(file) => AuditLog::File(file.into()),
            None => AuditLog::Harness,
        };
        Posternd::try_start_audited(ns, wrapper, args, log_dir, audit)
    }

    /// Like [`Posternd::try_start_wrapped`], with the audit log said explicitly
    /// (e.g. a file the test's config names).
    pub fn try_start_audited(
        ns: &Netns,
        wrapper: &[String],
        args: &[String],
        log_dir: &Path,
        audit: AuditLog,
    ) -> Result<Posternd, String> {
        let program: Vec<String> = wrapper
            .iter()
            .cloned()
            .chain([posternd_bin().display().to_string()])
            .collect();
        Posternd::start_argv(ns, &program, args, log_dir, audit)
    }

    /// Like [`Posternd::try_start`] with another posternd: `program` is the
    /// argv up to and including it (e.g. `nsenter … chroot ROOT /usr/sbin/posternd`
    /// for an installed package); `-f ARGS` follow. Its audit log, if the args
    /// ask for one, is inside that root, not the harness's to check.
    pub fn try_start_program(
        ns: &Netns,
        program: &[String],
        args: &[String],
        log_dir: &Path,
    ) -> Result<Posternd, String> {
        Posternd::start_argv(ns, program, args, log_dir, AuditLog::Stdout)
    }

    fn start_argv(
        ns: &Netns,
        program: &[String],
        args: &[String],
        log_dir: &Path,
        audit: AuditLog,
    ) -> Result<Posternd, String> {
        let n = START_NO.fetch_add(1, Ordering::SeqCst);
        let (audit_args, audit) = match audit {
            AuditLog::Harness => {
                let file = log_dir.join(format!("posternd.{n}.audit.jsonl"));
                (
                    vec!["--audit-log".to_string(), file.display().to_string()],
                    Some(file),
                )
            }
            AuditLog::File(file) => (Vec::new(), Some(file)),
            AuditLog::Stdout => (Vec::new(), None),
        };
        // -f: in the foreground, logging to stderr (the log file read below).
        let argv: Vec<String> = program
            .iter()
            .cloned()
            .chain(["-f".into()])
            .chain(audit_args)
            .chain(args.iter().cloned())
            .collect();
        let log = log_dir.join(format!("posternd.{n}.log"));
        let f = std::fs::File::create(&log).expect("create log");
        let f2 = f.try_clone().expect("dup log fd");
        let child = ns
            .cmd(&argv[0])
            .args(&argv[1..])
            .env_remove("POSTERN_LOG")
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn posternd in {}: {e}", ns.name));
        let mut d = Posternd {
            guard: ChildGuard::from_child(child),
            log,
            argv: args.to_vec(),
            ns_name: ns.name.clone(),
            audit,
        };
        let mut exited = None;
        // Tight polling: tests may knock the moment the daemon says it is ready.
        let ready = wait_until(Duration::from_secs(20), Duration::from_millis(2), || {
            if d.log_text().contains("posternd ready") {
                return true;
            }
            if let Some(Ok(Some(st))) = d.guard.child_mut().map(|c| c.try_wait()) {
                exited = Some(st);
                return true;
            }
            false
        });
        if let Some(st) = exited {
            return Err(format!(
                "posternd {args:?} exited at start ({st}) in {}:\n{}",
                ns.name,
                d.log_text()
            ));
        }
        if !ready {
            return Err(format!(
                "posternd {args:?} not ready after 20 s in {}:\n{}",
                ns.name,
                d.log_text()
            ));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child (ip netns exec execs posternd).
        unsafe {
            libc::kill(self.pid() as libc::pid_t, sig);
        }
    }

    pub fn kill9(&mut self) {
        self.guard.kill9();
    }

    /// SIGTERM, then wait up to `timeout`; None if it had to be SIGKILLed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.guard.terminate(timeout)
    }

    /// Wait until the log contains `needle` `count` times or more.
    pub fn wait_log(&self, needle: &str, count: usize, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(25), || {
            self.log_text().matches(needle).count() >= count
        })
    }

    /// Wait until every pcap capture thread has opened its interface (posternd logs
    /// `pcap: capturing on` per interface). For tests about something else: posternd
    /// logs `posternd ready` before its pcap threads have opened their handles, so a
    /// knock sent right after `ready` can be missed (see
    /// posternd_lifecycle::a_knock_right_after_ready_is_served).
    pub fn wait_pcap_capturing(&self, interfaces: usize) -> bool {
        self.wait_log("pcap: capturing on", interfaces, Duration::from_secs(10))
    }

    /// `Name:\t<hex>` from /proc/PID/status (CapEff, CapPrm, CapBnd, …).
    pub fn cap_set(&self, name: &str) -> u64 {
        cap_set(self.pid(), name)
    }

    /// The audit log's lines so far, each checked against the schema (panics
    /// with the first bad one).
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        match &self.audit {
            Some(file) => audit_file_lines(file).unwrap_or_else(|e| panic!("{e}")),
            None => audit_lines_in(&self.log_text(), &self.log.display().to_string())
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// Wait until the audit log holds a line for which `want` is true; returns it.
    pub fn wait_audit(
        &self,
        within: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let mut found = None;
        wait_until(within, Duration::from_millis(25), || {
            found = self.audit_lines().into_iter().find(|l| want(l));
            found.is_some()
        });
        found
    }
}

impl Drop for Posternd {
    /// Every line posternd wrote to its audit log must match the schema.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // Stopped first: no line is being written while the file is read.
        self.guard.kill9();
        let checked = match &self.audit {
            Some(file) => audit_file_lines(file).map(drop),
            None => audit_lines_in(&self.log_text(), &self.log.display().to_string()).map(drop),
        };
        if let Err(e) = checked {
            panic!("posternd {:?} in {}: {e}", self.argv, self.ns_name);
        }
    }
}

/// docs/audit-log.schema.json, compiled once.
fn audit_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-log.schema.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{}: not a valid JSON Schema: {e}", path.display()))
    })
}

/// One audit log line, parsed and checked against the schema.
pub fn audit_line(line: &str) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    let errors: Vec<String> = audit_schema()
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "does not match docs/audit-log.schema.json ({}):\n{line}",
            errors.join("; ")
        ))
    }
}

/// Every line of an audit log file, checked (a missing file has none). Only
/// whole lines: one still being written has no newline yet.
pub fn audit_file_lines(file: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .enumerate()
        .map(|(i, l)| audit_line(l).map_err(|e| format!("{}:{}: {e}", file.display(), i + 1)))
        .collect()
}

/// The audit lines among posternd's output (`--audit-log -`): those that
/// start as every audit line does.
pub fn audit_lines_in(output: &str, name: &str) -> Result<Vec<serde_json::Value>, String> {
    output
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("{\"v\":"))
        .map(|(i, l)| audit_line(l).map_err(|e| format!("{name}:{}: {e}", i + 1)))
        .collect()
}

/// A capability set of a process, read from /proc/PID/status.
pub fn cap_set(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap_or_else(|e| panic!("{name} {line:?}: {e}"))
}

/// CapEff of a process.
pub fn cap_eff(pid: u32) -> u64 {
    cap_set(pid, "CapEff")
}

/// Bit mask of capability numbers.
pub fn caps_mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Readable list of the capabilities in a mask, e.g. `[12, 13]`.
pub fn caps_list(mask: u64) -> Vec<u32> {
    (0..64).filter(|b| mask & (1u64 << b) != 0).collect()
}

/// Elements of `inet postern grants4` in `ns` (`nft list set`), one per line.
/// Err with nft's stderr if the set cannot be listed.
pub fn nft_grants4(ns: &Netns) -> Result<Vec<String>, String> {
    let out = ns.run(&["nft", "list", "set", "inet", "postern", "grants4"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `elements = { 10.0.0.1 . tcp . 22 timeout 3s expires 2s, … }` (may wrap lines)
    let Some(start) = text.find("elements = {") else {
        return Ok(Vec::new());
    };
    let rest = &text[start + "elements = {".len()..];
    let body = &rest[..rest.find('}').unwrap_or(rest.len())];
    Ok(body
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect())
}

/// One knock with the real fwknop client from the client namespace:
/// `fwknop -A tcp/PORT -a CLIENT -D SERVER <keys> --no-rc-file EXTRA…`.
pub fn knock(svc: &Service, keys: &SpaKeys, extra: &[&str]) -> Output {
    knock_with(&SpaClient::Fwknop, svc, keys, extra)
}

/// [`knock`] with another client taking fwknop's flags (`postern`).
pub fn knock_with(client: &SpaClient, svc: &Service, keys: &SpaKeys, extra: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = vec![
        "-A".into(),
        format!("tcp/{}", svc.port),
        "-a".into(),
        svc.pair.client_ip.to_string(),
        "-D".into(),
        svc.pair.server_ip.to_string(),
    ];
    args.extend(
        keys.client_key_args()
            .expect("knock() needs base64 keys (SpaKeys::generate)"),
    );
    args.push("--no-rc-file".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    client.run(&svc.pair.client, home.path(), &args)
}

/// `fwknop REQUEST… -a ALLOW -D SERVER <keys> --no-rc-file` from `ns`, for knocks
/// between addresses of the test's own choosing; panics unless it exits 0 (the
/// client never learns whether it was granted).
pub fn fwknop_to(
    ns: &Netns,
    keys: &SpaKeys,
    allow: Ipv4Addr,
    server: Ipv4Addr,
    request: &[impl AsRef<str>],
) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = request.iter().map(|s| s.as_ref().to_string()).collect();
    args.extend([
        "-a".into(),
        allow.to_string(),
        "-D".into(),
        server.to_string(),
    ]);
    args.extend(keys.client_key_args().expect("base64 keys"));
    args.push("--no-rc-file".into());
    let out = SpaClient::Fwknop.run(ns, home.path(), &args);
    assert!(out.status.success(), "fwknop {args:?}: {}", describe(&out));
}

/// A fresh TCP connect from `ns` to `to:port` succeeds (within 400 ms).
pub fn connects(ns: &Netns, to: Ipv4Addr, port: u16) -> bool {
    tcp_connect_ok(ns, IpAddr::V4(to), port, Duration::from_millis(400))
}

/// Poll until connecting to `to:port` from `ns` succeeds (`want`) or fails.
pub fn wait_connects(ns: &Netns, to: Ipv4Addr, port: u16, want: bool, within: Duration) -> bool {
    wait_until(within, Duration::from_millis(100), || {
        connects(ns, to, port) == want
    })
}

/// Like [`knock`] but panics unless fwknop exits 0.
pub fn knock_ok(svc: &Service, keys: &SpaKeys, extra: &[&str]) {
    let out = knock(svc, keys, extra);
    assert!(
        out.status.success(),
        "fwknop {extra:?} failed: {}",
        describe(&out)
    );
}

/// Build one SPA packet with `fwknop -T -B FILE` (nothing is sent) and return its
/// bytes, exactly what fwknop would put in the UDP payload.
pub fn saved_packet(svc: &Service, keys: &SpaKeys, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spa.pkt");
    let file_s = file.display().to_string();
    let mut x: Vec<&str> = vec!["-T", "-B", &file_s];
    x.extend_from_slice(extra);
    knock_ok(svc, keys, &x);
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("fwknop -B wrote nothing: {e}"));
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    bytes
}

/// What a burst of datagrams sent from one socket got back.
#[derive(Debug, Default)]
pub struct UdpExchange {
    pub sent: usize,
    /// Datagrams received on the sending socket (any source).
    pub answers: Vec<(SocketAddr, Vec<u8>)>,
    /// Errors reported on the socket (an ICMP error shows up as ECONNREFUSED).
    pub errors: Vec<String>,
}

/// From inside `ns`: send each payload as one datagram to `to` from one socket,
/// pausing `pause` after every `batch` datagrams, then listen `linger` for anything
/// coming back to that socket.
pub fn udp_send_all(
    ns: &Netns,
    to: SocketAddr,
    payloads: Vec<Vec<u8>>,
    batch: usize,
    pause: Duration,
    linger: Duration,
) -> UdpExchange {
    ns.in_ns(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).expect("bind UDP");
        // Connected: ICMP errors for this destination are reported on the socket.
        sock.connect(to).expect("connect UDP");
        sock.set_nonblocking(true).expect("nonblocking");
        let mut ex = UdpExchange::default();
        let mut buf = vec![0u8; 65536];
        let mut drain = |ex: &mut UdpExchange| loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => ex.answers.push((from, buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => ex.errors.push(e.to_string()),
            }
        };
        for (i, p) in payloads.iter().enumerate() {
            loop {
                match sock.send(p) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => {
                        ex.errors.push(format!("send #{i}: {e}"));
                        break;
                    }
                }
            }
            ex.sent += 1;
            if batch > 0 && (i + 1) % batch == 0 {
                drain(&mut ex);
                std::thread::sleep(pause);
            }
        }
        let end = Instant::now() + linger;
        while Instant::now() < end {
            drain(&mut ex);
            std::thread::sleep(Duration::from_millis(20));
        }
        ex
    })
}

/// Start the real fwknopd in the foreground in `ns` with the given files
/// (`fwknopd -f -v -c CONF -a ACCESS`); stdout/stderr to `log`.
pub fn spawn_fwknopd(ns: &Netns, conf: &Path, access: &Path, log: &Path) -> ChildGuard {
    let (c, a) = (conf.display().to_string(), access.display().to_string());
    ns.spawn_logged(&["fwknopd", "-f", "-v", "-v", "-c", &c, "-a", &a], log)
}

/// [`spawn_fwknopd`], waited for until it serves (its log says it entered the
/// main loop or started the UDP server). Panics with the log if it does not start.
pub fn start_fwknopd(ns: &Netns, conf: &Path, access: &Path, log: &Path) -> ChildGuard {
    let mut fwknopd = spawn_fwknopd(ns, conf, access, log);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let up = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        let log = log_text();
        log.contains("main event loop")
            || log.contains("Kicking off UDP server")
            || !fwknopd.is_running()
    });
    // The UDP server binds right after saying so.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        up && fwknopd.is_running(),
        "fwknopd did not start:\n{}",
        log_text()
    );
    fwknopd
}

/// Scenario runner: runs each named closure concurrently on its own thread and
/// panics with every failure (and a timing line for each success).
pub fn run_scenarios(title: &str, scenarios: Vec<(String, Box<dyn FnOnce() + Send>)>) {
    let results: Vec<(String, Result<Duration, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .into_iter()
            .map(|(name, f)| {
                let h = s.spawn(move || {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                });
                (name, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                let r = h.join().map_err(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                });
                (n, r)
            })
            .collect()
    });
    println!("{title}");
    let mut failures = Vec::new();
    for (n, r) in &results {
        match r {
            Ok(d) => println!("  {n:<40} ok    {:>6} ms", d.as_millis()),
            Err(e) => {
                println!("  {n:<40} FAILED");
                failures.push(format!("=== {n} ===\n{e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{title}: {} of {} failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

/// `/metrics` of a posternd serving Prometheus on `listen`, fetched with curl
/// from inside `ns`; panics unless it answers.
pub fn scrape_metrics(ns: &Netns, listen: &str) -> String {
    let out = ns.run(&["curl", "-sf", &format!("http://{listen}/metrics")]);
    assert!(out.status.success(), "scrape: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `series` (its exact text before the value, labels
/// included) in a Prometheus scrape; 0 when absent.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
