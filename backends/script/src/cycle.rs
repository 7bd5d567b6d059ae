//! The `script` firewall backend: fwknopd's CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE.
//!
//! A grant runs the open command once per opening; the rendered close command is
//! remembered with the opening's expiry and run by [`Firewall::expire`] once it is
//! due (the script's target usually cannot expire rules by itself, so
//! `expires_in_kernel()` is false). With a `state_file`, owed closes survive a
//! killed daemon and run at the next start.
//!
//! Differences from fwknopd, on purpose:
//! - every opening of a request gets its own open/close (fwknopd only uses the first
//!   proto/port of a request); the daemon may pass just the first to mimic it;
//! - a repeated grant of an open rule extends its expiry (never shortens it) and
//!   does not run the open command again, so scripts never stack duplicates;
//! - a close that fails is kept and retried with back-off, never dropped;
//! - the commands inherit no descriptor and no capability beyond `capabilities`
//!   (fwknopd's keep everything root has).

use crate::state::{PendingClose, ScriptOrigin, StateFile};
use crate::template::{Template, Values};
use postern_backend_common::runner::{find_program, ConfinedRunner};
use postern_backend_common::CapSet;
use serde::{Deserialize, Serialize};
use spa_core::firewall::{
    CommandRunner, Firewall, FirewallError, FwResult, Opening, PacketAddresses, Rule, RuleFeature,
};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const BACKEND: &str = "script";

/// `[action] type = "script"` settings. The access.conf keys map one to one.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// CMD_CYCLE_OPEN: run when access is granted.
    pub open: String,
    /// CMD_CYCLE_CLOSE: run when the access expires. Absent or `NONE`: nothing is
    /// run and the opening is not tracked (fwknopd's indefinite access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
    /// Where owed close commands are kept across restarts (JSON, mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Value of `$DST` when the packet's destination is not supplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    /// Time limit for each open/close command.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// Run every owed close at shutdown. When false (and with a `state_file`),
    /// openings outlive a clean stop and are closed by the next start.
    #[serde(default = "default_true")]
    pub close_at_exit: bool,
    /// Capabilities the open/close commands keep (CMD_CAPABILITIES); none by default.
    #[serde(default)]
    pub capabilities: CapSet,
}

fn default_command_timeout() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

impl ScriptConfig {
    /// Config with just the two templates, defaults for the rest.
    pub fn new(open: &str, close: Option<&str>) -> Self {
        ScriptConfig {
            open: open.into(),
            close: close.map(Into::into),
            state_file: None,
            destination: None,
            command_timeout_secs: default_command_timeout(),
            close_at_exit: true,
            capabilities: CapSet::EMPTY,
        }
    }
}

pub struct ScriptBackend {
    open: Template,
    close: Option<Template>,
    destination: Option<IpAddr>,
    close_at_exit: bool,
    state: Option<StateFile>,
    pending: Vec<PendingClose>,
    runner: Box<dyn CommandRunner>,
    /// Latest `now` seen (init/expire), used to schedule retries after failures
    /// that happen outside expire.
    last_now: u64,
}

fn config_error(message: String) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message,
    }
}

impl ScriptBackend {
    /// Build from config with any runner (tests pass a recording fake). Loads owed
    /// closes from the state file; an unreadable state file is an error.
    pub fn new(config: &ScriptConfig, runner: Box<dyn CommandRunner>) -> FwResult<Self> {
        let open =
            Template::parse(&config.open).map_err(|e| config_error(format!("`open` {e}")))?;
        let close = match config.close.as_deref().map(str::trim) {
            None | Some("NONE") => None,
            Some(text) => {
                Some(Template::parse(text).map_err(|e| config_error(format!("`close` {e}")))?)
            }
        };
        let origin = ScriptOrigin {
            open: config.open.clone(),
            close: config.close.clone(),
            capabilities: config.capabilities,
        };
        let state = config
            .state_file
            .clone()
            .map(|path| StateFile::new(path).with_origin(origin));
        let pending = match &state {
            Some(file) => file.load().map_err(config_error)?,
            None => Vec::new(),
        };
        Ok(ScriptBackend {
            open,
            close,
            destination: config.destination,
            close_at_exit: config.close_at_exit,
            state,
            pending,
            runner,
            last_now: 0,
        })
    }

    /// Build with the real process runner; a program the templates name that is
    /// not installed gives [`FirewallError::Missing`], a capability the daemon
    /// does not hold (so cannot give) an error naming it.
    pub fn system(config: &ScriptConfig) -> FwResult<Self> {
        require_held(config.capabilities)?;
        let runner = ConfinedRunner {
            timeout: Duration::from_secs(config.command_timeout_secs),
            capabilities: config.capabilities,
        };
        let backend = ScriptBackend::new(config, Box::new(runner))?;
        for template in std::iter::once(&backend.open).chain(&backend.close) {
            let program = shell_words::split(template.source())
                .ok()
                .and_then(|w| w.into_iter().next())
                .unwrap_or_default();
            if find_program(&program).is_none() {
                return Err(FirewallError::Missing {
                    backend: BACKEND,
                    what: format!("the program `{program}` (from `{template}`)"),
                    hint: "install it or use its full path in the template".into(),
                });
            }
        }
        Ok(backend)
    }

