//! Command mode: run the command a client sent in a command message (fwknop
//! message type 0), when the stanza has ENABLE_CMD_EXEC.
//!
//! How postern runs it, and how that differs from fwknopd 2.6.10:
//! - The command is split into words with POSIX-shell quoting (`shell-words`) and
//!   executed directly. No shell ever runs: `;`, `|`, `&&`, `>`, `$VAR` and
//!   backticks are plain characters inside arguments. fwknopd splits on whitespace
//!   only (quotes stay in the words) and, where `execvp` is unavailable, falls back
//!   to `system()`, i.e. `/bin/sh -c`. A client that relied on shell syntax must
//!   ask for a script that does the work instead.
//! - CMD_EXEC_USER / CMD_EXEC_GROUP become the process's uid/gid (like fwknopd's
//!   setuid/setgid); the group defaults to the user's primary group, and
//!   supplementary groups are dropped (fwknopd keeps the daemon's).
//! - The environment is replaced by a minimal one (PATH, HOME, USER, LOGNAME for
//!   the target user), the working directory is `/` (as fwknopd), stdin is empty.
//! - A time limit kills the command and everything it started (own process
//!   group); stdout and stderr are captured up to a size limit.
//! - The command inherits no descriptor and no capability, unless the stanza
//!   lists some (CMD_CAPABILITIES); exec cannot regain any (`no_new_privs`).
//!   fwknopd's command keeps all of root's.
//! - ENABLE_CMD_SUDO_EXEC runs `SUDO_EXE [-u CMD_SUDO_EXEC_USER] [-g
//!   CMD_SUDO_EXEC_GROUP] argv…` (the options left out for `root`, as fwknopd),
//!   itself as CMD_EXEC_USER when set, so sudoers decides what may run. As root,
//!   sudo keeps [`SUDO_CAPABILITIES`] (plus CMD_CAPABILITIES) under
//!   `no_new_privs`; as another user it keeps none and needs its setuid bit, so
//!   `no_new_privs` stays off and sudo gets the daemon's bounding set.

use crate::child::{CapSet, ChildPrivileges, Identity};
use crate::exec::{run_limited, Limits};
use nix::unistd::{Group, User};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// fwknopd's SUDO_EXE default.
pub const DEFAULT_SUDO_EXE: &str = "/usr/bin/sudo";

/// What sudo started by root needs: change user and group, write its audit record.
#[cfg(target_os = "linux")]
pub const SUDO_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// `SUDO_CAPABILITIES` as a set. Without capabilities (BSD) there is nothing
/// to keep: sudo started by root has all of root's power there.
pub fn sudo_capabilities() -> CapSet {
    #[cfg(target_os = "linux")]
    return CapSet::of(SUDO_CAPABILITIES);
    #[cfg(not(target_os = "linux"))]
    return CapSet::EMPTY;
}

/// ENABLE_CMD_SUDO_EXEC settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SudoExec {
    /// SUDO_EXE (fwknopd's default `/usr/bin/sudo`).
    pub exe: PathBuf,
    /// CMD_SUDO_EXEC_USER: `sudo -u`; `None` or `root` leaves it out.
    pub user: Option<String>,
    /// CMD_SUDO_EXEC_GROUP: `sudo -g`; `None` or `root` leaves it out.
    pub group: Option<String>,
}

impl SudoExec {
    /// `sudo [-u USER] [-g GROUP]`, to put in front of the client's argv.
    pub fn prefix(&self) -> Vec<String> {
        let mut argv = vec![self.exe.display().to_string()];
        let not_root = |v: &Option<String>| v.clone().filter(|n| !n.eq_ignore_ascii_case("root"));
        if let Some(user) = not_root(&self.user) {
            argv.extend(["-u".into(), user]);
        }
        if let Some(group) = not_root(&self.group) {
            argv.extend(["-g".into(), group]);
        }
        argv
    }
}

