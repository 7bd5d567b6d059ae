//! A real firewalld for one test: its own private system bus (a dbus-daemon with
//! no service activation) and its own network and mount namespaces, so it never
//! sees or changes the host's firewall or bus. Stopped and cleaned up on drop,
//! panics included. Clients reach it with `DBUS_SYSTEM_BUS_ADDRESS` set to
//! [`Firewalld::address`].

use crate::{require_program, require_root, wait_until, ChildGuard, Netns};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long firewalld may take to reach RUNNING (it is a Python program; with
/// several tests starting one in parallel on two cores it takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Root, `ip netns`, and the programs the harness runs. Fails under CI=true.
pub fn can_run() -> bool {
    require_root()
        && require_program("firewalld")
        && require_program("firewall-cmd")
        && require_program("dbus-daemon")
        && require_program("unshare")
        && require_program("mount")
}

pub struct Firewalld {
    /// D-Bus address of the private bus firewalld is on.
    pub address: String,
    dir: tempfile::TempDir,
    log: PathBuf,
    bus_log: PathBuf,
    firewalld: Option<ChildGuard>,
    bus: Option<ChildGuard>,
    netns: String,
}

fn bus_config(socket: &Path) -> String {
    // No <servicedir>: nothing can be activated (no polkit, no systemd).
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// Copy of /etc/firewalld with the default zone pinned to `public` (whose target
/// rejects what no rule allows), so the test does not depend on the host's choice.
fn config_copy(dest: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("/etc/firewalld")
        .arg(dest)
        .output()
        .expect("spawn cp");
    assert!(
        out.status.success(),
        "cp -a /etc/firewalld: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = dest.join("firewalld.conf");
    let text = fs::read_to_string(&conf).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("DefaultZone="))
        .map(str::to_string)
        .collect();
    lines.push("DefaultZone=public".into());
    fs::write(&conf, lines.join("\n") + "\n").expect("write firewalld.conf copy");
}

impl Firewalld {
    /// A private bus only (no firewalld on it).
    pub fn bus_only(ns: &Netns) -> Firewalld {
        let dir = tempfile::Builder::new()
            .prefix("pn-fwd-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        fs::write(&conf, bus_config(&socket)).expect("write bus.conf");
        let bus_log = dir.path().join("dbus.log");
        let mut bus = ns.spawn_logged(
            &[
                "dbus-daemon",
                &format!("--config-file={}", conf.display()),
                "--nofork",
                "--nopidfile",
            ],
            &bus_log,
        );
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            socket.exists() || !bus.is_running()
        });
        assert!(
            up && socket.exists(),
            "dbus-daemon did not create {}: {}",
            socket.display(),
            fs::read_to_string(&bus_log).unwrap_or_default()
        );
        Firewalld {
            address: format!("unix:path={}", socket.display()),
            log: dir.path().join("firewalld.log"),
            bus_log,
            dir,
            firewalld: None,
            bus: Some(bus),
            netns: ns.name.clone(),
        }
    }

    /// firewalld in `ns` (and a mount namespace of its own with a tmpfs on /run)
    /// on a private bus, RUNNING when this returns.
    pub fn start(ns: &Netns) -> Firewalld {
        let mut fw = Firewalld::bus_only(ns);
        config_copy(&fw.dir.path().join("etc"));
        fw.spawn_firewalld(ns);
        fw
    }

    /// Stops firewalld (SIGTERM, as a service manager would); the bus stays.
    pub fn stop(&mut self) {
        if let Some(mut f) = self.firewalld.take() {
            assert!(
                f.terminate(Duration::from_secs(10)).is_some(),
                "firewalld did not stop on SIGTERM"
            );
        }
    }

    /// Starts a new firewalld on the same bus (after [`Firewalld::stop`]); its
    /// runtime rules are gone, like after a reboot.
    pub fn restart(&mut self, ns: &Netns) {
        self.stop();
        self.spawn_firewalld(ns);
    }

    fn spawn_firewalld(&mut self, ns: &Netns) {
        let etc = self.dir.path().join("etc");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open firewalld.log");
        let child = ns
            .cmd("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o mode=755 tmpfs /run && \
                 exec firewalld --nofork --nopid --system-config \"$1\" --log-target console",
            )
            .arg("sh")
            .arg(&etc)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn firewalld");
        self.firewalld = Some(ChildGuard::from_child(child));

        let started = Instant::now();
        let mut last = String::new();
        let firewalld = self.firewalld.as_mut().expect("just spawned");
        let address = self.address.clone();
        let running = wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            if !firewalld.is_running() {
                last = "firewalld exited".into();
                return true;
            }
            last = firewall_cmd(&address, &["--state"])
                .map(|o| o.trim().to_string())
                .unwrap_or_else(|e| e);
            last == "running"
        });
        assert!(
            running && last == "running",
            "firewalld in {} not RUNNING after {:?} (last: {last}); log:\n{}",
            ns.name,
            started.elapsed(),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `firewall-cmd ARGS` against this firewalld; its stdout.
    pub fn firewall_cmd(&self, args: &[&str]) -> Result<String, String> {
        firewall_cmd(&self.address, args)
    }

    /// The zone's runtime rich rules, sorted.
    pub fn rich_rules(&self, zone: &str) -> Vec<String> {
        let out = self
            .firewall_cmd(&[&format!("--zone={zone}"), "--list-rich-rules"])
            .unwrap_or_else(|e| panic!("firewall-cmd --list-rich-rules: {e}"));
        let mut rules: Vec<String> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        rules.sort();
        rules
    }
}

/// Runs firewall-cmd (argv, no shell) on the bus at `address`.
fn firewall_cmd(address: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("firewall-cmd")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn firewall-cmd: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "--- firewalld log (netns {}), last lines:\n{}",
                self.netns,
                tail.join("\n")
            );
        }
        // SIGTERM first: firewalld removes its nftables table on exit (the
        // namespace is deleted afterwards anyway). Bounded; SIGKILL after.
        if let Some(mut f) = self.firewalld.take() {
            f.terminate(Duration::from_secs(5));
        }
        if let Some(mut b) = self.bus.take() {
            b.terminate(Duration::from_secs(2));
        }
        let _ = &self.bus_log;
    }
}
