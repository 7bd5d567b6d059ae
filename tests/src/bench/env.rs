//! One measurement's world: a fresh client/server namespace pair, many client
//! source addresses, a TCP listener on the protected port, and one SPA server
//! (posternd with its nftables or iptables action, or real fwknopd with iptables).

use super::net::{connect_until, try_connect, Udp};
use super::sys::{run_in, Rng};
use postern_e2e::{pair, tcp_listen, ChildGuard, Netns, Pair};
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, SpaMessage};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The protected TCP service.
pub const PORT: u16 = 22022;
/// The SPA port.
pub const SPA_PORT: u16 = 62201;
/// The server's address on the knock subnet (client sources are 172.16.1.0 on).
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// nftables table posternd is given.
pub const NFT_TABLE: &str = "postern_bench";
/// posternd's iptables chain (its default).
pub const IPT_CHAIN: &str = "POSTERN_INPUT";
/// Grant lifetime: longer than any measurement, so nothing expires mid-way.
const ACCESS_TIMEOUT: u32 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    PosterndUdp,
    PosterndPcap,
    /// NFQUEUE capture; its queue rule by iptables (the kernel may lack nft_queue).
    PosterndNfq,
    /// UDP capture, iptables action (a migrating fwknopd user's default):
    /// grants are rules in POSTERN_INPUT, the port closed by an INPUT DROP.
    PosterndIptables,
    /// UDP capture, nftables, postern's own protocol (a native stanza).
    PosterndNative,
    FwknopdPcap,
    FwknopdUdp,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::PosterndUdp,
        Kind::PosterndPcap,
        Kind::PosterndNfq,
        Kind::PosterndIptables,
        Kind::PosterndNative,
        Kind::FwknopdPcap,
        Kind::FwknopdUdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PosterndUdp => "posternd-udp",
            Kind::PosterndPcap => "posternd-pcap",
            Kind::PosterndNfq => "posternd-nfq",
            Kind::PosterndIptables => "posternd-iptables",
            Kind::PosterndNative => "posternd-native",
            Kind::FwknopdPcap => "fwknopd-pcap",
            Kind::FwknopdUdp => "fwknopd-udp",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::PosterndUdp => "posternd (UDP, nftables)",
            Kind::PosterndPcap => "posternd (pcap, nftables)",
            Kind::PosterndNfq => "posternd (NFQUEUE, nftables)",
            Kind::PosterndIptables => "posternd (UDP, iptables)",
            Kind::PosterndNative => "posternd native (UDP, nftables)",
            Kind::FwknopdPcap => "fwknopd 2.6.10 (pcap, iptables)",
            Kind::FwknopdUdp => "fwknopd 2.6.10 (UDP server, iptables)",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn is_posternd(self) -> bool {
        matches!(
            self,
            Kind::PosterndUdp
                | Kind::PosterndPcap
                | Kind::PosterndNfq
                | Kind::PosterndIptables
                | Kind::PosterndNative
        )
    }

    /// Knocks in postern's own protocol, not fwknop's format.
    pub fn is_native(self) -> bool {
        self == Kind::PosterndNative
    }

    /// Grants are iptables rules and the port is closed by an INPUT DROP.
    pub fn uses_iptables(self) -> bool {
        !self.is_posternd() || self == Kind::PosterndIptables
    }

    /// The iptables chain holding the grants.
    pub fn grant_chain(self) -> &'static str {
        if self.is_posternd() {
            IPT_CHAIN
        } else {
            "FWKNOP_INPUT"
        }
    }

    /// Its UDP socket receives the packets (not pcap or a queue).
    pub fn udp_socket(self) -> bool {
        matches!(
            self,
            Kind::PosterndUdp | Kind::PosterndIptables | Kind::PosterndNative | Kind::FwknopdUdp
        )
    }
}

