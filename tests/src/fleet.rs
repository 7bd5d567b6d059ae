//! A fleet of three posternd on one LAN sharing a real redis-server (for
//! `tests/fleet.rs` and `fleet-bench`): host 0 of the LAN is the client,
//! hosts 1..=3 the members, each closing `PORT` with nftables.

use crate::lan::{lan, Lan};
use crate::posternd::{
    access_conf, nftables_action, postern_toml, udp_capture, write_private, ConfDir, Posternd,
    SPA_PORT,
};
use crate::scenario::{describe, SpaClient, SpaKeys};
use crate::{tcp_connect_ok, tcp_listen, wait_until, ChildGuard};
use base64::Engine;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PORT: u16 = 22401;
/// Long enough for a member's restart inside one grant.
pub const TIMEOUT: u64 = 8;
pub const GROUP: &str = "gateways";

/// A redis-server on a unix socket, no persistence; killed on drop.
pub struct Redis {
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            socket: dir.join("redis.sock"),
            child: None,
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&self.socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
        assert!(up, "redis-server did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Member {
    pub name: String,
    pub conf: ConfDir,
    pub args: Vec<String>,
    pub daemon: Option<Posternd>,
}

pub struct Fleet {
    // Field order = drop order: daemons and listeners before the LAN.
    pub members: Vec<Member>,
    _listeners: Vec<ChildGuard>,
    pub keys: SpaKeys,
    pub lan: Lan,
    pub redis: Redis,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// The LAN: host 0 is the client, hosts 1..=3 the members.
    pub fn new(tag: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path());
        let key_file = dir.path().join("fleet.key");
        let key = base64::engine::general_purpose::STANDARD.encode(rand_bytes());
        write_private(&key_file, &format!("{key}\n"));
        let lan = lan(tag, 4);
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let mut listeners = Vec::new();
        let members = (1..=3)
            .map(|i| {
                let (ns, _) = &lan.hosts[i];
                listeners.push(tcp_listen(ns, PORT));
                let conf = ConfDir::new();
                conf.write(
                    "access.conf",
                    &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
                );
                let name = format!("m{i}");
                let body = format!(
                    "{}\n{}\n[fleet]\ngroup = \"{GROUP}\"\nmember = \"{name}\"\n\
                     url = \"unix://{}\"\nkey_file = \"{}\"\n",
                    udp_capture(SPA_PORT),
                    nftables_action(PORT),
                    redis.socket.display(),
                    key_file.display()
                );
                conf.write(
                    "postern.toml",
                    &postern_toml(&conf, "access.conf", "memory", &body),
                );
                let args = vec!["-c".to_string(), conf.arg("postern.toml"), "-v".into()];
                Member {
                    name,
                    conf,
                    args,
                    daemon: None,
                }
            })
            .collect();
        let mut fleet = Fleet {
            members,
            _listeners: listeners,
            keys,
            lan,
            redis,
            _dir: dir,
        };
        for i in 0..3 {
            fleet.start(i);
        }
        fleet
    }

    pub fn start(&mut self, i: usize) {
        let ns = &self.lan.hosts[i + 1].0;
        let m = &mut self.members[i];
        m.daemon = Some(Posternd::start(ns, &m.args, m.conf.path("").as_path()));
    }

    pub fn daemon(&self, i: usize) -> &Posternd {
        self.members[i].daemon.as_ref().expect("running")
    }

    pub fn client(&self) -> Ipv4Addr {
        self.lan.hosts[0].1
    }

    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        self.lan.hosts[i + 1].1
    }

    /// The client knocks member `i` for its own address.
    pub fn knock(&self, i: usize) {
        let home = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "-A".into(),
            format!("tcp/{PORT}"),
            "-a".into(),
            self.client().to_string(),
            "-D".into(),
            self.member_ip(i).to_string(),
            "--no-rc-file".into(),
        ];
        args.extend(self.keys.client_key_args().unwrap());
        let out = SpaClient::postern().run(&self.lan.hosts[0].0, home.path(), &args);
        assert!(out.status.success(), "{}", describe(&out));
    }

    pub fn open(&self, i: usize) -> bool {
        tcp_connect_ok(
            &self.lan.hosts[0].0,
            IpAddr::V4(self.member_ip(i)),
            PORT,
            Duration::from_millis(400),
        )
    }

    pub fn wait_open(&self, i: usize, want: bool, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(100), || self.open(i) == want)
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| {
                m.daemon
                    .as_ref()
                    .map(|d| format!("--- {}\n{}", m.name, d.log_text()))
            })
            .collect()
    }

    pub fn all_closed_again(&self) {
        for i in 0..3 {
            assert!(
                self.wait_open(i, false, Duration::from_secs(TIMEOUT + 8)),
                "member {} did not close\n{}",
                i + 1,
                self.logs()
            );
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b
}
