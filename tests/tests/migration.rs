//! A fwknop user migrates: Debian's stock /etc/fwknop/fwknopd.conf (every line a
//! comment: pcap on eth0, `udp port 62201`, iptables with FWKNOP_INPUT) and
//! access.conf (`SOURCE ANY`, the two `__CHANGEME__` keys filled in) at their
//! default paths, `posternd` started with no arguments as Debian's fwknop-server
//! unit starts fwknopd (`Type=forking`, `ExecStart=/usr/sbin/fwknopd`), and the
//! real fwknop client knocking with its own ~/.fwknoprc stanza. The port that was
//! closed opens and closes again; the daemon logs to syslog as fwknopd
//! (identity `fwknopd`, LOG_DAEMON) and writes /var/run/fwknop/fwknopd.pid.
//!
//! The default paths are the server's own, made private to the test
//! (`postern_e2e::stock`). The server's veth is renamed eth0, the stock PCAP_INTF.

use postern_e2e::posternd::{runnable, Service};
use postern_e2e::scenario::{describe, SpaKeys};
use postern_e2e::stock::StockInstall;
use std::time::Duration;

const PORT: u16 = 22051;

#[test]
fn a_fwknop_user_switches_to_posternd_changing_nothing_but_the_keys() {
    if !runnable(&["fwknop", "iptables", "unshare"]) {
        return;
    }
    // /etc/fwknop as the package installed it, only the keys filled in.
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let Some(mut stock) = StockInstall::new(&keys, |conf| conf) else {
        return;
    };
    let svc = Service::iptables_guarded("mig", PORT);
    let server = svc.server();
    StockInstall::name_interface_eth0(server);
    stock.start_posternd(server, &[]);
    let pids = StockInstall::posternd_pids(server);
    assert_eq!(
        pids.len(),
        1,
        "one daemon in the namespace: {pids:?}\nsyslog: {:#?}",
        stock.lines
    );
    let pid = pids[0];
    let ctx = |lines: &[String]| {
        format!(
            "syslog:\n{}\niptables:\n{}",
            lines.join("\n"),
            server.run_ok(&["iptables", "-S"])
        )
    };
    let pid_file = std::fs::read_to_string(format!("/proc/{pid}/root/run/fwknop/fwknopd.pid"))
        .unwrap_or_else(|e| panic!("fwknopd.pid in the run dir: {e}\n{}", ctx(&stock.lines)));
    assert_eq!(pid_file.trim(), pid.to_string());
    // fwknopd's syslog identity and facility: LOG_DAEMON (3) * 8 + notice (5).
    let ready = stock
        .lines
        .iter()
        .find(|l| l.contains("posternd ready"))
        .unwrap();
    assert!(
        ready.starts_with("<29>") && ready.contains(&format!("fwknopd[{pid}]: ")),
        "{ready}"
    );

    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "open before the knock\n{}",
        ctx(&stock.lines)
    );
    // The user's own rc stanza, as they had it for fwknopd.
    let knock = StockInstall::knock(
        &svc.pair.client,
        svc.pair.server_ip,
        svc.pair.client_ip,
        PORT,
        &keys,
    );
    assert!(knock.status.success(), "{}", describe(&knock));
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
    assert!(
        server
            .run_ok(&["iptables", "-S", "FWKNOP_INPUT"])
            .contains(&svc.pair.client_ip.to_string()),
        "the grant is not in fwknopd's chain\n{}",
        ctx(&stock.lines)
    );
    let closed = svc.wait_reachable(false, Duration::from_secs(10));
    assert!(
        closed,
        "the port did not close after FW_TIMEOUT 3\n{}",
        ctx(&stock.lines)
    );
    assert!(
        StockInstall::stop(server, pid),
        "posternd did not stop at SIGTERM\n{}",
        ctx(&stock.lines)
    );
    // FLUSH_IPT_AT_EXIT (default Y): fwknopd's chain is gone with the daemon.
    assert!(
        !server.run_ok(&["iptables", "-S"]).contains("FWKNOP_INPUT"),
        "{}",
        ctx(&stock.lines)
    );
}
