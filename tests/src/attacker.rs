//! An attacker next to a server namespace, and what it sees come back.
//!
//! - [`Attacker`]: its own namespace, joined to the server namespace by its own
//!   veth (`a0` ↔ `a1`), with any number of IPv4 source addresses (192.0.2.x;
//!   namespaces do not share addresses, so every test can use the same ones);
//! - [`Holder`]: a background thread holding idle (or slowly trickling) TCP
//!   connections from every address, reconnecting as soon as one is closed;
//! - [`Sniffer`]: an `AF_PACKET` socket on the attacker's veth recording every
//!   IPv4 packet the server sends it.

use crate::{enter_netns, wait_until, Netns};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An attacker namespace with `addrs` on `a0`; the server reaches it on `a1`.
pub struct Attacker {
    pub ns: Netns,
    pub addrs: Vec<Ipv4Addr>,
    /// The server's address on the attacker's link.
    pub server_ip: Ipv4Addr,
}

impl Attacker {
    pub const IF: &'static str = "a0";
    pub const SERVER_IF: &'static str = "a1";

    /// `n` source addresses 192.0.2.1…n; the server is 192.0.2.254 on its `a1`.
    /// IPv6 is off on the link, so nothing but what the test causes crosses it.
    pub fn new(tag: &str, server: &Netns, n: u8) -> Attacker {
        assert!((1..=250).contains(&n), "1 to 250 addresses");
        let ns = Netns::new(&format!("{tag}a"));
        let server_ip = Ipv4Addr::new(192, 0, 2, 254);
        ns.run_ok(&[
            "ip",
            "link",
            "add",
            Self::IF,
            "type",
            "veth",
            "peer",
            "name",
            Self::SERVER_IF,
            "netns",
            &server.name,
        ]);
        for (side, dev) in [(&ns, Self::IF), (server, Self::SERVER_IF)] {
            side.run_ok(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
            ]);
        }
        let addrs: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        for a in &addrs {
            ns.run_ok(&["ip", "addr", "add", &format!("{a}/24"), "dev", Self::IF]);
        }
        server.run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{server_ip}/24"),
            "dev",
            Self::SERVER_IF,
        ]);
        ns.run_ok(&["ip", "link", "set", Self::IF, "up"]);
        server.run_ok(&["ip", "link", "set", Self::SERVER_IF, "up"]);
        let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            let o = ns.run(&["ip", "-o", "link", "show", Self::IF]);
            String::from_utf8_lossy(&o.stdout).contains("LOWER_UP")
        });
        assert!(up, "attacker veth in {} did not come up", ns.name);
        Attacker {
            ns,
            addrs,
            server_ip,
        }
    }

    /// Hold `per_addr` connections to the server's `port` from every address;
    /// with `trickle`, each one sends a byte every `trickle` (slowloris).
    pub fn hold(&self, port: u16, per_addr: usize, trickle: Option<Duration>) -> Holder {
        let path = self.ns.path();
        let to = SocketAddrV4::new(self.server_ip, port);
        let addrs = self.addrs.clone();
        let shared = Arc::new(HoldShared::default());
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&path).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            hold_loop(&addrs, to, per_addr, trickle, &s);
        });
        Holder {
            shared,
            thread: Some(thread),
        }
    }
}

#[derive(Default)]
struct HoldShared {
    stop: AtomicBool,
    alive: AtomicUsize,
    opened: AtomicUsize,
    closed: AtomicUsize,
    /// Bytes the server sent on any held connection (must stay 0).
    received: AtomicUsize,
}

/// Connections held by a background thread; stopped on drop.
pub struct Holder {
    shared: Arc<HoldShared>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`Holder`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct HoldStats {
    /// Connections established now.
    pub alive: usize,
    pub opened: usize,
    /// Connections the server closed.
    pub closed: usize,
    /// Bytes the server sent on them.
    pub received: usize,
}

impl Holder {
    pub fn stats(&self) -> HoldStats {
        let s = &self.shared;
        HoldStats {
            alive: s.alive.load(Ordering::SeqCst),
            opened: s.opened.load(Ordering::SeqCst),
            closed: s.closed.load(Ordering::SeqCst),
            received: s.received.load(Ordering::SeqCst),
        }
    }