    /// Like [`Firewall::grant`], with one SPA packet's addresses for
    /// `$PKT_SRC` and `$DST` for every opening.
    pub fn grant_from_packet(
        &mut self,
        openings: &[Opening],
        packet: Option<PacketAddresses>,
    ) -> FwResult<()> {
        self.grant_from_packets(openings, &vec![packet; openings.len()])
    }

    fn open_all(
        &mut self,
        openings: &[Opening],
        packets: &[Option<PacketAddresses>],
    ) -> FwResult<()> {
        // An open command without `$SPORT` would open every source port: a
        // pinned grant is refused before any command runs, never opened wider.
        if !self.supports(RuleFeature::SourcePort) {
            if let Some(o) = openings.iter().find(|o| o.rule.source_port.is_some()) {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!(
                        "{} ({}): the `open` command does not use $SPORT",
                        RuleFeature::SourcePort,
                        o.rule
                    ),
                });
            }
        }
        for o in openings {
            // Pinned grants are plain ones, as on every backend.
            o.rule.refuse_pinned_unless_plain(BACKEND)?;
        }
        let mut opened: Vec<PendingClose> = Vec::new();
        let mut refreshed: Vec<(usize, u64, u32)> = Vec::new();
        for (i, opening) in openings.iter().enumerate() {
            // Without a packet: the allowed address and the configured `destination`.
            let packet = packets.get(i).copied().flatten();
            if let Err(e) = self.open_one(opening, packet, &mut opened, &mut refreshed) {
                self.roll_back(opened, refreshed);
                return Err(e);
            }
        }
        let before = self.pending.len();
        self.pending.extend(opened);
        if let Err(message) = self.persist() {
            // Fail closed: an opening whose close could be lost must not stay.
            let added = self.pending.split_off(before);
            self.roll_back(added, refreshed);
            return Err(config_error(message));
        }
        Ok(())
    }

    /// Open one rule, or refresh it if it is already open.
    fn open_one(
        &mut self,
        opening: &Opening,
        packet: Option<PacketAddresses>,
        opened: &mut Vec<PendingClose>,
        refreshed: &mut Vec<(usize, u64, u32)>,
    ) -> FwResult<()> {
        if !self.supports(RuleFeature::Destination) {
            opening.rule.refuse(BACKEND, &[RuleFeature::Destination])?;
        }
        if opening.rule.nat.is_some() {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: format!("NAT ({})", opening.rule),
            });
        }
        if let Some(index) = self.pending.iter().position(|p| p.rule() == opening.rule) {
            let p = &mut self.pending[index];
            refreshed.push((index, p.expires_at, p.timeout_secs));
            if opening.expires_at > p.expires_at {
                (p.expires_at, p.timeout_secs) = (opening.expires_at, opening.timeout_secs);
            }
            tracing::debug!(rule = %opening.rule, expires_at = p.expires_at, "script: refreshed, open command not re-run");
            return Ok(());
        }
        if let Some(p) = opened.iter_mut().find(|p| p.rule() == opening.rule) {
            p.expires_at = p.expires_at.max(opening.expires_at);
            return Ok(());
        }
        let values = Values {
            source: opening.rule.source,
            packet_source: packet.map_or(opening.rule.source, |p| p.source),
            destination: opening
                .rule
                .destination
                .or(packet.and_then(|p| p.destination))
                .or(self.destination),
            proto: opening.rule.proto,
            port: opening.rule.port,
            source_port: opening.rule.source_port,
            expires_at: opening.expires_at,
            timeout_secs: opening.timeout_secs,
        };
        let render_error = |e: crate::template::TemplateError| config_error(e.to_string());
        let open_argv = self.open.render(&values).map_err(render_error)?;
        // Render the close first: an opening must never exist without its close.
        let close_argv = self
            .close
            .as_ref()
            .map(|t| t.render(&values))
            .transpose()
            .map_err(render_error)?;
        let owed = close_argv.map(|close| PendingClose::new(opening, close));
        if let Some(entry) = &owed {
            // Write ahead: the close is on disk before the open runs, so a daemon
            // killed right after the open still owes it at the next start. A
            // failed open is rolled back, which rewrites the file without it.
            let mut all = self.pending.clone();
            all.extend(opened.iter().cloned());
            all.push(entry.clone());
            self.save(&all).map_err(config_error)?;
        }
        self.runner.run(&open_argv, None)?;
        tracing::info!(rule = %opening.rule, expires_at = opening.expires_at, "script: ran open command");
        match owed {
            Some(entry) => opened.push(entry),
            None => {
                tracing::info!(rule = %opening.rule, "script: close is NONE, access stays open")
            }
        }
        Ok(())
    }

    /// Undo a partly applied batch: close what was opened, restore old expiries.
    fn roll_back(&mut self, opened: Vec<PendingClose>, refreshed: Vec<(usize, u64, u32)>) {
        for (index, expires_at, timeout_secs) in refreshed.into_iter().rev() {
            if let Some(p) = self.pending.get_mut(index) {
                (p.expires_at, p.timeout_secs) = (expires_at, timeout_secs);
            }
        }
        for mut p in opened {
            if let Err(e) = self.runner.run(&p.close, None) {
                tracing::warn!(rule = %p.rule(), error = %e, "script: close during roll-back failed; will retry");
                p.failed(self.last_now);
                self.pending.push(p);
            }
        }
        if let Err(message) = self.persist() {
            tracing::error!("script: {message}");
        }
    }

    /// Run the close of every pending entry `select` picks. Failures stay pending
    /// with a retry time. Returns the closed rules and the first error.
    fn close_where(
        &mut self,
        now: u64,
        mut select: impl FnMut(&PendingClose) -> bool,
    ) -> (Vec<Rule>, Option<FirewallError>) {
        let mut closed = Vec::new();
        let mut first_error = None;
        let mut keep = Vec::with_capacity(self.pending.len());
        for mut p in std::mem::take(&mut self.pending) {
            if !select(&p) {
                keep.push(p);
                continue;
            }
            match self.runner.run(&p.close, None) {
                Ok(_) => {
                    tracing::info!(rule = %p.rule(), "script: ran close command");
                    closed.push(p.rule());
                }
                Err(e) => {
                    tracing::warn!(rule = %p.rule(), failures = p.failures + 1, error = %e, "script: close command failed; will retry");
                    p.failed(now);
                    first_error.get_or_insert(e);
                    keep.push(p);
                }
            }
        }
        self.pending = keep;
        if let Err(message) = self.persist() {
            tracing::error!("script: {message}");
            first_error.get_or_insert(config_error(message));
        }
        (closed, first_error)
    }

    fn persist(&self) -> Result<(), String> {
        self.save(&self.pending)
    }

    fn save(&self, pending: &[PendingClose]) -> Result<(), String> {
        match &self.state {
            Some(file) => file.save(pending),
            None => Ok(()),
        }
    }

    /// Openings whose close has failed at least once, with their failure count.
    pub fn failing_closes(&self) -> Vec<(Rule, u32)> {
        self.pending
            .iter()
            .filter(|p| p.failures > 0)
            .map(|p| (p.rule(), p.failures))
            .collect()
    }
}

