//! `postern --connect` as ssh's ProxyCommand, with a real sshd behind a port
//! posternd keeps closed: plain ssh cannot connect; ssh through
//! `postern --connect %h:%p` knocks, waits for the port and runs a command
//! over the bridged connection.

use postern_e2e::posternd::{
    access_conf, nftables_action, postern_toml, runnable, udp_capture, ConfDir, Posternd, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::{pair, ChildGuard};

const SSH_PORT: u16 = 22081;

#[test]
fn ssh_through_postern_connect_reaches_sshd_behind_a_closed_port() {
    if !runnable(&["nft", "ssh", "/usr/sbin/sshd", "ssh-keygen"]) {
        return;
    }
    let net = pair("cc");
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let path = |name: &str| dir.path(name).display().to_string();
    let keygen = |file: &str| {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f", &path(file)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    };
    keygen("host_key");
    keygen("user_key");
    std::fs::copy(dir.path("user_key.pub"), dir.path("authorized_keys")).unwrap();
    dir.write(
        "sshd_config",
        &format!(
            "Port {SSH_PORT}\nListenAddress {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
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
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _sshd = ChildGuard::from_child(sshd);

    dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{SSH_PORT}")), 30, ""),
    );
    dir.write(
        "postern.toml",
        &postern_toml(
            &dir,
            "access.conf",
            "memory",
            &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(SSH_PORT)),
        ),
    );
    let args = vec!["-c".to_string(), dir.arg("postern.toml"), "-v".into()];
    let _d = Posternd::start(&net.server, &args, dir.dir.path());

    let ssh = |proxy: Option<String>| {
        let mut argv = vec![
            "ssh".to_string(),
            "-F".into(),
            "none".into(),
            "-i".into(),
            path("user_key"),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "ConnectTimeout=2".into(),
            "-p".into(),
            SSH_PORT.to_string(),
        ];
        if let Some(p) = proxy {
            argv.extend(["-o".into(), format!("ProxyCommand={p}")]);
        }
        argv.extend([
            format!("root@{}", net.server_ip),
            "echo hello-through-postern".into(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        net.client.run(&argv)
    };
    let closed = ssh(None);
    assert!(
        !closed.status.success(),
        "ssh reached sshd before any knock: {}",
        describe(&closed)
    );

    let SpaClient::Postern(postern) = SpaClient::postern() else {
        unreachable!()
    };
    let proxy = format!(
        "{} --connect %h:%p --no-rc-file -a {} {}",
        postern.display(),
        net.client_ip,
        keys.client_key_args().unwrap().join(" ")
    );
    let out = ssh(Some(proxy));
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "hello-through-postern",
        "{}",
        describe(&out)
    );
}
