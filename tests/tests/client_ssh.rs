//! `postern ssh HOST`: the real ssh, through `postern --connect`, to a real
//! sshd behind a port posternd keeps closed.
//!
//! - wrong keys: every knock is refused, ssh fails once postern gives up
//!   (three knocks), the port stays closed;
//! - the stanza named like the ssh host alias: ssh's own config (-F) gives the
//!   address, port, user and key; the rc file's path holds a space and `%h`, so
//!   the ProxyCommand's quoting for the shell and for ssh's `%` tokens is
//!   exercised; a remote command with quotes and `%` comes back intact;
//! - `-n STANZA` with `root@ADDRESS` and ssh options after `--`.

use postern_e2e::posternd::{runnable, write_private};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::sshd::{SshdBehindPostern, PROGRAMS};
use std::time::Duration;

const SSH_PORT: u16 = 22082;

fn stanza(name: &str, s: &SshdBehindPostern, keys: &SpaKeys) -> String {
    format!(
        "[{name}]\nSPA_SERVER {}\nACCESS tcp/{SSH_PORT}\nALLOW_IP {}\n{}\n",
        s.net.server_ip,
        s.net.client_ip,
        keys.rc_lines()
    )
}

#[test]
fn postern_ssh_knocks_and_connects_through_the_closed_port() {
    if !runnable(&PROGRAMS) {
        return;
    }
    let s = SshdBehindPostern::start("cs", SSH_PORT);
    let SpaClient::Postern(postern) = SpaClient::postern() else {
        unreachable!()
    };
    let home = tempfile::tempdir().unwrap();
    let rc_dir = home.path().join("my rc %h");
    std::fs::create_dir(&rc_dir).unwrap();
    let rc = rc_dir.join("fwknoprc").display().to_string();
    let wrong = SpaKeys::generate("cbc", Some("sha256"));
    write_private(
        rc.as_ref(),
        &format!(
            "{}\n{}",
            stanza("gw", &s, &s.keys),
            stanza("wrong", &s, &wrong)
        ),
    );
    let ssh_config = s.dir.write(
        "ssh_config",
        &format!(
            "Host gw wrong\n  HostName {}\n  Port {SSH_PORT}\n  User root\n  IdentityFile {}\n  \
             BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n",
            s.net.server_ip,
            s.path("user_key")
        ),
    );
    let ssh_config = ssh_config.display().to_string();
    let postern_ssh = |args: &[&str]| {
        s.net
            .client
            .cmd(&postern.display().to_string())
            .args(["--rc-file", &rc])
            .args(args)
            .env("HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };

    let refused = postern_ssh(&[
        "--wait",
        "0.5",
        "ssh",
        "wrong",
        "--",
        "-F",
        &ssh_config,
        "echo never",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && refused.stdout.is_empty() && err.contains("knock 3 of 3"),
        "{}",
        describe(&refused)
    );
    assert!(
        !s.posternd.log_text().contains("granted:"),
        "{}",
        s.posternd.log_text()
    );
    assert!(!s.ssh(None, "true").status.success(), "the port opened");

    let by_host = postern_ssh(&[
        "-v",
        "ssh",
        "gw",
        "--",
        "-F",
        &ssh_config,
        r#"echo "$((6*7))" '100%h' "a  b""#,
    ]);
    assert!(
        by_host.status.success() && String::from_utf8_lossy(&by_host.stdout) == "42 100%h a  b\n",
        "{}",
        describe(&by_host)
    );
    assert!(s.posternd.wait_log("granted:", 1, Duration::from_secs(2)));
    // -v says which stanza knocks, and never prints the ProxyCommand's options.
    let err = String::from_utf8_lossy(&by_host.stderr);
    assert!(
        err.contains("running ssh gw with ProxyCommand `postern --connect %h:%p` (stanza [gw])"),
        "{err}"
    );
    let rc_lines = s.keys.rc_lines();
    let key = rc_lines
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("KEY_BASE64 ");
    assert!(!err.contains(key), "a key on stderr:\n{err}");

    let mut named = vec!["-n", "gw", "ssh"];
    let target = format!("root@{}", s.net.server_ip);
    named.push(&target);
    named.push("--");
    let options = s.ssh_options();
    named.extend(options.iter().map(String::as_str));
    let port = SSH_PORT.to_string();
    named.extend(["-p", &port, "echo", "named"]);
    let by_name = postern_ssh(&named);
    assert!(
        by_name.status.success() && String::from_utf8_lossy(&by_name.stdout) == "named\n",
        "{}",
        describe(&by_name)
    );
    assert!(
        s.posternd.wait_log("granted:", 2, Duration::from_secs(2)),
        "the -n knock was not granted:\n{}",
        s.posternd.log_text()
    );
}
