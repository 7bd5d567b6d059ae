//! NAT end to end through posternd: three namespaces, client — gateway (runs
//! posternd) — internal host, and the real fwknop client (or `postern`)
//! knocking from the client.
//!
//! - forward NAT (`fwknop -A tcp/EXT -N INTERNAL:22`): the client's connection
//!   to GATEWAY:EXT reaches the internal host's listener (which records the
//!   peer) after the knock, not before (nothing listens on EXT on the gateway:
//!   only the DNAT can make it succeed), and not after FW_ACCESS_TIMEOUT;
//! - local NAT (`fwknop -A tcp/22 --nat-local --nat-port 55000`: the access
//!   port is the inner one, `--nat-port` the outer one): the gateway's own
//!   listener on port 22 (closed to the client) is reachable at GATEWAY:55000;
//! - MASQUERADE (`[server.nat] snat = "masquerade"`): the internal host has no
//!   route back to the client, yet answers, and sees the gateway as the peer;
//! - actions: nftables (NAT chains on because server NAT is on), iptables
//!   (native TOML; the gateway's FORWARD policy is DROP, so only the grant's
//!   forward rule lets the flow through), and iptables from fwknopd.conf +
//!   access.conf (`ENABLE_IPT_FORWARDING Y`, `ENABLE_IPT_LOCAL_NAT Y`, fwknopd's
//!   FWKNOP_* chains), and firewalld from a firewalld build's fwknopd.conf
//!   (`ENABLE_FIREWD_FORWARDING Y`, `ENABLE_FIREWD_LOCAL_NAT Y`,
//!   `ENABLE_FIREWD_SNAT Y`) against a real firewalld on the gateway.

use postern_e2e::firewalld::Firewalld;
use postern_e2e::posternd::{access_conf, runnable, udp_capture, ConfDir, Posternd, SPA_PORT};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::{tcp_connect_ok, wait_until, Netns};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// FW_ACCESS_TIMEOUT of every grant.
const TIMEOUT: u64 = 3;
/// The port the client connects to on the gateway.
const EXT: u16 = 55000;
/// The inner service's port (internal host, or the gateway itself for local NAT).
const SSH: u16 = 22;

