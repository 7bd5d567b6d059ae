//! The action task: one OS thread owns every firewall backend (they are small and
//! synchronous), receives grants over a channel, applies a burst as one batch,
//! and runs expiry for backends whose firewall cannot expire rules itself.
//!
//! Expiry, as fwknopd's RULES_CHECK_THRESHOLD: the executor knows when each
//! grant it made (or found at start) is due, and asks a backend to sweep only
//! then; every `rules_check_threshold`-th tick (0: never) it sweeps every such
//! backend in full anyway, so expired rules it does not know of (added by hand,
//! by another program, by a run whose grants it did not see) go too.
//!
//! CMD_CYCLE closes owed are kept in `run_dir` (`cmd_cycle-<hash>.json`, one per
//! distinct open/close/capabilities, 0600), so after a crash or `kill -9` the
//! next start runs the overdue ones, even if the stanza is gone by then. In
//! test mode (`posternd -t`) no command and no script runs: they are logged.
//!
//! Blocks of attacking sources (`[attack] block_secs`) arrive on a channel of
//! their own and go to every backend; the kernel expires them.

use crate::attack::BlockRequest;
use crate::config::ServerSection;
use crate::pipeline::ActionRequest;
use crate::policy::{CmdCycle, Grant, GrantKind};
use postern_backend_common::{run_command_with, CommandExec};
use postern_backend_script::state::{ScriptOrigin, StateFile};
use postern_backend_script::{ScriptBackend, ScriptConfig};
use spa_core::firewall::{Block, Firewall, Opening, PacketAddresses};
use spa_core::Clock;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Grants taken from the channel per batch at most.
const MAX_BATCH: usize = 1024;
/// How often backends without kernel expiry are swept.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

pub struct Executor {
    backends: Vec<Box<dyn Firewall>>,
    /// Per backend (same index), the expiries of what it holds that the
    /// daemon must remove; empty for kernel-expiring backends.
    due: Vec<BinaryHeap<Reverse<u64>>>,
    /// Expiry ticks so far, and the full check every this many (0: never).
    ticks: u64,
    full_check_every: u32,
    /// CMD_CYCLE_OPEN/CLOSE backends, one per distinct open/close/capabilities.
    cycles: HashMap<ScriptOrigin, ScriptBackend>,
    command_timeout: Duration,
    /// Where CMD_CYCLE state files live.
    run_dir: PathBuf,
    /// `posternd -t`: log commands and scripts instead of running them.
    test_mode: bool,
    /// Client commands running now (each on its own thread).
    running_commands: Arc<AtomicUsize>,
    /// Blocks to apply (`[attack] block_secs`), and when those applied end.
    blocks: Option<mpsc::Receiver<BlockRequest>>,
    block_ends: BinaryHeap<Reverse<u64>>,
    /// The daemon's clock: expiry and blocks are timed by it.
    clock: Arc<dyn Clock>,
    /// `[fleet]`: where this member's access openings go, and where the
    /// group's come from.
    fleet_out: Option<mpsc::Sender<Vec<Opening>>>,
    fleet_in: Option<mpsc::Receiver<crate::fleet::RemoteGrant>>,
}

/// Client commands that may run at once; more are refused, not queued.
const MAX_RUNNING_COMMANDS: usize = 8;

/// File name prefix of CMD_CYCLE state files in `run_dir`.
const CYCLE_STATE_PREFIX: &str = "cmd_cycle-";

impl Executor {
    pub fn new(
        backends: Vec<Box<dyn Firewall>>,
        server: &ServerSection,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Executor {
            due: backends.iter().map(|_| BinaryHeap::new()).collect(),
            backends,
            ticks: 0,
            full_check_every: server.rules_check_threshold,
            cycles: HashMap::new(),
            command_timeout: Duration::from_secs(server.cmd_exec_timeout),
            run_dir: server.run_dir.clone(),
            test_mode: server.test_mode,
            running_commands: Arc::new(AtomicUsize::new(0)),
            blocks: None,
            block_ends: BinaryHeap::new(),
            clock,
            fleet_out: None,
            fleet_in: None,
        }
    }

    /// Share access grants with the fleet `link` joins, and apply its members'.
    pub fn with_fleet(mut self, link: crate::fleet::FleetLink) -> Self {
        self.fleet_out = Some(link.publish);
        self.fleet_in = Some(link.remote);
        self
    }

