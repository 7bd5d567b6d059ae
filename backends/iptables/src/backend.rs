//! The iptables [`Firewall`]: one own chain per family, changed only through
//! `iptables-restore --noflush` batches (one kernel transaction each).

use crate::config::{ChainSpec, IptablesConfig};
use crate::rules::{parse_listing, rule_spec, ListedRule};
use postern_backend_script::{find_program, SystemRunner};
use spa_core::firewall::{CommandRunner, Firewall, FirewallError, FwResult, Opening, Rule};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKEND: &str = "iptables";

/// The command-line tools for one address family.
#[derive(Clone, Debug)]
struct Tools {
    iptables: String,
    restore: String,
}

pub struct IptablesBackend {
    input: ChainSpec,
    /// Index 0 is IPv4 (iptables); index 1, when enabled, IPv6 (ip6tables).
    families: Vec<Tools>,
    wait_secs: u32,
    flush_at_init: bool,
    flush_at_exit: bool,
    runner: Box<dyn CommandRunner>,
    clock: Box<dyn Fn() -> u64 + Send>,
    /// init() has run, so the chain and jump exist.
    ready: bool,
}

fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn other(message: String) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message,
    }
}

/// Name this backend in "program missing" errors from the shared runner.
fn own_missing(e: FirewallError) -> FirewallError {
    match e {
        FirewallError::Missing { what, .. } => FirewallError::Missing {
            backend: BACKEND,
            what,
            hint: "install iptables (Debian: `apt install iptables`) or set `iptables` to its full path".into(),
        },
        e => e,
    }
}

/// Restore-file lines for one family, and the lines that would undo them.
#[derive(Default, Debug)]
struct Plan {
    lines: Vec<String>,
    undo: Vec<String>,
}

