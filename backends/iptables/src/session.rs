//! A long-lived `iptables-restore --noflush -v` fed one transaction at a time.
//!
//! Starting `iptables-restore` per batch costs a process start (and, with the
//! nf_tables variant, a cache fetch) of several milliseconds. One process reads
//! any number of `*table … COMMIT` blocks from its stdin and commits each as it
//! reads its `COMMIT` (both variants; the legacy one holds the xtables lock only
//! between `*table` and `COMMIT`). It says nothing on success, but with `-v` it
//! echoes comment lines, so a `# postern-ack N` written after a block comes back
//! once the block is committed. On an error it prints the failing line to stderr
//! and exits without committing that block: the caller gets the error, and the
//! next block starts a fresh process.

use spa_core::firewall::{FirewallError, FwResult};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

/// A running `iptables-restore` (or `ip6tables-restore`).
pub struct RestoreSession {
    child: Child,
    /// `None` once closed (dropping it ends the process).
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: ChildStderr,
    /// Its command line, for errors.
    command: String,
    /// Bytes read from stdout and not yet matched to an acknowledgement.
    pending: Vec<u8>,
    acks: u64,
    timeout: Duration,
}

impl RestoreSession {
    /// Take over a child started with piped stdio.
    pub fn new(mut child: Child, command: String, timeout: Duration) -> FwResult<Self> {
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(FirewallError::Command {
                command,
                status: "started without piped stdio".into(),
                stderr: String::new(),
            });
        };
        // Warnings on stderr are read between blocks, never waited for.
        set_nonblocking(stderr.as_raw_fd()).map_err(|e| FirewallError::Command {
            command: command.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
        Ok(RestoreSession {
            child,
            stdin: Some(stdin),
            stdout,
            stderr,
            command,
            pending: Vec::new(),
            acks: 0,
            timeout,
        })
    }

    /// Commit `blocks` (one or more `*table … COMMIT`); returns once the process
    /// has read and committed all of them. An `Err` leaves the session dead: drop it.
    pub fn apply(&mut self, blocks: &str) -> FwResult<()> {
        self.acks += 1;
        let ack = format!("# postern-ack {}", self.acks);
        let text = format!("{blocks}{ack}\n");
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(text.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        if written.is_err() {
            // It exited (an earlier error, or killed): its status says why.
            return Err(self.failure(None));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(at) = find_line(&self.pending, ack.as_bytes()) {
                self.pending.drain(..at);
                self.log_warnings();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.stdout.as_raw_fd(), left) {
                let _ = self.child.kill();
                return Err(self.failure(Some(format!("killed after {:?}", self.timeout))));
            }
            let mut buf = [0u8; 4096];
            match self.stdout.read(&mut buf) {
                Ok(0) | Err(_) => return Err(self.failure(None)),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The error for a process that stopped answering: its exit status and stderr.
    fn failure(&mut self, status: Option<String>) -> FirewallError {
        let status = status.unwrap_or_else(|| match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        });
        FirewallError::Command {
            command: self.command.clone(),
            status,
            stderr: self.read_stderr().trim().to_string(),
        }
    }

    fn read_stderr(&mut self) -> String {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.stderr.read(&mut buf) {
            if n == 0 || text.len() > 64 * 1024 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// What the tool printed on stderr while succeeding (e.g. iptables-nft's
    /// note about legacy tables): logged, so the pipe never fills.
    fn log_warnings(&mut self) {
        let text = self.read_stderr();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(command = %self.command, "{line}");
        }
    }
}

impl Drop for RestoreSession {
    /// Closing stdin ends the process at its next read; reap it.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Position just after the line equal to `line` in `buf`, if there is one.
fn find_line(buf: &[u8], line: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
        if &buf[start..start + end] == line {
            return Some(start + end + 1);
        }
        start += end + 1;
    }
    None
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, without pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait until `fd` is readable (or at its end) for at most `timeout`.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return r > 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn session(program: &[&str], timeout: Duration) -> RestoreSession {
        let child = Command::new(program[0])
            .args(&program[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        RestoreSession::new(child, program.join(" "), timeout).unwrap()
    }

    #[test]
    fn an_echoed_acknowledgement_completes_each_block() {
        // `cat` echoes everything, the acknowledgement included, as `-v` does.
        let mut s = session(&["cat"], Duration::from_secs(5));
        for _ in 0..3 {
            s.apply("*filter\n-A X -j ACCEPT\nCOMMIT\n").unwrap();
        }
        assert_eq!(s.acks, 3);
        assert!(s.pending.is_empty(), "everything up to the ack is consumed");
    }

    #[test]
    fn a_process_that_exits_is_an_error_with_its_status() {
        let mut s = session(&["false"], Duration::from_secs(5));
        let e = s.apply("*filter\nCOMMIT\n").unwrap_err().to_string();
        assert!(e.contains("exit status: 1") && e.contains("false"), "{e}");
    }

    #[test]
    fn a_process_that_never_answers_is_killed_after_the_timeout() {
        let mut s = session(&["sleep", "30"], Duration::from_millis(200));
        let e = s.apply("*filter\nCOMMIT\n").unwrap_err().to_string();
        assert!(e.contains("killed after"), "{e}");
    }

    #[test]
    fn finds_whole_lines_only() {
        assert_eq!(find_line(b"a\n# ack 1\nb", b"# ack 1"), Some(10));
        assert_eq!(find_line(b"# ack 12\n", b"# ack 1"), None);
        assert_eq!(find_line(b"# ack 1", b"# ack 1"), None, "not yet complete");
    }
}
