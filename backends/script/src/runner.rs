//! Runs tools as argv, never through a shell, with a time limit.

use spa_core::firewall::{CommandRunner, FirewallError, FwResult};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns real processes.
#[derive(Clone, Debug)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner { timeout: Duration::from_secs(10) }
    }
}

fn describe(argv: &[String]) -> String {
    argv.join(" ")
}

impl CommandRunner for SystemRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        let (program, args) = argv.split_first().ok_or_else(|| FirewallError::Other {
            backend: "runner",
            message: "empty command".into(),
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FirewallError::Command {
                command: describe(argv),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes the pipe; its exit status tells the story.
            let _ = pipe.write_all(input.as_bytes());
        }
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(FirewallError::Command {
                        command: describe(argv),
                        status: format!("killed after {:?}", self.timeout),
                        stderr: String::new(),
                    });
                }
                Err(e) => {
                    return Err(FirewallError::Command { command: describe(argv), status: "wait failed".into(), stderr: e.to_string() })
                }
            }
        };
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        if status.success() {
            Ok(out)
        } else {
            Err(FirewallError::Command { command: describe(argv), status: status.to_string(), stderr: err.trim().to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_argv_without_a_shell() {
        let out = SystemRunner::default().run(&argv(&["echo", "a;b", "$HOME"]), None).unwrap();
        assert_eq!(out, "a;b $HOME\n");
    }

    #[test]
    fn passes_stdin_and_reports_failure_with_stderr() {
        let out = SystemRunner::default().run(&argv(&["cat"]), Some("hello")).unwrap();
        assert_eq!(out, "hello");
        let err = SystemRunner::default().run(&argv(&["sh", "-c", "echo boom >&2; exit 3"]), None).unwrap_err();
        assert!(err.to_string().contains("boom") && err.to_string().contains('3'), "{err}");
    }

    #[test]
    fn missing_program_and_timeout_are_errors() {
        assert!(SystemRunner::default().run(&argv(&["/nonexistent/tool"]), None).is_err());
        let mut r = SystemRunner { timeout: Duration::from_millis(100) };
        let err = r.run(&argv(&["sleep", "5"]), None).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
    }
}
