//! The children posternd starts, end to end with the real daemon and the real
//! fwknop client:
//!
//! - a CMD_CYCLE close owed when posternd is killed with SIGKILL runs at the next
//!   start (the state file in run_dir, mode 0600, says what is owed);
//! - `posternd -t` runs no CMD_CYCLE script and no client command: it logs what
//!   would have run, and the marker files they would write never appear;
//! - ENABLE_CMD_SUDO_EXEC runs the client's command through the real sudo
//!   (`sudo -u CMD_SUDO_EXEC_USER`): the file it writes belongs to that user.

use postern_e2e::posternd::{knock_ok, runnable, udp_capture, Posternd, Service, Setup, SPA_PORT};
use postern_e2e::wait_until;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PORT: u16 = 22080;
const STEP: Duration = Duration::from_millis(50);

/// A UDP capture and the log-only action: the scripts are the only effect.
fn body() -> String {
    format!("{}\n[[action]]\ntype = \"log\"\n", udp_capture(SPA_PORT))
}

/// Setup whose access.conf stanza also has `extra` lines.
fn setup(tag: &str, extra: &str) -> Setup {
    let s = Setup::new(Service::open(tag, PORT), 30, "memory", &body());
    let text = std::fs::read_to_string(s.conf.path("access.conf")).unwrap();
    s.conf.write("access.conf", &format!("{text}\n{extra}"));
    s
}

/// A directory anyone may write to (commands may run as `nobody`).
fn shared_dir(s: &Setup) -> PathBuf {
    let dir = s.conf.path("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The temp dir itself must be traversable by that user too.
    std::fs::set_permissions(s.conf.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn cycle_state_files(run_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run_dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("cmd_cycle-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cmd_cycle_close_owed_at_sigkill_runs_at_the_next_start() {
    if !runnable(&["fwknop"]) {
        return;
    }
    let s = setup("cyk", "");
    let out = shared_dir(&s);
    let (opened, closed) = (out.join("opened"), out.join("closed"));
    let text = std::fs::read_to_string(s.conf.path("access.conf")).unwrap();
    s.conf.write(
        "access.conf",
        &format!(
            "{text}\nCMD_CYCLE_OPEN touch {}\nCMD_CYCLE_CLOSE touch {}\nCMD_CYCLE_TIMER 2\n",
            opened.display(),
            closed.display()
        ),
    );
    let mut d = s.start();
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        wait_until(Duration::from_secs(5), STEP, || opened.exists()),
        "open did not run:\n{}",
        d.log_text()
    );
    d.kill9();
    let files = cycle_state_files(&s.conf.run_dir());
    assert_eq!(files.len(), 1, "one state file: {files:?}");
    let mode = std::fs::metadata(&files[0]).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "state file mode");
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains(&closed.display().to_string()),
        "the owed close is recorded"
    );
    // Let the close fall due while no daemon runs.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!closed.exists(), "nothing ran the close yet");
    let d = s.start();
    assert!(
        wait_until(Duration::from_secs(5), STEP, || closed.exists()),
        "the restarted daemon did not run the owed close:\n{}",
        d.log_text()
    );
}

#[test]
fn test_mode_runs_no_cmd_cycle_script_and_no_client_command() {
    if !runnable(&["fwknop"]) {
        return;
    }
    let s = setup("tmd", "");
    let out = shared_dir(&s);
    let (cycled, commanded) = (out.join("cycled"), out.join("commanded"));
    let text = std::fs::read_to_string(s.conf.path("access.conf")).unwrap();
    s.conf.write(
        "access.conf",
        &format!(
            "{text}\nENABLE_CMD_EXEC Y\nCMD_CYCLE_OPEN touch {}\nCMD_CYCLE_CLOSE NONE\n",
            cycled.display()
        ),
    );
    let mut args = s.args.clone();
    args.push("-t".into());
    let d = Posternd::start(s.svc.server(), &args, s.conf.dir.path());
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        d.wait_log(
            "test mode: would run CMD_CYCLE_OPEN",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        d.log_text()
    );
    let cmd = format!("touch {}", commanded.display());
    knock_ok(&s.svc, &s.keys, &["--server-cmd", &cmd]);
    assert!(
        d.wait_log("test mode: would run command", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    // The log line is written where the command would have run: give a command
    // that did run time to show up anyway.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!cycled.exists(), "CMD_CYCLE_OPEN ran in test mode");
    assert!(!commanded.exists(), "the client command ran in test mode");
    assert!(
        cycle_state_files(&s.conf.run_dir()).is_empty(),
        "test mode wrote state"
    );
}

#[test]
fn sudo_exec_runs_the_command_as_the_sudo_user() {
    if !runnable(&["fwknop", "sudo"]) {
        return;
    }
    let s = setup(
        "sdo",
        "ENABLE_CMD_EXEC Y\nENABLE_CMD_SUDO_EXEC Y\nCMD_SUDO_EXEC_USER nobody\n",
    );
    let out = shared_dir(&s);
    let marker = out.join("by-sudo");
    let d = s.start();
    let cmd = format!("touch {}", marker.display());
    knock_ok(&s.svc, &s.keys, &["--server-cmd", &cmd]);
    assert!(
        wait_until(Duration::from_secs(10), STEP, || marker.exists()),
        "sudo did not run the command:\n{}",
        d.log_text()
    );
    let id = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let nobody: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
    assert_eq!(
        std::fs::metadata(&marker).unwrap().uid(),
        nobody,
        "the command runs as CMD_SUDO_EXEC_USER"
    );
}
