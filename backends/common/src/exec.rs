//! Spawning a process with a time limit and capped output capture.
//!
//! Shared by [`crate::SystemRunner`] (firewall tools) and [`crate::run_command`]
//! (command mode). The child gets its own process group so that on timeout the
//! whole group — including anything it forked — is killed, and a grandchild that
//! keeps the output pipes open cannot make us wait past the deadline. Every
//! child is locked down by [`ChildPrivileges`] first (no inherited descriptors,
//! only the capabilities it is given).

use crate::child::ChildPrivileges;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a finished (or killed) child produced.
#[derive(Debug)]
pub struct Finished {
    /// `None` when the time limit was hit and the process group was killed.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when stdout or stderr had more than the limit; the rest was discarded.
    pub truncated: bool,
}

impl Finished {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

/// Limits for one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes kept from each of stdout and stderr.
    pub max_output: usize,
}

enum Event {
    Exited(io::Result<ExitStatus>),
    Stdout(Vec<u8>, bool),
    Stderr(Vec<u8>, bool),
}

/// Read everything from `pipe`, keeping at most `max` bytes. Keeps draining after
/// the cap so the child never blocks on a full pipe.
fn read_capped(mut pipe: impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (kept, truncated)
}

/// Spawn `cmd` with `privileges` as a long-lived child: stdin, stdout and stderr
/// piped, its own process group (a terminal's Ctrl-C reaches the daemon only,
/// which then closes the child's stdin). The caller owns the child's lifetime.
pub fn spawn_piped(mut cmd: Command, privileges: ChildPrivileges) -> io::Result<Child> {
    privileges.apply(&mut cmd)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn()
}

/// Spawn `cmd` (stdio is set here) with `privileges`, feed `stdin`, and collect
/// its output until it exits and closes its pipes, or until `limits.timeout`.
/// Only a failure to start the process (or to lock it down) is an `Err`.
pub fn run_limited(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limits: Limits,
    privileges: ChildPrivileges,
) -> io::Result<Finished> {
    privileges.apply(&mut cmd)?;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn()?;
    let group = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();

    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        // A separate writer so a child that writes before reading cannot deadlock us.
        // A tool that exits early closes the pipe; its exit status tells the story.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let max = limits.max_output;
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let (bytes, cut) = read_capped(out, max);
            let _ = tx.send(Event::Stdout(bytes, cut));
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let (bytes, cut) = read_capped(err, max);
            let _ = tx.send(Event::Stderr(bytes, cut));
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });

    let deadline = Instant::now() + limits.timeout;
    let mut result = Finished {
        status: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let (mut exited, mut pipes_open) = (false, 2);
    while !exited || pipes_open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Exited(status)) => {
                exited = true;
                result.status = Some(status?);
            }
            Ok(Event::Stdout(bytes, cut)) => {
                pipes_open -= 1;
                result.stdout = bytes;
                result.truncated |= cut;
            }
            Ok(Event::Stderr(bytes, cut)) => {
                pipes_open -= 1;
                result.stderr = bytes;
                result.truncated |= cut;
            }
            Err(_) => {
                // Out of time: kill the group (the child and whatever it forked).
                // This also covers a child that exited in time but left a
                // descendant holding its output open.
                let _ = killpg(group, Signal::SIGKILL);
                result.status = None;
                // The readers finish promptly now that every writer is dead; keep
                // what they collected.
                let grace = Instant::now() + Duration::from_millis(500);
                while let Ok(ev) = rx.recv_timeout(grace.saturating_duration_since(Instant::now()))
                {
                    match ev {
                        Event::Stdout(b, cut) => {
                            (result.stdout, result.truncated) = (b, result.truncated | cut)
                        }
                        Event::Stderr(b, cut) => {
                            (result.stderr, result.truncated) = (b, result.truncated | cut)
                        }
                        Event::Exited(_) => {}
                    }
                }
                return Ok(result);
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_limited_tool(c: Command, stdin: Option<&[u8]>, l: Limits) -> io::Result<Finished> {
        run_limited(c, stdin, l, ChildPrivileges::firewall_tool())
    }

    fn limits(ms: u64, max: usize) -> Limits {
        Limits {
            timeout: Duration::from_millis(ms),
            max_output: max,
        }
    }

    #[test]
    fn captures_stdout_stderr_and_status() {
        let mut c = Command::new("ls");
        c.args(["/", "/nonexistent-postern"]);
        let f = run_limited_tool(c, None, limits(5000, 1 << 20)).unwrap();
        assert!(!f.status.unwrap().success());
        assert!(String::from_utf8_lossy(&f.stdout).contains("usr"));
        assert!(String::from_utf8_lossy(&f.stderr).contains("nonexistent-postern"));
    }

    #[test]
    fn output_is_capped_but_fully_drained() {
        let mut c = Command::new("head");
        c.args(["-c", "1000000", "/dev/zero"]);
        let f = run_limited_tool(c, None, limits(10_000, 100)).unwrap();
        assert!(f.status.unwrap().success());
        assert_eq!(f.stdout.len(), 100);
        assert!(f.truncated);
    }

    #[test]
    fn stdin_is_fed() {
        let f = run_limited_tool(Command::new("cat"), Some(b"abc"), limits(5000, 100)).unwrap();
        assert_eq!(f.stdout, b"abc");
    }

    #[test]
    fn timeout_kills_the_process() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let start = Instant::now();
        let f = run_limited_tool(c, None, limits(200, 100)).unwrap();
        assert!(f.timed_out());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let e = run_limited_tool(
            Command::new("/nonexistent/postern-tool"),
            None,
            limits(1000, 10),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
