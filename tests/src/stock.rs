//! A fwknop user's stock install, made private to a test: Debian's
//! /etc/fwknop/fwknopd.conf and access.conf (the two `__CHANGEME__` keys filled
//! in) bound over /etc/fwknop in a mount namespace, a tmpfs over /run, and
//! /dev/log the test's syslog socket; then `posternd` with no arguments, as
//! Debian's fwknop-server unit starts fwknopd (`Type=forking`), and the real
//! fwknop client knocking with its own ~/.fwknoprc stanza.

use crate::posternd::posternd_bin;
use crate::scenario::{describe, Secret, SpaClient, SpaKeys};
use crate::Netns;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Where fwknop-server installs its files.
pub const STOCK: &str = "/etc/fwknop";

pub struct StockInstall {
    dir: tempfile::TempDir,
    /// What is bound over /etc/fwknop.
    pub etc: PathBuf,
    syslog: UnixDatagram,
    /// Syslog lines received so far.
    pub lines: Vec<String>,
}

fn base64_of(secret: &Secret) -> &str {
    match secret {
        Secret::Base64(k) => k,
        Secret::Passphrase(_) => unreachable!("generated keys are base64"),
    }
}

impl StockInstall {
    /// The stock files with `keys` filled in and fwknopd.conf passed through
    /// `edit_conf`; `None` (with a note) where fwknop-server is not installed.
    pub fn new(keys: &SpaKeys, edit_conf: impl FnOnce(String) -> String) -> Option<StockInstall> {
        let stock_conf = Path::new(STOCK).join("fwknopd.conf");
        let stock_access = Path::new(STOCK).join("access.conf");
        if !stock_conf.exists() || !stock_access.exists() {
            eprintln!("skipped: no stock {STOCK} (fwknop-server not installed)");
            return None;
        }
        let (_, hmac) = keys.hmac.as_ref().expect("stock access.conf uses HMAC");
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc-fwknop");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = edit_conf(std::fs::read_to_string(&stock_conf).unwrap());
        std::fs::write(etc.join("fwknopd.conf"), conf).unwrap();
        let access: String = std::fs::read_to_string(&stock_access)
            .unwrap()
            .lines()
            .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["KEY_BASE64", "__CHANGEME__"] => {
                    format!("KEY_BASE64 {}\n", base64_of(&keys.key))
                }
                ["HMAC_KEY_BASE64", "__CHANGEME__"] => {
                    format!("HMAC_KEY_BASE64 {}\n", base64_of(hmac))
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let active = |l: &&str| !l.trim_start().starts_with('#') && !l.trim().is_empty();
        assert!(
            !access
                .lines()
                .filter(active)
                .any(|l| l.contains("__CHANGEME__")),
            "{access}"
        );
        std::fs::write(etc.join("access.conf"), access).unwrap();
        std::fs::set_permissions(
            etc.join("access.conf"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let syslog = UnixDatagram::bind(dir.path().join("log.sock")).unwrap();
        syslog
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Some(StockInstall {
            dir,
            etc,
            syslog,
            lines: Vec::new(),
        })
    }

    /// Renames the server's veth to eth0, fwknopd.conf's stock PCAP_INTF.
    pub fn name_interface_eth0(server: &Netns) {
        for step in [
            &["ip", "link", "set", "v1", "down"][..],
            &["ip", "link", "set", "v1", "name", "eth0"],
            &["ip", "link", "set", "eth0", "up"],
        ] {
            server.run_ok(step);
        }
    }

    /// `posternd` and nothing else, as the unit's ExecStart, in `server` with
    /// the stock paths private to it; `env` is added to its environment. Returns
    /// once the forking parent exits (and `posternd ready` was logged, or 5 s).
    pub fn start_posternd(&mut self, server: &Netns, env: &[(&str, &str)]) -> Output {
        let dev = self.dir.path().join("dev");
        let script = format!(
            "set -e; mount --make-rprivate /; mount --bind {etc} /etc/fwknop; \
             mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p {dev}; \
             for n in null zero urandom random; do touch {dev}/$n; mount --bind /dev/$n {dev}/$n; done; \
             ln -s /proc/self/fd {dev}/fd; ln -s /proc/self/fd/0 {dev}/stdin; \
             ln -s /proc/self/fd/1 {dev}/stdout; ln -s /proc/self/fd/2 {dev}/stderr; \
             ln -s {sock} {dev}/log; mount --rbind {dev} /dev; exec \"$@\"",
            etc = self.etc.display(),
            dev = dev.display(),
            sock = self.dir.path().join("log.sock").display()
        );
        let bin = posternd_bin().display().to_string();
        let mut cmd = server.cmd("unshare");
        cmd.args(["-m", "sh", "-c", &script, "sh", &bin])
            .env_remove("POSTERN_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        self.drain(
            |l| l.iter().any(|l| l.contains("posternd ready")),
            Duration::from_secs(5),
        );
        assert!(
            out.status.success(),
            "{}\nsyslog: {:#?}",
            describe(&out),
            self.lines
        );
        out
    }

    /// Reads syslog lines until `until` holds or `within` has passed.
    pub fn drain(&mut self, until: impl Fn(&[String]) -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !until(&self.lines) {
            if let Ok(n) = self.syslog.recv(&mut buf) {
                self.lines
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// The namespace's processes named `posternd`.
    pub fn posternd_pids(server: &Netns) -> Vec<u32> {
        server
            .pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "posternd")
            })
            .collect()
    }

    /// SIGTERM to `pid`; true once no posternd is left in `server` (10 s at most).
    pub fn stop(server: &Netns, pid: u32) -> bool {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        crate::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            StockInstall::posternd_pids(server).is_empty()
        })
    }

    /// The real fwknop client knocking with its own ~/.fwknoprc stanza
    /// `[gateway]` (server, access, allow-ip, FW_TIMEOUT and the keys).
    pub fn knock(
        client: &Netns,
        server_ip: std::net::Ipv4Addr,
        client_ip: std::net::Ipv4Addr,
        port: u16,
        keys: &SpaKeys,
    ) -> Output {
        let home = tempfile::tempdir().unwrap();
        let rc = home.path().join(".fwknoprc");
        std::fs::write(
            &rc,
            format!(
                "[gateway]\nSPA_SERVER {server_ip}\nACCESS tcp/{port}\nALLOW_IP {client_ip}\nFW_TIMEOUT 3\n{keys}",
                keys = keys.rc_lines()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
        SpaClient::Fwknop.run(client, home.path(), &["-n".into(), "gateway".into()])
    }
}
