//! Real children, started through the real spawn paths as root, report what they
//! hold: capabilities and no_new_privs from /proc/self/status, open descriptors
//! from /proc/self/fd. The test process holds a socket and a file opened without
//! close-on-exec, as a pcap handle would be.

use postern_backend_common::{run_command_with, CapSet, CommandExec, SystemRunner};
use postern_backend_script::{ScriptBackend, ScriptConfig};
use spa_core::firewall::{CommandRunner, Firewall, Opening, Rule};
use std::os::fd::RawFd;
use std::path::Path;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this test needs root"
            );
            eprintln!("SKIPPED: needs root");
            return;
        }
    };
}

/// A UDP socket and a file, both inheritable (no CLOEXEC), closed on drop.
struct Leaky(Vec<RawFd>);

impl Leaky {
    fn open(dir: &Path) -> Self {
        let path = std::ffi::CString::new(dir.join("secret").to_str().unwrap()).unwrap();
        std::fs::write(dir.join("secret"), "s").unwrap();
        // SAFETY: plain system calls; the descriptors are closed in Drop.
        let (sock, file) = unsafe {
            (
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
                libc::open(path.as_ptr(), libc::O_RDONLY),
            )
        };
        assert!(sock > 2 && file > 2, "socket {sock}, file {file}");
        Leaky(vec![sock, file])
    }
}

impl Drop for Leaky {
    fn drop(&mut self) {
        for fd in &self.0 {
            // SAFETY: our own descriptors.
            unsafe { libc::close(*fd) };
        }
    }
}

/// `sh -c` script a child runs: its status, then its descriptors. `ls` opens the
/// directory it lists, so a child that inherited nothing lists exactly 0 1 2 3.
const PROBE: &str = "cat /proc/self/status; echo FDS; ls /proc/self/fd | tr '\\n' ' '";

struct Report {
    status: String,
    fds: Vec<String>,
}

impl Report {
    fn parse(text: &str) -> Report {
        let (status, fds) = text.split_once("FDS\n").expect("probe output");
        Report {
            status: status.to_string(),
            fds: fds.split_whitespace().map(str::to_string).collect(),
        }
    }

    fn field(&self, name: &str) -> String {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in status"))
            .trim()
            .to_string()
    }

    fn caps(&self, name: &str) -> u64 {
        u64::from_str_radix(&self.field(name), 16).unwrap()
    }

    fn assert_caps(&self, want: CapSet, ambient: CapSet) {
        for set in ["CapEff", "CapPrm", "CapInh"] {
            assert_eq!(self.caps(set), want.bits(), "{set}:\n{}", self.status);
        }
        assert_eq!(self.caps("CapAmb"), ambient.bits(), "CapAmb");
    }

    fn assert_only_stdio(&self) {
        assert_eq!(self.fds, ["0", "1", "2", "3"], "inherited descriptors");
    }
}

fn command(exec: &CommandExec) -> Report {
    let out = run_command_with(&format!("sh -c \"{PROBE}\""), exec).unwrap();
    assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Report::parse(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn client_command_has_no_capabilities_and_no_inherited_descriptors() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let _leak = Leaky::open(dir.path());
    let report = command(&CommandExec::default());
    report.assert_caps(CapSet::EMPTY, CapSet::EMPTY);
    assert_eq!(report.field("NoNewPrivs"), "1");
    assert_eq!(report.field("Uid").split_whitespace().next(), Some("0"));
    report.assert_only_stdio();
}

#[test]
fn configured_capabilities_are_exactly_kept_as_root_and_as_another_user() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let _leak = Leaky::open(dir.path());
    let net_raw = CapSet::parse("net_raw").unwrap();
    let as_root = command(&CommandExec {
        capabilities: net_raw,
        ..CommandExec::default()
    });
    // Root keeps it across exec through the root rule; no ambient needed.
    as_root.assert_caps(net_raw, CapSet::EMPTY);
    assert_eq!(as_root.field("NoNewPrivs"), "1");
    as_root.assert_only_stdio();

    let as_nobody = command(&CommandExec {
        user: Some("nobody".into()),
        capabilities: net_raw,
        ..CommandExec::default()
    });
    // A non-root process keeps a capability across exec only as ambient.
    as_nobody.assert_caps(net_raw, net_raw);
    assert_eq!(as_nobody.field("NoNewPrivs"), "1");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        as_nobody.field("Uid").split_whitespace().next(),
        Some(nobody.uid.to_string().as_str())
    );
    as_nobody.assert_only_stdio();

    let plain_nobody = command(&CommandExec {
        user: Some("nobody".into()),
        ..CommandExec::default()
    });
    plain_nobody.assert_caps(CapSet::EMPTY, CapSet::EMPTY);
    plain_nobody.assert_only_stdio();
}

fn opening() -> Opening {
    Opening {
        rule: Rule::new("192.0.2.7".parse().unwrap(), spa_core::Proto::Tcp, 22),
        timeout_secs: 30,
        expires_at: 1_000,
    }
}

fn cycle_report(dir: &Path, capabilities: CapSet) -> Report {
    let out = dir.join("open.out");
    let config = ScriptConfig {
        capabilities,
        ..ScriptConfig::new(
            &format!("sh -c \"{{ {PROBE}; }} > {}\"", out.display()),
            Some("true"),
        )
    };
    let mut fw = ScriptBackend::system(&config).unwrap();
    fw.grant(&[opening()]).unwrap();
    fw.shutdown().unwrap();
    Report::parse(&std::fs::read_to_string(out).unwrap())
}

#[test]
fn cmd_cycle_scripts_are_confined_too() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let _leak = Leaky::open(dir.path());
    let report = cycle_report(dir.path(), CapSet::EMPTY);
    report.assert_caps(CapSet::EMPTY, CapSet::EMPTY);
    assert_eq!(report.field("NoNewPrivs"), "1");
    report.assert_only_stdio();

    let admin = CapSet::parse("net_admin,net_raw").unwrap();
    let report = cycle_report(dir.path(), admin);
    report.assert_caps(admin, CapSet::EMPTY);
    report.assert_only_stdio();
}

#[test]
fn firewall_tools_keep_the_daemons_capabilities_but_no_descriptors() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let _leak = Leaky::open(dir.path());
    let argv: Vec<String> = ["sh", "-c", PROBE].map(String::from).into();
    let out = SystemRunner::default().run(&argv, None).unwrap();
    let report = Report::parse(&out);
    let mine = CapSet::permitted_now().unwrap();
    assert_eq!(report.caps("CapEff"), mine.bits(), "{}", report.status);
    assert_eq!(report.field("NoNewPrivs"), "0");
    report.assert_only_stdio();
}

#[test]
fn a_capability_the_daemon_lacks_cannot_be_given() {
    require_root!();
    // Capabilities are per thread: drop NET_ADMIN in a thread of our own only.
    let err = std::thread::spawn(|| {
        for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
            caps::drop(None, set, caps::Capability::CAP_NET_ADMIN).unwrap();
        }
        let config = ScriptConfig {
            capabilities: CapSet::parse("net_admin,net_raw").unwrap(),
            ..ScriptConfig::new("true", None)
        };
        ScriptBackend::system(&config).err().map(|e| e.to_string())
    })
    .join()
    .unwrap()
    .expect("refused");
    assert!(
        err.contains("net_admin") && !err.contains("net_raw"),
        "{err}"
    );
}