/// A TCP listener that records the peer of every connection it accepts.
struct Recorder {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    handle: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Listen on `0.0.0.0:port` inside `ns` (the socket is made on a thread
    /// that joined `ns`, and stays in it).
    fn start(ns: &Netns, port: u16) -> Recorder {
        let listener = ns.in_ns(move || {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .unwrap_or_else(|e| panic!("bind port {port}: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (stop2, peers2) = (stop.clone(), peers.clone());
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        peers2.lock().unwrap().push(peer);
                        drop(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder {
            stop,
            peers,
            handle: Some(handle),
        }
    }

    fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().unwrap().iter().map(|p| p.ip()).collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// client — gateway — internal ([`postern_e2e::routed`]), with what these tests
/// ask of it. Only the gateway forwards.
struct Routed {
    net: postern_e2e::routed::Routed,
}

impl Routed {
    /// With `route_back`, internal's default route is the gateway; without,
    /// internal can only answer its own subnet (so the client only with SNAT).
    fn new(tag: &str, route_back: bool) -> Routed {
        Routed {
            net: postern_e2e::routed::routed(tag, route_back),
        }
    }
    fn client(&self) -> &Netns {
        self.net.client()
    }
    fn gateway(&self) -> &Netns {
        self.net.gateway()
    }
    fn client_ip(&self) -> Ipv4Addr {
        self.net.pair.client_ip
    }
    fn gateway_ip(&self) -> Ipv4Addr {
        self.net.pair.server_ip
    }
    fn internal(&self) -> &Netns {
        &self.net.internal
    }

    /// One new connection from the client to GATEWAY:port.
    fn connect(&self, port: u16, timeout: Duration) -> bool {
        tcp_connect_ok(self.client(), IpAddr::V4(self.gateway_ip()), port, timeout)
    }

    /// Poll until a connection to GATEWAY:port succeeds (`want`) or fails.
    fn wait_connect(&self, port: u16, want: bool, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(100), || {
            self.connect(port, Duration::from_millis(400)) == want
        })
    }

    fn rulesets(&self) -> String {
        let gw = self.gateway();
        let text = |argv: &[&str]| String::from_utf8_lossy(&gw.run(argv).stdout).into_owned();
        format!(
            "--- gateway nft list ruleset ---\n{}\n--- gateway iptables-save ---\n{}",
            text(&["nft", "list", "ruleset"]),
            text(&["iptables-save"])
        )
    }
}

/// Which firewall posternd drives, and how it is configured.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    /// postern.toml, `type = "nftables"`, `protected = ["tcp/22"]`.
    Nftables,
    /// postern.toml, `type = "iptables"`.
    Iptables,
    /// fwknopd.conf + access.conf, no postern action (iptables, FWKNOP_* chains).
    FwknopdFiles,
    /// A firewalld build's fwknopd.conf + access.conf: the firewalld action, a
    /// real firewalld on the gateway (its public zone open to the SPA port and
    /// without the ssh service, so port 22 is closed).
    FirewalldFiles,
}

/// A gateway with posternd running and the keys its access.conf accepts.
struct Daemon {
    d: Posternd,
    /// Outlives posternd (fields drop in order), which flushes into it at exit.
    _firewalld: Option<Firewalld>,
    keys: SpaKeys,
    _conf: ConfDir,
    config: String,
}

impl Daemon {
    fn log(&self) -> String {
        format!(
            "--- config ---\n{}\n--- posternd log ---\n{}",
            self.config,
            self.d.log_text()
        )
    }
}

fn start_posternd(t: &Routed, setup: Setup, snat: Option<&str>) -> Daemon {
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let conf = ConfDir::new();
    conf.write("access.conf", &access_conf(&keys, None, TIMEOUT, ""));
    let run = conf.run_dir().display().to_string();
    let (args, config) = match setup {
        Setup::Nftables | Setup::Iptables => {
            let action = match setup {
                Setup::Nftables => "[[action]]\ntype = \"nftables\"\nprotected = [\"tcp/22\"]\n",
                _ => "[[action]]\ntype = \"iptables\"\nipv6 = false\n",
            };
            let snat = snat
                .map(|s| format!("snat = \"{s}\"\n"))
                .unwrap_or_default();
            let toml = format!(
                "access_file = \"{access}\"\n\n[server]\nmax_packet_age = 120\nrun_dir = \"{run}\"\n\n\
                 [server.nat]\nforwarding = true\nlocal = true\n{snat}\n[replay]\ntype = \"memory\"\n\n\
                 {capture}\n{action}",
                access = conf.arg("access.conf"),
                capture = udp_capture(SPA_PORT),
            );
            conf.write("postern.toml", &toml);
            (
                vec!["-c".to_string(), conf.arg("postern.toml"), "-v".into()],
                toml,
            )
        }
        Setup::FwknopdFiles | Setup::FirewalldFiles => {
            let fw = if setup == Setup::FirewalldFiles {
                "FIREWD"
            } else {
                "IPT"
            };
            let snat = match snat {
                Some("masquerade") => format!("ENABLE_{fw}_SNAT Y;\n"),
                Some(addr) => format!("ENABLE_{fw}_SNAT Y;\nSNAT_TRANSLATE_IP {addr};\n"),
                None => String::new(),
            };
            let text = format!(
                "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {SPA_PORT};\nMAX_SPA_PACKET_AGE 120;\n\
                 FWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\nDIGEST_FILE {run}/digest.cache;\n\
                 ENABLE_{fw}_FORWARDING Y;\nENABLE_{fw}_LOCAL_NAT Y;\n{snat}\
                 FLUSH_{fw}_AT_INIT Y;\nFLUSH_{fw}_AT_EXIT Y;\n"
            );
            conf.write("fwknopd.conf", &text);
            let args = vec![
                "-c".to_string(),
                conf.arg("fwknopd.conf"),
                "-a".into(),
                conf.arg("access.conf"),
                "-v".into(),
            ];
            (args, text)
        }
    };
    let firewalld = (setup == Setup::FirewalldFiles).then(|| {
        let fwd = Firewalld::start(t.gateway());
        // As an admin does for fwknopd's UDP server: SPA packets in, ssh closed.
        let spa = format!("--add-port={SPA_PORT}/udp");
        for change in ["--remove-service=ssh", &spa] {
            fwd.firewall_cmd(&["--zone=public", change])
                .unwrap_or_else(|e| panic!("firewall-cmd {change}: {e}"));
        }
        fwd
    });
    // posternd finds firewalld on the system bus.
    let wrapper: Vec<String> = match &firewalld {
        Some(fwd) => vec![
            "env".into(),
            format!("DBUS_SYSTEM_BUS_ADDRESS={}", fwd.address),
        ],
        None => Vec::new(),
    };
    let d = Posternd::try_start_wrapped(t.gateway(), &wrapper, &args, conf.dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    Daemon {
        d,
        _firewalld: firewalld,
        keys,
        _conf: conf,
        config,
    }
}

/// A router's usual FORWARD policy: drop, except replies of accepted flows.
fn forward_policy_drop(gw: &Netns) {
    gw.run_ok(&["iptables", "-w", "5", "-P", "FORWARD", "DROP"]);
    gw.run_ok(&[
        "iptables",
        "-w",
        "5",
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ]);
}

/// One knock from the client namespace: `CLIENT REQUEST… -a CLIENT_IP
/// -D GATEWAY_IP <keys> --no-rc-file`; panics unless it exits 0.
fn knock(client: &SpaClient, t: &Routed, keys: &SpaKeys, request: &[String]) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = request.to_vec();
    args.extend([
        "-a".into(),
        t.client_ip().to_string(),
        "-D".into(),
        t.gateway_ip().to_string(),
    ]);
    args.extend(keys.client_key_args().expect("base64 keys"));
    args.push("--no-rc-file".into());
    let out = client.run(t.client(), home.path(), &args);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        client.name(),
        describe(&out)
    );
}

/// closed → knock → open (the listener sees the connection from `peer`) →
/// closed after FW_ACCESS_TIMEOUT. `listener` is the inner service.
fn nat_cycle(
    what: &str,
    t: &Routed,
    daemon: &Daemon,
    client: &SpaClient,
    request: &[String],
    listener: &Recorder,
    peer: Ipv4Addr,
) {
    let ctx = |msg: &str| format!("{what}: {msg}\n{}\n{}", daemon.log(), t.rulesets());
    assert!(
        !t.connect(EXT, Duration::from_millis(700)),
        "{}",
        ctx("GATEWAY:EXT reachable before the knock")
    );
    assert!(
        listener.peers().is_empty(),
        "{}",
        ctx("the listener saw a connection before the knock")
    );
    knock(client, t, &daemon.keys, request);
    let t0 = Instant::now();
    assert!(
        t.wait_connect(EXT, true, Duration::from_secs(5)),
        "{}",
        ctx("GATEWAY:EXT not reachable after the knock")
    );
    let opened = t0.elapsed();
    // The kernel completes the handshake; the accept loop records it just after.
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        !listener.peers().is_empty()
    });
    let got = listener.peers();
    assert!(
        !got.is_empty() && got.iter().all(|p| *p == IpAddr::V4(peer)),
        "{}",
        ctx(&format!(
            "the inner listener saw {got:?}, expected connections from {peer}"
        ))
    );
    assert!(
        t.wait_connect(EXT, false, Duration::from_secs(TIMEOUT + 8)),
        "{}",
        ctx("GATEWAY:EXT still reachable long after FW_ACCESS_TIMEOUT")
    );
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_secs(TIMEOUT - 1),
        "{}",
        ctx(&format!("closed already after {closed:?}"))
    );
    println!("  {what}: open after {opened:?}, closed after {closed:?}");
}

/// `-A tcp/EXT -N INTERNAL:22`.
fn forward_request(t: &Routed) -> Vec<String> {
    [
        "-A",
        &format!("tcp/{EXT}"),
        "-N",
        &format!("{}:{SSH}", t.net.internal_ip),
    ]
    .map(String::from)
    .to_vec()
}

/// `-A tcp/22 --nat-local --nat-port 55000`: fwknop puts the `--nat-port` in
/// the access message (the port the client connects to) and the -A port in the
/// NAT field (where it leads), as `fwknop -T -v` shows.
fn local_request() -> Vec<String> {
    [
        "-A",
        &format!("tcp/{SSH}"),
        "--nat-local",
        "--nat-port",
        &EXT.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Forward NAT with the internal host routing back through the gateway: the
/// listener sees the client's own address.
fn forward(tag: &str, setup: Setup, client: SpaClient) {
    let t = Routed::new(tag, true);
    if setup != Setup::Nftables && setup != Setup::FirewalldFiles {
        forward_policy_drop(t.gateway());
    }
    let ssh = Recorder::start(t.internal(), SSH);
    let daemon = start_posternd(&t, setup, None);
    nat_cycle(
        &format!("{setup:?} forward NAT, {}", client.name()),
        &t,
        &daemon,
        &client,
        &forward_request(&t),
        &ssh,
        t.client_ip(),
    );
    if setup == Setup::FwknopdFiles {
        // fwknopd's chain names, from the fwknopd.conf defaults.
        let rules = t.rulesets();
        assert!(
            rules.contains("FWKNOP_FORWARD") && rules.contains("FWKNOP_PREROUTING"),
            "{rules}"
        );
    }
}

/// Local NAT: the gateway's own port 22, closed to the client, is reached
/// through port 55000.
fn local(tag: &str, setup: Setup, client: SpaClient) {
    let t = Routed::new(tag, true);
    if setup != Setup::Nftables && setup != Setup::FirewalldFiles {
        // The gateway closes its own port 22 (nftables: `protected`; firewalld:
        // the public zone without ssh).
        t.gateway().run_ok(&[
            "iptables", "-w", "5", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP",
        ]);
    }
    let ssh = Recorder::start(t.gateway(), SSH);
    let daemon = start_posternd(&t, setup, None);
    assert!(
        !t.connect(SSH, Duration::from_millis(700)),
        "{setup:?}: the gateway's port 22 must be closed to the client\n{}",
        t.rulesets()
    );
    nat_cycle(
        &format!("{setup:?} local NAT, {}", client.name()),
        &t,
        &daemon,
        &client,
        &local_request(),
        &ssh,
        t.client_ip(),
    );
}

/// MASQUERADE: internal has no route back to the client; it answers the
/// gateway's inner address, which is what its listener sees.
fn masquerade(tag: &str, setup: Setup) {
    let t = Routed::new(tag, false);
    let route = t
        .internal()
        .run(&["ip", "route", "get", &t.client_ip().to_string()]);
    assert!(
        !route.status.success(),
        "internal must have no route to the client: {}",
        describe(&route)
    );
    if setup != Setup::Nftables && setup != Setup::FirewalldFiles {
        forward_policy_drop(t.gateway());
    }
    let ssh = Recorder::start(t.internal(), SSH);
    let daemon = start_posternd(&t, setup, Some("masquerade"));
    nat_cycle(
        &format!("{setup:?} forward NAT with MASQUERADE"),
        &t,
        &daemon,
        &SpaClient::Fwknop,
        &forward_request(&t),
        &ssh,
        t.net.gateway_inner,
    );
}

fn can_run() -> bool {
    runnable(&["fwknop", "iptables", "nft"])
}

#[test]
fn nftables_forward_nat_with_fwknop() {
    if can_run() {
        forward("nnf", Setup::Nftables, SpaClient::Fwknop);
    }
}

#[test]
fn nftables_local_nat_with_fwknop() {
    if can_run() {
        local("nnl", Setup::Nftables, SpaClient::Fwknop);
    }
}

#[test]
fn nftables_masquerade_without_route_back() {
    if can_run() {
        masquerade("nnm", Setup::Nftables);
    }
}

#[test]
fn nftables_forward_and_local_nat_with_postern_client() {
    if can_run() {
        forward("nnpf", Setup::Nftables, SpaClient::postern());
        local("nnpl", Setup::Nftables, SpaClient::postern());
    }
}

#[test]
fn iptables_forward_nat_with_forward_policy_drop() {
    if can_run() {
        forward("nif", Setup::Iptables, SpaClient::Fwknop);
    }
}

#[test]
fn iptables_local_nat_and_masquerade() {
    if can_run() {
        local("nil", Setup::Iptables, SpaClient::Fwknop);
        masquerade("nim", Setup::Iptables);
    }
}

#[test]
fn fwknopd_files_forward_and_local_nat() {
    if can_run() {
        forward("nff", Setup::FwknopdFiles, SpaClient::Fwknop);
        local("nfl", Setup::FwknopdFiles, SpaClient::Fwknop);
    }
}

#[test]
fn firewalld_files_forward_local_nat_and_masquerade() {
    if runnable(&["fwknop"]) && postern_e2e::firewalld::can_run() {
        forward("nwf", Setup::FirewalldFiles, SpaClient::Fwknop);
        local("nwl", Setup::FirewalldFiles, SpaClient::Fwknop);
        masquerade("nwm", Setup::FirewalldFiles);
    }
}
