//! The pf [`Firewall`]: grants are addresses in per-port tables of postern's own
//! anchor, changed with pfctl(8); expiry is recorded in a state file.

use crate::config::PfConfig;
use crate::render::{anchor_linked, anchor_rules, is_absent, parse_show, parse_tables, TableKey};
use crate::state::{Entry, StateFile};
use postern_backend_common::{missing_for, require_program, SystemRunner};
use spa_core::clock::{Clock, SystemClock};
use spa_core::firewall::{
    CommandRunner, Firewall, FirewallError, FwResult, Opening, Rule, RuleFeature,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const BACKEND: &str = "pf";

fn other(message: impl Into<String>) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message: message.into(),
    }
}

fn missing_hint() -> String {
    if cfg!(any(
        target_os = "openbsd",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "dragonfly",
        target_os = "macos"
    )) {
        "pfctl is part of the base system; set `pfctl` to its full path (usually /sbin/pfctl)"
            .into()
    } else {
        format!(
            "pf exists on OpenBSD, FreeBSD and macOS, not on {}; use the nftables or iptables backend here",
            std::env::consts::OS
        )
    }
}

/// Name this backend in "program missing" errors from the shared runner.
fn own_missing(e: FirewallError) -> FirewallError {
    missing_for(e, BACKEND, missing_hint)
}

/// Something to put back if a later step of a batch fails.
enum Undo {
    Delete(TableKey, Vec<IpAddr>),
    LoadRules(BTreeSet<TableKey>),
}

pub struct PfBackend {
    pfctl: String,
    anchor: String,
    ipv6: bool,
    check_anchor: bool,
    flush_at_init: bool,
    flush_at_exit: bool,
    max_grant_secs: u32,
    state: StateFile,
    /// What is in our tables, with expiry (mirrors the state file).
    entries: Vec<Entry>,
    runner: Box<dyn CommandRunner>,
    clock: Arc<dyn Clock>,
    /// init() has run: the state is loaded and the anchor's rules are in place.
    ready: bool,
}

fn tables_of(entries: &[Entry]) -> BTreeSet<TableKey> {
    entries.iter().map(Entry::table).collect()
}

