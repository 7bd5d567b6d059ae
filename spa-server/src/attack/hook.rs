//! `[attack] hook`: a program run on each detection, off the packet path.
//!
//! argv without a shell; no descriptors beyond stdin (null), stdout and stderr
//! (captured, capped), no capabilities, no_new_privs, its own process group
//! killed at the timeout; the environment is PATH and the detection only. At
//! most `max_hooks` run at once: a detection beyond that runs none (a line in
//! the log says so), so a flood of detections cannot pile up processes.

use super::Detection;
use postern_backend_common::exec::{run_limited, Limits};
use postern_backend_common::{CapSet, ChildPrivileges};
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
                postern_backend_common::command::SAFE_PATH.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Stage;

    fn detection() -> Detection {
        Detection {
            source: "192.0.2.1".parse().unwrap(),
            failures: 5,
            window_secs: 60,
            stage: Stage::Hmac,
            reason: "HMAC verification failed".into(),
            block_secs: 600,
            table_full: false,
        }
    }

    fn wait_for(hook: &Hook, running: usize) -> bool {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if hook.running.load(Ordering::SeqCst) == running {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// At most `max_hooks` run at once; the others are not started (nor
    /// queued), and a hook that outlives its timeout is killed.
    #[test]
    fn hooks_are_bounded_and_killed_at_their_timeout() {
        let hook = Hook::new(
            vec!["/bin/sleep".into(), "30".into()],
            Duration::from_secs(1),
            2,
            false,
        );
        let started = std::time::Instant::now();
        for _ in 0..5 {
            hook.run(&detection());
        }
        assert_eq!(hook.running.load(Ordering::SeqCst), 2);
        assert!(wait_for(&hook, 0), "the hooks were not killed");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_environment_holds_the_detection_and_a_fixed_path() {
        let env = Hook::environment(&detection());
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POSTERN_SOURCE"), Some("192.0.2.1"));
        assert_eq!(get("POSTERN_FAILURES"), Some("5"));
        assert_eq!(get("POSTERN_WINDOW_SECS"), Some("60"));
        assert_eq!(get("POSTERN_STAGE"), Some("hmac"));
        assert_eq!(get("POSTERN_REASON"), Some("HMAC verification failed"));
        assert_eq!(get("POSTERN_BLOCK_SECS"), Some("600"));
        assert_eq!(
            get("PATH"),
            Some(postern_backend_common::command::SAFE_PATH)
        );
        assert_eq!(env.len(), 7);
    }

    #[test]
    fn test_mode_runs_no_hook() {
        let hook = Hook::new(
            vec!["/bin/sleep".into(), "30".into()],
            Duration::from_secs(1),
            2,
            true,
        );
        hook.run(&detection());
        assert_eq!(hook.running.load(Ordering::SeqCst), 0);
    }
}
