//! posternd's life cycle: set up, serve, reload on SIGHUP, stop on SIGTERM.

use crate::actions::Executor;
use crate::config::{self, ConfigSources, ReplayConfig, ServerConfig};
use crate::pipeline::{self, Keyring};
use crate::policy::PolicySettings;
use crate::replay::{FileStore, MemoryStore, ReplayStore};
use spa_core::firewall::Firewall;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for GPG decryptions in progress.
const GPG_STOP_WAIT: Duration = Duration::from_secs(5);

/// How often old replay entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub async fn open_replay_store(cfg: &ServerConfig) -> anyhow::Result<Arc<dyn ReplayStore>> {
    Ok(match &cfg.replay {
        #[cfg(feature = "redis")]
        ReplayConfig::Redis { url, key_prefix } => {
            let keep_for = cfg.server.packet_aging.then_some(cfg.server.max_packet_age);
            let store =
                crate::replay::redis::RedisStore::connect(url, key_prefix, keep_for).await?;
            tracing::info!(
                "replay cache: shared, in Redis at {}",
                config::redact_url(url)
            );
            Arc::new(store)
        }
        #[cfg(not(feature = "redis"))]
        ReplayConfig::Redis { .. } => {
            anyhow::bail!("replay store `redis` requires the `redis` feature")
        }
        ReplayConfig::Memory => Arc::new(MemoryStore::default()),
        ReplayConfig::File {
            path,
            import_fwknop,
        } => {
            let path = path
                .clone()
                .unwrap_or_else(|| cfg.server.run_dir.join("replay.redb"));
            let imported = match import_fwknop {
                Some(cache) => crate::replay::read_fwknop_cache(cache)?,
                None => Vec::new(),
            };
            if !imported.is_empty() {
                tracing::info!(
                    "replay cache: imported {} digests from fwknopd",
                    imported.len()
                );
            }
            Arc::new(FileStore::open_with(&path, &imported)?)
        }
    })
}

/// Build every configured backend without touching the firewall yet (for
/// `--fw-list` / `--fw-flush` next to a running daemon).
pub fn build_backends(cfg: &ServerConfig) -> anyhow::Result<Vec<Box<dyn Firewall>>> {
    cfg.action
        .iter()
        .map(|a| crate::backends::build(a, &cfg.server))
        .collect()
}

/// Build and initialise every configured backend (init reconciles leftovers).
pub fn init_backends(cfg: &ServerConfig) -> anyhow::Result<Vec<Box<dyn Firewall>>> {
    let now = crate::capture::unix_now();
    let mut out = Vec::new();
    for (a, mut b) in cfg.action.iter().zip(build_backends(cfg)?) {
        b.init(now)
            .map_err(|e| anyhow::anyhow!("action `{}`: {e}", a.kind))?;
        tracing::info!(
            "action `{}` ready (expiry {})",
            b.name(),
            if b.expires_in_kernel() {
                "in the kernel"
            } else {
                "by posternd"
            }
        );
        out.push(b);
    }
    Ok(out)
}

/// GPG stanzas without GPG_HOME_DIR / GPG_EXE get the server-wide ones
/// (fwknopd.conf `GPG_HOME_DIR` / `GPG_EXE`, `--gpg-home-dir` / `--gpg-exe`).
pub fn apply_gpg_defaults(
    stanzas: &mut [crate::config::AccessStanza],
    server: &crate::config::ServerSection,
) {
    for s in stanzas.iter_mut().filter(|s| s.uses_gpg()) {
        if s.gpg_home_dir.is_none() {
            s.gpg_home_dir.clone_from(&server.gpg_home_dir);
        }
        if s.gpg_exe.is_none() {
            s.gpg_exe.clone_from(&server.gpg_exe);
        }
    }
}

/// A running server, for the binary and for tests.
pub struct Running {
    pub shutdown: CancellationToken,
    pub keyring: Arc<Keyring>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    actions: Option<std::thread::JoinHandle<()>>,
    gpg_workers: Option<Arc<crate::gpg::Workers>>,
    /// GPG decryptions done, failed and dropped so far.
    pub gpg_stats: Arc<crate::gpg::PoolStats>,
}

impl Running {
    /// Stop captures, finish in-flight work, let backends shut down.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(a) = self.actions.take() {
            let _ = tokio::task::spawn_blocking(move || a.join()).await;
        }
        // Let gpg runs in progress finish rather than orphan them.
        if let Some(w) = self.gpg_workers.take() {
            let _ = tokio::task::spawn_blocking(move || w.stop_and_wait(GPG_STOP_WAIT)).await;
        }
    }
}

pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    if cfg.action.is_empty() {
        anyhow::bail!("no action configured: add an [[action]] (nftables, iptables, script, …)");
    }
    let backends = init_backends(&cfg)?;
    start_with_backends(cfg, backends).await
}