/// What the knocks are sealed with: fwknop's format (AES + HMAC keys) or
/// postern's own protocol (a server key and a registered client key).
#[derive(Clone)]
pub enum Keys {
    /// Random keys like `fwknop --key-gen` (32-byte AES key, 64-byte HMAC-SHA256 key).
    Fwknop {
        key: Vec<u8>,
        hmac: Vec<u8>,
    },
    Native(Arc<NativeKeys>),
}

/// postern's native protocol: the server's key, the one registered client every
/// knock is sealed by (each knock has its own nonce and so its own replay key),
/// and a stranger: a client key never registered, whose packets are sealed to
/// the right server key, pass mac1 and are refused only after the Diffie-Hellman.
pub struct NativeKeys {
    pub server: spa_native::ServerKey,
    pub client: spa_native::ClientKey,
    pub stranger: spa_native::ClientKey,
    pub hybrid: bool,
}

/// The name the bench's client is registered under.
const NATIVE_CLIENT: &str = "bench";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Keys {
    /// Fresh keys for `kind`; native knocks use the hybrid suite if `hybrid`.
    pub fn generate(kind: Kind, hybrid: bool) -> Keys {
        if kind.is_native() {
            let client = || spa_native::ClientKey::generate().expect("generate a client key");
            Keys::Native(Arc::new(NativeKeys {
                server: spa_native::ServerKey::generate().expect("generate a server key"),
                client: client(),
                stranger: client(),
                hybrid,
            }))
        } else {
            Keys::Fwknop {
                key: postern_e2e::scenario::random_bytes(32),
                hmac: postern_e2e::scenario::random_bytes(64),
            }
        }
    }

    /// The first byte of a native packet of this suite; `None` for fwknop's format.
    pub fn native_magic(&self) -> Option<u8> {
        match self {
            Keys::Fwknop { .. } => None,
            Keys::Native(n) if n.hybrid => Some(spa_native::HYBRID_MAGIC),
            Keys::Native(_) => Some(spa_native::CLASSIC_MAGIC),
        }
    }

    /// The access.conf stanza; for native keys, also writes the server key and
    /// the client registry under `dir` and returns the `[server]` lines naming them.
    fn write_config(&self, dir: &Path) -> (String, String) {
        match self {
            Keys::Fwknop { key, hmac } => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD;
                let stanza = format!(
                    "SOURCE ANY\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\nHMAC_DIGEST_TYPE SHA256\n\
                     ENCRYPTION_MODE CBC\nFW_ACCESS_TIMEOUT {ACCESS_TIMEOUT}\n",
                    b.encode(key),
                    b.encode(hmac)
                );
                (stanza, String::new())
            }
            Keys::Native(n) => {
                let key = dir.join("server.key");
                let clients = dir.join("clients");
                n.server.write_new(&key).expect("write the server key");
                std::fs::create_dir(&clients).expect("clients dir");
                spa_native::Registry::add_client(&clients, NATIVE_CLIENT, &n.client.public(), None)
                    .expect("register the bench client");
                let stanza = format!(
                    "SOURCE ANY\nPROTOCOL native\nNATIVE_CLIENTS {NATIVE_CLIENT}\n\
                     OPEN_PORTS tcp/{PORT}\nFW_ACCESS_TIMEOUT {ACCESS_TIMEOUT}\n"
                );
                let server = format!(
                    "native_key = \"{}\"\nnative_clients = \"{}\"\n",
                    key.display(),
                    clients.display()
                );
                (stanza, server)
            }
        }
    }

    /// One valid knock asking for `tcp/PORT` for `src`. fwknop's format:
    /// timestamp now, fresh rand_val and salt, sha256 digest, AES-CBC,
    /// HMAC-SHA256. Native: sealed by the registered client, fresh nonce.
    pub fn knock(&self, rng: &mut Rng, src: Ipv4Addr) -> Vec<u8> {
        match self {
            Keys::Fwknop { key, hmac } => fwknop_knock(key, hmac, rng, src),
            Keys::Native(n) => n.seal(&n.client, src),
        }
    }

    /// A knock for `src` sealed by an unregistered client to the right server
    /// key; `None` for fwknop's format (it has no such stage).
    pub fn forged(&self, src: Ipv4Addr) -> Option<Vec<u8>> {
        match self {
            Keys::Fwknop { .. } => None,
            Keys::Native(n) => Some(n.seal(&n.stranger, src)),
        }
    }
}

