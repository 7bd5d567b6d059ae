//! `[fleet]`: three posternd on one LAN share a real redis-server. A knock
//! reaching one opens the port on all three; a member killed and started
//! again catches up; with Redis down each member serves its own knocks (and
//! shares them once Redis is back, while they are live); a grant written into
//! Redis without the group key is refused.

use base64::Engine;
use postern_e2e::lan::{lan, Lan};
use postern_e2e::posternd::{
    access_conf, nftables_action, postern_toml, runnable, udp_capture, write_private, ConfDir,
    Posternd, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::{tcp_connect_ok, tcp_listen, wait_until, ChildGuard};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PORT: u16 = 22401;
/// Long enough for a member's restart inside one grant.
const TIMEOUT: u64 = 8;
const GROUP: &str = "gateways";

struct Redis {
    socket: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            socket: dir.join("redis.sock"),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
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

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
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

struct Member {
    name: String,
    conf: ConfDir,
    args: Vec<String>,
    daemon: Option<Posternd>,
}

struct Fleet {
    // Field order = drop order: daemons and listeners before the LAN.
    members: Vec<Member>,
    _listeners: Vec<ChildGuard>,
    keys: SpaKeys,
    lan: Lan,
    redis: Redis,
    _dir: postern_e2e::tempfile::TempDir,
}

impl Fleet {
    /// The LAN: host 0 is the client, hosts 1..=3 the members.
    fn new(tag: &str) -> Fleet {
        let dir = postern_e2e::tempfile::tempdir().unwrap();
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

    fn start(&mut self, i: usize) {
        let ns = &self.lan.hosts[i + 1].0;
        let m = &mut self.members[i];
        m.daemon = Some(Posternd::start(ns, &m.args, m.conf.path("").as_path()));
    }

    fn daemon(&self, i: usize) -> &Posternd {
        self.members[i].daemon.as_ref().expect("running")
    }

    fn client(&self) -> Ipv4Addr {
        self.lan.hosts[0].1
    }

    fn member_ip(&self, i: usize) -> Ipv4Addr {
        self.lan.hosts[i + 1].1
    }

    /// The client knocks member `i` for its own address.
    fn knock(&self, i: usize) {
        let home = postern_e2e::tempfile::tempdir().unwrap();
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

    fn open(&self, i: usize) -> bool {
        tcp_connect_ok(
            &self.lan.hosts[0].0,
            IpAddr::V4(self.member_ip(i)),
            PORT,
            Duration::from_millis(400),
        )
    }

    fn wait_open(&self, i: usize, want: bool, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(100), || self.open(i) == want)
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| {
                m.daemon
                    .as_ref()
                    .map(|d| format!("--- {}\n{}", m.name, d.log_text()))
            })
            .collect()
    }

    fn all_closed_again(&self) {
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

fn unix_now() -> u64 {
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

#[test]
fn one_knock_opens_every_member_and_the_store_cannot_forge_grants() {
    if !runnable(&["nft", "redis-server", "redis-cli"]) {
        return;
    }
    let mut f = Fleet::new("fl");
    for i in 0..3 {
        assert!(!f.open(i), "member {} open before any knock", i + 1);
    }

    // 1. The knock reaches member 1; all three open (fan-out bound: 5 s).
    f.knock(0);
    for i in 0..3 {
        assert!(
            f.wait_open(i, true, Duration::from_secs(5)),
            "member {} did not open\n{}",
            i + 1,
            f.logs()
        );
    }
    assert!(f
        .daemon(1)
        .wait_log("fleet: granted", 1, Duration::from_secs(1)));
    f.all_closed_again();

    // 2. A grant written into Redis without the group key: refused by all.
    let forged = format!(
        "{{\"v\":1,\"group\":\"{GROUP}\",\"member\":\"m9\",\"issued_at\":1,\"openings\":\
         [{{\"source\":\"{}\",\"proto\":\"tcp\",\"port\":{PORT},\"timeout_secs\":30,\
         \"expires_at\":{}}}]}}",
        f.client(),
        unix_now() + 30
    );
    let stream = format!("postern:fleet:{GROUP}:grants");
    f.redis.cli(&[
        "XADD",
        &stream,
        "*",
        "grant",
        &forged,
        "mac",
        &"0".repeat(64),
    ]);
    f.redis.cli(&["XADD", &stream, "*", "grant", &forged]);
    for i in 0..3 {
        assert!(
            f.daemon(i).wait_log(
                "fleet: refused a stored grant: bad signature",
                2,
                Duration::from_secs(5)
            ),
            "member {} did not refuse the forged grants\n{}",
            i + 1,
            f.logs()
        );
    }
    for i in 0..3 {
        assert!(!f.open(i), "a forged grant opened member {}", i + 1);
    }

    // 3. Member 3 killed; a knock while it is down; started again, it catches up.
    f.members[2].daemon.as_mut().unwrap().kill9();
    f.members[2].daemon = None;
    f.knock(0);
    assert!(f.wait_open(0, true, Duration::from_secs(5)), "{}", f.logs());
    assert!(f.wait_open(1, true, Duration::from_secs(5)), "{}", f.logs());
    assert!(!f.open(2), "member 3 opened while down");
    f.start(2);
    assert!(
        f.wait_open(2, true, Duration::from_secs(5)),
        "member 3 did not catch up\n{}",
        f.logs()
    );
    f.all_closed_again();

    // 4. Redis down: member 2 still serves its own knock, and says so…
    f.redis.stop();
    f.knock(1);
    assert!(
        f.wait_open(1, true, Duration::from_secs(5)),
        "member 2 did not serve its own knock with Redis down\n{}",
        f.logs()
    );
    assert!(
        f.daemon(1)
            .wait_log("fleet: cannot publish a grant", 1, Duration::from_secs(5)),
        "{}",
        f.logs()
    );
    assert!(
        !f.open(0) && !f.open(2),
        "opened elsewhere without the store"
    );
    // …and shares it once Redis is back, while the grant is live.
    f.redis.spawn();
    for i in [0, 2] {
        assert!(
            f.wait_open(i, true, Duration::from_secs(8)),
            "member {} did not get the grant made while Redis was down\n{}",
            i + 1,
            f.logs()
        );
    }
    f.all_closed_again();
}
