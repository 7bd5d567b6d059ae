//! The ipfw [`Firewall`]: one numbered rule per grant in postern's own number
//! range and set, the expiry in the rule's comment; expired rules wait in a
//! disabled set until their sessions end, as fwknopd does.

use crate::config::IpfwConfig;
use crate::rules::{add_args, parse_dynamic, parse_list, Kind, Listed};
use postern_backend_common::{missing_for, require_program, SystemRunner};
use spa_core::clock::{Clock, SystemClock};
use spa_core::firewall::{
    CommandRunner, Firewall, FirewallError, FwResult, Opening, Rule, RuleFeature,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const BACKEND: &str = "ipfw";

fn other(message: impl Into<String>) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message: message.into(),
    }
}

fn missing_hint() -> String {
    if cfg!(any(target_os = "freebsd", target_os = "dragonfly")) {
        "ipfw is part of the base system: load it with `kldload ipfw` (or `firewall_enable=\"YES\"` in rc.conf) and set `ipfw` to its full path (usually /sbin/ipfw)".into()
    } else {
        format!(
            "ipfw exists on FreeBSD (macOS dropped it in 10.10), not on {}; use another backend here",
            std::env::consts::OS
        )
    }
}

fn own_missing(e: FirewallError) -> FirewallError {
    missing_for(e, BACKEND, missing_hint)
}

/// What [`IpfwBackend::remove`] did.
#[derive(Default, Debug)]
struct Retired {
    /// Numbers moved to the expire set.
    moved: Vec<u32>,
}

pub struct IpfwBackend {
    cfg: IpfwConfig,
    runner: Box<dyn CommandRunner>,
    clock: Arc<dyn Clock>,
    /// init() has run.
    ready: bool,
    /// Earliest expiry among live grants, as far as this instance knows; `None`
    /// means unknown (the next `expire` lists).
    next_check: Option<u64>,
    /// The expire set holds rules that may need purging.
    purge_pending: bool,
    last_purge: u64,
}

/// Merge repeated rules of one batch, keeping the latest expiry, in first-seen order.
fn dedup(openings: &[Opening]) -> Vec<(Rule, u64)> {
    let mut merged: Vec<(Rule, u64)> = Vec::new();
    for o in openings {
        match merged.iter_mut().find(|(r, _)| *r == o.rule) {
            Some((_, exp)) => *exp = (*exp).max(o.expires_at),
            None => merged.push((o.rule.clone(), o.expires_at)),
        }
    }
    merged
}

fn numbers_text(nums: &[u32]) -> Vec<String> {
    nums.iter().map(u32::to_string).collect()
}

impl IpfwBackend {
    /// Build with any runner (tests pass a recording fake). Nothing runs until
    /// [`Firewall::init`] (or the first grant).
    pub fn new(config: &IpfwConfig, runner: Box<dyn CommandRunner>) -> FwResult<Self> {
        config.validate().map_err(other)?;
        Ok(IpfwBackend {
            cfg: config.clone(),
            runner,
            clock: Arc::new(SystemClock),
            ready: false,
            next_check: None,
            purge_pending: false,
            last_purge: 0,
        })
    }

    /// Build with the real process runner, after checking ipfw is installed
    /// ([`FirewallError::Missing`] otherwise).
    pub fn system(config: &IpfwConfig) -> FwResult<Self> {
        require_program(&config.ipfw, BACKEND, missing_hint)?;
        let runner = SystemRunner {
            timeout: Duration::from_secs(config.command_timeout_secs),
        };
        IpfwBackend::new(config, Box::new(runner))
    }