impl IptablesBackend {
    /// Build with any runner (tests pass a recording fake, e2e tests one that
    /// runs inside a network namespace). Nothing is run until [`Firewall::init`].
    pub fn new(config: &IptablesConfig, runner: Box<dyn CommandRunner>) -> FwResult<Self> {
        if let Some(what) = config.unsupported_chain() {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: what.into(),
            });
        }
        config
            .input
            .validate()
            .map_err(|e| other(format!("input chain: {e}")))?;
        let mut families = vec![Tools {
            iptables: config.iptables.clone(),
            restore: config.iptables_restore(),
        }];
        if config.ipv6 {
            families.push(Tools {
                iptables: config.ip6tables(),
                restore: config.ip6tables_restore(),
            });
        }
        Ok(IptablesBackend {
            input: config.input.clone(),
            families,
            wait_secs: config.wait_secs,
            flush_at_init: config.flush_at_init,
            flush_at_exit: config.flush_at_exit,
            runner,
            clock: Box::new(system_now),
            ready: false,
        })
    }

    /// Build with the real process runner, after checking the tools are installed
    /// ([`FirewallError::Missing`] otherwise).
    pub fn system(config: &IptablesConfig) -> FwResult<Self> {
        let runner = SystemRunner {
            timeout: Duration::from_secs(config.command_timeout_secs),
        };
        let backend = IptablesBackend::new(config, Box::new(runner))?;
        for tools in &backend.families {
            for program in [&tools.iptables, &tools.restore] {
                if find_program(program).is_none() {
                    return Err(own_missing(FirewallError::Missing {
                        backend: BACKEND,
                        what: format!("the program `{program}`"),
                        hint: String::new(),
                    }));
                }
            }
        }
        Ok(backend)
    }

    /// Replace the clock used by `list()` to report remaining time (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The chain postern's rules live in.
    pub fn chain(&self) -> &str {
        &self.input.chain
    }

    fn family_of(&self, addr: IpAddr) -> FwResult<usize> {
        match addr {
            IpAddr::V4(_) => Ok(0),
            IpAddr::V6(_) if self.families.len() > 1 => Ok(1),
            IpAddr::V6(_) => Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: "IPv6 with `ipv6 = false`".into(),
            }),
        }
    }

    fn wait_args(&self) -> Vec<String> {
        match self.wait_secs {
            0 => Vec::new(),
            secs => vec!["-w".into(), secs.to_string()],
        }
    }

    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        self.runner.run(argv, stdin).map_err(own_missing)
    }

    /// `iptables -S CHAIN` for one family.
    fn list_raw(&mut self, family: usize, chain: &str) -> FwResult<String> {
        let mut argv = vec![self.families[family].iptables.clone()];
        argv.extend(self.wait_args());
        argv.extend(["-t", &self.input.table, "-S", chain].map(String::from));
        self.run(&argv, None)
    }

    /// The rules of our chain, or `None` if the chain does not exist.
    fn list_chain(&mut self, family: usize) -> FwResult<Option<Vec<ListedRule>>> {
        let chain = self.input.chain.clone();
        match self.list_raw(family, &chain) {
            Ok(out) => Ok(Some(parse_listing(&out, &chain))),
            Err(listing_error) => {
                // A missing chain is an error whose wording differs between the
                // legacy and nft variants; ask the whole table instead.
                let mut argv = vec![self.families[family].iptables.clone()];
                argv.extend(self.wait_args());
                argv.extend(["-t", &self.input.table, "-S"].map(String::from));
                let table = self.run(&argv, None)?;
                if table.lines().any(|l| l == format!("-N {chain}")) {
                    Err(listing_error)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Apply restore lines as one transaction.
    fn apply(&mut self, family: usize, lines: &[String]) -> FwResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut argv = vec![self.families[family].restore.clone()];
        argv.extend(self.wait_args());
        argv.push("--noflush".into());
        let input = format!("*{}\n{}\nCOMMIT\n", self.input.table, lines.join("\n"));
        self.run(&argv, Some(&input)).map(|_| ())
    }

    /// Chain, jump, and the removal of leftovers for one family.
    fn plan_init(&mut self, family: usize, now: u64) -> FwResult<Vec<String>> {
        let chain = self.input.chain.clone();
        let mut lines = Vec::new();
        match self.list_chain(family)? {
            None => lines.push(format!(":{chain} - [0:0]")),
            Some(listed) => {
                let stale = listed.iter().filter(|r| {
                    r.grant
                        .as_ref()
                        .is_some_and(|(_, exp)| self.flush_at_init || *exp <= now)
                });
                lines.extend(stale.map(|r| format!("-D {chain} {}", r.spec)));
            }
        }
        lines.extend(self.plan_jump(family)?);
        Ok(lines)
    }

    /// The jump from `from_chain` to our chain, if it is missing (a firewall
    /// reload may have flushed INPUT since we started).
    fn plan_jump(&mut self, family: usize) -> FwResult<Option<String>> {
        let ChainSpec {
            chain,
            from_chain,
            jump_position,
            ..
        } = self.input.clone();
        let from = parse_listing(&self.list_raw(family, &from_chain)?, &from_chain);
        let jump = format!("-j {chain}");
        if from.iter().any(|r| r.spec == jump) {
            return Ok(None);
        }
        let position = (jump_position as usize).min(from.len() + 1);
        Ok(Some(format!("-I {from_chain} {position} {jump}")))
    }

    /// Insert or refresh `wanted` (deduplicated, one family) against the listing.
    fn plan_grant(&self, listed: &[ListedRule], wanted: &[(Rule, u64)]) -> Plan {
        let ChainSpec {
            chain,
            target,
            rule_position,
            ..
        } = &self.input;
        let (mut deletes, mut inserts, mut old_specs) = (Vec::new(), Vec::new(), Vec::new());
        for (rule, expires_at) in wanted {
            let existing: Vec<(&str, u64)> = listed
                .iter()
                .filter_map(|r| {
                    r.grant
                        .as_ref()
                        .filter(|(g, _)| g == rule)
                        .map(|(_, exp)| (r.spec.as_str(), *exp))
                })
                .collect();
            let current = existing.iter().map(|(_, exp)| *exp).max();
            if existing.len() == 1 && current >= Some(*expires_at) {
                continue; // already open at least that long; a refresh never shortens
            }
            // Replace every copy (fwknopd could leave duplicates) by one rule.
            for (spec, _) in &existing {
                deletes.push(format!("-D {chain} {spec}"));
                old_specs.push(spec.to_string());
            }
            let expiry = current.unwrap_or(0).max(*expires_at);
            inserts.push(shell_words::join(rule_spec(rule, expiry, target)));
        }
        let remaining = listed.len() - deletes.len();
        let position = (*rule_position as usize).min(remaining + 1);
        let mut plan = Plan::default();
        plan.lines.extend(deletes);
        plan.lines.extend(
            inserts
                .iter()
                .map(|spec| format!("-I {chain} {position} {spec}")),
        );
        plan.undo
            .extend(inserts.iter().map(|spec| format!("-D {chain} {spec}")));
        plan.undo.extend(
            old_specs
                .iter()
                .map(|spec| format!("-I {chain} {position} {spec}")),
        );
        plan
    }

    /// Apply one family's grants; returns the lines that undo them.
    fn grant_family(&mut self, family: usize, wanted: &[(Rule, u64)]) -> FwResult<Vec<String>> {
        // Recreate the chain or the jump in the same transaction if someone
        // removed them since init, as fwknopd checks before each rule.
        let mut lines = Vec::new();
        let listed = match self.list_chain(family)? {
            Some(listed) => listed,
            None => {
                lines.push(format!(":{} - [0:0]", self.input.chain));
                Vec::new()
            }
        };
        lines.extend(self.plan_jump(family)?);
        let plan = self.plan_grant(&listed, wanted);
        lines.extend(plan.lines);
        self.apply(family, &lines)?;
        Ok(plan.undo)
    }

    /// Delete the listed grants `select` picks, in one transaction per family.
    fn delete_grants(&mut self, mut select: impl FnMut(&Rule, u64) -> bool) -> FwResult<Vec<Rule>> {
        let chain = self.input.chain.clone();
        let mut removed = Vec::new();
        for family in 0..self.families.len() {
            let Some(listed) = self.list_chain(family)? else {
                continue;
            };
            let mut lines = Vec::new();
            for r in &listed {
                if let Some((rule, exp)) = &r.grant {
                    if select(rule, *exp) {
                        lines.push(format!("-D {chain} {}", r.spec));
                        removed.push(rule.clone());
                    }
                }
            }
            self.apply(family, &lines)?;
        }
        Ok(removed)
    }

    /// Remove the jump, our rules and the chain (fwknopd's exit behaviour).
    fn remove_chain(&mut self, family: usize) -> FwResult<()> {
        let ChainSpec {
            chain, from_chain, ..
        } = self.input.clone();
        if self.list_chain(family)?.is_none() {
            return Ok(());
        }
        let from = parse_listing(&self.list_raw(family, &from_chain)?, &from_chain);
        let jump = format!("-j {chain}");
        let mut lines: Vec<String> = from
            .iter()
            .filter(|r| r.spec == jump)
            .map(|_| format!("-D {from_chain} {jump}"))
            .collect();
        lines.push(format!("-F {chain}"));
        lines.push(format!("-X {chain}"));
        self.apply(family, &lines)
    }
}

/// Merge repeated rules of one batch, keeping the latest expiry, in first-seen order.
fn dedup(openings: &[&Opening]) -> Vec<(Rule, u64)> {
    let mut merged: Vec<(Rule, u64)> = Vec::new();
    for o in openings {
        match merged.iter_mut().find(|(r, _)| *r == o.rule) {
            Some((_, exp)) => *exp = (*exp).max(o.expires_at),
            None => merged.push((o.rule.clone(), o.expires_at)),
        }
    }
    merged
}

impl Firewall for IptablesBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Create the chain and the jump if missing, and delete grants that expired by
    /// `now` (all grants with `flush_at_init`); live ones stay. One transaction
    /// per family; running it again changes nothing.
    fn init(&mut self, now: u64) -> FwResult<()> {
        for family in 0..self.families.len() {
            let lines = self.plan_init(family, now)?;
            self.apply(family, &lines)?;
            let removed = lines.iter().filter(|l| l.starts_with("-D ")).count();
            if removed > 0 {
                tracing::info!(chain = %self.input.chain, removed, "iptables: removed leftover rules at start");
            }
        }
        self.ready = true;
        Ok(())
    }

    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        let mut by_family: Vec<Vec<&Opening>> = vec![Vec::new(); self.families.len()];
        for o in openings {
            if o.rule.nat.is_some() {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!("NAT ({})", o.rule),
                });
            }
            by_family[self.family_of(o.rule.source)?].push(o);
        }
        if !self.ready {
            let now = (self.clock)();
            self.init(now)?;
        }
        let mut applied: Vec<(usize, Vec<String>)> = Vec::new();
        for (family, openings) in by_family.iter().enumerate().filter(|(_, o)| !o.is_empty()) {
            match self.grant_family(family, &dedup(openings)) {
                Ok(undo) => applied.push((family, undo)),
                Err(e) => {
                    // Nothing of the batch may stay: undo the families already done.
                    for (family, undo) in applied.iter().rev() {
                        if let Err(undo_error) = self.apply(*family, undo) {
                            tracing::error!(error = %undo_error, "iptables: could not roll back a partial grant");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        self.delete_grants(|rule, _| rules.contains(rule))
            .map(|_| ())
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let now = (self.clock)();
        let mut openings = Vec::new();
        for family in 0..self.families.len() {
            if let Some(listed) = self.list_chain(family)? {
                openings.extend(listed.iter().filter_map(|r| r.opening(now)));
            }
        }
        Ok(openings)
    }

    /// Delete every grant; the chain, the jump and foreign rules stay.
    fn flush(&mut self) -> FwResult<()> {
        self.delete_grants(|_, _| true).map(|_| ())
    }

    /// One listing and one transaction per family.
    fn expire(&mut self, now: u64) -> FwResult<Vec<Rule>> {
        let removed = self.delete_grants(|_, expires_at| expires_at <= now)?;
        for rule in &removed {
            tracing::info!(%rule, "iptables: access expired");
        }
        Ok(removed)
    }

    fn expires_in_kernel(&self) -> bool {
        false
    }

    /// With `flush_at_exit` (default): remove the jump, the rules and the chain; if
    /// that fails (e.g. another rule still references the chain), at least delete
    /// the grants.
    fn shutdown(&mut self) -> FwResult<()> {
        if !self.flush_at_exit {
            return Ok(());
        }
        self.ready = false;
        let mut first_error = None;
        for family in 0..self.families.len() {
            if let Err(e) = self.remove_chain(family) {
                tracing::warn!(error = %e, "iptables: could not remove the chain at exit; deleting the grants only");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => self.flush().and(Err(e)),
        }
    }
}
