//! `[attack] hook`: a program run on each detection, off the packet path.
//!
//! argv without a shell; no descriptors beyond stdin (null), stdout and stderr
//! (captured, capped), no capabilities, no_new_privs, its own process group
//! killed at the timeout; the environment is PATH and the detection only. At
//! most `max_hooks` run at once: a detection beyond that runs none (a line in
//! the log says so), so a flood of detections cannot pile up processes.

use super::Detection;
use postern_backend_script::exec::{run_limited, Limits};
use postern_backend_script::{CapSet, ChildPrivileges};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes kept of a hook's stdout and of its stderr (for the log).
const MAX_OUTPUT: usize = 4096;

pub struct Hook {
    argv: Vec<String>,
    timeout: Duration,
    max_running: usize,
    running: Arc<AtomicUsize>,
    /// `posternd -t`: log the hook instead of running it.
    test_mode: bool,
}

impl Hook {
    pub fn new(argv: Vec<String>, timeout: Duration, max_running: usize, test_mode: bool) -> Self {
        Hook {
            argv,
            timeout,
            max_running,
            running: Arc::new(AtomicUsize::new(0)),
            test_mode,
        }
    }

    /// The environment a hook gets for `d`.
    pub fn environment(d: &Detection) -> Vec<(&'static str, String)> {
        vec![
            (
                "PATH",
                postern_backend_script::command::SAFE_PATH.to_string(),
            ),
            ("POSTERN_SOURCE", d.source.to_string()),
            ("POSTERN_FAILURES", d.failures.to_string()),
            ("POSTERN_WINDOW_SECS", d.window_secs.to_string()),
            ("POSTERN_STAGE", d.stage.name().to_string()),
            ("POSTERN_REASON", d.reason.clone()),
            ("POSTERN_BLOCK_SECS", d.block_secs.to_string()),
        ]
    }

    /// Start the hook for `d` on its own thread; never waits for it.
    pub fn run(&self, d: &Detection) {
        if self.test_mode {
            tracing::info!(
                "test mode: would run the [attack] hook {:?} for {}",
                self.argv,
                d.source
            );
            return;
        }
        if self.running.fetch_add(1, Ordering::SeqCst) >= self.max_running {
            self.running.fetch_sub(1, Ordering::SeqCst);
            crate::attack::warn(format_args!(
                "[attack] hook not run for {}: {} hooks are running already",
                d.source, self.max_running
            ));
            return;
        }
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .current_dir("/")
            .env_clear()
            .envs(Self::environment(d));
        let limits = Limits {
            timeout: self.timeout,
            max_output: MAX_OUTPUT,
        };
        let (running, program, source) = (self.running.clone(), self.argv[0].clone(), d.source);
        let started = std::thread::Builder::new()
            .name("postern-attack-hook".into())
            .spawn(move || {
                let privileges = ChildPrivileges::confined(CapSet::EMPTY);
                match run_limited(command, None, limits, privileges) {
                    Ok(f) if f.timed_out() => tracing::warn!(
                        "[attack] hook {program} for {source} killed after {:?}",
                        limits.timeout
                    ),
                    Ok(f) if f.status.is_some_and(|s| s.success()) => {
                        tracing::debug!("[attack] hook {program} ran for {source}")
                    }
                    Ok(f) => tracing::warn!(
                        "[attack] hook {program} for {source} exited with {}: {}",
                        f.status.map(|s| s.to_string()).unwrap_or_default(),
                        String::from_utf8_lossy(&f.stderr).trim()
                    ),
                    Err(e) => tracing::warn!("[attack] hook {program} could not start: {e}"),
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = started {
            self.running.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("[attack] hook not run for {}: {e}", d.source);
        }
    }
}