/// Scripts can only be given capabilities the daemon has itself.
fn require_held(wanted: CapSet) -> FwResult<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let have = CapSet::permitted_now().map_err(|e| config_error(e.to_string()))?;
    if wanted.is_subset(have) {
        return Ok(());
    }
    let missing = wanted.minus(have);
    Err(config_error(format!(
        "capabilities = {missing} cannot be given to scripts: posternd does not hold them"
    )))
}

impl Firewall for ScriptBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Runs the closes a previous run owed that are due by `now`.
    fn init(&mut self, now: u64) -> FwResult<()> {
        self.expire(now).map(|_| ())
    }

    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        self.open_all(openings, &[])
    }

    /// `$PKT_SRC` and `$DST` from each opening's packet.
    fn grant_from_packets(
        &mut self,
        openings: &[Opening],
        packets: &[Option<PacketAddresses>],
    ) -> FwResult<()> {
        self.open_all(openings, packets)
    }

    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        let now = self.last_now;
        match self.close_where(now, |p| rules.contains(&p.rule())) {
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        Ok(self.pending.iter().map(PendingClose::opening).collect())
    }

    fn flush(&mut self) -> FwResult<()> {
        let now = self.last_now;
        match self.close_where(now, |_| true) {
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs due closes. A failed close is logged, kept, and retried at a later
    /// call (back-off up to 5 minutes); only successful closes are returned.
    fn expire(&mut self, now: u64) -> FwResult<Vec<Rule>> {
        self.last_now = self.last_now.max(now);
        let (closed, _) = self.close_where(now, |p| p.expires_at <= now && p.retry_at <= now);
        Ok(closed)
    }

    fn expires_in_kernel(&self) -> bool {
        false
    }

    /// A grant bound to a destination or pinned to a source port is the open
    /// command's to enforce: only one whose template uses `$DST`, or `$SPORT`,
    /// can.
    fn supports(&self, feature: RuleFeature) -> bool {
        match feature {
            RuleFeature::Destination => self.open.uses_destination(),
            RuleFeature::SourcePort => self.open.uses_source_port(),
            RuleFeature::ForwardAll => false,
        }
    }

    fn shutdown(&mut self) -> FwResult<()> {
        if self.close_at_exit {
            self.flush()
        } else {
            self.persist().map_err(config_error)
        }
    }
}