    /// Stop, close every connection, and say what happened.
    pub fn stop(mut self) -> HoldStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Held {
    stream: TcpStream,
    opened: Instant,
    wrote: Instant,
}

fn hold_loop(
    addrs: &[Ipv4Addr],
    to: SocketAddrV4,
    per_addr: usize,
    trickle: Option<Duration>,
    s: &HoldShared,
) {
    let mut held: Vec<Vec<Held>> = addrs.iter().map(|_| Vec::new()).collect();
    // An address whose connection was closed at once (refused) waits a little
    // before trying again, so a refusing server is not flooded.
    let mut next_try: Vec<Instant> = vec![Instant::now(); addrs.len()];
    let mut buf = [0u8; 512];
    while !s.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        for (i, conns) in held.iter_mut().enumerate() {
            conns.retain_mut(|h| {
                let open = match h.stream.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => {
                        s.received.fetch_add(n, Ordering::SeqCst);
                        true
                    }
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                };
                let open = open
                    && match trickle {
                        Some(every) if now.duration_since(h.wrote) >= every => {
                            h.wrote = now;
                            h.stream.write(b"A").is_ok()
                        }
                        _ => true,
                    };
                if !open {
                    s.closed.fetch_add(1, Ordering::SeqCst);
                    if now.duration_since(h.opened) < Duration::from_millis(50) {
                        next_try[i] = now + Duration::from_millis(20);
                    }
                }
                open
            });
            while conns.len() < per_addr && Instant::now() >= next_try[i] {
                match connect_from(addrs[i], to, Duration::from_millis(300)) {
                    Ok(stream) => {
                        s.opened.fetch_add(1, Ordering::SeqCst);
                        let t = Instant::now();
                        conns.push(Held {
                            stream,
                            opened: t,
                            wrote: t,
                        });
                    }
                    Err(_) => {
                        next_try[i] = Instant::now() + Duration::from_millis(20);
                    }
                }
            }
        }
        s.alive
            .store(held.iter().map(Vec::len).sum(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A TCP connection from `src` (bound before connecting), non-blocking once up.
pub fn connect_from(src: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = a.port().to_be();
        sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
        sa
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket fd, owned by the TcpStream from here on (closed on
    // every error path by its drop).
    let stream = unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        TcpStream::from_raw_fd(fd)
    };
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let (from, dest) = (sockaddr(SocketAddrV4::new(src, 0)), sockaddr(to));
    // SAFETY: bind/connect/poll on our own fd with correctly sized addresses.
    unsafe {
        if libc::bind(fd, &from as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(fd, &dest as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) != 1 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
        }
    }
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// One IPv4 packet from the watched address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// IP protocol number (1 ICMP, 6 TCP, 17 UDP).
    pub protocol: u8,
    /// Bytes after the transport header (TCP, UDP), or after the IP header.
    pub payload: usize,
    /// TCP flags, 0 for others.
    pub tcp_flags: u8,
}

impl Seen {
    pub fn is_tcp_without_payload(&self) -> bool {
        self.protocol == 6 && self.payload == 0
    }
}

/// Every IPv4 packet arriving on an interface of a namespace from one address.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    /// Start recording on `dev` in `ns` packets whose source is `from`; returns
    /// once the socket is open.
    pub fn start(ns: &Netns, dev: &str, from: Ipv4Addr) -> Sniffer {
        let path = ns.path();
        let dev = std::ffi::CString::new(dev).expect("interface name");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let sock = match enter_netns(&path)
                .map_err(|e| format!("setns: {e}"))
                .and_then(|()| packet_socket(&dev))
            {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut frame = vec![0u8; 65536];
            while !stop2.load(Ordering::SeqCst) {
                // SAFETY: recv into our own buffer on our own socket (100 ms timeout).
                let n = unsafe { libc::recv(sock.0, frame.as_mut_ptr().cast(), frame.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(p) = parse_ipv4_from(&frame[..n as usize], from) {
                    seen2.lock().unwrap().push(p);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("sniffer in {}: {e}", ns.name),
            Err(_) => panic!("sniffer in {}: thread did not start", ns.name),
        }
        Sniffer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What was seen so far, forgetting it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Wait up to `within` until something matching `f` has been seen.
    pub fn wait_for(&self, within: Duration, f: impl Fn(&Seen) -> bool) -> bool {
        wait_until(within, Duration::from_millis(10), || {
            self.seen.lock().unwrap().iter().any(&f)
        })
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing the fd this wrapper owns.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// An AF_PACKET socket on `dev` receiving every frame, with a 100 ms timeout.
fn packet_socket(dev: &std::ffi::CStr) -> Result<Fd, String> {
    let all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket calls on a fresh fd owned by `Fd`.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all);
        if fd < 0 {
            return Err(format!("AF_PACKET socket: {}", io::Error::last_os_error()));
        }
        let fd = Fd(fd);
        let index = libc::if_nametoindex(dev.as_ptr());
        if index == 0 {
            return Err(format!("no interface {dev:?}"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as libc::c_int;
        if libc::bind(
            fd.0,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(format!("bind AF_PACKET: {}", io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        Ok(fd)
    }
}

/// An Ethernet frame carrying IPv4 from `from`, summarized.
fn parse_ipv4_from(frame: &[u8], from: Ipv4Addr) -> Option<Seen> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.len() < 20 {
        return None;
    }
    if Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]) != from {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let protocol = ip[9];
    let l4 = ip.get(header..total)?;
    let (payload, tcp_flags) = match protocol {
        6 if l4.len() >= 20 => (l4.len() - usize::from(l4[12] >> 4) * 4, l4[13]),
        17 if l4.len() >= 8 => (l4.len() - 8, 0),
        _ => (l4.len(), 0),
    };
    Some(Seen {
        protocol,
        payload,
        tcp_flags,
    })
}

/// From the attacker namespace: a TCP connection from `src` to `to` sending
/// `payload` (then closing its side), and every byte the server sent back before
/// its end (EOF or reset), read for at most `within`.
pub fn tcp_exchange(
    ns: &Netns,
    src: Ipv4Addr,
    to: SocketAddrV4,
    payload: Vec<u8>,
    within: Duration,
) -> Result<Vec<u8>, String> {
    ns.in_ns(move || {
        let mut s = connect_from(src, to, Duration::from_secs(2))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(within))
            .map_err(|e| e.to_string())?;
        if !payload.is_empty() {
            s.write_all(&payload).map_err(|e| format!("write: {e}"))?;
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut back = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(back),
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(back),
                Err(e) => return Err(format!("read: {e} after {} bytes", back.len())),
            }
        }
    })
}

/// From the attacker namespace: each payload as one UDP datagram from `src` to
/// `to` (nothing is read back). Returns how many were sent.
pub fn udp_send_from(ns: &Netns, src: Ipv4Addr, to: SocketAddrV4, payloads: Vec<Vec<u8>>) -> usize {
    ns.in_ns(move || {
        let sock = std::net::UdpSocket::bind(SocketAddrV4::new(src, 0))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        payloads
            .iter()
            .filter(|p| sock.send_to(p, to).is_ok())
            .count()
    })
}

/// From the attacker namespace: a TCP connection from `src` to `to` is
/// established within `timeout`.
pub fn connects_from(ns: &Netns, src: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> bool {
    ns.in_ns(move || connect_from(src, to, timeout).is_ok())
}

/// Resident memory of a process, from /proc/PID/status (VmRSS, KiB).
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time a process has used so far (user + system, all threads), from
/// /proc/PID/stat, in milliseconds. Reported beside attack figures, never asserted.
pub fn cpu_time_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), so 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    ticks * 1000 / hz
}

/// `addr:port` as a SocketAddr (for the harness's UDP helpers).
pub fn v4(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr), port)
}