    /// Read the time (unix seconds) from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn run(&mut self, args: Vec<String>) -> FwResult<String> {
        let mut argv = vec![self.cfg.ipfw.clone()];
        argv.extend(args);
        self.runner.run(&argv, None).map_err(own_missing)
    }

    fn run_words(&mut self, words: &[&str], tail: Vec<String>) -> FwResult<String> {
        let mut args: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        args.extend(tail);
        self.run(args)
    }

    /// `ipfw -S list`, kept to postern's number range (all sets, disabled ones too).
    fn listing(&mut self) -> FwResult<Vec<Listed>> {
        let out = self.run_words(&["-S", "list"], Vec::new())?;
        let range = self.cfg.range();
        Ok(parse_list(&out)
            .into_iter()
            .filter(|l| range.contains(&l.num))
            .collect())
    }

    fn active(&self, l: &Listed) -> bool {
        l.set == Some(self.cfg.active_set)
    }

    fn in_expire_set(&self, l: &Listed) -> bool {
        self.cfg.expire_set != 0 && l.set == Some(self.cfg.expire_set)
    }

    /// The lowest number of our range no rule uses (in any set).
    fn allocate(&self, used: &mut BTreeSet<u32>) -> FwResult<u32> {
        let first = self.cfg.start_rule_num + u32::from(self.cfg.add_check_state);
        let num = (first..=*self.cfg.range().end())
            .find(|n| !used.contains(n))
            .ok_or_else(|| {
                other(format!(
                    "all {} rule numbers from {} are in use (IPFW_MAX_RULES); the grant is refused until others expire",
                    self.cfg.max_rules, self.cfg.start_rule_num
                ))
            })?;
        used.insert(num);
        Ok(num)
    }

    fn add(&mut self, num: u32, rule: &Rule, expires_at: u64) -> FwResult<()> {
        let args = add_args(num, self.cfg.active_set, rule, expires_at);
        self.run(args).map(|_| ())
    }

    /// `ipfw set S delete N…`: only rules of set S with those numbers.
    fn delete_in_set(&mut self, set: u8, nums: &[u32]) -> FwResult<()> {
        if nums.is_empty() {
            return Ok(());
        }
        self.run_words(&["set", &set.to_string(), "delete"], numbers_text(nums))
            .map(|_| ())
    }

    fn rollback_adds(&mut self, nums: &[u32]) {
        if let Err(e) = self.delete_in_set(self.cfg.active_set, nums) {
            tracing::error!(error = %e, "ipfw: could not roll back a partial grant");
        }
    }

    /// Add rules; on failure, delete the ones this call added.
    fn add_all(&mut self, adds: &[(u32, Rule, u64)]) -> FwResult<Vec<u32>> {
        let mut done = Vec::new();
        for (num, rule, exp) in adds {
            if let Err(e) = self.add(*num, rule, *exp) {
                self.rollback_adds(&done);
                return Err(e);
            }
            done.push(*num);
        }
        Ok(done)
    }

    /// Retire the listed rules at `targets` (indices into `listing`).
    ///
    /// With `keep_sessions` and an expire set, a number holding only grants of
    /// the active set is moved to the (disabled) expire set, so connections it let
    /// in keep their dynamic rules until the purge; otherwise it is deleted from
    /// its set. Grants sharing a number with a target in the same set (fwknopd
    /// puts all ports of one request under one number) are re-added under new
    /// numbers first, so retiring one port does not close the others.
    fn remove(
        &mut self,
        listing: &[Listed],
        targets: &BTreeSet<usize>,
        keep_sessions: bool,
        used: &mut BTreeSet<u32>,
    ) -> FwResult<Retired> {
        let mut groups: BTreeMap<(u8, u32), Vec<usize>> = BTreeMap::new();
        for &i in targets {
            if let Some(set) = listing[i].set {
                groups.entry((set, listing[i].num)).or_default().push(i);
            }
        }
        let mut readds = Vec::new();
        let mut moves = Vec::new();
        let mut deletes: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
        for ((set, num), idxs) in &groups {
            for (i, l) in listing.iter().enumerate() {
                if l.num != *num || l.set != Some(*set) || targets.contains(&i) {
                    continue;
                }
                match &l.kind {
                    Kind::Grant(rule, exp) => readds.push((self.allocate(used)?, rule.clone(), *exp)),
                    Kind::CheckState | Kind::Other(_) => {
                        return Err(other(format!(
                            "rule {num} in set {set} also holds a rule postern did not write; remove it by hand (`ipfw set {set} delete {num}`)"
                        )))
                    }
                }
            }
            let shared = listing.iter().any(|l| l.num == *num && l.set != Some(*set));
            let only_grants = idxs.iter().all(|&i| listing[i].grant().is_some());
            if keep_sessions
                && self.cfg.expire_set != 0
                && *set == self.cfg.active_set
                && only_grants
                && !shared
            {
                moves.push(*num);
            } else {
                deletes.entry(*set).or_default().push(*num);
            }
        }
        self.add_all(&readds)?;
        let expire_set = self.cfg.expire_set.to_string();
        for num in &moves {
            self.run_words(
                &["set", "move", "rule", &num.to_string(), "to", &expire_set],
                Vec::new(),
            )?;
        }
        for (set, nums) in deletes {
            self.delete_in_set(set, &nums)?;
        }
        if !moves.is_empty() {
            self.purge_pending = true;
        }
        Ok(Retired { moved: moves })
    }

    /// Delete rules of the expire set that no longer have dynamic rules
    /// (fwknopd's IPFW_EXPIRE_PURGE_INTERVAL pass). `numbers`: ours in that set.
    fn purge(&mut self, now: u64, numbers: BTreeSet<u32>) -> FwResult<()> {
        self.last_purge = now;
        if self.cfg.expire_set == 0 || numbers.is_empty() {
            self.purge_pending = false;
            return Ok(());
        }
        let expire_set = self.cfg.expire_set;
        let out = self.run_words(&["-d", "set", &expire_set.to_string(), "list"], Vec::new())?;
        let dynamic = parse_dynamic(&out);
        let stale: Vec<u32> = numbers
            .iter()
            .filter(|n| !dynamic.contains(n))
            .copied()
            .collect();
        self.delete_in_set(expire_set, &stale)?;
        self.purge_pending = numbers.iter().any(|n| dynamic.contains(n));
        if !stale.is_empty() {
            tracing::debug!(
                count = stale.len(),
                set = expire_set,
                "ipfw: purged expired rules without sessions"
            );
        }
        Ok(())
    }

    fn expire_set_numbers(&self, listing: &[Listed], moved: &[u32]) -> BTreeSet<u32> {
        listing
            .iter()
            .filter(|l| self.in_expire_set(l))
            .map(|l| l.num)
            .chain(moved.iter().copied())
            .collect()
    }

    /// Earliest expiry among the active grants of `listing` not in `gone`.
    fn earliest(&self, listing: &[Listed], gone: &BTreeSet<usize>) -> u64 {
        listing
            .iter()
            .enumerate()
            .filter(|(i, l)| self.active(l) && !gone.contains(i))
            .filter_map(|(_, l)| l.grant().map(|(_, exp)| exp))
            .min()
            .unwrap_or(u64::MAX)
    }
}