/// PATH given to client commands (and posternd's other children): the system
/// directories only.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to run a client command (ENABLE_CMD_EXEC stanza settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandExec {
    /// CMD_EXEC_USER; `None` runs as the daemon's own user.
    pub user: Option<String>,
    /// CMD_EXEC_GROUP; `None` uses the user's primary group.
    pub group: Option<String>,
    pub timeout: Duration,
    /// Bytes kept from each of stdout and stderr.
    pub max_output: usize,
    /// CMD_CAPABILITIES: what the command keeps (default none).
    pub capabilities: CapSet,
    /// ENABLE_CMD_SUDO_EXEC: run the command through sudo.
    pub sudo: Option<SudoExec>,
}

impl Default for CommandExec {
    fn default() -> Self {
        CommandExec {
            user: None,
            group: None,
            timeout: Duration::from_secs(30),
            max_output: 64 * 1024,
            capabilities: CapSet::EMPTY,
            sudo: None,
        }
    }
}

impl CommandExec {
    /// Every capability a command run this way holds at exec.
    pub fn child_capabilities(&self) -> CapSet {
        match &self.sudo {
            Some(_) => self.capabilities.union(sudo_capabilities()),
            None => self.capabilities,
        }
    }

    /// The argv that runs `cmd` (split, behind sudo when enabled).
    pub fn argv(&self, cmd: &str) -> Result<Vec<String>, CommandError> {
        let argv = split_command(cmd)?;
        Ok(match &self.sudo {
            Some(sudo) => sudo.prefix().into_iter().chain(argv).collect(),
            None => argv,
        })
    }
}