    /// Also apply the blocks sent on `blocks` (attack detection).
    pub fn with_blocks(mut self, blocks: mpsc::Receiver<BlockRequest>) -> Self {
        self.blocks = Some(blocks);
        self
    }

    /// Run on a dedicated thread until shutdown; then let backends clean up.
    pub fn spawn(
        mut self,
        mut rx: mpsc::Receiver<ActionRequest>,
        shutdown: CancellationToken,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("postern-actions".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("action runtime");
                if !self.test_mode {
                    self.resume_cycles();
                }
                self.schedule_existing();
                let mut fleet_in = self.fleet_in.take();
                let mut blocks = self.blocks.take();
                rt.block_on(async {
                    let mut tick = tokio::time::interval(EXPIRY_TICK);
                    // Off while nothing waits on it; then one tick, not a burst.
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => {
                                // Grants already queued were accepted: apply them.
                                rx.close();
                                let mut queued = Vec::new();
                                while let Ok(r) = rx.try_recv() {
                                    queued.push(r);
                                    if queued.len() == MAX_BATCH {
                                        self.apply(std::mem::take(&mut queued));
                                    }
                                }
                                if !queued.is_empty() {
                                    self.apply(queued);
                                }
                                break;
                            }
                            remote = next_remote(&mut fleet_in) => match remote {
                                Some(grant) => self.apply_remote(grant),
                                None => fleet_in = None,
                            },
                            block = next_block(&mut blocks) => match block {
                                Some(first) => {
                                    let mut batch = vec![first];
                                    while let Some(Ok(r)) = blocks.as_mut().map(|rx| rx.try_recv()) {
                                        batch.push(r);
                                        if batch.len() >= MAX_BATCH {
                                            break;
                                        }
                                    }
                                    self.apply_blocks(batch);
                                }
                                None => blocks = None,
                            },
                            first = rx.recv() => {
                                let Some(first) = first else { break };
                                let mut batch = vec![first];
                                while batch.len() < MAX_BATCH {
                                    match rx.try_recv() {
                                        Ok(r) => batch.push(r),
                                        Err(_) => break,
                                    }
                                }
                                self.apply(batch);
                            }
                            _ = tick.tick(), if self.has_expiry_work() => self.expire(),
                        }
                    }
                });
                self.shutdown();
            })
            .expect("spawn action thread")
    }

    fn apply(&mut self, batch: Vec<ActionRequest>) {
        let (firewall, other): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| {
            matches!(r.grant.kind(), GrantKind::Access { .. }) && r.grant.cmd_cycle().is_none()
        });
        self.apply_firewall(firewall);
        for r in other {
            let (result, applied_by) = match (r.grant.kind(), r.grant.cmd_cycle()) {
                (
                    GrantKind::Command {
                        command,
                        user,
                        group,
                        capabilities,
                        sudo,
                    },
                    _,
                ) => {
                    let exec = CommandExec {
                        user: user.clone(),
                        group: group.clone(),
                        timeout: self.command_timeout,
                        capabilities: *capabilities,
                        sudo: sudo.clone(),
                        ..CommandExec::default()
                    };
                    (self.run_client_command(&r.grant, command, exec), "command")
                }
                (GrantKind::Access { .. }, Some(cycle)) => (
                    self.apply_cycle(&r.grant, cycle.clone(), r.now, r.packet),
                    "cmd_cycle",
                ),
                (GrantKind::Access { .. }, None) => unreachable!("partitioned above"),
            };
            let _ = r.done.send(result.map(|()| vec![applied_by]));
        }
    }

    /// All access grants of the burst go to each backend as one batch. If the batch
    /// fails, each grant is retried alone so one bad grant cannot sink the others.
    fn apply_firewall(&mut self, batch: Vec<ActionRequest>) {
        if batch.is_empty() {
            return;
        }
        let (openings, packets): (Vec<Opening>, Vec<Option<PacketAddresses>>) = batch
            .iter()
            .flat_map(|r| r.grant.openings(r.now).into_iter().map(|o| (o, r.packet)))
            .unzip();
        let whole = apply_all(&mut self.backends, &openings, &packets);
        // Every backend takes every opening.
        let applied_by: Vec<&'static str> = self.backends.iter().map(|b| b.name()).collect();
        if whole.is_ok() {
            self.schedule(&openings);
            self.share(&openings);
        }
        if whole.is_ok() || batch.len() == 1 {
            for r in batch {
                log_result(&r.grant, &whole);
                let _ = r.done.send(whole.clone().map(|()| applied_by.clone()));
            }
            return;
        }
        for r in batch {
            let openings = r.grant.openings(r.now);
            let packets = vec![r.packet; openings.len()];
            let result = apply_all(&mut self.backends, &openings, &packets);
            if result.is_ok() {
                self.schedule(&openings);
                self.share(&openings);
            }
            log_result(&r.grant, &result);
            let _ = r.done.send(result.map(|()| applied_by.clone()));
        }
    }

    /// Hand access openings this member applied to the fleet (never waits).
    fn share(&self, openings: &[Opening]) {
        let Some(out) = &self.fleet_out else {
            return;
        };
        let shared = crate::fleet::shareable(openings);
        if shared.is_empty() {
            return;
        }
        if out.try_send(shared).is_err() {
            crate::metrics::fleet_dropped(1);
            tracing::warn!("fleet: publishing is behind; a grant was not shared with the group");
        }
    }

    /// Openings another member of the fleet granted: applied here with the
    /// same expiry (and expired by this member as its own).
    fn apply_remote(&mut self, grant: crate::fleet::RemoteGrant) {
        // Another member's knock: its packet is not known here.
        let result = apply_all(&mut self.backends, &grant.openings, &[]);
        let list = grant
            .openings
            .iter()
            .map(|o| o.rule.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match result {
            Ok(()) => {
                self.schedule(&grant.openings);
                crate::metrics::fleet("applied");
                tracing::info!("fleet: granted {list}, as member {} did", grant.member);
            }
            Err(e) => tracing::error!(
                "fleet: could not apply {list} granted by member {}: {e}",
                grant.member
            ),
        }
    }

    /// The state file of one CMD_CYCLE script: named by a hash of what it runs,
    /// so the same stanza finds its file again after a restart.
    fn cycle_state_path(&self, origin: &ScriptOrigin) -> PathBuf {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(origin.open.as_bytes());
        h.update([0]);
        if let Some(close) = &origin.close {
            h.update(close.as_bytes());
        }
        h.update([0]);
        h.update(origin.capabilities.bits().to_be_bytes());
        let hex: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.run_dir.join(format!("{CYCLE_STATE_PREFIX}{hex}.json"))
    }

    /// The backend that runs `origin`, created (its state file loaded) on first use.
    fn cycle_backend(&mut self, origin: &ScriptOrigin) -> Result<&mut ScriptBackend, String> {
        if !self.cycles.contains_key(origin) {
            let config = ScriptConfig {
                state_file: Some(self.cycle_state_path(origin)),
                capabilities: origin.capabilities,
                ..ScriptConfig::new(&origin.open, origin.close.as_deref())
            };
            std::fs::create_dir_all(&self.run_dir)
                .map_err(|e| format!("{}: {e}", self.run_dir.display()))?;
            let backend = ScriptBackend::system(&config).map_err(|e| e.to_string())?;
            self.cycles.insert(origin.clone(), backend);
        }
        Ok(self.cycles.get_mut(origin).expect("inserted"))
    }

    /// At start: load every CMD_CYCLE state file a previous run left and run the
    /// closes that are overdue (the rest run at their time).
    fn resume_cycles(&mut self) {
        let files = match std::fs::read_dir(&self.run_dir) {
            Ok(dir) => dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_cycle_state(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(
                    "CMD_CYCLE: cannot read {}: {e}; owed closes not run",
                    self.run_dir.display()
                );
                return;
            }
        };
        let now = self.clock.now();
        for path in files.collect::<Vec<_>>() {
            let origin = match StateFile::new(&path).origin_on_disk() {
                Ok(Some(origin)) => origin,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("CMD_CYCLE: {e}; its closes are not run");
                    continue;
                }
            };
            let result = self.cycle_backend(&origin).and_then(|b| {
                let owed = b.list().map(|l| l.len()).unwrap_or(0);
                b.init(now).map_err(|e| e.to_string())?;
                Ok(owed)
            });
            match result {
                Ok(0) => {}
                Ok(owed) => tracing::info!(
                    "CMD_CYCLE: {owed} close(s) owed by a previous run, from {}",
                    path.display()
                ),
                Err(e) => {
                    tracing::error!("CMD_CYCLE: {}: {e}; its closes are not run", path.display())
                }
            }
        }
    }

    fn apply_cycle(
        &mut self,
        grant: &Grant,
        cycle: CmdCycle,
        now: u64,
        packet: Option<PacketAddresses>,
    ) -> Result<(), String> {
        if self.test_mode {
            tracing::info!(
                "test mode: would run CMD_CYCLE_OPEN `{}` (close `{}` after {} s) for {grant}",
                cycle.open,
                cycle.close.as_deref().unwrap_or("NONE"),
                cycle.timer
            );
            return Ok(());
        }
        let origin = ScriptOrigin {
            open: cycle.open.clone(),
            close: cycle.close.clone(),
            capabilities: cycle.capabilities,
        };
        let backend = self.cycle_backend(&origin)?;
        let openings: Vec<Opening> = grant
            .openings(now)
            .into_iter()
            .map(|mut o| {
                o.timeout_secs = cycle.timer;
                o.expires_at = now + u64::from(cycle.timer);
                o
            })
            .collect();
        let result = backend
            .grant_from_packet(&openings, packet)
            .map_err(|e| e.to_string());
        crate::metrics::granted(backend.name(), result.is_ok(), openings.len());
        log_result(grant, &result);
        result
    }

    fn run_client_command(
        &self,
        grant: &Grant,
        command: &str,
        exec: CommandExec,
    ) -> Result<(), String> {
        if self.test_mode {
            let argv = exec.argv(command).map_err(|e| e.to_string())?;
            tracing::info!(
                "test mode: would run command {argv:?} as {} for {grant}",
                exec.user.as_deref().unwrap_or("the server's user")
            );
            return Ok(());
        }
        let command = command.to_string();
        let who = grant.to_string();
        let running = self.running_commands.clone();
        if running.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING_COMMANDS {
            running.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{MAX_RUNNING_COMMANDS} client commands already running"
            ));
        }
        // Commands can be slow: never hold up the firewall thread for them.
        std::thread::spawn(move || {
            match run_command_with(&command, &exec) {
                Ok(out) if out.success() => tracing::info!("command ran: {who}"),
                Ok(out) => tracing::warn!("command exited with {}: {who}", out.status),
                Err(e) => tracing::warn!("command failed: {e} ({who})"),
            }
            running.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }

    /// Remember when the daemon must remove these openings (backends that
    /// expire rules themselves need nothing).
    fn schedule(&mut self, openings: &[Opening]) {
        for (backend, due) in self.backends.iter().zip(&mut self.due) {
            if !backend.expires_in_kernel() {
                due.extend(openings.iter().map(|o| Reverse(o.expires_at)));
            }
        }
    }

    /// At start: what the backends hold already (a previous run's live grants,
    /// kept by reconciliation) is due at its own expiry.
    fn schedule_existing(&mut self) {
        for (backend, due) in self.backends.iter_mut().zip(&mut self.due) {
            if backend.expires_in_kernel() {
                continue;
            }
            match backend.list() {
                Ok(held) => due.extend(held.iter().map(|o| Reverse(o.expires_at))),
                Err(e) => {
                    // Sweep at once; the sweep lists again.
                    tracing::warn!("{}: cannot list grants at start: {e}", backend.name());
                    due.push(Reverse(0));
                }
            }
        }
    }

    /// Block the sources of `batch` in every backend, as one call each.
    fn apply_blocks(&mut self, batch: Vec<BlockRequest>) {
        let now = self.clock.now();
        let blocks: Vec<Block> = batch
            .iter()
            .map(|r| Block {
                source: r.detection.source,
                timeout_secs: r.detection.block_secs,
                expires_at: now + u64::from(r.detection.block_secs),
            })
            .collect();
        let mut failed = false;
        for backend in self.backends.iter_mut() {
            if let Err(e) = backend.block(&blocks) {
                failed = true;
                crate::metrics::firewall_failed(backend.name());
                let sources: Vec<String> = blocks.iter().map(|b| b.source.to_string()).collect();
                tracing::error!(
                    "{}: could not block {}: {e}",
                    backend.name(),
                    sources.join(", ")
                );
            }
        }
        if failed {
            return;
        }
        self.block_ends
            .extend(blocks.iter().map(|b| Reverse(b.expires_at)));
        crate::metrics::blocked(blocks.len(), self.block_ends.len());
        for r in &batch {
            let d = &r.detection;
            crate::attack::warn(format_args!(
                "blocked {} for {} s: {} refused packets within {} s (last at {}: {})",
                d.source, d.block_secs, d.failures, d.window_secs, d.stage, d.reason
            ));
        }
    }

    /// Whether the expiry tick has anything to do: a backend whose grants the
    /// daemon removes, CMD_CYCLE closes, or blocks whose ends are counted. An
    /// idle posternd on nftables (the kernel expires its grants) never wakes
    /// for it.
    fn has_expiry_work(&self) -> bool {
        self.backends.iter().any(|b| !b.expires_in_kernel())
            || !self.cycles.is_empty()
            || !self.block_ends.is_empty()
    }

    fn expire(&mut self) {
        if self
            .block_ends
            .peek()
            .is_some_and(|Reverse(end)| *end <= self.clock.now())
        {
            while self
                .block_ends
                .peek()
                .is_some_and(|Reverse(end)| *end <= self.clock.now())
            {
                self.block_ends.pop();
            }
            crate::metrics::blocked_sources(self.block_ends.len());
        }
        // Expiry times are whole seconds: a grant made at 100.9 s with a 3 s timeout
        // expires "at 103". Sweeping one second behind the clock means no grant
        // closes before its full timeout; it may stay up to ~1.5 s longer.
        let now = self.clock.now().saturating_sub(1);
        self.ticks += 1;
        let full = self.full_check_every > 0
            && self.ticks.is_multiple_of(u64::from(self.full_check_every));
        for (backend, due) in self.backends.iter_mut().zip(&mut self.due) {
            let is_due = due.peek().is_some_and(|Reverse(at)| *at <= now);
            if backend.expires_in_kernel() || !(full || is_due) {
                continue;
            }
            if sweep(backend.as_mut(), now) {
                while due.peek().is_some_and(|Reverse(at)| *at <= now) {
                    due.pop();
                }
            }
        }
        // CMD_CYCLE closes are kept in memory by their backend: cheap to check.
        for backend in self.cycles.values_mut() {
            sweep(backend, now);
        }
    }

    fn shutdown(&mut self) {
        for b in self.backends.iter_mut() {
            if let Err(e) = b.shutdown() {
                tracing::warn!("{}: shutdown: {e}", b.name());
            }
        }
        for b in self.cycles.values_mut() {
            let _ = b.shutdown();
        }
    }
}

