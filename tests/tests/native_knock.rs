//! postern's native protocol end to end, in network namespaces, with the real
//! binaries: keys from `posternd key generate` and `postern --gen-client-key`,
//! clients registered with `posternd client add`, knocks from `postern
//! --native` in the client namespace, grants by posternd with nftables.
//!
//! - a native knock opens the port, which closes again after the timeout;
//! - the same packet sent again (a replay) opens nothing;
//! - garbage of a native packet's length, and a packet sealed to another
//!   server's key, get no answer and open nothing;
//! - a client removed with `posternd client remove` (then SIGHUP) is refused
//!   while another still opens;
//! - REQUIRE_TOTP: a wrong code is refused, the current one opens;
//! - the packet sets `user` in the audit log to the client's name;
//! - over the TCP capture (`-P tcp`) too, binary as the packet is;
//! - `--pin-source-port`: only connections from that source port get in.

use postern_e2e::posternd::{
    nftables_action, postern_toml, runnable, tcp_capture, udp_capture, udp_send_all, ConfDir,
    Posternd, Service, SPA_PORT,
};
use postern_e2e::workspace_bin;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

const TIMEOUT: u64 = 3;

/// A server with its native key, clients and one native stanza.
struct Native {
    svc: Service,
    conf: ConfDir,
    server_line: String,
    posternd: Posternd,
}

fn bin(name: &str) -> String {
    workspace_bin(name).display().to_string()
}

