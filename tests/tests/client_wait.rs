//! `postern --wait`: after the knock it connects to the requested TCP port
//! until it opens, and fails when it does not (a knock with the wrong keys),
//! with the reason; `-v` shows each probe.

use postern_e2e::posternd::{
    knock_with, nftables_action, runnable, udp_capture, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};

const PORT: u16 = 22071;

#[test]
fn wait_reports_the_port_open_or_fails_when_it_stays_closed() {
    if !runnable(&["nft"]) {
        return;
    }
    let s = Setup::new(
        Service::open("cw", PORT),
        30,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
    );
    let _d = s.start();
    assert!(!s.svc.reachable(std::time::Duration::from_millis(300)));
    let postern = SpaClient::postern();

    let wrong = SpaKeys::generate("cbc", Some("sha256"));
    let out = knock_with(&postern, &s.svc, &wrong, &["--wait", "1", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "tcp/{PORT} on {}:{PORT} did not open within 1 s",
                s.svc.pair.server_ip
            )),
        "{}",
        describe(&out)
    );

    let out = knock_with(&postern, &s.svc, &s.keys, &["--wait", "5"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains(&format!("open: tcp/{PORT} on {}", s.svc.pair.server_ip)),
        "{}",
        describe(&out)
    );
}