/// The next block request; never ready without a channel.
async fn next_block(blocks: &mut Option<mpsc::Receiver<BlockRequest>>) -> Option<BlockRequest> {
    match blocks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One expiry sweep of `backend`; false if it failed (it is retried).
fn sweep(backend: &mut dyn Firewall, now: u64) -> bool {
    match backend.expire(now) {
        Ok(gone) => {
            crate::metrics::revoked(backend.name(), gone.len());
            for rule in gone {
                tracing::info!("expired: {rule} ({})", backend.name());
            }
            true
        }
        Err(e) => {
            crate::metrics::firewall_failed(backend.name());
            tracing::warn!("{}: expiry failed: {e}", backend.name());
            false
        }
    }
}

fn is_cycle_state(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(CYCLE_STATE_PREFIX) && n.ends_with(".json"))
}

/// The next grant from the fleet; never, without one.
async fn next_remote(
    fleet_in: &mut Option<mpsc::Receiver<crate::fleet::RemoteGrant>>,
) -> Option<crate::fleet::RemoteGrant> {
    match fleet_in {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `packets[i]`: the packet behind `openings[i]`, if known (none for a fleet grant).
fn apply_all(
    backends: &mut [Box<dyn Firewall>],
    openings: &[Opening],
    packets: &[Option<PacketAddresses>],
) -> Result<(), String> {
    if openings.is_empty() {
        return Ok(());
    }
    let packets = if packets.len() == openings.len() {
        packets.to_vec()
    } else {
        vec![None; openings.len()]
    };
    for i in 0..backends.len() {
        let result = backends[i].grant_from_packets(openings, &packets);
        crate::metrics::granted(backends[i].name(), result.is_ok(), openings.len());
        if let Err(e) = result {
            // No half-applied grant: take it back from the backends that took it.
            let rules: Vec<_> = openings.iter().map(|o| o.rule.clone()).collect();
            for done in backends[..i].iter_mut() {
                if let Err(undo) = done.revoke(&rules) {
                    tracing::error!("{}: could not undo a partial grant: {undo}", done.name());
                }
            }
            return Err(format!("{}: {e}", backends[i].name()));
        }
    }
    Ok(())
}

fn log_result(grant: &Grant, result: &Result<(), String>) {
    match result {
        Ok(()) => tracing::info!("granted: {grant}"),
        Err(e) => tracing::warn!("grant failed: {grant}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::firewall::{MemoryFirewall, Rule};
    use spa_core::{ManualClock, Proto};

    /// An executor over `table` whose time is `clock`.
    fn executor(
        table: &MemoryFirewall,
        server: &ServerSection,
        clock: &Arc<ManualClock>,
    ) -> Executor {
        Executor::new(vec![Box::new(table.clone())], server, clock.clone())
    }

    /// The daemon's expiry runs on the clock it is given: a grant goes when
    /// the clock passes its timeout, with no sleeping.
    #[test]
    fn grants_expired_by_the_daemon_get_their_full_timeout() {
        // No kernel expiry: the executor must remove the rule.
        let table = MemoryFirewall::new(false);
        let clock = Arc::new(ManualClock::new(100));
        let mut ex = executor(&table, &ServerSection::default(), &clock);
        // Granted somewhere in second 100 with a 3 s timeout.
        let mut t = table.clone();
        t.grant(&[Opening {
            rule: Rule::new("192.0.2.1".parse().unwrap(), Proto::Tcp, 22),
            timeout_secs: 3,
            expires_at: 103,
        }])
        .unwrap();
        // As at start after a restart: the executor learns what is held.
        ex.schedule_existing();
        ex.expire();
        assert_eq!(table.open().len(), 1, "closed at once");
        // During second 103 less than 3 s may have passed: still open.
        clock.advance(3);
        ex.expire();
        assert_eq!(table.open().len(), 1, "closed before its timeout");
        clock.advance(1);
        ex.expire();
        assert!(table.open().is_empty(), "not closed after it");
    }

    /// RULES_CHECK_THRESHOLD: a rule the executor did not grant (hand-made,
    /// another program's) goes at the Nth tick's full check, never with 0;
    /// between full checks a backend is swept only when one of its grants is due.
    #[test]
    fn full_checks_every_nth_tick_and_sweeps_only_when_due() {
        for (threshold, removed_at_tick) in [(3u32, Some(3u64)), (0, None)] {
            let table = MemoryFirewall::new(false);
            let server = ServerSection {
                rules_check_threshold: threshold,
                ..ServerSection::default()
            };
            let mut ex = executor(&table, &server, &Arc::new(ManualClock::new(1000)));
            let mut by_hand = table.clone();
            by_hand
                .grant(&[Opening {
                    rule: Rule::new("192.0.2.9".parse().unwrap(), Proto::Tcp, 22),
                    timeout_secs: 1,
                    expires_at: 10,
                }])
                .unwrap();
            let mut gone_at = None;
            for tick in 1..=6u64 {
                ex.expire();
                if gone_at.is_none() && table.open().is_empty() {
                    gone_at = Some(tick);
                }
            }
            assert_eq!(gone_at, removed_at_tick, "threshold {threshold}");
        }
        // A grant the executor made is swept at its expiry, full checks or not.
        let table = MemoryFirewall::new(false);
        let server = ServerSection {
            rules_check_threshold: 0,
            ..ServerSection::default()
        };
        let clock = Arc::new(ManualClock::new(100));
        let mut ex = executor(&table, &server, &clock);
        let opening = Opening {
            rule: Rule::new("192.0.2.1".parse().unwrap(), Proto::Tcp, 22),
            timeout_secs: 3,
            expires_at: 103,
        };
        apply_all(&mut ex.backends, std::slice::from_ref(&opening), &[]).unwrap();
        ex.schedule(&[opening]);
        ex.expire();
        assert_eq!(table.open().len(), 1);
        clock.set(104);
        ex.expire();
        assert!(table.open().is_empty(), "a due grant was not swept");
        assert!(ex.due[0].is_empty());
    }
}