fn line_with(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
        .to_string()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Native {
    /// `clients` are registered (with a TOTP secret file where given);
    /// `stanza` is the access.conf stanza after `SOURCE ANY`.
    fn start(tag: &str, port: u16, clients: &[(&str, bool)], stanza: &str) -> Native {
        Native::start_with(tag, port, clients, stanza, &udp_capture(SPA_PORT))
    }

    /// [`Native::start`] with another `[[capture]]`.
    fn start_with(
        tag: &str,
        port: u16,
        clients: &[(&str, bool)],
        stanza: &str,
        capture: &str,
    ) -> Native {
        let svc = Service::open(tag, port);
        let conf = ConfDir::new();
        let server_key = conf.dir.path().join("server.key");
        let clients_dir = conf.dir.path().join("clients");
        let out = std::process::Command::new(bin("posternd"))
            .args(["key", "generate", server_key.to_str().unwrap()])
            .output()
            .unwrap();
        let server_line = line_with(&ok(out, "posternd key generate"), "postern-srv1:");
        for &(name, totp) in clients {
            let out = std::process::Command::new(bin("postern"))
                .args([
                    "--gen-client-key",
                    conf.path(&format!("{name}.key")).to_str().unwrap(),
                ])
                .output()
                .unwrap();
            let public = line_with(&ok(out, "postern --gen-client-key"), "postern-pub1:");
            let mut add = vec![
                "client".to_string(),
                "add".into(),
                name.into(),
                public,
                "--clients-dir".into(),
                clients_dir.display().to_string(),
            ];
            if totp {
                let file = conf.path(&format!("{name}.totp"));
                let out = std::process::Command::new(bin("postern"))
                    .args(["--totp-setup", file.to_str().unwrap()])
                    .output()
                    .unwrap();
                ok(out, "postern --totp-setup");
                add.extend(["--totp-secret".into(), file.display().to_string()]);
            }
            let out = std::process::Command::new(bin("posternd"))
                .args(&add)
                .output()
                .unwrap();
            ok(out, "posternd client add");
        }
        conf.write(
            "access.conf",
            &format!("SOURCE ANY\nPROTOCOL native\n{stanza}OPEN_PORTS tcp/{port}\nFW_ACCESS_TIMEOUT {TIMEOUT}\n"),
        );
        let toml = postern_toml(
            &conf,
            "access.conf",
            "memory",
            &format!("{capture}\n{}", nftables_action(port)),
        )
        .replacen(
            "[server]\n",
            &format!(
                "[server]\nnative_key = \"{}\"\nnative_clients = \"{}\"\n",
                server_key.display(),
                clients_dir.display()
            ),
            1,
        );
        conf.write("postern.toml", &toml);
        let posternd = Posternd::start(
            svc.server(),
            &["-c".into(), conf.arg("postern.toml"), "-v".into()],
            conf.dir.path(),
        );
        Native {
            svc,
            conf,
            server_line,
            posternd,
        }
    }

    /// `postern --native` from the client namespace as `client`, for the
    /// service port; `extra` flags after.
    fn knock(&self, client: &str, extra: &[&str]) -> Output {
        let key = self.conf.path(&format!("{client}.key"));
        let port = format!("tcp/{}", self.svc.port);
        let allow = self.svc.pair.client_ip.to_string();
        let dest = self.svc.pair.server_ip.to_string();
        let mut args = vec![
            bin("postern"),
            "--no-rc-file".into(),
            "--native".into(),
            "--server-key".into(),
            self.server_line.clone(),
            "--client-key".into(),
            key.display().to_string(),
            "-A".into(),
            port,
            "-a".into(),
            allow,
            "-D".into(),
            dest,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.svc.client().run(&argv)
    }

    fn knock_ok(&self, client: &str, extra: &[&str]) {
        ok(
            self.knock(client, extra),
            &format!("postern --native as {client}"),
        );
    }

    /// The packet `postern --native -T -B` would send, not sent.
    fn saved(&self, client: &str) -> Vec<u8> {
        let file: PathBuf = self.conf.path(&format!("{client}.pkt"));
        self.knock_ok(client, &["-T", "-B", file.to_str().unwrap()]);
        std::fs::read(&file).unwrap()
    }

    fn send(&self, payloads: Vec<Vec<u8>>) -> usize {
        let to = SocketAddr::from((self.svc.pair.server_ip, SPA_PORT));
        let n = payloads.len();
        let exchange = udp_send_all(
            self.svc.client(),
            to,
            payloads,
            n,
            Duration::ZERO,
            Duration::from_millis(300),
        );
        exchange.answers.len()
    }

    fn context(&self, what: &str) -> String {
        format!(
            "{what}\n--- posternd log:\n{}\n--- nft:\n{}",
            self.posternd.log_text(),
            self.svc.nft_ruleset()
        )
    }

    fn opens(&self) -> bool {
        self.svc.wait_reachable(true, Duration::from_secs(5))
    }

    fn closes(&self) -> bool {
        self.svc
            .wait_reachable(false, Duration::from_secs(TIMEOUT + 5))
    }
}

#[test]
fn a_native_knock_opens_replays_and_garbage_do_not_and_a_revoked_client_is_refused() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start(
        "nk",
        22131,
        &[("alice", false), ("bob", false)],
        "NATIVE_CLIENTS alice,bob\n",
    );
    assert!(
        !n.svc.reachable(Duration::from_millis(400)),
        "open before any knock"
    );

    let packet = n.saved("alice");
    assert_eq!(packet[0], 0xF1, "not a classic native packet");
    assert_eq!(n.send(vec![packet.clone()]), 0, "posternd answered");
    assert!(n.opens(), "{}", n.context("the native knock did not open"));
    assert!(n.closes(), "{}", n.context("not closed after the timeout"));

    // Replays of it, garbage of its length, and a packet for another server.
    let mut garbage = vec![0xF1];
    garbage.extend((1..packet.len()).map(|i| (i * 31 % 251) as u8));
    let other = Native::start("nk2", 22132, &[("alice", false)], "NATIVE_CLIENTS alice\n");
    let foreign = other.saved("alice");
    let answers = n.send(vec![packet.clone(), packet.clone(), garbage, foreign]);
    assert_eq!(answers, 0, "posternd answered");
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("a replay, garbage or a foreign packet opened")
    );
    let log = n.posternd.log_text();
    assert!(log.contains("Replay detected"), "{log}");

    // bob is revoked (file removed, SIGHUP); alice still opens.
    let clients = n.conf.dir.path().join("clients");
    let out = std::process::Command::new(bin("posternd"))
        .args([
            "client",
            "remove",
            "bob",
            "--clients-dir",
            clients.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(out, "posternd client remove");
    n.posternd.signal(libc::SIGHUP);
    assert!(
        n.posternd
            .wait_log("SIGHUP: reloaded", 1, Duration::from_secs(5)),
        "{}",
        n.context("no reload")
    );
    n.knock_ok("bob", &[]);
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("a revoked client opened")
    );
    n.knock_ok("alice", &[]);
    assert!(
        n.opens(),
        "{}",
        n.context("alice refused after bob's removal")
    );
    let users: Vec<String> = n
        .posternd
        .audit_lines()
        .iter()
        .filter(|l| l["outcome"] == "granted")
        .filter_map(|l| l["user"].as_str().map(str::to_string))
        .collect();
    assert_eq!(users, ["alice", "alice"], "{}", n.context("audit"));
}

#[test]
fn require_totp_refuses_a_wrong_code_and_takes_the_current_one() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start(
        "nt",
        22133,
        &[("carol", true)],
        "NATIVE_CLIENTS carol\nREQUIRE_TOTP Y\n",
    );
    let uri = std::fs::read_to_string(n.conf.path("carol.totp")).unwrap();
    let secret = spa_native::TotpSecret::from_uri(uri.trim()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let right = secret.code_at(now);
    let wrong = format!("{:06}", (right + 500_000) % 1_000_000);
    n.knock_ok("carol", &[]);
    n.knock_ok("carol", &["--totp", &wrong]);
    assert!(
        n.svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        n.context("opened without the right TOTP code")
    );
    let log = n.posternd.log_text();
    assert!(log.contains("REQUIRE_TOTP"), "{log}");
    let right = format!("{:06}", secret.code_at(now));
    n.knock_ok("carol", &["--totp", &right]);
    assert!(
        n.opens(),
        "{}",
        n.context("the right TOTP code did not open")
    );
}

#[test]
fn a_native_knock_over_tcp_opens() {
    if !runnable(&["nft"]) {
        return;
    }
    let n = Native::start_with(
        "nc",
        22134,
        &[("dave", false)],
        "NATIVE_CLIENTS *\n",
        &tcp_capture(SPA_PORT),
    );
    // Several knocks, each a new packet: whatever its last bytes, it is read whole.
    for _ in 0..3 {
        n.knock_ok("dave", &["-P", "tcp"]);
        assert!(
            n.opens(),
            "{}",
            n.context("the native knock over TCP did not open")
        );
        assert!(n.closes(), "{}", n.context("not closed after the timeout"));
    }
}

/// A connection from the client namespace to the service from `source_port`
/// (0: any).
fn connects_from(n: &Native, source_port: u16) -> bool {
    let from = SocketAddr::from((n.svc.pair.client_ip, source_port));
    let to = SocketAddr::from((n.svc.pair.server_ip, n.svc.port));
    n.svc.client().in_ns(move || {
        postern_e2e::conformance::tcp_connect_bound(from, to, Duration::from_millis(400))
    })
}

#[test]
fn a_pinned_knock_lets_in_only_its_source_port() {
    if !runnable(&["nft"]) {
        return;
    }
    const PIN: u16 = 40123;
    let n = Native::start("np", 22135, &[("erin", false)], "NATIVE_CLIENTS erin\n");
    n.knock_ok("erin", &["--pin-source-port", &PIN.to_string()]);
    assert!(
        postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            connects_from(&n, PIN)
        }),
        "{}",
        n.context("the pinned port did not get in")
    );
    for other in [PIN + 1, 0] {
        assert!(
            !connects_from(&n, other),
            "{}",
            n.context(&format!("source port {other} got in past a pin to {PIN}"))
        );
    }
    let rules = n.svc.nft_ruleset();
    assert!(rules.contains(&PIN.to_string()), "{rules}");
}