/// What the command did. A non-zero exit is still `Ok`: check [`Self::success`].
#[derive(Debug)]
pub struct CommandOutput {
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond `max_output` was discarded.
    pub truncated: bool,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command `{command}` cannot be split into words: {reason}")]
    Split { command: String, reason: String },
    #[error("the command is empty")]
    Empty,
    #[error("CMD_EXEC_USER `{0}` does not exist")]
    UnknownUser(String),
    #[error("CMD_EXEC_GROUP `{0}` does not exist")]
    UnknownGroup(String),
    #[error("cannot look up `{name}`: {reason}")]
    Lookup { name: String, reason: String },
    #[error("cannot start `{program}`: {reason}")]
    Spawn { program: String, reason: String },
    #[error("`{program}` did not finish within {after:?} and was killed")]
    TimedOut {
        program: String,
        after: Duration,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

/// Split a client command into argv (quotes honoured, no expansion).
pub fn split_command(cmd: &str) -> Result<Vec<String>, CommandError> {
    let argv = shell_words::split(cmd).map_err(|e| CommandError::Split {
        command: cmd.to_string(),
        reason: e.to_string(),
    })?;
    if argv.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(argv)
}

/// Run `cmd` as `user` (CMD_EXEC_USER) with a time limit; see the module docs.
pub fn run_command(
    cmd: &str,
    user: Option<&str>,
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let exec = CommandExec {
        user: user.map(Into::into),
        timeout,
        ..CommandExec::default()
    };
    run_command_with(cmd, &exec)
}

/// Run `cmd` with full settings.
pub fn run_command_with(cmd: &str, exec: &CommandExec) -> Result<CommandOutput, CommandError> {
    let argv = exec.argv(cmd)?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir("/")
        .env_clear()
        .env("PATH", SAFE_PATH);
    let identity = apply_identity(&mut command, exec)?;
    let runs_as_root = identity.is_none_or(|id| id.uid == 0);
    let privileges = ChildPrivileges {
        identity,
        // sudo as another user gets its powers from its setuid bit, none from us.
        capabilities: Some(if exec.sudo.is_some() && !runs_as_root {
            exec.capabilities
        } else {
            exec.child_capabilities()
        }),
        allow_setuid_programs: exec.sudo.is_some() && !runs_as_root,
    };
    let limits = Limits {
        timeout: exec.timeout,
        max_output: exec.max_output,
    };
    let finished =
        run_limited(command, None, limits, privileges).map_err(|e| CommandError::Spawn {
            program: argv[0].clone(),
            reason: e.to_string(),
        })?;
    match finished.status {
        Some(status) => Ok(CommandOutput {
            argv,
            status,
            stdout: finished.stdout,
            stderr: finished.stderr,
            truncated: finished.truncated,
        }),
        None => Err(CommandError::TimedOut {
            program: argv[0].clone(),
            after: exec.timeout,
            stdout: finished.stdout,
            stderr: finished.stderr,
        }),
    }
}

/// Look up the uid/gid to run as and set the user's basic environment.
fn apply_identity(
    command: &mut Command,
    exec: &CommandExec,
) -> Result<Option<Identity>, CommandError> {
    let lookup_error = |name: &str, e: nix::Error| CommandError::Lookup {
        name: name.into(),
        reason: e.to_string(),
    };
    let user = match &exec.user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| lookup_error(name, e))?
                .ok_or_else(|| CommandError::UnknownUser(name.clone()))?,
        ),
        None => None,
    };
    let gid = match &exec.group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|e| lookup_error(name, e))?
                .ok_or_else(|| CommandError::UnknownGroup(name.clone()))?
                .gid,
        ),
        None => user.as_ref().map(|u| u.gid),
    };
    let daemon_uid = nix::unistd::getuid().as_raw();
    let identity = match (&user, gid) {
        (None, None) => None,
        (user, gid) => Some(Identity {
            uid: user.as_ref().map_or(daemon_uid, |u| u.uid.as_raw()),
            gid: gid.map_or_else(|| nix::unistd::getgid().as_raw(), |g| g.as_raw()),
        }),
    };
    if let Some(user) = user {
        command
            .env("HOME", &user.dir)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn runs_without_a_shell_and_captures_output() {
        let out = run_command("echo 'a b' $HOME ; `id` | x", None, Duration::from_secs(5)).unwrap();
        assert!(out.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a b $HOME ; `id` | x\n"
        );
        assert_eq!(out.argv, ["echo", "a b", "$HOME", ";", "`id`", "|", "x"]);
    }

    #[test]
    fn environment_is_minimal_and_cwd_is_root() {
        let out = run_command("env", None, Duration::from_secs(5)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("PATH={SAFE_PATH}")
        );
        let out = run_command("pwd", None, Duration::from_secs(5)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/\n");
    }

    #[test]
    fn nonzero_exit_is_reported_in_status() {
        let out = run_command("ls /nonexistent-postern", None, Duration::from_secs(5)).unwrap();
        assert!(!out.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent-postern"));
    }

    #[test]
    fn bad_input_gives_clear_errors() {
        assert!(matches!(
            run_command("", None, Duration::from_secs(1)),
            Err(CommandError::Empty)
        ));
        assert!(matches!(
            run_command("echo 'open", None, Duration::from_secs(1)),
            Err(CommandError::Split { .. })
        ));
        assert!(matches!(
            run_command("true", Some("postern-no-such-user"), Duration::from_secs(1)),
            Err(CommandError::UnknownUser(_))
        ));
        let exec = CommandExec {
            group: Some("postern-no-such-group".into()),
            ..CommandExec::default()
        };
        assert!(matches!(
            run_command_with("true", &exec),
            Err(CommandError::UnknownGroup(_))
        ));
        assert!(matches!(
            run_command("/nonexistent/x", None, Duration::from_secs(1)),
            Err(CommandError::Spawn { .. })
        ));
    }

    #[test]
    fn time_limit_kills_and_output_is_capped() {
        let err = run_command("sleep 30", None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        let exec = CommandExec {
            max_output: 10,
            ..CommandExec::default()
        };
        let out = run_command_with("seq 1000", &exec).unwrap();
        assert_eq!(out.stdout.len(), 10);
        assert!(out.truncated);
    }

    #[test]
    fn runs_as_cmd_exec_user() {
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this test needs root"
            );
            eprintln!("SKIPPED: needs root to change user");
            return;
        }
        let out = run_command("id", Some("nobody"), Duration::from_secs(5)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let nobody = User::from_name("nobody").unwrap().unwrap();
        assert!(
            text.starts_with(&format!("uid={}(nobody) gid={}", nobody.uid, nobody.gid)),
            "{text}"
        );
        assert!(
            !text.contains("(root)"),
            "supplementary groups must be dropped: {text}"
        );
        let out = run_command("env", Some("nobody"), Duration::from_secs(5)).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("USER=nobody"));
    }
}
