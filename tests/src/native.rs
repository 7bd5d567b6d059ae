//! The native-protocol harness: posternd with its native key, registered
//! clients and one native stanza, granting with nftables, in network
//! namespaces; knocks with the real `postern --native` from the client
//! namespace (tests/tests/native_knock.rs).

use crate::posternd::{
    nftables_action, postern_toml, udp_capture, udp_send_all, ConfDir, Posternd, Service, SPA_PORT,
};
use crate::workspace_bin;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// FW_ACCESS_TIMEOUT of the native stanza, seconds.
pub const TIMEOUT: u64 = 3;

/// A server with its native key, clients and one native stanza.
pub struct Native {
    pub svc: Service,
    pub conf: ConfDir,
    /// `postern-srv1:…`, the server's public key line.
    pub server_line: String,
    pub posternd: Posternd,
}

pub fn bin(name: &str) -> String {
    workspace_bin(name).display().to_string()
}

pub fn line_with(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
        .to_string()
}

pub fn ok(out: Output, what: &str) -> String {
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
    pub fn start(tag: &str, port: u16, clients: &[(&str, bool)], stanza: &str) -> Native {
        Native::start_with(tag, port, clients, stanza, &udp_capture(SPA_PORT))
    }

    /// [`Native::start`] with another `[[capture]]`.
    pub fn start_with(
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
    pub fn knock(&self, client: &str, extra: &[&str]) -> Output {
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

    pub fn knock_ok(&self, client: &str, extra: &[&str]) {
        ok(
            self.knock(client, extra),
            &format!("postern --native as {client}"),
        );
    }

    /// The packet `postern --native -T -B` would send, not sent.
    pub fn saved(&self, client: &str) -> Vec<u8> {
        let file: PathBuf = self.conf.path(&format!("{client}.pkt"));
        self.knock_ok(client, &["-T", "-B", file.to_str().unwrap()]);
        std::fs::read(&file).unwrap()
    }

    pub fn send(&self, payloads: Vec<Vec<u8>>) -> usize {
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

    pub fn context(&self, what: &str) -> String {
        format!(
            "{what}\n--- posternd log:\n{}\n--- nft:\n{}",
            self.posternd.log_text(),
            self.svc.nft_ruleset()
        )
    }

    pub fn opens(&self) -> bool {
        self.svc.wait_reachable(true, Duration::from_secs(5))
    }

    pub fn closes(&self) -> bool {
        self.svc
            .wait_reachable(false, Duration::from_secs(TIMEOUT + 5))
    }
}

/// A connection from the client namespace to the service from `source_port`
/// (0: any).
pub fn connects_from(n: &Native, source_port: u16) -> bool {
    let from = SocketAddr::from((n.svc.pair.client_ip, source_port));
    let to = SocketAddr::from((n.svc.pair.server_ip, n.svc.port));
    n.svc
        .client()
        .in_ns(move || crate::conformance::tcp_connect_bound(from, to, Duration::from_millis(400)))
}