impl NativeKeys {
    fn seal(&self, by: &spa_native::ClientKey, src: Ipv4Addr) -> Vec<u8> {
        let port = spa_native::PortSpec {
            proto: spa_native::Proto::Tcp,
            port: PORT,
        };
        let payload =
            spa_native::Payload::new(src.into(), vec![port], now_secs()).expect("a native payload");
        let options = spa_native::SealOptions {
            hybrid: self.hybrid,
        };
        spa_native::seal(by, self.server.public(), &payload, options).expect("seal a native knock")
    }
}

fn fwknop_knock(key: &[u8], hmac: &[u8], rng: &mut Rng, src: Ipv4Addr) -> Vec<u8> {
    let msg = SpaMessage {
        rand_val: spa_core::message::rand_val_from(rng.bytes::<8>()),
        username: "bench".into(),
        timestamp: now_secs(),
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: format!("{src},tcp/{PORT}"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let keys = PacketKeys {
        key,
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: hmac,
        }),
    };
    packet::seal(&msg, DigestType::Sha256, &keys, &rng.bytes::<8>())
        .expect("seal a knock")
        .into_bytes()
}

/// How to start the servers.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// The posternd binary.
    pub posternd: PathBuf,
    /// posternd's replay store: `None` = its default (`file`, redb), `memory`, or
    /// `redis=URL`.
    pub replay: Option<String>,
    /// posternd's `[server] queue_depth` (knocks past the HMAC check in flight);
    /// `None`: its default.
    pub queue_depth: Option<usize>,
    /// Native knocks use the hybrid suite (X25519 + ML-KEM-768).
    pub hybrid: bool,
    /// posternd serves Prometheus metrics (`[metrics]`, on the server
    /// namespace's loopback), so every packet is counted as in production.
    pub metrics: bool,
}

/// A running SPA server inside the server namespace.
pub struct Server {
    guard: ChildGuard,
    pub kind: Kind,
    pub pid: u32,
    pub log: PathBuf,
    _dir: postern_e2e::tempfile::TempDir,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write config");
}

