//! End-to-end test harness for postern.
//!
//! Network namespaces (`ip netns`) give each test its own isolated network stack:
//! [`pair`] builds a client and a server namespace joined by a veth, with IPv4 and
//! IPv6 addresses. Traffic helpers ([`tcp_listen`], [`tcp_connect_ok`]) run on a
//! thread that has joined the namespace with `setns(2)`, so no external tool (nc,
//! socat, python) is needed. Everything is cleaned up on `Drop`, panics included.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use tempfile;

pub mod attacker;
pub mod conformance;
pub mod firewalld;
pub mod fleet;
pub mod lan;
pub mod native;
pub mod posternd;
pub mod routed;
pub mod scenario;
pub mod scratch_root;
pub mod sshd;
pub mod stock;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Root of the Cargo workspace (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// `<repo>/tests/data`: the test vectors and other data the tests read
/// (see its README for where each set came from).
pub fn test_data_dir() -> PathBuf {
    workspace_root().join("tests").join("data")
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Why netns tests cannot run here, or `None` if they can. Probed once per process.
fn netns_unusable_reason() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Some("not running as root".into());
            }
            let name = format!("pn-probe-{}", std::process::id());
            match Command::new("ip").args(["netns", "add", &name]).output() {
                Err(e) => return Some(format!("cannot run `ip`: {e}")),
                Ok(o) if !o.status.success() => {
                    return Some(format!(
                        "`ip netns add` failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ))
                }
                Ok(_) => {}
            }
            let exec = Command::new("ip")
                .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
                .output();
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            match exec {
                Err(e) => Some(format!("`ip netns exec` failed: {e}")),
                Ok(o) if !o.status.success() => Some(format!(
                    "`ip netns exec` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Ok(_) => None,
            }
        })
        .clone()
}

/// True if network-namespace tests can run (root and a working `ip netns`).
///
/// If they cannot: when `CI=true` this panics (the test must fail, not skip);
/// otherwise it prints a skip note and returns false.
pub fn require_root() -> bool {
    match netns_unusable_reason() {
        None => true,
        Some(why) => {
            if in_ci() {
                panic!(
                    "CI=true but network-namespace tests cannot run: {why}. \
                     Run the e2e tests as root with iproute2 (`ip netns`) available."
                );
            }
            eprintln!("SKIPPED: network-namespace test needs root and `ip netns` ({why})");
            false
        }
    }
}

/// Like [`require_root`] but for tests that need a program installed (e.g. `fwknop`).
/// Panics in CI if missing; otherwise prints a skip note and returns false.
pub fn require_program(program: &str) -> bool {
    if which(program).is_some() {
        return true;
    }
    if in_ci() {
        panic!("CI=true but required program `{program}` is not installed");
    }
    eprintln!("SKIPPED: `{program}` is not installed");
    false
}

/// Locate a program on PATH (also searching the sbin directories).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"];
    let found = path
        .split(':')
        .chain(extra)
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// A background process or helper thread; stopped (and reaped) on drop.
pub struct ChildGuard {
    inner: GuardInner,
}

enum GuardInner {
    Process(Child),
    Thread {
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
}

impl ChildGuard {
    /// Wrap an already-spawned child process.
    pub fn from_child(child: Child) -> ChildGuard {
        ChildGuard {
            inner: GuardInner::Process(child),
        }
    }

    /// Process id (for in-process helper threads: the test process's own pid).
    pub fn pid(&self) -> u32 {
        match &self.inner {
            GuardInner::Process(c) => c.id(),
            GuardInner::Thread { .. } => std::process::id(),
        }
    }

    /// SIGKILL the process and reap it (helper threads: stop them).
    pub fn kill9(&mut self) {
        match &mut self.inner {
            GuardInner::Process(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            GuardInner::Thread { stop, handle } => {
                stop.store(true, Ordering::SeqCst);
                if let Some(h) = handle.take() {
                    let _ = h.join();
                }
            }
        }
    }

    /// Send SIGTERM (processes only) and wait up to `timeout` for exit; SIGKILL after.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let GuardInner::Process(c) = &mut self.inner {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let st = self.wait_timeout(timeout);
            if st.is_none() {
                self.kill9();
            }
            return st;
        }
        self.kill9();
        None
    }

    /// True while the process (or thread) is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.inner {
            GuardInner::Process(c) => matches!(c.try_wait(), Ok(None)),
            GuardInner::Thread { handle, .. } => {
                handle.as_ref().map(|h| !h.is_finished()).unwrap_or(false)
            }
        }
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let GuardInner::Process(c) = &mut self.inner else {
            return None;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The underlying child process, if this guard holds one.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        match &mut self.inner {
            GuardInner::Process(c) => Some(c),
            GuardInner::Thread { .. } => None,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A network namespace created with `ip netns add`; deleted on drop, after
/// SIGKILLing every process still inside it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Create a namespace named `pn-{tag}-{pid}-{counter}` with `lo` up. The
    /// first call of a test process removes those a dead test process left.
    pub fn new(tag: &str) -> Netns {
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(remove_dead_runs_namespaces);
        let name = format!("pn-{}-{}-{}", tag, std::process::id(), next_id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("spawn `ip netns add`");
        if !out.status.success() {
            panic!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = Netns { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME program` (add args, env, stdio as needed).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn cmd_argv(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// Run to completion inside the namespace; panics only if it cannot be spawned.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.cmd_argv(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot spawn {argv:?} in netns {}: {e}", self.name))
    }

    /// Run to completion; panics with argv and stderr unless it exits 0. Returns stdout.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        if !out.status.success() {
            panic!(
                "{argv:?} in netns {} failed ({}):\nstdout: {}\nstderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start a background process in the namespace (stdio to /dev/null); killed on drop.
    pub fn spawn(&self, argv: &[&str]) -> ChildGuard {
        let child = self
            .cmd_argv(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {argv:?} in netns {}: {e}", self.name));
        ChildGuard::from_child(child)
    }

    /// Start a background process with stdout and stderr appended to `log`.
    pub fn spawn_logged(&self, argv: &[&str], log: &Path) -> ChildGuard {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let f2 = f.try_clone().expect("dup log fd");
        let child = self
            .cmd_argv(argv)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {argv:?} in netns {}: {e}", self.name));
        ChildGuard::from_child(child)
    }

    /// Run `f` on a fresh thread that has joined this namespace; returns its result.
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Pids of processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The pid of the test process that made namespace `name`
/// (`pn-{tag}-{pid}-{counter}`), if the name has that form.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("pn-")?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

/// Delete the namespaces (and kill what runs in them) whose test process is
/// gone: a killed test run cannot clean up after itself, the next one does.
fn remove_dead_runs_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = creator_pid(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                drop(Netns { name });
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let me = std::process::id();
        for _ in 0..3 {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) of a process inside the namespace this test created.
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn enter_netns(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid fd; only affects the calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Two namespaces joined by a veth (`v0` in client, `v1` in server).
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    pub client_ip6: Ipv6Addr,
    pub server_ip6: Ipv6Addr,
}

impl Pair {
    /// Interface name of the veth end inside the client namespace.
    pub const CLIENT_IF: &'static str = "v0";
    /// Interface name of the veth end inside the server namespace.
    pub const SERVER_IF: &'static str = "v1";
}

/// Build a client/server namespace pair joined by a veth with a unique /30 in
/// 10.200.0.0–10.249.255.255 and a ULA /64 (fd00:…), both ends up.
pub fn pair(tag: &str) -> Pair {
    let client = Netns::new(&format!("{tag}c"));
    let server = Netns::new(&format!("{tag}s"));
    let seed = (std::process::id() as u64)
        .wrapping_mul(7919)
        .wrapping_add(next_id() as u64);
    let k = ((seed / (256 * 64)) % 50) as u8;
    let x = ((seed / 64) % 256) as u8;
    let y = ((seed % 64) * 4) as u8;
    let client_ip = Ipv4Addr::new(10, 200 + k, x, y + 1);
    let server_ip = Ipv4Addr::new(10, 200 + k, x, y + 2);
    let (a, b) = (k as u16, ((x as u16) << 8) | y as u16);
    let client_ip6 = Ipv6Addr::new(0xfd00, 0x5057, a, b, 0, 0, 0, 1);
    let server_ip6 = Ipv6Addr::new(0xfd00, 0x5057, a, b, 0, 0, 0, 2);

    client.run_ok(&[
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
        &server.name,
    ]);
    client.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{client_ip}/30"),
        "dev",
        Pair::CLIENT_IF,
    ]);
    server.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{server_ip}/30"),
        "dev",
        Pair::SERVER_IF,
    ]);
    client.run_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{client_ip6}/64"),
        "dev",
        Pair::CLIENT_IF,
        "nodad",
    ]);
    server.run_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{server_ip6}/64"),
        "dev",
        Pair::SERVER_IF,
        "nodad",
    ]);
    client.run_ok(&["ip", "link", "set", Pair::CLIENT_IF, "up"]);
    server.run_ok(&["ip", "link", "set", Pair::SERVER_IF, "up"]);
    let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let c = client.run(&["ip", "-o", "link", "show", Pair::CLIENT_IF]);
        let s = server.run(&["ip", "-o", "link", "show", Pair::SERVER_IF]);
        String::from_utf8_lossy(&c.stdout).contains("LOWER_UP")
            && String::from_utf8_lossy(&s.stdout).contains("LOWER_UP")
    });
    assert!(
        up,
        "veth between {} and {} did not come up",
        client.name, server.name
    );
    Pair {
        client,
        server,
        client_ip,
        server_ip,
        client_ip6,
        server_ip6,
    }
}

/// A TCP listener inside `ns` on port `port` (IPv4 and IPv6) that accepts and
/// immediately closes every connection, until the guard is dropped.
pub fn tcp_listen(ns: &Netns, port: u16) -> ChildGuard {
    let path = ns.path();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let handle = std::thread::spawn(move || {
        let setup = || -> Result<Vec<TcpListener>, String> {
            enter_netns(&path).map_err(|e| format!("setns {}: {e}", path.display()))?;
            let mut ls = Vec::new();
            let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .map_err(|e| format!("bind 0.0.0.0:{port}: {e}"))?;
            ls.push(v4);
            if let Some(v6) = bind_v6only(port) {
                ls.push(v6);
            }
            for l in &ls {
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
            }
            Ok(ls)
        };
        let listeners = match setup() {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        while !stop2.load(Ordering::SeqCst) {
            let mut got = false;
            for l in &listeners {
                if let Ok((s, _)) = l.accept() {
                    got = true;
                    drop(s);
                }
            }
            if !got {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("tcp_listen in {}: {e}", ns.name),
        Err(_) => panic!("tcp_listen in {}: listener thread did not start", ns.name),
    }
    ChildGuard {
        inner: GuardInner::Thread {
            stop,
            handle: Some(handle),
        },
    }
}

/// Bind `[::]:port` with IPV6_V6ONLY so it coexists with the IPv4 socket.
fn bind_v6only(port: u16) -> Option<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket API calls on a fresh fd we own; the fd is handed to
    // TcpListener (which closes it) or closed here on error.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &one as *const _ as *const _,
            sz,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            sz,
        );
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let r = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        if r != 0 || libc::listen(fd, 128) != 0 {
            libc::close(fd);
            return None;
        }
        Some(TcpListener::from_raw_fd(fd))
    }
}

/// One new TCP connection attempt from inside `ns`; true if it was established
/// within `timeout`.
pub fn tcp_connect_ok(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    ns.in_ns(move || TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout).is_ok())
}

/// An established TCP connection from the client namespace of `pair` to a
/// listener on `port` in its server namespace (closed once accepted): the
/// client's end and the server's end.
pub fn tcp_established(pair: &Pair, port: u16) -> (TcpStream, TcpStream) {
    let listener = pair.server.in_ns(move || {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap_or_else(|e| panic!("bind {port}: {e}"))
    });
    let to = SocketAddr::from((pair.server_ip, port));
    let client = pair.client.in_ns(move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"))
    });
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// True if a byte written on `from` arrives on `to` within a second.
pub fn tcp_carries(from: &mut TcpStream, to: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut byte = [0u8; 1];
    to.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && from.write_all(b"x").is_ok()
        && to.read_exact(&mut byte).is_ok()
}

/// Poll `f` every `step` until it returns true or `timeout` elapses. Returns the
/// last result.
pub fn wait_until(timeout: Duration, step: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// Path of a workspace binary, built once per process with `cargo build --bin NAME`.
/// Panics with cargo's output if the build fails.
pub fn workspace_bin(name: &str) -> PathBuf {
    match try_workspace_bin(name) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`workspace_bin`] but returns the build error instead of panicking.
pub fn try_workspace_bin(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = map.get(name) {
        return r.clone();
    }
    let r = build_bin(name);
    map.insert(name.to_string(), r.clone());
    r
}

fn build_bin(name: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--bin", name])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{cargo} build --bin {name}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --bin {name}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join(name);
    if !bin.is_file() {
        return Err(format!(
            "built `{name}` but {} does not exist",
            bin.display()
        ));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_dead_test_runs_are_removed() {
        if !require_root() {
            return;
        }
        assert_eq!(creator_pid("pn-nat-fw-1234-7"), Some(1234));
        assert_eq!(creator_pid("pn-probe-99"), None);
        assert_eq!(creator_pid("other-1-2"), None);
        // A pid no process has: above pid_max.
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .map(|t| t.trim().parse().unwrap_or(4_194_304))
            .unwrap_or(4_194_304);
        let dead = format!("pn-sweep-{}-1", pid_max + 1);
        let alive = format!("pn-sweep-{}-999999", std::process::id());
        for name in [&dead, &alive] {
            assert!(Command::new("ip")
                .args(["netns", "add", name])
                .status()
                .unwrap()
                .success());
        }
        // Something left running inside, as a killed run would leave it.
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", &dead, "sleep", "60"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        remove_dead_runs_namespaces();
        let listed = |name: &str| Path::new("/run/netns").join(name).exists();
        assert!(!listed(&dead), "the dead run's namespace is still there");
        assert!(listed(&alive), "a live run's namespace was removed");
        assert!(sleeper.wait().is_ok());
        drop(Netns { name: alive });
    }

    #[test]
    fn wait_until_is_bounded() {
        let t = Instant::now();
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                n >= 3
            }
        ));
    }

    #[test]
    fn test_data_has_vectors() {
        assert!(
            test_data_dir().join("vectors/must-reject.txt").is_file(),
            "{}",
            test_data_dir().display()
        );
    }
}
