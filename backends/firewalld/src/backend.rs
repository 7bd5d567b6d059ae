//! [`FirewalldBackend`]: the `Firewall` implementation.

use crate::api::{ApiError, DbusApi, FirewalldApi};
use crate::config::FirewalldConfig;
use crate::rich::{self, Part, SourceForm};
use crate::state::{Entry, State, StateFile};
use crate::BACKEND;
use spa_core::clock::{Clock, SystemClock};
use spa_core::firewall::{
    Firewall, FirewallError, FwResult, NatRule, Opening, Rule, RuleFeature, Snat,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries whose expiry passed this long ago are forgotten without asking
/// firewalld (it has dropped them; clocks may differ by a little).
const STALE_SLACK_SECS: u64 = 60;

/// postern's firewalld backend. See the crate docs for the rules it adds.
pub struct FirewalldBackend {
    config: FirewalldConfig,
    api: Box<dyn FirewalldApi>,
    bus_label: String,
    /// The zone grants go to, resolved by `init`.
    zone: Option<String>,
    state: State,
    state_file: Option<StateFile>,
    state_loaded: bool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FirewalldBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirewalldBackend")
            .field("config", &self.config)
            .field("zone", &self.zone)
            .field("grants", &self.state.entries().len())
            .finish_non_exhaustive()
    }
}

fn other(message: String) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message,
    }
}

/// One change made during a grant batch, and how to take it back.
enum Undo {
    /// We added this entry's text: remove it.
    Remove { entry: Entry },
    /// We removed our own older rule: add it again for the rest of its time.
    Restore { entry: Entry },
}

impl FirewalldBackend {
    /// A backend talking to firewalld over D-Bus (the system bus, or
    /// `config.bus_address`). Nothing connects before the first call; posternd
    /// calls [`Firewall::init`] first.
    pub fn new(config: FirewalldConfig) -> FwResult<FirewalldBackend> {
        config.validate()?;
        let api = DbusApi::new(config.bus_address.clone(), config.call_timeout());
        let bus_label = api.address_label();
        let mut b = FirewalldBackend::with_api(config, Box::new(api))?;
        b.bus_label = bus_label;
        Ok(b)
    }

    /// A backend using `api` instead of D-Bus (tests: a fake firewalld).
    pub fn with_api(
        config: FirewalldConfig,
        api: Box<dyn FirewalldApi>,
    ) -> FwResult<FirewalldBackend> {
        config.validate()?;
        let state_file = config.state_file.clone().map(StateFile::new);
        let bus_label = config
            .bus_address
            .clone()
            .unwrap_or_else(|| "the system bus".into());
        Ok(FirewalldBackend {
            config,
            api,
            bus_label,
            zone: None,
            state: State::default(),
            state_file,
            state_loaded: false,
            clock: Arc::new(SystemClock),
        })
    }