impl Server {
    fn start(kind: Kind, ns: &Netns, keys: &Keys, setup: &Setup) -> Server {
        let dir = postern_e2e::tempfile::Builder::new()
            .prefix("pn-bench")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let run = d.join("run");
        std::fs::create_dir(&run).expect("run dir");
        let access = d.join("access.conf");
        let (stanza, native_server) = keys.write_config(d);
        write_private(&access, &stanza);
        let log = d.join("server.log");
        let s = |p: &Path| p.display().to_string();
        let argv: Vec<String> = if kind.is_posternd() {
            let capture = if kind.udp_socket() {
                format!("type = \"udp\"\nlisten = \"0.0.0.0:{SPA_PORT}\"")
            } else if kind == Kind::PosterndNfq {
                format!(
                    "type = \"nfqueue\"\nport = {SPA_PORT}\ninterface = \"{}\"\nrules = \"iptables\"",
                    Pair::SERVER_IF
                )
            } else {
                format!(
                    "type = \"pcap\"\ninterfaces = [\"{}\"]\nfilter = \"udp port {SPA_PORT}\"",
                    Pair::SERVER_IF
                )
            };
            let replay = match setup.replay.as_deref().map(|r| r.split_once('=')) {
                None => String::new(),
                Some(Some(("redis", url))) => {
                    format!("[replay]\ntype = \"redis\"\nurl = \"{url}\"\n")
                }
                Some(_) => format!("[replay]\ntype = \"{}\"\n", setup.replay.as_ref().unwrap()),
            };
            let queue = setup
                .queue_depth
                .map(|n| format!("queue_depth = {n}\n"))
                .unwrap_or_default();
            let action = if kind == Kind::PosterndIptables {
                "type = \"iptables\"\nipv6 = false\n".to_string()
            } else {
                format!(
                    "type = \"nftables\"\ntable = \"{NFT_TABLE}\"\nprotected = [\"tcp/{PORT}\"]\n"
                )
            };
            let metrics = if setup.metrics {
                "[metrics]\nlisten = \"127.0.0.1:9650\"\n"
            } else {
                ""
            };
            let toml = d.join("postern.toml");
            write_private(
                &toml,
                &format!(
                    "access_file = \"{}\"\n[server]\nrun_dir = \"{}\"\n{native_server}{queue}[[capture]]\n{capture}\n\
                     [[action]]\n{action}{replay}{metrics}",
                    s(&access),
                    s(&run)
                ),
            );
            vec![s(&setup.posternd), "-f".into(), "-c".into(), s(&toml)]
        } else {
            let mode = if kind == Kind::FwknopdUdp {
                format!("ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {SPA_PORT};\n")
            } else {
                format!(
                    "ENABLE_UDP_SERVER N;\nPCAP_INTF {};\nPCAP_FILTER udp port {SPA_PORT};\n",
                    Pair::SERVER_IF
                )
            };
            let conf = d.join("fwknopd.conf");
            write_private(
                &conf,
                &format!(
                    "{mode}FWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\n\
                     DIGEST_FILE {run}/digest.cache;\n",
                    run = s(&run)
                ),
            );
            let mut a: Vec<String> = [
                "fwknopd",
                "-f",
                "-c",
                &s(&conf),
                "-a",
                &s(&access),
                "-r",
                &s(&run),
                "-p",
                &s(&run.join("fwknopd.pid")),
            ]
            .map(String::from)
            .to_vec();
            if kind == Kind::FwknopdUdp {
                a.push("-U".into());
            } else {
                a.extend(["-i".into(), Pair::SERVER_IF.into()]);
            }
            a
        };
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let guard = ns.spawn_logged(&argv_ref, &log);
        let pid = guard.pid();
        let mut srv = Server {
            guard,
            kind,
            pid,
            log,
            _dir: dir,
        };
        if kind.is_posternd() {
            let ready =
                postern_e2e::wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
                    srv.log_text().contains("posternd ready") || !srv.guard.is_running()
                });
            if !ready || !srv.guard.is_running() {
                panic!("posternd did not start:\n{}", srv.log_text());
            }
        }
        srv
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let t = self.log_text();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }
}

/// Grants currently installed; call from a thread inside the server namespace
/// (the tool inherits the thread's namespace). nftables: elements of
/// `grants4`; iptables: rules in the grant chain (fwknopd's FWKNOP_INPUT,
/// posternd's POSTERN_INPUT).
pub fn count_grants(kind: Kind) -> Option<usize> {
    let chain = kind.grant_chain();
    let out = if !kind.uses_iptables() {
        Command::new("nft")
            .args(["list", "set", "inet", NFT_TABLE, "grants4"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?
    } else {
        Command::new("iptables")
            .args(["-w", "-S", chain])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?
    };
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(if !kind.uses_iptables() {
        // One "expires" per element with a timeout.
        text.matches("expires ").count()
    } else {
        let rule = format!("-A {chain} ");
        text.lines().filter(|l| l.starts_with(&rule)).count()
    })
}

/// Fresh namespaces, addresses and server for one measurement. Field order is
/// drop order: the server stops before the listener and the namespaces go.
pub struct Env {
    pub server: Server,
    _listener: ChildGuard,
    pub pair: Pair,
    /// Client source addresses; `srcs[0]` is used for the warm-up knock.
    pub srcs: Vec<Ipv4Addr>,
    pub keys: Keys,
    /// Time from the warm-up knock to open (includes server start-up for fwknopd).
    pub warmup: Duration,
}

pub fn spa_dst() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_ADDR, SPA_PORT)
}

