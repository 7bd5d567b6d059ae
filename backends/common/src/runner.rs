//! Runs tools as argv, never through a shell, with a time limit.

use crate::child::{CapSet, ChildPrivileges};
use crate::exec::{run_limited, spawn_piped, Limits};
use spa_core::firewall::{CommandRunner, FirewallError, FwResult};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Output kept from a firewall tool; listings of big rule sets fit comfortably.
const MAX_TOOL_OUTPUT: usize = 16 << 20;

/// Spawns firewall tools: they keep the daemon's capabilities (iptables needs
/// NET_ADMIN/NET_RAW) but inherit no descriptors.
#[derive(Clone, Debug)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            timeout: Duration::from_secs(10),
        }
    }
}

fn describe(argv: &[String]) -> String {
    argv.join(" ")
}

impl CommandRunner for SystemRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        run_tool(argv, stdin, self.timeout, ChildPrivileges::firewall_tool())
    }

    fn spawn(&mut self, argv: &[String]) -> Option<FwResult<Child>> {
        Some(spawn_tool(argv, ChildPrivileges::firewall_tool()))
    }
}

/// Spawns scripts (CMD_CYCLE_OPEN/CLOSE, the `script` action): like
/// [`SystemRunner`], but the child keeps only `capabilities` (default none) and
/// cannot gain any by exec (`no_new_privs`).
#[derive(Clone, Debug)]
pub struct ConfinedRunner {
    pub timeout: Duration,
    pub capabilities: CapSet,
}

impl CommandRunner for ConfinedRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        let privileges = ChildPrivileges::confined(self.capabilities);
        run_tool(argv, stdin, self.timeout, privileges)
    }
}

/// What a program that could not be started is reported as.
fn start_error(argv: &[String], e: std::io::Error) -> FirewallError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FirewallError::Missing {
            backend: "runner",
            what: format!("the program `{}`", argv[0]),
            hint: "install it or configure its full path".into(),
        }
    } else {
        FirewallError::Command {
            command: describe(argv),
            status: "could not start".into(),
            stderr: e.to_string(),
        }
    }
}

fn empty_command() -> FirewallError {
    FirewallError::Other {
        backend: "runner",
        message: "empty command".into(),
    }
}

/// Start `argv` as a long-lived child with `privileges`.
fn spawn_tool(argv: &[String], privileges: ChildPrivileges) -> FwResult<Child> {
    let (program, args) = argv.split_first().ok_or_else(empty_command)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    spawn_piped(cmd, privileges).map_err(|e| start_error(argv, e))
}

/// Run `argv` with `privileges`; its stdout on success.
fn run_tool(
    argv: &[String],
    stdin: Option<&str>,
    timeout: Duration,
    privileges: ChildPrivileges,
) -> FwResult<String> {
    let (program, args) = argv.split_first().ok_or_else(empty_command)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let limits = Limits {
        timeout,
        max_output: MAX_TOOL_OUTPUT,
    };
    let finished = run_limited(cmd, stdin.map(str::as_bytes), limits, privileges)
        .map_err(|e| start_error(argv, e))?;
    let stderr = String::from_utf8_lossy(&finished.stderr).trim().to_string();
    match finished.status {
        None => Err(FirewallError::Command {
            command: describe(argv),
            status: format!("killed after {timeout:?}"),
            stderr,
        }),
        // A cut listing could make a backend miss its own rules: refuse it.
        Some(_) if finished.truncated => Err(FirewallError::Command {
            command: describe(argv),
            status: format!("output larger than {MAX_TOOL_OUTPUT} bytes"),
            stderr,
        }),
        Some(status) if status.success() => {
            Ok(String::from_utf8_lossy(&finished.stdout).into_owned())
        }
        Some(status) => Err(FirewallError::Command {
            command: describe(argv),
            status: status.to_string(),
            stderr,
        }),
    }
}

/// Runs every command with a fixed argv prefix, e.g. `ip netns exec NS` to drive a
/// firewall in another network namespace, or `sudo -n` for an unprivileged daemon.
pub struct PrefixedRunner {
    prefix: Vec<String>,
    inner: Box<dyn CommandRunner>,
}

impl PrefixedRunner {
    pub fn new(prefix: Vec<String>, inner: Box<dyn CommandRunner>) -> Self {
        PrefixedRunner { prefix, inner }
    }

