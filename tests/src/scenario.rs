//! Reusable SPA scenarios: a TCP service behind an iptables DROP rule in a server
//! namespace, a real `fwknopd` in UDP-server mode, key material, and SPA clients
//! (the real `fwknop` or `postern`) run from the client namespace.

use crate::{pair, tcp_connect_ok, tcp_listen, wait_until, ChildGuard, Netns, Pair};
use base64::Engine;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// `n` bytes from /dev/urandom.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// Standard (padded) base64 of `n` random bytes, like `fwknop --key-gen` prints.
pub fn random_b64(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(random_bytes(n))
}

/// One secret as the configuration files know it.
#[derive(Clone, Debug)]
pub enum Secret {
    /// Standard base64 of raw key bytes (KEY_BASE64 / HMAC_KEY_BASE64).
    Base64(String),
    /// A passphrase (KEY / HMAC_KEY). No spaces: fwknop's rc parser stops at one.
    Passphrase(String),
}

/// Encryption and HMAC keys plus the algorithms for one access stanza.
#[derive(Clone, Debug)]
pub struct SpaKeys {
    pub key: Secret,
    /// HMAC digest name (md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512) and key.
    pub hmac: Option<(String, Secret)>,
    /// Encryption mode name (cbc, ecb, cfb, ofb, ctr, legacy).
    pub mode: String,
}

impl SpaKeys {
    /// Fresh random keys like `fwknop --key-gen`: 32-byte key, 64-byte HMAC key.
    pub fn generate(mode: &str, hmac: Option<&str>) -> SpaKeys {
        SpaKeys {
            key: Secret::Base64(random_b64(32)),
            hmac: hmac.map(|h| (h.to_string(), Secret::Base64(random_b64(64)))),
            mode: mode.to_string(),
        }
    }

    /// Lines for an access.conf stanza (after SOURCE).
    pub fn access_conf_lines(&self) -> String {
        let mut s = String::new();
        match &self.key {
            Secret::Base64(k) => s += &format!("KEY_BASE64 {k}\n"),
            Secret::Passphrase(p) => s += &format!("KEY {p}\n"),
        }
        if let Some((t, k)) = &self.hmac {
            match k {
                Secret::Base64(k) => s += &format!("HMAC_KEY_BASE64 {k}\n"),
                Secret::Passphrase(p) => s += &format!("HMAC_KEY {p}\n"),
            }
            s += &format!("HMAC_DIGEST_TYPE {}\n", t.to_uppercase());
        }
        s += &format!("ENCRYPTION_MODE {}\n", self.mode.to_uppercase());
        s
    }

    /// Lines for a ~/.fwknoprc stanza holding the keys (client side).
    pub fn rc_lines(&self) -> String {
        let mut s = String::new();
        match &self.key {
            Secret::Base64(k) => s += &format!("KEY_BASE64 {k}\n"),
            Secret::Passphrase(p) => s += &format!("KEY {p}\n"),
        }
        if let Some((t, k)) = &self.hmac {
            s += "USE_HMAC Y\n";
            s += &format!("HMAC_DIGEST_TYPE {}\n", t.to_uppercase());
            match k {
                Secret::Base64(k) => s += &format!("HMAC_KEY_BASE64 {k}\n"),
                Secret::Passphrase(p) => s += &format!("HMAC_KEY {p}\n"),
            }
        }
        s
    }

    /// Client command-line flags for base64 keys, or None if a passphrase is involved
    /// (use an rc file then: `postern` has no `--key-rijndael`).
    pub fn client_key_args(&self) -> Option<Vec<String>> {
        let mut a = Vec::new();
        match &self.key {
            Secret::Base64(k) => a.extend(["--key-base64-rijndael".to_string(), k.clone()]),
            Secret::Passphrase(_) => return None,
        }
        if let Some((t, k)) = &self.hmac {
            let Secret::Base64(k) = k else { return None };
            a.extend(
                [
                    "--use-hmac",
                    "--hmac-digest-type",
                    t,
                    "--key-base64-hmac",
                    k,
                ]
                .map(String::from),
            );
        }
        a.extend(["-M".to_string(), self.mode.clone()]);
        Some(a)
    }
}

/// A TCP service on `port` in the server namespace of a fresh [`Pair`], guarded by
/// `iptables -A INPUT -p tcp --dport PORT -j DROP` with ESTABLISHED,RELATED accepted
/// first (the classic SPA setup). IPv4 only is guarded (ip6tables is left open).
pub struct GuardedService {
    // Field order = drop order: stop the listener before the namespaces go.
    _listener: ChildGuard,
    pub pair: Pair,
    pub port: u16,
}