    /// Read the time (unix seconds) from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &FirewalldConfig {
        &self.config
    }

    /// The zone grants go to, once [`Firewall::init`] has resolved it.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// Turns an API error into the trait's error, naming what was being done.
    fn fail(&self, doing: &str, e: ApiError) -> FirewallError {
        match e {
            ApiError::NoBus { detail, .. } => FirewallError::Missing {
                backend: BACKEND,
                what: format!("the D-Bus bus firewalld is on ({}: {detail})", self.bus_label),
                hint: "start the system message bus (dbus) and firewalld, or set bus_address".into(),
            },
            ApiError::NotRunning { detail } => FirewallError::Missing {
                backend: BACKEND,
                what: format!("firewalld (nobody owns org.fedoraproject.FirewallD1 on {}: {detail})", self.bus_label),
                hint: "start firewalld (systemctl start firewalld), or choose another action backend".into(),
            },
            ApiError::Denied { detail } => FirewallError::Missing {
                backend: BACKEND,
                what: format!("permission to change firewalld ({detail})"),
                hint: "run posternd as root: without a polkit agent firewalld accepts changes from uid 0 only".into(),
            },
            e => other(format!("{doing}: {e}")),
        }
    }

    /// Waits (bounded by the call timeout) while firewalld is starting up.
    fn check_running(&mut self) -> FwResult<()> {
        let deadline = Instant::now() + self.config.call_timeout();
        loop {
            let state = self
                .api
                .state()
                .map_err(|e| self.fail("reading firewalld's state", e))?;
            match state.as_str() {
                "RUNNING" => return Ok(()),
                "INIT" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                s => {
                    return Err(other(format!(
                    "firewalld is not running (its state is `{s}`); check its log, then restart it"
                )))
                }
            }
        }
    }

    fn resolve_zone(&mut self) -> FwResult<String> {
        let zone = match &self.config.zone {
            Some(z) => z.clone(),
            None => self
                .api
                .default_zone()
                .map_err(|e| self.fail("reading firewalld's default zone", e))?,
        };
        let zones = self
            .api
            .zones()
            .map_err(|e| self.fail("listing firewalld's zones", e))?;
        if !zones.iter().any(|z| z == &zone) {
            return Err(other(format!(
                "zone `{zone}` does not exist in firewalld (its zones: {}); set `zone` to one of them or create it",
                zones.join(", ")
            )));
        }
        Ok(zone)
    }

    /// Reads the state file once and merges it into memory.
    fn load_state(&mut self) -> FwResult<()> {
        if self.state_loaded {
            return Ok(());
        }
        if let Some(file) = &self.state_file {
            match file.load() {
                Ok((loaded, warnings)) => {
                    for w in warnings {
                        tracing::warn!("firewalld state file {}: {w}", file.path().display());
                    }
                    self.state.merge(loaded);
                }
                // Rules in firewalld expire by themselves, so an unreadable file only
                // costs listing/flushing the previous run's grants; not worth refusing to start.
                Err(e) => tracing::warn!(
                    "firewalld state file {} is unreadable ({e}); grants of a previous run are left to expire in firewalld",
                    file.path().display()
                ),
            }
        }
        self.state_loaded = true;
        Ok(())
    }

    fn save_state(&self) -> std::io::Result<()> {
        match &self.state_file {
            Some(f) => f.save(&self.state),
            None => Ok(()),
        }
    }

    /// Saves, logging a failure: the rules themselves are in place (and expire in
    /// firewalld), only the bookkeeping for a restart is behind.
    fn save_state_or_warn(&self) {
        if let Err(e) = self.save_state() {
            let path = self
                .state_file
                .as_ref()
                .map(|f| f.path().display().to_string())
                .unwrap_or_default();
            tracing::warn!("cannot write firewalld state file {path}: {e}");
        }
    }

    fn ensure_ready(&mut self) -> FwResult<String> {
        if let Some(z) = &self.zone {
            return Ok(z.clone());
        }
        self.init(self.clock.now())?;
        Ok(self.zone.clone().expect("init resolves the zone"))
    }

    /// Rich rules currently in `zone`; `None` if the zone is gone.
    fn zone_rules(&mut self, zone: &str) -> FwResult<Option<HashSet<String>>> {
        match self.api.rich_rules(zone) {
            Ok(rules) => Ok(Some(rules.into_iter().collect())),
            Err(e) if e.is_code("INVALID_ZONE") => Ok(None),
            Err(e) => Err(self.fail(&format!("listing the rich rules of zone `{zone}`"), e)),
        }
    }

    /// Drops entries firewalld no longer has (expired, or lost in a reload);
    /// removes entries past their expiry that are still there (a clock jump).
    fn reconcile(&mut self, now: u64) -> FwResult<bool> {
        let before = self.state.clone();
        for zone in self.state.zones() {
            let Some(present) = self.zone_rules(&zone)? else {
                let gone = self.state.retain(|e| e.zone != zone);
                tracing::warn!(
                    "zone `{zone}` no longer exists; forgetting {} grant(s) recorded in it",
                    gone.len()
                );
                continue;
            };
            self.state
                .retain(|e| e.zone != zone || present.contains(&e.text));
            let overdue: Vec<Entry> = self
                .state
                .entries()
                .iter()
                .filter(|e| e.zone == zone && e.expires_at <= now)
                .cloned()
                .collect();
            for e in overdue {
                match self.api.remove_rich_rule(&e.zone, &e.text) {
                    Ok(()) => {
                        tracing::info!("removed expired grant {} from zone `{}`", e.part, e.zone)
                    }
                    Err(err) if err.is_code("NOT_ENABLED") => {}
                    Err(err) => {
                        return Err(self.fail(&format!("removing expired rule `{}`", e.text), err))
                    }
                }
                self.state.remove(&e.zone, &e.text);
            }
        }
        Ok(self.state != before)
    }

    fn validate_opening(&self, o: &Opening) -> FwResult<()> {
        if let Some(d) = o.rule.destination {
            if rich::canonical_source(d).is_ipv4()
                != rich::canonical_source(o.rule.source).is_ipv4()
            {
                return Err(other(format!(
                    "grant {}: source and destination are of different address families",
                    o.rule
                )));
            }
        }
        if let Some(nat) = &o.rule.nat {
            validate_nat(&o.rule, nat)?;
        }
        let source = rich::canonical_source(o.rule.source);
        if !self.config.family.allows(&source) {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: format!(
                    "{} sources with family = \"{}\" (grant {})",
                    if source.is_ipv4() { "IPv4" } else { "IPv6" },
                    self.config.family,
                    o.rule
                ),
            });
        }
        if o.rule.port == 0 {
            return Err(other(format!("grant {}: port 0 cannot be opened", o.rule)));
        }
        Ok(())
    }

    /// Applies one opening: each rich rule it needs ([`Part::of`]). `present` is
    /// the zone's rich-rule text as firewalld has it, kept current as we go.
    /// Records undo steps; on error the caller rolls back.
    fn apply_one(
        &mut self,
        zone: &str,
        o: &Opening,
        now: u64,
        present: &mut HashSet<String>,
        undo: &mut Vec<Undo>,
    ) -> FwResult<()> {
        let timeout = o.timeout_secs.clamp(1, i32::MAX as u32);
        let expires_at = now + timeout as u64;
        for part in Part::of(&o.rule) {
            self.apply_part(zone, part, timeout, expires_at, present, undo)?;
        }
        Ok(())
    }

    /// Makes firewalld hold `part` until at least `expires_at`.
    fn apply_part(
        &mut self,
        zone: &str,
        part: Part,
        timeout: u32,
        expires_at: u64,
        present: &mut HashSet<String>,
        undo: &mut Vec<Undo>,
    ) -> FwResult<()> {
        // Ours, still in firewalld; entries firewalld dropped meanwhile are stale.
        let ours: Vec<Entry> = self.state.for_part(zone, &part);
        for e in ours.iter().filter(|e| !present.contains(&e.text)) {
            self.state.remove(&e.zone, &e.text);
        }
        let ours: Vec<Entry> = ours
            .into_iter()
            .filter(|e| present.contains(&e.text))
            .collect();
        // A repeat never shortens a live grant: if ours already lasts as long, keep it.
        if ours.iter().any(|e| e.expires_at >= expires_at) {
            return Ok(());
        }

        // Add a form that is not in firewalld yet, then drop our older form(s): the
        // source stays allowed throughout. Ours first tries the other form.
        let forms = match ours.first() {
            Some(cur) => [cur.form.other(), cur.form],
            None => [SourceForm::Plain, SourceForm::HostPrefix],
        };
        for form in forms {
            let entry = Entry::of_part(zone, part.clone(), form, expires_at);
            if present.contains(&entry.text) {
                continue;
            }
            match self.api.add_rich_rule(zone, &entry.text, timeout as i32) {
                Ok(()) => {}
                // Someone else added this very text since we looked: not ours, try the other form.
                Err(e) if e.is_code("ALREADY_ENABLED") => {
                    present.insert(entry.text.clone());
                    continue;
                }
                Err(e) => {
                    if e.outcome_unknown() {
                        // It was absent before, so if it got in, it is ours to take out.
                        undo.push(Undo::Remove {
                            entry: entry.clone(),
                        });
                    }
                    return Err(self.fail(
                        &format!("adding rich rule `{}` to zone `{zone}`", entry.text),
                        e,
                    ));
                }
            }
            tracing::debug!(
                "firewalld: added `{}` to zone `{zone}` for {timeout} s",
                entry.text
            );
            present.insert(entry.text.clone());
            undo.push(Undo::Remove {
                entry: entry.clone(),
            });
            self.state.insert(entry);
            for old in &ours {
                self.remove_ours(old, present, undo)?;
            }
            return Ok(());
        }

        match ours.first() {
            // Both forms taken: ours and someone else's. Refresh ours in place
            // (a short gap for new connections; see README).
            Some(cur) => {
                self.remove_ours(cur, present, undo)?;
                let entry = Entry {
                    expires_at,
                    ..cur.clone()
                };
                if let Err(e) = self.api.add_rich_rule(zone, &entry.text, timeout as i32) {
                    if e.outcome_unknown() {
                        undo.push(Undo::Remove {
                            entry: entry.clone(),
                        });
                    }
                    return Err(self.fail(
                        &format!("adding rich rule `{}` to zone `{zone}`", entry.text),
                        e,
                    ));
                }
                present.insert(entry.text.clone());
                // Undo: the Restore pushed by remove_ours puts back the old one,
                // after this Remove takes out the new one (undo runs in reverse).
                undo.push(Undo::Remove {
                    entry: entry.clone(),
                });
                self.state.insert(entry);
                Ok(())
            }
            // Both forms are rules postern did not add: the source is already allowed.
            // Leave them alone (they are not ours to refresh or remove).
            None => {
                tracing::warn!(
                    "firewalld zone `{zone}` already has rules doing {part} that postern did not add; \
                     leaving them in place and not tracking them"
                );
                Ok(())
            }
        }
    }

    fn remove_ours(
        &mut self,
        old: &Entry,
        present: &mut HashSet<String>,
        undo: &mut Vec<Undo>,
    ) -> FwResult<()> {
        match self.api.remove_rich_rule(&old.zone, &old.text) {
            Ok(()) => undo.push(Undo::Restore { entry: old.clone() }),
            Err(e) if e.is_code("NOT_ENABLED") => {}
            Err(e) => {
                return Err(self.fail(
                    &format!("removing rich rule `{}` from zone `{}`", old.text, old.zone),
                    e,
                ))
            }
        }
        present.remove(&old.text);
        self.state.remove(&old.zone, &old.text);
        Ok(())
    }

    /// Takes back a failed batch. Returns a note if something could not be undone.
    fn roll_back(
        &mut self,
        zone: &str,
        snapshot: State,
        undo: Vec<Undo>,
        now: u64,
    ) -> Option<String> {
        self.state = snapshot;
        let mut failures = Vec::new();
        for step in undo.into_iter().rev() {
            match step {
                Undo::Remove { entry } => match self.api.remove_rich_rule(zone, &entry.text) {
                    Ok(()) => {}
                    Err(e) if e.is_code("NOT_ENABLED") => {}
                    Err(e) => {
                        // Still there: keep tracking it so list/flush see it (it expires anyway).
                        failures.push(format!("`{}` stays until it expires ({e})", entry.text));
                        self.state.insert(entry);
                    }
                },
                Undo::Restore { entry } => {
                    let left = entry.expires_at.saturating_sub(now);
                    if left == 0 {
                        self.state.remove(&entry.zone, &entry.text);
                        continue;
                    }
                    let secs = left.min(i32::MAX as u64) as i32;
                    match self.api.add_rich_rule(&entry.zone, &entry.text, secs) {
                        Ok(()) => {}
                        Err(e) if e.is_code("ALREADY_ENABLED") => {}
                        Err(e) => {
                            self.state.remove(&entry.zone, &entry.text);
                            failures.push(format!(
                                "earlier grant {} could not be restored ({e})",
                                entry.part
                            ));
                        }
                    }
                }
            }
        }
        (!failures.is_empty()).then(|| failures.join("; "))
    }
}