pub async fn start_with_backends(
    cfg: ServerConfig,
    backends: Vec<Box<dyn Firewall>>,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let store = open_replay_store(&cfg).await?;
    let mut access = cfg.access.clone();
    apply_gpg_defaults(&mut access, &cfg.server);
    let keyring = Arc::new(Keyring::new(access));
    keyring.set_blacklist(cfg.server.blacklist.clone());
    let settings = PolicySettings {
        max_packet_age: cfg.server.max_packet_age,
        packet_aging: cfg.server.packet_aging,
        nat: cfg.server.nat.clone(),
    };
    let (tx, rx) = mpsc::channel(cfg.server.queue_depth);
    let actions = Executor::new(backends, &cfg.server).spawn(rx, shutdown.clone());
    // GPG decryption runs on its own threads (gpgme is slow and not Send); the pool
    // is always there so a SIGHUP may add GPG stanzas.
    let gpg_pool =
        crate::gpg::GpgPool::start(crate::gpg::default_workers(), crate::gpg::DEFAULT_QUEUE)?;
    if cfg.access.iter().any(|s| s.uses_gpg()) {
        tracing::info!(
            "GPG: {} decryption workers, queue of {}",
            gpg_pool.workers(),
            gpg_pool.queue()
        );
    }
    let gpg_workers = gpg_pool.live_workers();
    let gpg_stats = gpg_pool.stats.clone();
    let pipeline = pipeline::build_with_gpg(
        keyring.clone(),
        store.clone(),
        settings,
        tx,
        cfg.server.queue_depth,
        Some(gpg_pool),
    );
    let mut tasks = Vec::new();
    for c in &cfg.capture {
        let intake = crate::capture::Intake::of(&cfg.server);
        tasks.push(crate::capture::spawn(c, intake, pipeline.clone(), shutdown.clone()).await?);
        tracing::info!("capture `{}` started", c.name());
    }
    if cfg.server.packet_aging {
        tasks.push(tokio::spawn(prune_loop(
            store,
            cfg.server.max_packet_age,
            shutdown.clone(),
        )));
    }
    Ok(Running {
        shutdown,
        keyring,
        tasks,
        actions: Some(actions),
        gpg_workers: Some(gpg_workers),
        gpg_stats,
    })
}

async fn prune_loop(store: Arc<dyn ReplayStore>, max_age: u64, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                // A packet stamped before this cannot pass the age check any more.
                let cutoff = crate::capture::unix_now().saturating_sub(max_age);
                match store.prune(cutoff).await {
                    Ok(n) if n > 0 => tracing::debug!("replay cache: pruned {n} old entries"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("replay cache prune failed: {e}"),
                }
            }
        }
    }
}

/// The capabilities `cfg` needs (see [`crate::privileges`]).
pub fn privilege_needs(cfg: &ServerConfig) -> crate::privileges::Needs {
    use crate::config::CaptureConfig;
    crate::privileges::Needs {
        firewall: cfg.action.iter().any(|a| a.kind != "log"),
        raw_sockets: cfg
            .capture
            .iter()
            .any(|c| matches!(c, CaptureConfig::Pcap { .. }))
            || cfg.action.iter().any(|a| a.kind == "iptables"),
        low_port: cfg.capture.iter().any(|c| match c {
            CaptureConfig::Udp { listen } | CaptureConfig::Tcp { listen, .. } => {
                (1..1024).contains(&listen.port())
            }
            CaptureConfig::Pcap { .. } => false,
        }),
        // sudo's command runs as another user too: ending it on time needs KILL.
        switch_user: cfg.access.iter().any(|s| {
            s.enable_cmd_exec
                && (s.cmd_exec_user.is_some()
                    || s.cmd_exec_group.is_some()
                    || s.enable_cmd_sudo_exec)
        }),
        for_children: cfg.child_capabilities().to_caps(),
    }
}

/// Serve until SIGTERM/SIGINT; SIGHUP re-reads the access stanzas. Capabilities
/// are dropped by the caller, before the runtime's threads exist.
pub async fn serve(
    sources: ConfigSources,
    cfg: ServerConfig,
    mut readiness: crate::service::Readiness,
) -> anyhow::Result<()> {
    let server_defaults = cfg.server.clone();
    let running = start(cfg).await?;
    crate::service::spawn_watchdog(running.shutdown.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!("posternd ready");
    readiness.ready();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match config::load(&sources) {
                Ok(loaded) => {
                    for w in &loaded.warnings {
                        tracing::warn!("{w}");
                    }
                    let n = loaded.config.access.len();
                    let mut access = loaded.config.access;
                    apply_gpg_defaults(&mut access, &server_defaults);
                    running.keyring.replace(access);
                    running.keyring.set_blacklist(loaded.config.server.blacklist);
                    tracing::info!("SIGHUP: reloaded {n} access stanzas; live grants kept (capture/action changes need a restart)");
                }
                Err(e) => tracing::error!("SIGHUP: config not reloaded, keeping the old one: {e}"),
            },
        }
    }
    tracing::info!("shutting down");
    crate::service::stopping();
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessStanza, AddrList, ServerSection};

    #[test]
    fn gpg_stanzas_get_the_server_wide_keyring() {
        let server = ServerSection {
            gpg_home_dir: Some("/srv/gnupg".into()),
            gpg_exe: Some("/usr/bin/gpg".into()),
            ..ServerSection::default()
        };
        let mut own = AccessStanza::new(AddrList::Any);
        own.gpg_allow_no_pw = true;
        own.gpg_home_dir = Some("/own/gnupg".into());
        let mut inherits = AccessStanza::new(AddrList::Any);
        inherits.gpg_decrypt_pw = Some(spa_core::Secret::from_passphrase("pw"));
        let rijndael = AccessStanza::new(AddrList::Any);
        let mut stanzas = vec![own, inherits, rijndael];
        apply_gpg_defaults(&mut stanzas, &server);
        assert_eq!(
            stanzas[0].gpg_home_dir.as_deref(),
            Some(std::path::Path::new("/own/gnupg"))
        );
        assert_eq!(
            stanzas[0].gpg_exe.as_deref(),
            Some(std::path::Path::new("/usr/bin/gpg"))
        );
        assert_eq!(
            stanzas[1].gpg_home_dir.as_deref(),
            Some(std::path::Path::new("/srv/gnupg"))
        );
        assert!(stanzas[2].gpg_home_dir.is_none());
    }
}
