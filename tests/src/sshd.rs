//! A real sshd behind a port posternd keeps closed, for the tests of
//! `postern --connect` and `postern ssh`: a [`Pair`], host and user keys made
//! with `ssh-keygen`, sshd on the server address, and posternd (UDP capture,
//! nftables action protecting the ssh port, an access stanza for fresh keys).

use crate::posternd::{
    access_conf, nftables_action, postern_toml, udp_capture, ConfDir, Posternd, SPA_PORT,
};
use crate::scenario::{describe, SpaKeys};
use crate::{pair, ChildGuard, Pair};
use std::process::{Command, Output, Stdio};

/// The programs [`SshdBehindPostern`] needs (for `runnable`).
pub const PROGRAMS: [&str; 4] = ["nft", "ssh", "/usr/sbin/sshd", "ssh-keygen"];

pub struct SshdBehindPostern {
    // Field order = drop order: the daemons go before their namespaces.
    pub posternd: Posternd,
    _sshd: ChildGuard,
    pub net: Pair,
    /// The keys of the access stanza (what a client must knock with).
    pub keys: SpaKeys,
    /// sshd's and posternd's files, and the user key `user_key`.
    pub dir: ConfDir,
    pub port: u16,
}

impl SshdBehindPostern {
    /// sshd on `port` of a fresh pair's server, posternd guarding it.
    pub fn start(tag: &str, port: u16) -> SshdBehindPostern {
        let net = pair(tag);
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let dir = ConfDir::new();
        let path = |name: &str| dir.path(name).display().to_string();
        for key in ["host_key", "user_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f", &path(key)])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", describe(&out));
        }
        std::fs::copy(dir.path("user_key.pub"), dir.path("authorized_keys")).unwrap();
        dir.write(
            "sshd_config",
            &format!(
                "Port {port}\nListenAddress {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                net.server_ip,
                path("host_key"),
                path("sshd.pid"),
                path("authorized_keys"),
            ),
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = net
            .server
            .cmd("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", &path("sshd_config")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sshd = ChildGuard::from_child(sshd);
        dir.write(
            "access.conf",
            &access_conf(&keys, Some(&format!("tcp/{port}")), 30, ""),
        );
        dir.write(
            "postern.toml",
            &postern_toml(
                &dir,
                "access.conf",
                "memory",
                &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(port)),
            ),
        );
        let args = vec!["-c".to_string(), dir.arg("postern.toml"), "-v".into()];
        let posternd = Posternd::start(&net.server, &args, dir.dir.path());
        SshdBehindPostern {
            posternd,
            _sshd: sshd,
            net,
            keys,
            dir,
            port,
        }
    }

    /// A path in [`SshdBehindPostern::dir`], as a String.
    pub fn path(&self, name: &str) -> String {
        self.dir.path(name).display().to_string()
    }

    /// ssh options for this sshd: no config file, the user key, no prompts,
    /// no known-hosts file, a 2 s connect timeout.
    pub fn ssh_options(&self) -> Vec<String> {
        [
            "-F",
            "none",
            "-i",
            &self.path("user_key"),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=2",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `ssh OPTIONS [-o ProxyCommand=PROXY] -p PORT root@SERVER COMMAND` from
    /// the client namespace.
    pub fn ssh(&self, proxy: Option<&str>, command: &str) -> Output {
        let mut argv = vec!["ssh".to_string()];
        argv.extend(self.ssh_options());
        argv.extend(["-p".into(), self.port.to_string()]);
        if let Some(p) = proxy {
            argv.extend(["-o".into(), format!("ProxyCommand={p}")]);
        }
        argv.extend([format!("root@{}", self.net.server_ip), command.into()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.net.client.run(&argv)
    }
}