/// NAT as firewalld's rich rules can do it: DNAT (`forward-port … to-addr`,
/// which firewalld's forward chain accepts as `ct status dnat`), a redirect to a
/// local port, masquerading, and FORWARD_ALL as every TCP and UDP port. Not:
/// DISABLE_DNAT's bare forward accept (a
/// zone's rich rules filter only what comes in to this host, and firewalld
/// accepts no forwarded traffic without DNAT), and SNAT to a given address
/// (rich rules only masquerade). Both fail here, before anything is changed.
fn validate_nat(rule: &Rule, nat: &NatRule) -> FwResult<()> {
    let unsupported = |what: String| {
        Err(FirewallError::Unsupported {
            backend: BACKEND,
            what: format!("{what} (grant {rule}); use the iptables or nftables backend for it"),
        })
    };
    if !nat.dnat {
        return unsupported("NAT without DNAT (DISABLE_DNAT)".into());
    }
    if nat.forward_all && nat.local {
        return unsupported("FORWARD_ALL to this host (local NAT)".into());
    }
    if let (false, Some(Snat::To(addr))) = (nat.local, &nat.snat) {
        return unsupported(format!(
            "SNAT to {addr} (firewalld rich rules only masquerade)"
        ));
    }
    let source = rich::canonical_source(rule.source);
    let to = rich::canonical_source(nat.to_addr);
    if !nat.local && source.is_ipv4() != to.is_ipv4() {
        return Err(other(format!(
            "grant {rule}: NAT from an {} source to an {} address cannot be one rich rule",
            if source.is_ipv4() { "IPv4" } else { "IPv6" },
            if to.is_ipv4() { "IPv4" } else { "IPv6" }
        )));
    }
    // FORWARD_ALL keeps every port as it is; the others name one.
    if nat.to_port == 0 && !nat.forward_all {
        return Err(other(format!("grant {rule}: NAT to port 0")));
    }
    Ok(())
}