pub fn svc_dst() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_ADDR, PORT)
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn mac_of(ns: &Netns, dev: &str) -> String {
    let out = ns.run_ok(&["ip", "-o", "link", "show", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {out}"))
        .to_string()
}

fn ip_batch(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("feed ip -batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -batch in {} failed: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    /// Build everything and prove it works: a source that never knocked is
    /// refused, and a warm-up knock from `srcs[0]` opens the port.
    pub fn new(kind: Kind, n_sources: usize, setup: &Setup) -> Env {
        assert!(n_sources <= 250 * 200);
        let p = pair("bn");
        let srv = &p.server;
        let cli = &p.client;
        srv.run_ok(&["ip", "addr", "add", "172.16.0.1/16", "dev", Pair::SERVER_IF]);
        let (cmac, smac) = (mac_of(cli, Pair::CLIENT_IF), mac_of(srv, Pair::SERVER_IF));
        let n = n_sources + 1;
        let srcs: Vec<Ipv4Addr> = (0..n).map(source).collect();
        let mut add = String::new();
        let mut neigh = String::new();
        for a in &srcs {
            add += &format!("addr add {a}/16 dev {}\n", Pair::CLIENT_IF);
            // Static neighbours: no ARP round trip inside the measured latency.
            neigh += &format!(
                "neigh replace {a} lladdr {cmac} dev {} nud permanent\n",
                Pair::SERVER_IF
            );
        }
        ip_batch(cli, &add);
        ip_batch(srv, &neigh);
        cli.run_ok(&[
            "ip",
            "neigh",
            "replace",
            "172.16.0.1",
            "lladdr",
            &smac,
            "dev",
            Pair::CLIENT_IF,
            "nud",
            "permanent",
        ]);
        let listener = tcp_listen(srv, PORT);
        if kind.uses_iptables() {
            let port = PORT.to_string();
            srv.run_ok(&[
                "iptables",
                "-w",
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ]);
            srv.run_ok(&[
                "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
            ]);
        }
        let keys = Keys::generate(kind, setup.hybrid);
        let server = Server::start(kind, srv, &keys, setup);
        let mut env = Env {
            server,
            _listener: listener,
            pair: p,
            srcs,
            keys,
            warmup: Duration::ZERO,
        };
        env.warm_up();
        env
    }

    pub fn client_ns(&self) -> PathBuf {
        self.pair.client.path()
    }

    pub fn server_ns(&self) -> PathBuf {
        self.pair.server.path()
    }

    fn warm_up(&mut self) {
        let keys = self.keys.clone();
        let (s0, last) = (self.srcs[0], *self.srcs.last().expect("sources"));
        let r = run_in(self.client_ns(), move || {
            if try_connect(last, svc_dst(), Duration::from_millis(100)).is_some() {
                return Err("the protected port is open before any knock".to_string());
            }
            let mut rng = Rng::new();
            let sock = Udp::bind(s0).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            // fwknopd may still be opening its capture: knock again, fresh each time.
            for _ in 0..15 {
                sock.send_to(&keys.knock(&mut rng, s0), spa_dst())
                    .map_err(|e| e.to_string())?;
                let deadline = Instant::now() + Duration::from_secs(1);
                if connect_until(s0, svc_dst(), Duration::from_millis(1), deadline).is_some() {
                    return Ok(t0.elapsed());
                }
            }
            Err("the warm-up knock never opened the port".into())
        });
        match r {
            Ok(d) => self.warmup = d,
            Err(e) => panic!(
                "{} in {}: {e}\n--- server log ---\n{}",
                self.server.kind.name(),
                self.pair.server.name,
                self.server.log_tail(40)
            ),
        }
    }
}
