//! posternd's life cycle: set up, serve, reload on SIGHUP (and reopen the audit
//! log, also on SIGUSR1), stop on SIGTERM.

use crate::actions::Executor;
use crate::audit::AuditLog;
use crate::config::{self, ActionConfig, ConfigSources, ReplayConfig, ServerConfig};
use crate::pipeline::{self, Keyring};
use crate::policy::PolicySettings;
use crate::replay::{FileStore, MemoryStore, ReplayStore};
use spa_core::firewall::{Firewall, RuleFeature};
use spa_core::{Clock, SystemClock};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for GPG decryptions in progress.
const GPG_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for the packets already taken in.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How often old replay entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub async fn open_replay_store(
    cfg: &ServerConfig,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn ReplayStore>> {
    Ok(match &cfg.replay {
        #[cfg(feature = "redis")]
        ReplayConfig::Redis { url, key_prefix } => {
            let keep_for = cfg.server.packet_aging.then_some(cfg.server.max_packet_age);
            let store =
                crate::replay::redis::RedisStore::connect(url, key_prefix, keep_for, clock.clone())
                    .await?;
            tracing::info!(
                "replay cache: shared, in Redis at {}",
                config::redact_url(url)
            );
            Arc::new(store)
        }
        #[cfg(not(feature = "redis"))]
        ReplayConfig::Redis { .. } => {
            let _ = clock; // only the Redis store reads it
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
pub fn build_backends(
    cfg: &ServerConfig,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Vec<Box<dyn Firewall>>> {
    let backends: Vec<Box<dyn Firewall>> = cfg
        .action
        .iter()
        .map(|a| crate::backends::build(a, &cfg.server, clock))
        .collect::<anyhow::Result<_>>()?;
    for (feature, asked_by) in needed_rule_features(cfg) {
        if let Some(b) = backends.iter().find(|b| !b.supports(feature)) {
            anyhow::bail!(
                "{asked_by} needs {feature}, which action `{}` cannot make; grants would \
                 be wider than configured (see the README's backend table for those that can)",
                b.name()
            );
        }
    }
    let mut backends = backends;
    if cfg.attack.as_ref().is_some_and(|a| a.block_secs > 0) {
        for b in backends.iter_mut() {
            b.enable_blocking().map_err(|e| {
                anyhow::anyhow!(
                    "[attack] block_secs needs actions that can block sources, and action `{}` \
                     cannot: {e} (nftables and iptables can; or set block_secs = 0 to detect only)",
                    b.name()
                )
            })?;
        }
    }
    Ok(backends)
}

/// The rule features the configuration asks of every backend, each with what asks for it.
fn needed_rule_features(cfg: &ServerConfig) -> Vec<(RuleFeature, String)> {
    let mut needed = Vec::new();
    if cfg.server.destination_rule {
        needed.push((
            RuleFeature::Destination,
            "ENABLE_DESTINATION_RULE ([server] destination_rule)".to_string(),
        ));
    }
    if cfg.server.nat.forwarding {
        if let Some((i, s)) = cfg.access.iter().enumerate().find(|(_, s)| s.forward_all) {
            let at = s
                .origin
                .as_ref()
                .map_or(format!("access stanza #{}", i + 1), |o| o.to_string());
            needed.push((RuleFeature::ForwardAll, format!("{at}: FORWARD_ALL")));
        }
    }
    needed
}

/// `--fw-list-all`, as fwknopd's: every rule of every table the firewall
/// action uses (not only postern's chains), straight from the firewall tool.
/// Returns the listing; touches nothing.
pub fn list_all_rules(cfg: &ServerConfig) -> anyhow::Result<String> {
    let mut out = String::new();
    for a in &cfg.action {
        let runs: Vec<(String, Vec<String>)> = match a {
            #[cfg(all(feature = "iptables", target_os = "linux"))]
            ActionConfig::Iptables(c) => {
                let mut tables = vec!["filter".to_string()];
                let specs = [
                    &c.output,
                    &c.forward,
                    &c.dnat,
                    &c.snat,
                    &c.masquerade,
                    &c.docker,
                ];
                let used = std::iter::once(&c.input).chain(specs.into_iter().flatten());
                for spec in used {
                    if !tables.contains(&spec.table) {
                        tables.push(spec.table.clone());
                    }
                }
                out.push_str("Listing all iptables rules in applicable tables...\n");
                let exe = c.iptables.clone();
                tables
                    .into_iter()
                    .map(|t| {
                        let args = ["-t", &t, "-v", "-n", "-L", "--line-numbers"];
                        (exe.clone(), args.map(String::from).to_vec())
                    })
                    .collect()
            }
            #[cfg(all(feature = "nftables", target_os = "linux"))]
            ActionConfig::Nftables(c) => {
                out.push_str("Listing all nftables rules...\n");
                vec![(c.nft_path.clone(), vec!["list".into(), "ruleset".into()])]
            }
            ActionConfig::Firewalld(_) => {
                out.push_str("Listing all firewalld rules...\n");
                vec![("firewall-cmd".into(), vec!["--list-all-zones".into()])]
            }
            ActionConfig::Log {} => continue,
            other => anyhow::bail!(
                "--fw-list-all: not available for action `{}`; use --fw-list",
                other.kind()
            ),
        };
        for (exe, args) in runs {
            let got = std::process::Command::new(&exe)
                .args(&args)
                .output()
                .map_err(|e| anyhow::anyhow!("{exe}: {e}"))?;
            if !got.status.success() {
                anyhow::bail!(
                    "{exe} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&got.stderr).trim()
                );
            }
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&got.stdout));
        }
    }
    Ok(out)
}

/// Build and initialise every configured backend (init reconciles leftovers).
pub fn init_backends(
    cfg: &ServerConfig,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Vec<Box<dyn Firewall>>> {
    let now = clock.now();
    let mut out = Vec::new();
    for (a, mut b) in cfg.action.iter().zip(build_backends(cfg, clock)?) {
        b.init(now)
            .map_err(|e| anyhow::anyhow!("action `{}`: {e}", a.kind()))?;
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

/// Stanzas get the server-wide settings they lack: GPG stanzas without
/// GPG_HOME_DIR / GPG_EXE the server's (fwknopd.conf `GPG_HOME_DIR` / `GPG_EXE`,
/// `--gpg-home-dir` / `--gpg-exe`), every stanza SUDO_EXE / `--sudo-exe`.
pub fn apply_server_defaults(
    stanzas: &mut [crate::config::AccessStanza],
    server: &crate::config::ServerSection,
) {
    for s in stanzas.iter_mut() {
        s.sudo_exe.clone_from(&server.sudo_exe);
    }
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
    /// Kept to wait for the packets the captures handed on at a graceful stop.
    pipeline: pipeline::Pipeline,
    /// Stops the action task once the pipeline is drained.
    actions_stop: CancellationToken,
    actions: Option<std::thread::JoinHandle<()>>,
    gpg_workers: Option<Arc<crate::gpg::Workers>>,
    /// GPG decryptions done, failed and dropped so far.
    pub gpg_stats: Arc<crate::gpg::PoolStats>,
    audit: Option<Arc<AuditLog>>,
}

impl Running {
    /// A graceful stop: the captures stop reading, every packet they handed on
    /// is finished (its grant applied, its outcome logged and audited), then
    /// the action task applies what is queued and the backends shut down.
    pub async fn stop(mut self) {
        crate::attack::uninstall();
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let unfinished = self.pipeline.drain(DRAIN_LIMIT).await;
        if unfinished > 0 {
            tracing::warn!(
                "stopping with {unfinished} packets still in the pipeline after {} s",
                DRAIN_LIMIT.as_secs()
            );
        }
        self.actions_stop.cancel();
        if let Some(a) = self.actions.take() {
            let _ = tokio::task::spawn_blocking(move || a.join()).await;
        }
        // Let gpg runs in progress finish rather than orphan them.
        if let Some(w) = self.gpg_workers.take() {
            let _ = tokio::task::spawn_blocking(move || w.stop_and_wait(GPG_STOP_WAIT)).await;
        }
        if let Some(audit) = self.audit.take() {
            crate::audit::uninstall(&audit);
            let _ = tokio::task::spawn_blocking(move || audit.stop()).await;
        }
    }

    /// Reopen the audit log file (SIGHUP, SIGUSR1: logrotate renamed it).
    pub fn reopen_audit_log(&self) {
        if let Some(audit) = &self.audit {
            audit.reopen();
        }
    }
}

pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    if cfg.action.is_empty() {
        anyhow::bail!("no action configured: add an [[action]] (nftables, iptables, script, …)");
    }
    // Before the firewall is touched: an audit log that cannot be written stops the start.
    let audit = open_audit_log(&cfg)?;
    // One clock for the backends and the expiry of their grants.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let backends = init_backends(&cfg, &clock)?;
    start_serving(cfg, backends, audit, clock).await
}

pub async fn start_with_backends(
    cfg: ServerConfig,
    backends: Vec<Box<dyn Firewall>>,
) -> anyhow::Result<Running> {
    start_with_clock(cfg, backends, Arc::new(SystemClock)).await
}

/// [`start_with_backends`] reading the time from `clock` (tests move it).
pub async fn start_with_clock(
    cfg: ServerConfig,
    backends: Vec<Box<dyn Firewall>>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let audit = open_audit_log(&cfg)?;
    start_serving(cfg, backends, audit, clock).await
}

fn open_audit_log(cfg: &ServerConfig) -> anyhow::Result<Option<crate::audit::Destination>> {
    cfg.audit
        .as_ref()
        .map(crate::audit::Destination::open)
        .transpose()
}

async fn start_serving(
    cfg: ServerConfig,
    backends: Vec<Box<dyn Firewall>>,
    audit: Option<crate::audit::Destination>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    if let Some(m) = &cfg.metrics {
        crate::metrics::install(m.listen)?;
    }
    let store = open_replay_store(&cfg, &clock).await?;
    let mut access = cfg.access.clone();
    apply_server_defaults(&mut access, &cfg.server);
    let keyring = Arc::new(Keyring::new(access));
    keyring.set_blacklist(cfg.server.blacklist.clone());
    keyring.set_native(crate::native::NativeKeys::load(&cfg.server, &cfg.access)?);
    let settings = PolicySettings::of(&cfg.server);
    let (tx, rx) = mpsc::channel(cfg.server.queue_depth);
    let mut executor = Executor::new(backends, &cfg.server, clock.clone());
    if let Some(fleet) = &cfg.fleet {
        let link = start_fleet(fleet, shutdown.clone(), clock.clone()).await?;
        executor = executor.with_fleet(link);
    }
    if let Some(attack) = &cfg.attack {
        let mut blocks = None;
        if attack.block_secs > 0 {
            let (tx, rx) = mpsc::channel(crate::attack::BLOCK_QUEUE);
            executor = executor.with_blocks(rx);
            blocks = Some(tx);
        }
        let detector = crate::attack::Detector::new(attack).map_err(anyhow::Error::msg)?;
        let hook = crate::attack::hook_of(attack, cfg.server.test_mode);
        crate::attack::install(detector, crate::attack::Responder { blocks, hook });
        tracing::info!(
            "attack detection: {} refused packets ({}) within {} s; {}",
            attack.threshold,
            attack.count.join(", "),
            attack.window_secs,
            match attack.block_secs {
                0 => "detect only".to_string(),
                secs => format!("block for {secs} s"),
            }
        );
    }
    // The action task outlives the captures at a stop, to apply what they took.
    let actions_stop = CancellationToken::new();
    let actions = executor.spawn(rx, actions_stop.clone());
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
    let (watched_actions, gpg_pool_size) = (tx.downgrade(), gpg_pool.workers());
    let pipeline = pipeline::build_with_gpg(
        keyring.clone(),
        store.clone(),
        settings,
        tx,
        cfg.server.queue_depth,
        Some(gpg_pool),
    );
    crate::metrics::watch(
        crate::metrics::Queues {
            pipeline: pipeline.in_flight(),
            actions: watched_actions,
            gpg: gpg_stats.clone(),
            gpg_workers: gpg_pool_size,
        },
        shutdown.clone(),
    );
    // Recording from before the first capture takes a packet.
    let audit = audit.map(AuditLog::start).transpose()?;
    if let Some(a) = &audit {
        crate::audit::install(a.clone());
    }
    // Every capture opened before any starts: a bad setting fails the start
    // with nothing taken in yet.
    let intake = crate::capture::Intake::of(&cfg.server);
    let mut opened = Vec::new();
    for c in &cfg.capture {
        match crate::capture::open(c, intake, &cfg.action, clock.clone()).await {
            Ok(capture) => opened.push(capture),
            Err(e) => {
                actions_stop.cancel();
                if let Some(a) = &audit {
                    crate::audit::uninstall(a);
                    a.stop();
                }
                return Err(e);
            }
        }
    }
    let mut tasks = Vec::new();
    for capture in opened {
        let name = capture.name();
        tasks.push(capture.start(pipeline.clone(), shutdown.clone()));
        tracing::info!("capture `{name}` started");
    }
    if cfg.server.packet_aging {
        tasks.push(tokio::spawn(prune_loop(
            store,
            cfg.server.max_packet_age,
            shutdown.clone(),
            clock,
        )));
    }
    Ok(Running {
        shutdown,
        keyring,
        tasks,
        pipeline,
        actions_stop,
        actions: Some(actions),
        gpg_workers: Some(gpg_workers),
        gpg_stats,
        audit,
    })
}

/// Join the fleet `[fleet]` names: its store must answer now (a typo is a
/// start error); later outages are waited out.
#[cfg(feature = "redis")]
async fn start_fleet(
    config: &crate::fleet::FleetConfig,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<crate::fleet::FleetLink> {
    let key = crate::fleet::GroupKey::load(&config.key_file)?;
    let bus =
        crate::fleet::redis::RedisBus::connect(&config.url, &config.key_prefix, &config.group)
            .await
            .map_err(anyhow::Error::msg)?;
    tracing::info!(
        "fleet: member `{}` of group `{}` at {}",
        config.member,
        config.group,
        crate::config::redact_url(&config.url)
    );
    crate::metrics::fleet_store_up(true);
    Ok(crate::fleet::start(
        std::sync::Arc::new(bus),
        key,
        config,
        shutdown,
        clock,
    ))
}

#[cfg(not(feature = "redis"))]
async fn start_fleet(
    _config: &crate::fleet::FleetConfig,
    _shutdown: CancellationToken,
    _clock: Arc<dyn Clock>,
) -> anyhow::Result<crate::fleet::FleetLink> {
    anyhow::bail!("[fleet] needs a posternd built with the `redis` feature")
}

async fn prune_loop(
    store: Arc<dyn ReplayStore>,
    max_age: u64,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                // A packet stamped before this cannot pass the age check any more.
                let cutoff = clock.now().saturating_sub(max_age);
                match store.prune(cutoff).await {
                    Ok(n) if n > 0 => tracing::debug!("replay cache: pruned {n} old entries"),
                    Ok(_) => {}
                    Err(e) => {
                        crate::metrics::replay_store_failed();
                        tracing::warn!("replay cache prune failed: {e}");
                    }
                }
            }
        }
    }
}

/// The capabilities `cfg` needs (see [`crate::privileges`]).
#[cfg(target_os = "linux")]
pub fn privilege_needs(cfg: &ServerConfig) -> crate::privileges::Needs {
    use crate::capture::nfqueue::RuleTool;
    use crate::config::CaptureConfig;
    // The NFQUEUE capture binds its queue (NET_ADMIN) and may run iptables.
    let nfq_rules: Vec<RuleTool> = cfg
        .capture
        .iter()
        .filter_map(|c| match c {
            CaptureConfig::Nfqueue(s) => Some(RuleTool::for_capture(s, &cfg.action)),
            _ => None,
        })
        .collect();
    crate::privileges::Needs {
        firewall: cfg.action.iter().any(|a| a != &ActionConfig::Log {}) || !nfq_rules.is_empty(),
        raw_sockets: cfg
            .capture
            .iter()
            .any(|c| matches!(c, CaptureConfig::Pcap { .. }))
            || cfg
                .action
                .iter()
                .any(|a| matches!(a, ActionConfig::Iptables(_)))
            || nfq_rules.contains(&RuleTool::Iptables),
        low_port: cfg.capture.iter().any(|c| match c {
            CaptureConfig::Udp { listen } | CaptureConfig::Tcp { listen, .. } => {
                (1..1024).contains(&listen.port())
            }
            CaptureConfig::Pcap { .. } | CaptureConfig::Nfqueue(_) => false,
        }) || cfg
            .metrics
            .as_ref()
            .is_some_and(|m| (1..1024).contains(&m.listen.port())),
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

/// Serve until SIGTERM/SIGINT (or `stop_after` fires: `-C` reached); SIGHUP
/// re-reads the files and reopens the audit log, SIGUSR1 only reopens it
/// (logrotate). Capabilities are dropped by the caller, before the
/// runtime's threads exist.
pub async fn serve(
    sources: ConfigSources,
    cfg: ServerConfig,
    mut readiness: crate::service::Readiness,
    stop_after: Option<CancellationToken>,
) -> anyhow::Result<()> {
    let mut current = cfg.clone();
    let running = start(cfg).await?;
    crate::service::spawn_watchdog(running.shutdown.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let limit_reached = stop_after.unwrap_or_default();
    tracing::info!("posternd ready");
    readiness.ready();
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::warn!("Got SIGTERM. Exiting...");
                break;
            }
            _ = int.recv() => {
                tracing::warn!("Got SIGINT. Exiting...");
                break;
            }
            _ = limit_reached.cancelled() => {
                tracing::info!("Packet count limit reached. Exiting...");
                break;
            }
            _ = hup.recv() => {
                tracing::warn!("Got SIGHUP. Re-reading configs.");
                match reload(&sources, &running, &current) {
                    Ok(next) => current = next,
                    Err(e) => tracing::error!("SIGHUP: config not reloaded, keeping the old one: {e}"),
                }
                running.reopen_audit_log();
            }
            _ = usr1.recv() => {
                tracing::info!("Got SIGUSR1. Reopening the audit log.");
                running.reopen_audit_log();
            }
        }
    }
    tracing::info!("shutting down");
    crate::service::stopping();
    running.stop().await;
    Ok(())
}

/// SIGHUP / `-R`, as fwknopd: re-read fwknopd.conf (with its `-O` files) and
/// access.conf. The new stanzas, BLACKLIST, and server-wide GPG/sudo defaults
/// take effect at once. Unlike fwknopd, which re-initialises its firewall (and
/// with FLUSH_IPT_AT_INIT flushes every live grant), live grants are kept and
/// still close on time: dropping a session someone was granted is the surprise
/// a reload must not cause. What only a restart can change is named in a warning.
fn reload(
    sources: &ConfigSources,
    running: &Running,
    current: &ServerConfig,
) -> Result<ServerConfig, crate::config::ConfigError> {
    let loaded = config::load(sources)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let mut next = loaded.config;
    // Command-line overrides (-r, --gpg-exe, -i …) stay as they were at start.
    next.server.run_dir.clone_from(&current.server.run_dir);
    next.server.test_mode = current.server.test_mode;
    if next.server.gpg_home_dir.is_none() {
        next.server
            .gpg_home_dir
            .clone_from(&current.server.gpg_home_dir);
    }
    if next.server.gpg_exe.is_none() {
        next.server.gpg_exe.clone_from(&current.server.gpg_exe);
    }
    if next.server.sudo_exe.is_none() {
        next.server.sudo_exe.clone_from(&current.server.sudo_exe);
    }
    // Captures and actions stay as started (they hold sockets and the rules),
    // and the audit log where it was opened (`--audit-log` may have set it).
    next.capture.clone_from(&current.capture);
    next.action.clone_from(&current.action);
    next.audit.clone_from(&current.audit);
    let fresh = loaded_unchanged_parts(&next, current);
    if !fresh.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed; that takes a restart (kept as at start)",
            fresh.join(", ")
        );
    }
    let n = next.access.len();
    // Read before anything is swapped: a bad key or client file keeps the old set.
    let native = crate::native::NativeKeys::load(&next.server, &next.access)
        .map_err(|e| crate::config::ConfigError::Toml(format!("{e:#}")))?;
    let mut access = next.access.clone();
    apply_server_defaults(&mut access, &next.server);
    running.keyring.set_native(native);
    running.keyring.replace(access);
    running.keyring.set_blacklist(next.server.blacklist.clone());
    tracing::info!(
        "SIGHUP: reloaded the configuration files, {n} access stanzas; live grants kept (capture/action changes need a restart)"
    );
    Ok(next)
}

/// The settings a reload read but cannot apply to the running pipeline.
fn loaded_unchanged_parts(next: &ServerConfig, current: &ServerConfig) -> Vec<&'static str> {
    // These config parts have no PartialEq; their serialisations compare.
    fn differ<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_string(a).ok() != serde_json::to_string(b).ok()
    }
    let mut out = Vec::new();
    if next.server.max_packet_age != current.server.max_packet_age
        || next.server.packet_aging != current.server.packet_aging
    {
        out.push("MAX_SPA_PACKET_AGE / ENABLE_SPA_PACKET_AGING");
    }
    if differ(&next.replay, &current.replay) {
        out.push("the replay cache");
    }
    if differ(&next.server.nat, &current.server.nat) {
        out.push("the NAT settings");
    }
    if differ(&next.attack, &current.attack) {
        out.push("the [attack] settings");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessStanza, AddrList, ServerSection};

    /// An action that cannot make what the configuration asks for is refused at
    /// start, naming what asks (never a grant wider than configured).
    #[test]
    fn rule_features_an_action_lacks_are_refused_at_start() {
        let script = |open: &str| {
            ActionConfig::Script(postern_backend_script::ScriptConfig::new(open, None))
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let build_backends = |cfg: &ServerConfig| build_backends(cfg, &clock);
        let mut cfg = ServerConfig {
            action: vec![script("/bin/true $SRC $PORT")],
            ..ServerConfig::default()
        };
        cfg.server.run_dir = std::env::temp_dir();
        cfg.server.destination_rule = true;
        let err = build_backends(&cfg).err().unwrap().to_string();
        assert!(
            err.contains("ENABLE_DESTINATION_RULE") && err.contains("action `script`"),
            "{err}"
        );
        cfg.action = vec![script("/bin/true $SRC $DST $PORT")];
        assert!(build_backends(&cfg).is_ok(), "$DST binds the grant");
        cfg.action = vec![ActionConfig::default_of("firewalld").unwrap()];
        assert!(
            build_backends(&cfg).is_ok(),
            "firewalld rich rules bind a grant to its destination"
        );
        cfg.action = vec![script("/bin/true $SRC $DST $PORT")];

        cfg.server.destination_rule = false;
        cfg.server.nat.forwarding = true;
        let mut stanza = AccessStanza::new(AddrList::Any);
        stanza.forward_all = true;
        stanza.origin = Some(crate::config::Origin {
            file: "/etc/fwknop/access.conf".into(),
            line: 7,
        });
        cfg.access = vec![stanza];
        let err = build_backends(&cfg).err().unwrap().to_string();
        assert!(
            err.starts_with("/etc/fwknop/access.conf:7: FORWARD_ALL needs forwarding all ports"),
            "{err}"
        );
        cfg.action = vec![ActionConfig::Log {}];
        assert!(build_backends(&cfg).is_ok());
    }

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
        apply_server_defaults(&mut stanzas, &server);
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

    #[test]
    fn sudo_exe_reaches_every_sudo_stanza() {
        let server = ServerSection {
            sudo_exe: Some("/opt/bin/sudo".into()),
            ..ServerSection::default()
        };
        let mut s = AccessStanza::new(AddrList::Any);
        s.enable_cmd_exec = true;
        s.enable_cmd_sudo_exec = true;
        let mut stanzas = vec![s.clone()];
        assert_eq!(
            stanzas[0].sudo_exec().unwrap().exe,
            std::path::PathBuf::from(postern_backend_common::command::DEFAULT_SUDO_EXE)
        );
        apply_server_defaults(&mut stanzas, &server);
        assert_eq!(
            stanzas[0].sudo_exec().unwrap().exe,
            std::path::PathBuf::from("/opt/bin/sudo")
        );
    }
}