impl Firewall for IpfwBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Disable the expire set, then reconcile postern's range in the active set:
    /// rules postern cannot account for are deleted, expired grants are moved to
    /// the expire set (all grants deleted with `flush_at_init`), live ones stay;
    /// add the check-state rule if configured; purge the expire set. Running it
    /// again changes nothing.
    fn init(&mut self, now: u64) -> FwResult<()> {
        let listing = self.listing()?;
        if self.cfg.expire_set != 0 {
            let set = self.cfg.expire_set.to_string();
            self.run_words(&["set", "disable", &set], Vec::new())?;
        }
        let mut used: BTreeSet<u32> = listing.iter().map(|l| l.num).collect();
        let start = self.cfg.start_rule_num;
        let mut targets = BTreeSet::new();
        let mut relocate = Vec::new();
        for (i, l) in listing.iter().enumerate().filter(|(_, l)| self.active(l)) {
            let retire = match &l.kind {
                Kind::CheckState => !(self.cfg.add_check_state && l.num == start),
                Kind::Other(text) => {
                    tracing::warn!(num = l.num, rule = %text, "ipfw: deleting a rule in postern's range it did not write");
                    true
                }
                Kind::Grant(_, _) if self.cfg.flush_at_init => true,
                Kind::Grant(rule, exp) => {
                    let at_check_state = self.cfg.add_check_state && l.num == start;
                    if at_check_state && *exp > now {
                        relocate.push((rule.clone(), *exp));
                    }
                    *exp <= now || at_check_state
                }
            };
            if retire {
                targets.insert(i);
            }
        }
        let mut adds = Vec::new();
        for (rule, exp) in relocate {
            adds.push((self.allocate(&mut used)?, rule, exp));
        }
        self.add_all(&adds)?;
        let retired = self.remove(&listing, &targets, !self.cfg.flush_at_init, &mut used)?;
        if self.cfg.add_check_state
            && !listing
                .iter()
                .any(|l| l.num == start && self.active(l) && l.kind == Kind::CheckState)
        {
            let args = vec![
                "add".into(),
                start.to_string(),
                "set".into(),
                self.cfg.active_set.to_string(),
                "check-state".into(),
            ];
            self.run(args)?;
        }
        let expire_numbers = self.expire_set_numbers(&listing, &retired.moved);
        self.purge(now, expire_numbers)?;
        let live = self.earliest(&listing, &targets);
        let relocated = adds
            .iter()
            .map(|(_, _, exp)| *exp)
            .min()
            .unwrap_or(u64::MAX);
        self.next_check = Some(live.min(relocated));
        if !targets.is_empty() {
            tracing::info!(
                retired = targets.len(),
                "ipfw: reconciled leftover rules at start"
            );
        }
        self.ready = true;
        Ok(())
    }

    /// One `ipfw add` per new grant, numbered from the free part of the range.
    /// A repeat with an expiry not later than the rule's is a no-op; a refresh
    /// adds the rule with the later expiry first, then retires the old one (to
    /// the expire set, so its sessions live on): never two live copies, never a
    /// gap. A failure deletes what this batch added.
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            // Pinned grants are plain ones, as on every backend.
            o.rule.refuse_pinned_unless_plain(BACKEND)?;
            if o.rule
                .destination
                .is_some_and(|d| d.is_ipv4() != o.rule.source.is_ipv4())
            {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!(
                        "{}: source and destination of different address families",
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
            if o.rule.source.is_ipv6() && !self.cfg.ipv6 {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!("IPv6 with `ipv6 = false` ({})", o.rule),
                });
            }
        }
        if openings.is_empty() {
            return Ok(());
        }
        if !self.ready {
            let now = self.clock.now();
            self.init(now)?;
        }
        let listing = self.listing()?;
        let mut used: BTreeSet<u32> = listing.iter().map(|l| l.num).collect();
        let mut adds = Vec::new();
        let mut old = BTreeSet::new();
        for (rule, expires_at) in dedup(openings) {
            let existing: Vec<(usize, u64)> = listing
                .iter()
                .enumerate()
                .filter(|(_, l)| self.active(l))
                .filter_map(|(i, l)| {
                    l.grant()
                        .filter(|(r, _)| **r == rule)
                        .map(|(_, exp)| (i, exp))
                })
                .collect();
            let current = existing.iter().map(|(_, exp)| *exp).max();
            if existing.len() == 1 && current >= Some(expires_at) {
                continue; // already open at least that long; a refresh never shortens
            }
            let num = self.allocate(&mut used)?;
            adds.push((num, rule, current.unwrap_or(0).max(expires_at)));
            old.extend(existing.iter().map(|(i, _)| *i));
        }
        let added = self.add_all(&adds)?;
        if !old.is_empty() {
            if let Err(e) = self.remove(&listing, &old, true, &mut used) {
                self.rollback_adds(&added);
                return Err(e);
            }
        }
        if let Some(earliest) = adds.iter().map(|(_, _, exp)| *exp).min() {
            self.next_check = self.next_check.map(|t| t.min(earliest));
        }
        Ok(())
    }

    /// Retire the matching grants like an expiry (sessions they let in live on).
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let listing = self.listing()?;
        let targets: BTreeSet<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, l)| self.active(l) && l.grant().is_some_and(|(r, _)| rules.contains(r)))
            .map(|(i, _)| i)
            .collect();
        let mut used = listing.iter().map(|l| l.num).collect();
        self.remove(&listing, &targets, true, &mut used).map(|_| ())
    }

    /// The grants in the active set (retired ones in the expire set let no new
    /// connection in and are not listed).
    /// `ipfw -d -S -T set N list` of the active set, as fwknopd lists its rules.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        let set = self.cfg.active_set.to_string();
        self.run_words(&["-d", "-S", "-T", "set", &set, "list"], Vec::new())
            .map(Some)
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let now = self.clock.now();
        let listing = self.listing()?;
        Ok(listing
            .iter()
            .filter(|l| self.active(l))
            .filter_map(|l| l.opening(now))
            .collect())
    }

    /// Delete every grant in the active and expire sets (their sessions end
    /// too); the check-state rule stays.
    fn flush(&mut self) -> FwResult<()> {
        let listing = self.listing()?;
        let targets: BTreeSet<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, l)| (self.active(l) || self.in_expire_set(l)) && l.grant().is_some())
            .map(|(i, _)| i)
            .collect();
        let mut used = listing.iter().map(|l| l.num).collect();
        self.remove(&listing, &targets, false, &mut used)?;
        self.next_check = Some(u64::MAX);
        self.purge_pending = false;
        Ok(())
    }

    /// Move grants that expired by `now` to the expire set and, every
    /// `expire_purge_interval_secs`, purge that set. Lists the rules only when a
    /// known expiry is due or a purge is.
    fn expire(&mut self, now: u64) -> FwResult<Vec<Rule>> {
        let purge_due = self.cfg.expire_set != 0
            && self.purge_pending
            && now
                >= self
                    .last_purge
                    .saturating_add(u64::from(self.cfg.expire_purge_interval_secs));
        if self.next_check.is_some_and(|t| now < t) && !purge_due {
            return Ok(Vec::new());
        }
        let listing = self.listing()?;
        let targets: BTreeSet<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, l)| self.active(l) && l.grant().is_some_and(|(_, exp)| exp <= now))
            .map(|(i, _)| i)
            .collect();
        let mut used = listing.iter().map(|l| l.num).collect();
        let retired = self.remove(&listing, &targets, true, &mut used)?;
        self.next_check = Some(self.earliest(&listing, &targets));
        if purge_due {
            let numbers = self.expire_set_numbers(&listing, &retired.moved);
            self.purge(now, numbers)?;
        }
        let removed: Vec<Rule> = targets
            .iter()
            .filter_map(|&i| listing[i].grant().map(|(r, _)| r.clone()))
            .collect();
        for rule in &removed {
            tracing::info!(%rule, "ipfw: access expired");
        }
        Ok(removed)
    }

    fn expires_in_kernel(&self) -> bool {
        false
    }

    /// `to DST` instead of `to me` (fwknopd's use_destination); `from SRC
    /// SPORT` for a pinned grant.
    fn supports(&self, feature: RuleFeature) -> bool {
        matches!(feature, RuleFeature::Destination | RuleFeature::SourcePort)
    }

    /// With `flush_at_exit` (default, fwknopd's FLUSH_IPFW_AT_EXIT): delete
    /// postern's rules in the active set, check-state included. The expire set
    /// is kept, as fwknopd keeps it; the next start purges it.
    fn shutdown(&mut self) -> FwResult<()> {
        self.ready = false;
        if !self.cfg.flush_at_exit {
            return Ok(());
        }
        let listing = self.listing()?;
        let targets: BTreeSet<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, l)| self.active(l))
            .map(|(i, _)| i)
            .collect();
        let mut used = listing.iter().map(|l| l.num).collect();
        self.remove(&listing, &targets, false, &mut used)
            .map(|_| ())
    }
}
