//! `postern --connect` as ssh's ProxyCommand, with a real sshd behind a port
//! posternd keeps closed: plain ssh cannot connect; ssh through
//! `postern --connect %h:%p` knocks, waits for the port and runs a command
//! over the bridged connection.

use postern_e2e::posternd::runnable;
use postern_e2e::scenario::{describe, SpaClient};
use postern_e2e::sshd::{SshdBehindPostern, PROGRAMS};

const SSH_PORT: u16 = 22081;

#[test]
fn ssh_through_postern_connect_reaches_sshd_behind_a_closed_port() {
    if !runnable(&PROGRAMS) {
        return;
    }
    let s = SshdBehindPostern::start("cc", SSH_PORT);
    let closed = s.ssh(None, "echo hello-through-postern");
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
        s.net.client_ip,
        s.keys.client_key_args().unwrap().join(" ")
    );
    let out = s.ssh(Some(&proxy), "echo hello-through-postern");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "hello-through-postern",
        "{}",
        describe(&out)
    );
}
