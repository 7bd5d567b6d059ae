//! Process and namespace plumbing: threads that live in a namespace, /proc
//! readings of the server process (CPU, RSS, its namespace's UDP and interface
//! counters), and a small non-cryptographic RNG for garbage.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

/// Move the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid fd; affects only the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawn a named thread that first joins the namespace at `ns` (a path such as
/// `/var/run/netns/NAME`). Processes it spawns inherit that namespace.
pub fn spawn_in<T: Send + 'static>(
    ns: PathBuf,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter_netns(&ns).unwrap_or_else(|e| panic!("setns {}: {e}", ns.display()));
            f()
        })
        .expect("spawn thread")
}

/// Run `f` on a thread inside namespace `ns` and wait for it.
pub fn run_in<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns, "bench-ns", f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Raise RLIMIT_NOFILE to its hard limit (the burst keeps 500+ sockets open).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// utime + stime of a process (all its threads, live and exited), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Counters of the namespace a process lives in.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetCounters {
    /// UDP datagrams delivered to sockets.
    pub udp_in: u64,
    /// UDP datagrams dropped because a socket's receive buffer was full.
    pub udp_rcvbuf_errors: u64,
    /// UDP datagrams to a port nobody listens on.
    pub udp_no_ports: u64,
    /// Packets received by the interface.
    pub if_rx: u64,
    /// Packets the interface dropped on receive.
    pub if_rx_dropped: u64,
}

impl NetCounters {
    pub fn read(pid: u32, iface: &str) -> NetCounters {
        let mut c = NetCounters::default();
        if let Ok(snmp) = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")) {
            let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
            if udp.len() >= 2 {
                let names: Vec<&str> = udp[0].split_whitespace().collect();
                let vals: Vec<&str> = udp[1].split_whitespace().collect();
                let get = |n: &str| {
                    names
                        .iter()
                        .position(|x| *x == n)
                        .and_then(|i| vals.get(i))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                c.udp_in = get("InDatagrams");
                c.udp_rcvbuf_errors = get("RcvbufErrors");
                c.udp_no_ports = get("NoPorts");
            }
        }
        if let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            for l in dev.lines() {
                let Some((name, rest)) = l.split_once(':') else {
                    continue;
                };
                if name.trim() == iface {
                    let v: Vec<u64> = rest
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    c.if_rx = v.get(1).copied().unwrap_or(0);
                    c.if_rx_dropped = v.get(3).copied().unwrap_or(0);
                }
            }
        }
        c
    }

    pub fn delta(&self, before: &NetCounters) -> NetCounters {
        NetCounters {
            udp_in: self.udp_in.saturating_sub(before.udp_in),
            udp_rcvbuf_errors: self
                .udp_rcvbuf_errors
                .saturating_sub(before.udp_rcvbuf_errors),
            udp_no_ports: self.udp_no_ports.saturating_sub(before.udp_no_ports),
            if_rx: self.if_rx.saturating_sub(before.if_rx),
            if_rx_dropped: self.if_rx_dropped.saturating_sub(before.if_rx_dropped),
        }
    }
}

/// splitmix64: fast, seeded from /dev/urandom; for garbage and salts, not keys.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let b = postern_e2e::scenario::random_bytes(8);
        Rng(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}
