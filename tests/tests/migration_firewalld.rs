//! A user of fwknop's firewalld build migrates: Debian's stock fwknopd.conf with
//! the firewalld build's settings made active as such a user has them
//! (FLUSH_FIREWD_AT_INIT/EXIT, FIREWD_INPUT_ACCESS, ENABLE_FIREWD_COMMENT_CHECK,
//! `FIREWALL_EXE /bin/firewall-cmd`), the stock access.conf with its keys filled
//! in, both at their default paths (`postern_e2e::stock`), `posternd` with no
//! arguments, and the real fwknop client with its own ~/.fwknoprc stanza,
//! against a real firewalld (private bus, the server's namespace). The port
//! firewalld keeps closed opens as a rich rule in the default zone, closes at
//! FW_TIMEOUT, and a grant still open at SIGTERM goes with the daemon
//! (FLUSH_FIREWD_AT_EXIT).

use postern_e2e::firewalld::{can_run, Firewalld};
use postern_e2e::posternd::{runnable, Service};
use postern_e2e::scenario::{describe, SpaKeys};
use postern_e2e::stock::StockInstall;
use std::time::Duration;

const PORT: u16 = 22052;

/// The firewalld build's settings, uncommented (their values are that build's
/// defaults); every other line as shipped.
fn firewalld_style(conf: String) -> String {
    const ACTIVE: [&str; 4] = [
        "#FLUSH_FIREWD_AT_INIT",
        "#FLUSH_FIREWD_AT_EXIT",
        "#FIREWD_INPUT_ACCESS",
        "#ENABLE_FIREWD_COMMENT_CHECK",
    ];
    let mut out = String::new();
    for line in conf.lines() {
        let uncomment = ACTIVE.iter().any(|p| line.starts_with(p))
            || (line.starts_with("#FIREWALL_EXE") && line.contains("firewall-cmd"));
        out.push_str(if uncomment { &line[1..] } else { line });
        out.push('\n');
    }
    for needed in [
        "FIREWD_INPUT_ACCESS",
        "FLUSH_FIREWD_AT_EXIT",
        "FIREWALL_EXE",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(needed)),
            "the stock fwknopd.conf has no `#{needed}` line to make active"
        );
    }
    out
}

#[test]
fn a_firewalld_build_user_switches_to_posternd_changing_nothing_but_the_keys() {
    if !runnable(&["fwknop", "unshare"]) || !can_run() {
        return;
    }
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let Some(mut stock) = StockInstall::new(&keys, firewalld_style) else {
        return;
    };
    let svc = Service::open("migfw", PORT);
    let server = svc.server();
    StockInstall::name_interface_eth0(server);
    let fwd = Firewalld::start(server);
    let ctx = |lines: &[String]| {
        format!(
            "syslog:\n{}\nrich rules: {:?}\nfirewalld log:\n{}",
            lines.join("\n"),
            fwd.rich_rules("public"),
            fwd.log()
        )
    };
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "firewalld's public zone must keep the port closed\n{}",
        ctx(&stock.lines)
    );

    // posternd finds firewalld on the system bus, as on the user's machine.
    stock.start_posternd(server, &[("DBUS_SYSTEM_BUS_ADDRESS", &fwd.address)]);
    let pids = StockInstall::posternd_pids(server);
    assert_eq!(pids.len(), 1, "{pids:?}\n{}", ctx(&stock.lines));
    let pid = pids[0];
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "open before the knock\n{}",
        ctx(&stock.lines)
    );

    let client_ip = svc.pair.client_ip;
    let knock = || {
        let out = StockInstall::knock(&svc.pair.client, svc.pair.server_ip, client_ip, PORT, &keys);
        assert!(out.status.success(), "{}", describe(&out));
    };
    knock();
    let opened = svc.wait_reachable(true, Duration::from_secs(5));
    stock.drain(
        |l| l.iter().any(|l| l.contains("granted")),
        Duration::from_secs(2),
    );
    assert!(
        opened,
        "the knock did not open the port\n{}",
        ctx(&stock.lines)
    );
    let grant = format!(
        r#"rule family="ipv4" source address="{client_ip}" port port="{PORT}" protocol="tcp" accept"#
    );
    assert_eq!(
        fwd.rich_rules("public"),
        vec![grant],
        "the grant is a rich rule in firewalld's default zone\n{}",
        ctx(&stock.lines)
    );
    let closed = svc.wait_reachable(false, Duration::from_secs(10));
    assert!(
        closed,
        "the port did not close after FW_TIMEOUT 3\n{}",
        ctx(&stock.lines)
    );

    // Knock again and stop the daemon while the grant is open.
    knock();
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "the second knock did not open the port\n{}",
        ctx(&stock.lines)
    );
    assert!(
        StockInstall::stop(server, pid),
        "posternd did not stop at SIGTERM\n{}",
        ctx(&stock.lines)
    );
    assert!(
        fwd.rich_rules("public").is_empty(),
        "FLUSH_FIREWD_AT_EXIT: the open grant goes with the daemon\n{}",
        ctx(&stock.lines)
    );
    assert!(!svc.reachable(Duration::from_millis(700)));
}
