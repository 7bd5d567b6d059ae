//! The shipped unit (examples/posternd.service) really runs posternd: started
//! under the unit's own kernel-side sandbox (its SystemCallFilter, expanded by the
//! real `systemd-analyze`, RestrictAddressFamilies, CapabilityBoundingSet,
//! NoNewPrivileges, UMask; see `unit-sandbox`), since this machine runs no
//! systemd. posternd starts, drops its capabilities (capset), a knock opens the
//! port, and a client command runs as CMD_EXEC_USER (setgroups/setgid/setuid).
//! The unit as it was (`~@privileged` denying capset) kills posternd with
//! SIGSYS: the test notices.

use postern_e2e::posternd::{
    access_conf, knock_ok, nftables_action, run_scenarios, runnable, udp_capture, Posternd,
    Service, Setup, SPA_PORT,
};
use postern_e2e::{wait_until, workspace_bin, workspace_root};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

const PORT: u16 = 22031;
const TIMEOUT: u64 = 3;

fn shipped_unit() -> PathBuf {
    workspace_root().join("examples/posternd.service")
}

fn sandbox(unit: &std::path::Path) -> Vec<String> {
    vec![
        workspace_bin("unit-sandbox").display().to_string(),
        unit.display().to_string(),
    ]
}

fn setup(tag: &str, access_extra: &str) -> Setup {
    let s = Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
    );
    s.conf.write(
        "access.conf",
        &access_conf(&s.keys, Some(&format!("tcp/{PORT}")), TIMEOUT, access_extra),
    );
    s
}

fn knock_opens_under_the_unit(tag: &str) {
    let s = setup(tag, "");
    let d = Posternd::try_start_wrapped(
        s.svc.server(),
        &sandbox(&shipped_unit()),
        &s.args,
        s.conf.dir.path(),
    )
    .unwrap_or_else(|e| panic!("posternd did not start under the unit's sandbox: {e}"));
    assert!(
        d.log_text()
            .contains("capabilities reduced on every thread"),
        "{}",
        d.log_text()
    );
    assert!(
        !s.svc.reachable(Duration::from_millis(500)),
        "open before the knock"
    );
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(5)),
        "no grant under the unit's sandbox:\n{}",
        d.log_text()
    );
    assert!(
        s.svc
            .wait_reachable(false, Duration::from_secs(TIMEOUT + 5)),
        "grant never expired:\n{}",
        d.log_text()
    );
}

fn command_runs_as_its_user_under_the_unit(tag: &str) {
    // A directory `nobody` may write, for the command's marker.
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = out.path().join("ran");
    let s = setup(tag, "ENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\n");
    let mut d = Posternd::try_start_wrapped(
        s.svc.server(),
        &sandbox(&shipped_unit()),
        &s.args,
        s.conf.dir.path(),
    )
    .unwrap_or_else(|e| panic!("posternd did not start under the unit's sandbox: {e}"));
    let command = format!("/usr/bin/touch {}", marker.display());
    knock_ok(&s.svc, &s.keys, &["-C", &command]);
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || marker
            .exists()),
        "the command did not run:\n{}",
        d.log_text()
    );
    let owner = std::fs::metadata(&marker).unwrap().uid();
    assert_eq!(owner, 65534, "the command ran as uid {owner}, not nobody");
    assert!(d.is_running(), "posternd died:\n{}", d.log_text());
}

/// The old unit denied capset with `~@privileged`: posternd must die at start
/// under it (SIGSYS), or this sandbox is not applying the unit.
fn the_old_unit_kills_posternd(tag: &str) {
    let s = setup(tag, "");
    let old = s.conf.write(
        "old.service",
        &std::fs::read_to_string(shipped_unit())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("SystemCallFilter="))
            .flat_map(|l| match l {
                "[Service]" => vec![
                    l,
                    "SystemCallFilter=@system-service",
                    "SystemCallFilter=~@privileged @resources @mount",
                ],
                _ => vec![l],
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let started =
        Posternd::try_start_wrapped(s.svc.server(), &sandbox(&old), &s.args, s.conf.dir.path());
    let err = match started {
        Ok(d) => panic!("posternd ran under the old unit:\n{}", d.log_text()),
        Err(e) => e,
    };
    assert!(
        err.contains("signal: 31") || err.contains("SIGSYS"),
        "{err}"
    );
}

#[test]
fn the_shipped_systemd_unit_runs_posternd() {
    if !runnable(&["fwknop", "nft", "systemd-analyze"]) {
        return;
    }
    run_scenarios(
        "posternd under the unit's sandbox",
        vec![
            (
                "knock opens".into(),
                Box::new(|| knock_opens_under_the_unit("su0")),
            ),
            (
                "command as nobody".into(),
                Box::new(|| command_runs_as_its_user_under_the_unit("su1")),
            ),
            (
                "old unit: SIGSYS".into(),
                Box::new(|| the_old_unit_kills_posternd("su2")),
            ),
        ],
    );
}
