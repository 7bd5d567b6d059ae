//! How posternd runs as a service, as fwknopd does: in the background by default
//! (fork, new session; the command returns once the daemon serves, with its
//! status), or in the foreground with `-f`; readiness, watchdog and stop for
//! systemd (`Type=notify`, sd_notify); logs to stderr (the journal, natively,
//! when systemd connected stderr to it), syslog, or both.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// Tells whoever waits that the daemon serves: the parent of a forked daemon
/// (through a pipe), and systemd (sd_notify). Stdio goes to /dev/null then.
#[derive(Default)]
pub struct Readiness {
    parent: Option<std::fs::File>,
}

impl Readiness {
    pub fn ready(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        if let Some(mut parent) = self.parent.take() {
            let _ = parent.write_all(b"R");
            detach_stdio();
        }
    }
}

/// Tell systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// With `WatchdogSec=` set, ping systemd at half the interval while the runtime
/// runs (a hung runtime stops the pings and systemd restarts posternd).
pub fn spawn_watchdog(shutdown: tokio_util::sync::CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else {
        return;
    };
    let every = interval / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    });
}

/// Fork into the background (call it while the process has one thread). Returns
/// in the daemon; the parent waits until the daemon is ready and exits 0, or
/// exits 1 when the daemon ended first (its error went to stderr).
pub fn daemonize() -> anyhow::Result<Readiness> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        anyhow::bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork while single-threaded; the child goes on with this program.
    match unsafe { libc::fork() } {
        -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory effects; a fresh child is no group leader.
            unsafe { libc::setsid() };
            let _ = std::env::set_current_dir("/");
            Ok(Readiness {
                parent: Some(std::fs::File::from(write_end)),
            })
        }
        _child => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let ready = std::fs::File::from(read_end).read(&mut byte).ok() == Some(1);
            std::process::exit(if ready { 0 } else { 1 });
        }
    }
}

fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which stay open.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// Where log lines go.
pub struct LogTarget {
    /// Log to stderr; when stderr is systemd's journal stream, write journal
    /// entries instead (priority per level, SYSLOG_IDENTIFIER `identity`).
    pub stderr: bool,
    /// SYSLOG_IDENTITY, and the facility for syslog, e.g. `LOG_DAEMON`.
    pub identity: String,
    pub facility: String,
    /// Also log to syslog.
    pub syslog: bool,
}

/// True when systemd connected stderr to the journal: `$JOURNAL_STREAM` holds
/// the device and inode of that stream, which stderr still is (a redirection by
/// a wrapper would change them). systemd documents this check for exactly this.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer; fd 2 is only read.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}

/// `LOG_DAEMON`, `daemon`, `LOG_LOCAL3` … as fwknopd's SYSLOG_FACILITY.
pub fn parse_facility(name: &str) -> Result<syslog_tracing::Facility, String> {
    use syslog_tracing::Facility::*;
    let upper = name.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("LOG_").unwrap_or(&upper);
    Ok(match short {
        "USER" => User,
        "DAEMON" => Daemon,
        "AUTH" => Auth,
        "AUTHPRIV" => AuthPriv,
        "LOCAL0" => Local0,
        "LOCAL1" => Local1,
        "LOCAL2" => Local2,
        "LOCAL3" => Local3,
        "LOCAL4" => Local4,
        "LOCAL5" => Local5,
        "LOCAL6" => Local6,
        "LOCAL7" => Local7,
        _ => {
            return Err(format!(
                "`{name}` is not a syslog facility (LOG_DAEMON, LOG_AUTH, LOG_LOCAL0 … LOG_LOCAL7)"
            ))
        }
    })
}

pub fn init_logging(verbose: u8, target: LogTarget) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
            .unwrap_or_else(|_| default.into())
    };
    use std::io::IsTerminal;
    // tracing-journald maps error/warn/info/debug to priorities 3/4/5/6, as
    // syslog-tracing does below, so the journal and syslog agree.
    let journal = match target.stderr && stderr_is_journal() {
        true => {
            // The journal's SYSLOG_FACILITY is the facility's number (LOG_DAEMON → 3).
            let facility =
                parse_facility(&target.facility).map_err(anyhow::Error::msg)? as i32 >> 3;
            Some(
                tracing_journald::layer()
                    .map_err(|e| anyhow::anyhow!("cannot reach the journal: {e}"))?
                    .with_syslog_identifier(target.identity.clone())
                    .with_custom_fields([("SYSLOG_FACILITY", facility.to_string())])
                    .with_filter(filter()),
            )
        }
        false => None,
    };
    let stderr = (target.stderr && journal.is_none()).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let syslog = match target.syslog {
        true => {
            let identity = std::ffi::CString::new(target.identity)
                .map_err(|_| anyhow::anyhow!("SYSLOG_IDENTITY holds a NUL byte"))?;
            let facility = parse_facility(&target.facility).map_err(anyhow::Error::msg)?;
            let writer =
                syslog_tracing::Syslog::new(identity, syslog_tracing::Options::LOG_PID, facility)
                    .ok_or_else(|| anyhow::anyhow!("syslog already opened"))?;
            // syslog stamps the time, identity and severity itself (warn →
            // LOG_WARNING, info → LOG_NOTICE, debug → LOG_INFO).
            Some(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_level(false)
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(writer)
                    .with_filter(filter()),
            )
        }
        false => None,
    };
    tracing_subscriber::registry()
        .with(journal)
        .with(stderr)
        .with(syslog)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities_as_fwknopd_names_them() {
        assert!(matches!(
            parse_facility("LOG_DAEMON"),
            Ok(syslog_tracing::Facility::Daemon)
        ));
        assert!(matches!(
            parse_facility("local7"),
            Ok(syslog_tracing::Facility::Local7)
        ));
        assert!(parse_facility("LOG_KERNEL").is_err());
    }
}