fn by_table<'a>(
    items: impl IntoIterator<Item = (TableKey, IpAddr)> + 'a,
) -> BTreeMap<TableKey, Vec<IpAddr>> {
    let mut map: BTreeMap<TableKey, Vec<IpAddr>> = BTreeMap::new();
    for (table, addr) in items {
        let addrs = map.entry(table).or_default();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    map
}

/// Merge repeated rules of one batch, keeping the latest expiry and the start
/// time (`expires_at - timeout_secs`) that goes with it, in first-seen order.
fn dedup(openings: &[Opening]) -> Vec<(Rule, u64, u64)> {
    let mut merged: Vec<(Rule, u64, u64)> = Vec::new();
    for o in openings {
        let start = o.expires_at.saturating_sub(u64::from(o.timeout_secs));
        match merged.iter_mut().find(|(r, _, _)| *r == o.rule) {
            Some((_, exp, st)) if o.expires_at > *exp => (*exp, *st) = (o.expires_at, start),
            Some(_) => {}
            None => merged.push((o.rule.clone(), o.expires_at, start)),
        }
    }
    merged
}

impl PfBackend {
    /// Build with any runner (tests pass a recording fake). Nothing runs until
    /// [`Firewall::init`] (or the first grant).
    pub fn new(config: &PfConfig, runner: Box<dyn CommandRunner>) -> FwResult<Self> {
        config.validate().map_err(other)?;
        Ok(PfBackend {
            pfctl: config.pfctl.clone(),
            anchor: config.anchor.clone(),
            ipv6: config.ipv6,
            check_anchor: config.check_anchor,
            flush_at_init: config.flush_at_init,
            flush_at_exit: config.flush_at_exit,
            max_grant_secs: config.max_grant_secs,
            state: StateFile::new(config.state_file()),
            entries: Vec::new(),
            runner,
            clock: Arc::new(SystemClock),
            ready: false,
        })
    }

    /// Build with the real process runner, after checking pfctl is installed
    /// ([`FirewallError::Missing`] otherwise).
    pub fn system(config: &PfConfig) -> FwResult<Self> {
        require_program(&config.pfctl, BACKEND, missing_hint)?;
        let runner = SystemRunner {
            timeout: Duration::from_secs(config.command_timeout_secs),
        };
        PfBackend::new(config, Box::new(runner))
    }

    /// Read the time (unix seconds) from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn anchor(&self) -> &str {
        &self.anchor
    }

    /// `pfctl -a ANCHOR -s rules`, then each of postern's tables in the anchor.
    fn anchor_listing(&mut self) -> FwResult<String> {
        let anchor = self.anchor.clone();
        let mut out = self.run(&["-a", &anchor, "-s", "rules"], None)?;
        for table in self.show_tables()? {
            out.push_str(&format!("table <{}>:\n", table.name()));
            out.push_str(&self.run_table(table, "show", &[])?.unwrap_or_default());
        }
        Ok(out)
    }

    fn run(&mut self, args: &[&str], stdin: Option<&str>) -> FwResult<String> {
        let mut argv = vec![self.pfctl.clone()];
        argv.extend(args.iter().map(|s| s.to_string()));
        self.runner.run(&argv, stdin).map_err(own_missing)
    }

    /// Run a table command; a table (or anchor) that does not exist counts as empty.
    fn run_table(
        &mut self,
        table: TableKey,
        command: &str,
        args: &[String],
    ) -> FwResult<Option<String>> {
        let anchor = self.anchor.clone();
        let name = table.name();
        let mut argv: Vec<&str> = vec!["-a", &anchor, "-t", &name, "-T", command];
        argv.extend(args.iter().map(String::as_str));
        match self.run(&argv, None) {
            Ok(out) => Ok(Some(out)),
            Err(FirewallError::Command { stderr, .. }) if is_absent(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Our tables in the anchor (others' tables there are left alone).
    fn show_tables(&mut self) -> FwResult<Vec<TableKey>> {
        let anchor = self.anchor.clone();
        match self.run(&["-a", &anchor, "-s", "Tables"], None) {
            Ok(out) => Ok(parse_tables(&out)
                .iter()
                .filter_map(|n| TableKey::parse(n))
                .collect()),
            Err(FirewallError::Command { stderr, .. }) if is_absent(&stderr) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn show_table(&mut self, table: TableKey) -> FwResult<Vec<IpAddr>> {
        Ok(self
            .run_table(table, "show", &[])?
            .map(|out| parse_show(&out))
            .unwrap_or_default())
    }

    fn add(&mut self, table: TableKey, addrs: &[IpAddr]) -> FwResult<()> {
        let args: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        let anchor = self.anchor.clone();
        let name = table.name();
        let mut argv: Vec<&str> = vec!["-a", &anchor, "-t", &name, "-T", "add"];
        argv.extend(args.iter().map(String::as_str));
        self.run(&argv, None).map(|_| ())
    }

    fn delete(&mut self, table: TableKey, addrs: &[IpAddr]) -> FwResult<()> {
        if addrs.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        self.run_table(table, "delete", &args).map(|_| ())
    }

    fn kill(&mut self, table: TableKey) -> FwResult<()> {
        self.run_table(table, "kill", &[]).map(|_| ())
    }

    /// The safety net: drop entries pf has held longer than any grant may live.
    fn expire_table(&mut self, table: TableKey) -> FwResult<()> {
        if self.max_grant_secs == 0 {
            return Ok(());
        }
        let secs = self.max_grant_secs.to_string();
        self.run_table(table, "expire", &[secs]).map(|_| ())
    }

    /// Replace the anchor's rules by one pass rule per table.
    fn load_rules(&mut self, tables: &BTreeSet<TableKey>) -> FwResult<()> {
        let anchor = self.anchor.clone();
        let rules = anchor_rules(tables);
        self.run(&["-a", &anchor, "-f", "-"], Some(&rules))
            .map(|_| ())
    }

    fn save(&self, entries: &[Entry]) -> FwResult<()> {
        self.state.save(&self.anchor, entries).map_err(other)
    }

    fn check_link(&mut self) -> FwResult<()> {
        let main = self.run(&["-s", "rules"], None)?;
        if anchor_linked(&main, &self.anchor) {
            return Ok(());
        }
        Err(other(format!(
            "anchor `{a}` is not referenced from the main pf ruleset, so its rules would never be evaluated; add `anchor \"{a}\"` to /etc/pf.conf (before your block rules) and reload it with `pfctl -f /etc/pf.conf`, or set `check_anchor = false` if it is referenced in a way postern cannot see",
            a = self.anchor
        )))
    }

    fn undo(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let result = match step {
                Undo::Delete(table, addrs) => self.delete(table, &addrs),
                Undo::LoadRules(tables) => self.load_rules(&tables),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "pf: could not roll back a partial change");
            }
        }
    }

    /// Remove `gone` from the tables and the record, reload the rules without
    /// tables that became empty and kill those; returns the removed rules.
    fn remove(&mut self, gone: Vec<Entry>, extra: &[Rule]) -> FwResult<Vec<Rule>> {
        let deletes = by_table(
            gone.iter().map(|e| (e.table(), e.source)).chain(
                extra
                    .iter()
                    .filter_map(|r| Some((TableKey::of(r)?, r.source))),
            ),
        );
        for (table, addrs) in &deletes {
            self.delete(*table, addrs)?;
        }
        let before = tables_of(&self.entries);
        let kept: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| !gone.contains(e))
            .cloned()
            .collect();
        let after = tables_of(&kept);
        let emptied: Vec<TableKey> = before.difference(&after).copied().collect();
        if !emptied.is_empty() {
            self.load_rules(&after)?;
            for table in &emptied {
                self.kill(*table)?;
            }
        }
        for table in deletes.keys().filter(|t| after.contains(t)) {
            self.expire_table(*table)?;
        }
        self.save(&kept)?;
        self.entries = kept;
        Ok(gone.iter().map(Entry::rule).collect())
    }
}

impl Firewall for PfBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Check the anchor is referenced, then reconcile: entries that expired by
    /// `now` or that the state file does not know are deleted, live ones stay,
    /// the anchor's rules are (re)loaded for the tables still in use and empty
    /// tables are killed. With `flush_at_init`, the anchor is flushed instead.
    fn init(&mut self, now: u64) -> FwResult<()> {
        let recorded = self.state.load(&self.anchor).map_err(other)?;
        if self.check_anchor {
            self.check_link()?;
        }
        let anchor = self.anchor.clone();
        if self.flush_at_init {
            self.run(&["-a", &anchor, "-F", "all"], None)?;
            self.save(&[])?;
            self.entries.clear();
            self.ready = true;
            return Ok(());
        }
        let mut live = Vec::new();
        let mut removed = 0;
        let tables = self.show_tables()?;
        for table in &tables {
            let present = self.show_table(*table)?;
            let (keep, stale): (Vec<IpAddr>, Vec<IpAddr>) = present.into_iter().partition(|addr| {
                recorded
                    .iter()
                    .any(|e| e.table() == *table && e.source == *addr && e.expires_at > now)
            });
            removed += stale.len();
            self.delete(*table, &stale)?;
            live.extend(
                recorded
                    .iter()
                    .filter(|e| e.table() == *table && keep.contains(&e.source))
                    .cloned(),
            );
        }
        let in_use = tables_of(&live);
        self.load_rules(&in_use)?;
        for table in tables.iter().filter(|t| !in_use.contains(t)) {
            self.kill(*table)?;
        }
        for table in &in_use {
            self.expire_table(*table)?;
        }
        self.save(&live)?;
        if removed > 0 {
            tracing::info!(anchor = %self.anchor, removed, kept = live.len(), "pf: removed leftover table entries at start");
        }
        self.entries = live;
        self.ready = true;
        Ok(())
    }

    /// Add the addresses to their tables (one `-T add` per table; adding an
    /// address already there changes nothing), load the anchor's rules if a new
    /// table came into use, record the expiries. A refresh never shortens a grant.
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            o.rule.refuse_pinned_unless_plain(BACKEND)?;
            if TableKey::of(&o.rule).is_none() {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!(
                        "an IPv6 destination ({}): pf table names cannot hold it",
                        o.rule
                    ),
                });
            }
            if o.rule.nat.is_some() {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!("NAT ({})", o.rule),
                });
            }
            if o.rule.source.is_ipv6() && !self.ipv6 {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!("IPv6 with `ipv6 = false` ({})", o.rule),
                });
            }
            if self.max_grant_secs > 0 && o.timeout_secs > self.max_grant_secs {
                return Err(other(format!(
                    "{} asks for {} s, more than `max_grant_secs` = {}; raise it to allow longer grants",
                    o.rule, o.timeout_secs, self.max_grant_secs
                )));
            }
        }
        if openings.is_empty() {
            return Ok(());
        }
        if !self.ready {
            let now = self.clock.now();
            self.init(now)?;
        }
        let mut entries = self.entries.clone();
        let mut fresh: Vec<(TableKey, IpAddr)> = Vec::new();
        let mut readd: Vec<(TableKey, IpAddr)> = Vec::new();
        let mut adds: Vec<(TableKey, IpAddr)> = Vec::new();
        for (rule, expires_at, start) in dedup(openings) {
            let table = TableKey::of(&rule).expect("checked above");
            match entries.iter_mut().find(|e| e.is(&rule)) {
                Some(e) => {
                    e.expires_at = e.expires_at.max(expires_at);
                    // pf does not renew an entry's age when it is added again; to
                    // keep `-T expire max_grant_secs` from cutting a refreshed
                    // grant, re-add entries that would outlive that bound.
                    if self.max_grant_secs > 0
                        && e.expires_at - e.added_at > u64::from(self.max_grant_secs)
                    {
                        e.added_at = start;
                        readd.push((table, rule.source));
                    }
                }
                None => {
                    entries.push(Entry::new(&rule, expires_at, start));
                    fresh.push((table, rule.source));
                }
            }
            // Also for known entries: puts back one someone deleted by hand.
            adds.push((table, rule.source));
        }
        let mut undo = Vec::new();
        let result = (|| {
            for (table, addrs) in by_table(readd) {
                self.delete(table, &addrs)?;
            }
            let fresh = by_table(fresh);
            for (table, addrs) in by_table(adds) {
                self.add(table, &addrs)?;
                if let Some(new) = fresh.get(&table) {
                    undo.push(Undo::Delete(table, new.clone()));
                }
            }
            let (before, after) = (tables_of(&self.entries), tables_of(&entries));
            if before != after {
                self.load_rules(&after)?;
                undo.push(Undo::LoadRules(before));
            }
            self.save(&entries)
        })();
        match result {
            Ok(()) => {
                self.entries = entries;
                Ok(())
            }
            Err(e) => {
                self.undo(undo);
                Err(e)
            }
        }
    }

    /// Delete the addresses from their tables, recorded or not.
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let gone: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| rules.iter().any(|r| e.is(r)))
            .cloned()
            .collect();
        let unrecorded: Vec<Rule> = rules
            .iter()
            .filter(|r| r.nat.is_none() && !gone.iter().any(|e| e.is(r)))
            .cloned()
            .collect();
        self.remove(gone, &unrecorded).map(|_| ())
    }

    /// What the tables hold. An address the state file does not know (added by
    /// hand, or lost by a crash) is listed with `expires_at = 0`: it is owed a
    /// removal, which the next `init` does.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        self.anchor_listing().map(Some)
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let now = self.clock.now();
        let mut openings = Vec::new();
        for table in self.show_tables()? {
            for addr in self.show_table(table)? {
                let rule = table.rule(addr);
                openings.push(match self.entries.iter().find(|e| e.is(&rule)) {
                    Some(e) => e.opening(now),
                    None => Opening {
                        rule,
                        timeout_secs: 0,
                        expires_at: 0,
                    },
                });
            }
        }
        Ok(openings)
    }

    /// `pfctl -a ANCHOR -F all`: rules and tables of the anchor only. The anchor
    /// stays referenced from the main ruleset, so the next grant works.
    fn flush(&mut self) -> FwResult<()> {
        let anchor = self.anchor.clone();
        self.run(&["-a", &anchor, "-F", "all"], None)?;
        self.save(&[])?;
        self.entries.clear();
        Ok(())
    }

    /// Driven by the record: no pfctl command runs unless something expired.
    fn expire(&mut self, now: u64) -> FwResult<Vec<Rule>> {
        let gone: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.expires_at <= now)
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let removed = self.remove(gone, &[])?;
        for rule in &removed {
            tracing::info!(%rule, "pf: access expired");
        }
        Ok(removed)
    }

    /// pf has no per-entry timeout: `pfctl -T expire` is a one-shot command.
    fn expires_in_kernel(&self) -> bool {
        false
    }

    /// IPv4 destinations (`to DST`, fwknopd's use_destination); an IPv6 one
    /// is refused per grant. Pinned source ports (`from <t> port N`).
    fn supports(&self, feature: RuleFeature) -> bool {
        matches!(feature, RuleFeature::Destination | RuleFeature::SourcePort)
    }

    fn shutdown(&mut self) -> FwResult<()> {
        if self.flush_at_exit {
            self.flush()?;
        }
        self.ready = false;
        Ok(())
    }
}