pub fn guarded_service(tag: &str, port: u16) -> GuardedService {
    let p = pair(tag);
    let listener = tcp_listen(&p.server, port);
    let port_s = port.to_string();
    p.server.run_ok(&[
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
    p.server.run_ok(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port_s, "-j", "DROP",
    ]);
    GuardedService {
        pair: p,
        port,
        _listener: listener,
    }
}

impl GuardedService {
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
}

/// A real fwknopd (2.6.x) in UDP-server mode, in the foreground, with its own
/// config, access file, run dir and log in a temp dir. Killed on drop.
pub struct Fwknopd {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub udp_port: u16,
    guard: ChildGuard,
    ns_name: String,
}

impl Fwknopd {
    /// Start fwknopd in `ns` with `access_conf` as its access.conf and `extra_conf`
    /// appended to a minimal fwknopd.conf. Waits until the UDP port is bound.
    pub fn start(ns: &Netns, access_conf: &str, extra_conf: &str) -> Fwknopd {
        let udp_port = 62201;
        let dir = tempfile::Builder::new()
            .prefix("pn-fwknopd")
            .tempdir()
            .expect("tempdir");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let conf = dir.path().join("fwknopd.conf");
        let access = dir.path().join("access.conf");
        let log = dir.path().join("fwknopd.log");
        std::fs::write(
            &conf,
            format!(
                "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {udp_port};\nFWKNOP_RUN_DIR {run};\n\
                 FWKNOP_PID_FILE {run}/fwknopd.pid;\nDIGEST_FILE {run}/digest.cache;\n{extra_conf}\n",
                run = run.display()
            ),
        )
        .unwrap();
        std::fs::write(&access, access_conf).unwrap();
        for f in [&conf, &access] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let s = |p: &Path| p.display().to_string();
        let (conf_s, access_s, run_s, pid_s) =
            (s(&conf), s(&access), s(&run), s(&run.join("fwknopd.pid")));
        let guard = ns.spawn_logged(
            &[
                "fwknopd", "-f", "-U", "-v", "-v", "-c", &conf_s, "-a", &access_s, "-r", &run_s,
                "-p", &pid_s,
            ],
            &log,
        );
        let mut d = Fwknopd {
            dir,
            log,
            udp_port,
            guard,
            ns_name: ns.name.clone(),
        };
        let port_hex = format!(":{udp_port:04X} ");
        let ready = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            // /proc/PID/net/udp shows the sockets of the process's namespace.
            let pid = d.guard.pid();
            std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
                .map(|t| {
                    t.lines().any(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .is_some_and(|a| (a.to_string() + " ").ends_with(&port_hex))
                    })
                })
                .unwrap_or(false)
        });
        if !ready || !d.guard.is_running() {
            panic!("fwknopd did not start in {}:\n{}", d.ns_name, d.log_text());
        }
        d
    }

    /// Everything fwknopd printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while fwknopd runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }
}

/// An SPA client program taking fwknop's command-line flags.
#[derive(Clone, Debug)]
pub enum SpaClient {
    /// The installed fwknop client.
    Fwknop,
    /// `postern` (path of the built binary).
    Postern(PathBuf),
    /// A `postern` started through other programs: the argv before its flags,
    /// e.g. `nsenter … chroot ROOT /usr/bin/postern` for an installed package.
    PosternArgv(Vec<String>),
}

impl SpaClient {
    /// The `postern` workspace binary; panics with a clear message if it cannot be built.
    pub fn postern() -> SpaClient {
        match crate::try_workspace_bin("postern") {
            Ok(p) => SpaClient::Postern(p),
            Err(e) => panic!(
                "the `postern` client binary is not available (spa-client must provide a \
                 `postern` bin target): {e}"
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SpaClient::Fwknop => "fwknop",
            SpaClient::Postern(_) | SpaClient::PosternArgv(_) => "postern",
        }
    }

    /// The program and the arguments that come before the client's flags.
    pub fn argv(&self) -> Vec<String> {
        match self {
            SpaClient::Fwknop => vec!["fwknop".into()],
            SpaClient::Postern(p) => vec![p.display().to_string()],
            SpaClient::PosternArgv(argv) => argv.clone(),
        }
    }

    /// Run the client with `args` in `ns` with HOME=`home`; stdin is /dev/null.
    pub fn run(&self, ns: &Netns, home: &Path, args: &[String]) -> Output {
        let argv = self.argv();
        ns.cmd(&argv[0])
            .args(&argv[1..])
            .args(args)
            .env("HOME", home)
            .env_remove("FWKNOP_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {}: {e}", ns.name))
    }
}

/// Render an Output for error messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