    /// `ip netns exec NAME …` around a [`SystemRunner`].
    pub fn netns(name: &str, timeout: Duration) -> Self {
        let prefix = ["ip", "netns", "exec", name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        PrefixedRunner::new(prefix, Box::new(SystemRunner { timeout }))
    }
}

impl CommandRunner for PrefixedRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        let full: Vec<String> = self.prefix.iter().chain(argv).cloned().collect();
        self.inner.run(&full, stdin)
    }

    fn spawn(&mut self, argv: &[String]) -> Option<FwResult<Child>> {
        let full: Vec<String> = self.prefix.iter().chain(argv).cloned().collect();
        self.inner.spawn(&full)
    }
}

/// Check now that `backend` can find `program`: [`FirewallError::Missing`] with
/// `hint` otherwise.
pub fn require_program(
    program: &str,
    backend: &'static str,
    hint: impl FnOnce() -> String,
) -> FwResult<()> {
    match find_program(program) {
        Some(_) => Ok(()),
        None => Err(FirewallError::Missing {
            backend,
            what: format!("the program `{program}`"),
            hint: hint(),
        }),
    }
}

/// A "program missing" error from the shared runner, named as `backend`'s own
/// with its hint; other errors pass unchanged.
pub fn missing_for(
    e: FirewallError,
    backend: &'static str,
    hint: impl FnOnce() -> String,
) -> FirewallError {
    match e {
        FirewallError::Missing { what, .. } => FirewallError::Missing {
            backend,
            what,
            hint: hint(),
        },
        e => e,
    }
}

/// Where `program` would be found: itself if it contains a `/`, else the first
/// executable match in `$PATH` (plus the sbin directories, which a daemon started
/// from a user shell may lack in its PATH).
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_argv_without_a_shell() {
        let out = SystemRunner::default()
            .run(&argv(&["echo", "a;b", "$HOME"]), None)
            .unwrap();
        assert_eq!(out, "a;b $HOME\n");
    }

    #[test]
    fn passes_stdin_and_reports_failure_with_stderr() {
        let out = SystemRunner::default()
            .run(&argv(&["cat"]), Some("hello"))
            .unwrap();
        assert_eq!(out, "hello");
        let err = SystemRunner::default()
            .run(&argv(&["ls", "/nonexistent-postern"]), None)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("nonexistent-postern") && text.contains("exit status: 2"),
            "{text}"
        );
    }

    #[test]
    fn missing_program_and_timeout_are_errors() {
        let err = SystemRunner::default()
            .run(&argv(&["/nonexistent/tool"]), None)
            .unwrap_err();
        assert!(matches!(err, FirewallError::Missing { .. }), "{err}");
        let mut r = SystemRunner {
            timeout: Duration::from_millis(100),
        };
        let err = r.run(&argv(&["sleep", "5"]), None).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
    }

    #[test]
    fn spawned_children_are_long_lived_and_prefixed_like_runs() {
        use std::io::{Read, Write};
        let mut child = SystemRunner::default()
            .spawn(&argv(&["cat"]))
            .unwrap()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"one\ntwo\n")
            .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "one\ntwo\n");
        assert!(child.wait().unwrap().success());
        let mut r = PrefixedRunner::new(argv(&["echo", "pre"]), Box::new(SystemRunner::default()));
        let child = r.spawn(&argv(&["x"])).unwrap().unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pre x\n");
        let missing = SystemRunner::default().spawn(&argv(&["/nonexistent/tool"]));
        assert!(matches!(missing, Some(Err(FirewallError::Missing { .. }))));
    }

    #[test]
    fn prefixed_runner_prepends_its_prefix() {
        let mut r = PrefixedRunner::new(argv(&["echo", "pre"]), Box::new(SystemRunner::default()));
        assert_eq!(r.run(&argv(&["x", "y"]), None).unwrap(), "pre x y\n");
    }

    #[test]
    fn finds_programs_on_path_and_by_absolute_path() {
        assert!(find_program("ls").is_some());
        assert!(find_program("/bin/ls").is_some());
        assert!(find_program("postern-no-such-tool").is_none());
        assert!(find_program("/etc/passwd").is_none());
    }
}