impl Firewall for FirewalldBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Checks firewalld runs and the zone exists, reads the state file and drops
    /// what firewalld no longer has. Idempotent; touches only postern's rules.
    fn init(&mut self, now: u64) -> FwResult<()> {
        self.check_running()?;
        let zone = self.resolve_zone()?;
        self.load_state()?;
        let mut changed = self.reconcile(now)?;
        if self.config.flush_at_init && !self.state.is_empty() {
            // As fwknopd's FLUSH_FIREWD_AT_INIT: a previous run's grants go.
            self.zone = Some(zone.clone());
            self.flush()?;
            changed = true;
        }
        // At start, a state file that cannot be written is a configuration error.
        if changed || self.state_file.is_some() {
            self.save_state().map_err(|e| {
                let path = self
                    .state_file
                    .as_ref()
                    .map(|f| f.path().display().to_string())
                    .unwrap_or_default();
                other(format!("cannot write state file {path}: {e}"))
            })?;
        }
        let version = self.api.version().unwrap_or_else(|_| "?".into());
        tracing::info!(
            "firewalld {version}: grants go to zone `{zone}`{}",
            match self.state.openings(now).len() {
                0 => String::new(),
                n => format!("; {n} grant(s) of a previous run still open"),
            }
        );
        self.zone = Some(zone);
        Ok(())
    }

    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            // A rich rule has one element: `port` or `source-port`, never both.
            o.rule.refuse(BACKEND, &[RuleFeature::SourcePort])?;
            self.validate_opening(o)?;
        }
        if openings.is_empty() {
            return Ok(());
        }
        let zone = self.ensure_ready()?;
        let now = self.clock.now();
        self.state.forget_stale(now, STALE_SLACK_SECS);
        let mut present = self.zone_rules(&zone)?.ok_or_else(|| {
            other(format!("zone `{zone}` no longer exists in firewalld; was it deleted or firewalld reloaded with a new config?"))
        })?;
        let snapshot = self.state.clone();
        let mut undo = Vec::new();
        for o in openings {
            if let Err(e) = self.apply_one(&zone, o, now, &mut present, &mut undo) {
                let note = self.roll_back(&zone, snapshot, undo, now);
                self.save_state_or_warn();
                return Err(match note {
                    None => e,
                    Some(note) => other(format!("{e}; rolling back the batch also failed: {note}")),
                });
            }
        }
        self.save_state_or_warn();
        Ok(())
    }

    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        self.ensure_ready()?;
        let mut first_error = None;
        for rule in rules {
            for e in self.state.for_rule_any_zone(rule) {
                match self.api.remove_rich_rule(&e.zone, &e.text) {
                    Ok(()) => {}
                    Err(err) if err.is_code("NOT_ENABLED") || err.is_code("INVALID_ZONE") => {}
                    Err(err) => {
                        first_error.get_or_insert(
                            self.fail(&format!("removing rich rule `{}`", e.text), err),
                        );
                        continue;
                    }
                }
                self.state.remove(&e.zone, &e.text);
            }
        }
        self.save_state_or_warn();
        first_error.map_or(Ok(()), Err)
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        self.ensure_ready()?;
        let now = self.clock.now();
        let before = self.state.clone();
        for zone in self.state.zones() {
            match self.zone_rules(&zone)? {
                Some(present) => self
                    .state
                    .retain(|e| e.zone != zone || present.contains(&e.text)),
                None => self.state.retain(|e| e.zone != zone),
            };
        }
        if self.state != before {
            self.save_state_or_warn();
        }
        Ok(self.state.openings(now))
    }

    /// firewalld's runtime rich rules of the zones postern's grants live in.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        self.ensure_ready()?;
        let mut out = String::new();
        for zone in self.state.zones() {
            out.push_str(&format!("zone {zone}:\n"));
            let mut rules: Vec<String> = self
                .zone_rules(&zone)?
                .unwrap_or_default()
                .into_iter()
                .collect();
            rules.sort();
            for rule in rules {
                out.push_str(&format!("  {rule}\n"));
            }
        }
        Ok(Some(out))
    }

    fn flush(&mut self) -> FwResult<()> {
        self.ensure_ready()?;
        let mut first_error = None;
        for e in self.state.entries().to_vec() {
            match self.api.remove_rich_rule(&e.zone, &e.text) {
                Ok(()) => {}
                Err(err) if err.is_code("NOT_ENABLED") || err.is_code("INVALID_ZONE") => {}
                Err(err) => {
                    first_error
                        .get_or_insert(self.fail(&format!("removing rich rule `{}`", e.text), err));
                    continue;
                }
            }
            self.state.remove(&e.zone, &e.text);
        }
        self.save_state_or_warn();
        first_error.map_or(Ok(()), Err)
    }

    fn expires_in_kernel(&self) -> bool {
        true
    }

    /// Rich rules take a destination address, and FORWARD_ALL is a forward-port
    /// of every TCP and UDP port (to this host it is refused per grant). A
    /// pinned source port is refused: a rich rule holds one element, `port`
    /// or `source-port`, so it cannot match both ports of a pinned grant.
    fn supports(&self, feature: RuleFeature) -> bool {
        match feature {
            RuleFeature::Destination | RuleFeature::ForwardAll => true,
            RuleFeature::SourcePort => false,
        }
    }

    /// Grants stay and expire inside firewalld (only the state file is written),
    /// unless `flush_at_exit` (fwknopd's FLUSH_FIREWD_AT_EXIT) removes them.
    fn shutdown(&mut self) -> FwResult<()> {
        if self.config.flush_at_exit && self.zone.is_some() {
            return self.flush();
        }
        self.save_state_or_warn();
        Ok(())
    }
}
