//! The iptables [`Firewall`]: postern's own chains per family, changed only through
//! `iptables-restore --noflush` batches (one kernel transaction per table), fed
//! to one long-lived `iptables-restore` per family ([`RestoreSession`]).
//!
//! The fast path: with the nf_tables variant, the backend remembers what it
//! listed and wrote in each chain and the ruleset generation that picture is
//! valid for (every committed nf_tables transaction, anyone's, adds one). A
//! grant while the generation is unchanged plans from that picture and costs one
//! transaction and no listing; after any change by someone else (fwknopd, an
//! admin, a firewall reload) it lists the chains and jumps again first, as every
//! grant does with the legacy variant.

use crate::chains::{configured_chains, roles_for, Role};
use crate::config::{ChainSpec, IptablesConfig};
use crate::plan::{plan_chain, ChainRules, Plan};
use crate::rules::{parse_listing, ListedRule};
use crate::session::RestoreSession;
use postern_backend_common::{find_program, missing_for, require_program, SystemRunner};
use postern_backend_nftables::netlink::NfSocket;
use spa_core::clock::{Clock, SystemClock};
use spa_core::firewall::{
    Block, CommandRunner, Firewall, FirewallError, FwResult, Opening, Rule, RuleFeature, Snat,
};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const BACKEND: &str = "iptables";

/// Chains iptables always has; one of these missing is an error, not something
/// to create (unlike `DOCKER-USER` before Docker started).
const BUILTIN_CHAINS: &[&str] = &["INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"];

/// The command-line tools for one address family.
#[derive(Clone, Debug)]
struct Tools {
    iptables: String,
    restore: String,
}

pub struct IptablesBackend {
    /// The managed chains, filter table first (see [`Role::ALL`]).
    chains: Vec<(Role, ChainSpec)>,
    /// Index 0 is IPv4 (iptables); index 1, when enabled, IPv6 (ip6tables).
    families: Vec<Tools>,
    wait_secs: u32,
    pub(crate) flush_at_init: bool,
    flush_at_exit: bool,
    /// ENABLE_RULE_PREPEND (see [`crate::IptablesConfig::prepend`]).
    prepend: Option<bool>,
    runner: Box<dyn CommandRunner>,
    clock: Arc<dyn Clock>,
    /// init() has run, so the chains and jumps exist.
    ready: bool,
    /// Blocked sources ([`crate::block`]), when enabled.
    pub(crate) blocking: crate::block::Blocking,
    /// Per family, the running `iptables-restore`, started at the first change.
    sessions: Vec<Option<RestoreSession>>,
    /// The runner cannot start long-lived children: one restore per change.
    one_shot: bool,
    command_timeout: Duration,
    /// The chains as last listed or written, and when that was true.
    picture: Picture,
    /// How the ruleset generation is read: `None` (legacy variant, fake
    /// runners) lists before every grant.
    generation: Option<Generation>,
}

/// What the managed chains held after the backend's last listing or change.
#[derive(Default)]
struct Picture {
    /// By family and role: the rules of chains whose chain and jump were seen.
    chains: HashMap<(usize, Role), ChainRules>,
    /// The nf_tables generation the picture is true at; `None`: unknown.
    generation: Option<u32>,
}

/// Reads the nf_tables ruleset generation of the backend's network namespace.
struct Generation {
    /// Where to open the socket (`None`: this process's namespace); opened lazily.
    netns: Option<PathBuf>,
    socket: Option<NfSocket>,
}

impl Generation {
    /// `None` when it cannot be read: the caller then lists, as without it.
    fn read(&mut self) -> Option<u32> {
        if self.socket.is_none() {
            let opened = match &self.netns {
                Some(path) => NfSocket::open_in_netns(path),
                None => NfSocket::open(),
            };
            match opened {
                Ok(socket) => self.socket = Some(socket),
                Err(e) => {
                    tracing::debug!("iptables: cannot read the nf_tables generation: {e}");
                    return None;
                }
            }
        }
        let read = self.socket.as_mut()?.generation();
        if let Err(e) = &read {
            tracing::debug!("iptables: cannot read the nf_tables generation: {e}");
            self.socket = None;
        }
        read.ok()
    }
}

/// Whether `program` is iptables' nf_tables variant (`iptables-nft`, or a name
/// resolving to `xtables-nft-multi`, as Debian's alternatives do); only then
/// does the nf_tables generation see every change to its rules.
fn is_nft_variant(program: &str) -> bool {
    let resolved = find_program(program).and_then(|p| std::fs::canonicalize(p).ok());
    let names = [Some(PathBuf::from(program)), resolved];
    names.iter().flatten().any(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("-nft"))
    })
}

fn other(message: String) -> FirewallError {
    FirewallError::Other {
        backend: BACKEND,
        message,
    }
}

fn unsupported(what: String) -> FirewallError {
    FirewallError::Unsupported {
        backend: BACKEND,
        what,
    }
}

fn missing_hint() -> String {
    "install iptables (Debian: `apt install iptables`) or set `iptables` to its full path".into()
}

/// Name this backend in "program missing" errors from the shared runner.
fn own_missing(e: FirewallError) -> FirewallError {
    missing_for(e, BACKEND, missing_hint)
}

impl IptablesBackend {
    /// Build with any runner (tests pass a recording fake, e2e tests one that
    /// runs inside a network namespace). Nothing is run until [`Firewall::init`].
    pub fn new(config: &IptablesConfig, runner: Box<dyn CommandRunner>) -> FwResult<Self> {
        let chains = configured_chains(config).map_err(other)?;
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
            chains,
            families,
            wait_secs: config.wait_secs,
            flush_at_init: config.flush_at_init,
            flush_at_exit: config.flush_at_exit,
            prepend: config.prepend,
            runner,
            clock: Arc::new(SystemClock),
            ready: false,
            blocking: Default::default(),
            sessions: Vec::new(),
            one_shot: false,
            command_timeout: Duration::from_secs(config.command_timeout_secs),
            picture: Picture::default(),
            generation: None,
        })
    }

    /// Take the fast path (see the module docs) when the tools are the nf_tables
    /// variant, reading the generation of the namespace at `netns` (`None`: this
    /// process's). The runner must run the tools in that same namespace.
    pub fn track_generation(mut self, netns: Option<PathBuf>) -> Self {
        let nft = self.families.iter().all(|t| is_nft_variant(&t.restore));
        self.generation = nft.then_some(Generation {
            netns,
            socket: None,
        });
        self
    }

    /// Whether grants can skip listing (see [`Self::track_generation`]).
    pub fn tracks_generation(&self) -> bool {
        self.generation.is_some()
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
                require_program(program, BACKEND, missing_hint)?;
            }
        }
        Ok(backend.track_generation(None))
    }

    /// Read the time (unix seconds) from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The chain plain grants live in.
    pub fn chain(&self) -> &str {
        &self.chains[0].1.chain
    }

    /// The spec of that chain.
    pub(crate) fn input_spec(&self) -> &ChainSpec {
        &self.chains[0].1
    }

    /// 1 (IPv4), or 2 with IPv6.
    pub(crate) fn family_count(&self) -> usize {
        self.families.len()
    }

    /// The chains managed, with what each is for.
    pub fn chains(&self) -> impl Iterator<Item = (Role, &ChainSpec)> {
        self.chains.iter().map(|(role, spec)| (*role, spec))
    }

    fn spec(&self, role: Role) -> Option<&ChainSpec> {
        self.chains.iter().find(|(r, _)| *r == role).map(|(_, s)| s)
    }

    fn docker(&self) -> bool {
        self.spec(Role::Docker).is_some()
    }

    /// The tables holding managed chains, in chain order (`filter` before `nat`).
    fn tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = Vec::new();
        for (_, spec) in &self.chains {
            if !tables.contains(&spec.table) {
                tables.push(spec.table.clone());
            }
        }
        tables
    }

    /// The managed chains of one table.
    fn chains_in(&self, table: &str) -> Vec<(Role, ChainSpec)> {
        self.chains
            .iter()
            .filter(|(_, s)| s.table == table)
            .cloned()
            .collect()
    }

    fn family_of(&self, addr: IpAddr) -> FwResult<usize> {
        match addr {
            IpAddr::V4(_) => Ok(0),
            IpAddr::V6(_) if self.families.len() > 1 => Ok(1),
            IpAddr::V6(_) => Err(unsupported("IPv6 with `ipv6 = false`".into())),
        }
    }

    /// Refuse a grant this configuration cannot make, before anything runs.
    fn check(&self, rule: &Rule) -> FwResult<usize> {
        let family = self.family_of(rule.source)?;
        rule.refuse_pinned_unless_plain(BACKEND)?;
        if self.docker() {
            // DOCKER-USER sees packets after Docker's DNAT: their destination
            // is no longer the address the client knocked at.
            rule.refuse(BACKEND, &[RuleFeature::Destination])?;
        }
        if let Some(dst) = rule.destination {
            if dst.is_ipv4() != rule.source.is_ipv4() {
                return Err(unsupported(format!(
                    "{rule}: source and destination of different address families"
                )));
            }
        }
        let Some(nat) = &rule.nat else {
            return Ok(family);
        };
        let snat_addr = match (&nat.snat, nat.local) {
            (Some(Snat::To(addr)), false) => Some(*addr),
            _ => None,
        };
        for addr in [Some(nat.to_addr), snat_addr].into_iter().flatten() {
            if addr.is_ipv4() != rule.source.is_ipv4() {
                return Err(unsupported(format!(
                    "NAT between IPv4 and IPv6 ({rule}: {addr})"
                )));
            }
        }
        for role in roles_for(rule, &[]) {
            if self.spec(role).is_none() {
                return Err(unsupported(format!(
                    "{rule} without the {role} chain ({}): set `{role} = \"{}\"` or `nat = true`",
                    role.fwknopd_name(),
                    role.default_spec()
                )));
            }
        }
        Ok(family)
    }

    fn wait_args(&self) -> Vec<String> {
        match self.wait_secs {
            0 => Vec::new(),
            secs => vec!["-w".into(), secs.to_string()],
        }
    }

    pub(crate) fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        self.runner.run(argv, stdin).map_err(own_missing)
    }

    /// `iptables -t TABLE -S [CHAIN]` for one family.
    fn list_raw(&mut self, family: usize, table: &str, chain: Option<&str>) -> FwResult<String> {
        let mut argv = vec![self.families[family].iptables.clone()];
        argv.extend(self.wait_args());
        argv.extend(["-t", table, "-S"].map(String::from));
        argv.extend(chain.map(String::from));
        self.run(&argv, None)
    }

    /// The rules of a chain, or `None` if the chain does not exist.
    pub(crate) fn list_chain(
        &mut self,
        family: usize,
        table: &str,
        chain: &str,
    ) -> FwResult<Option<Vec<ListedRule>>> {
        match self.list_raw(family, table, Some(chain)) {
            Ok(out) => Ok(Some(parse_listing(&out, chain))),
            Err(listing_error) => {
                // A missing chain is an error whose wording differs between the
                // legacy and nft variants; ask the whole table instead.
                let all = self.list_raw(family, table, None)?;
                if all.lines().any(|l| l == format!("-N {chain}"))
                    || BUILTIN_CHAINS.contains(&chain)
                {
                    Err(listing_error)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Apply restore lines for one table as one transaction.
    pub(crate) fn apply(&mut self, family: usize, table: &str, lines: &[String]) -> FwResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut argv = vec![self.families[family].restore.clone()];
        argv.extend(self.wait_args());
        argv.push("--noflush".into());
        let input = format!("*{table}\n{}\nCOMMIT\n", lines.join("\n"));
        if let Some(session) = self.session(family, &argv)? {
            let applied = session.apply(&input);
            if applied.is_err() {
                self.sessions[family] = None; // it exited; the next change starts another
            }
            return applied;
        }
        self.run(&argv, Some(&input)).map(|_| ())
    }

    /// The family's long-lived restore (`argv` plus `-v` for its acknowledgements),
    /// started if need be; `None` if the runner cannot keep one.
    fn session(&mut self, family: usize, argv: &[String]) -> FwResult<Option<&mut RestoreSession>> {
        if self.one_shot {
            return Ok(None);
        }
        if self.sessions.len() < self.families.len() {
            self.sessions.resize_with(self.families.len(), || None);
        }
        if self.sessions[family].is_none() {
            let mut argv = argv.to_vec();
            argv.push("-v".into());
            let child = match self.runner.spawn(&argv) {
                None => {
                    self.one_shot = true;
                    return Ok(None);
                }
                Some(child) => child.map_err(own_missing)?,
            };
            let session = RestoreSession::new(child, argv.join(" "), self.command_timeout)?;
            self.sessions[family] = Some(session);
        }
        Ok(self.sessions[family].as_mut())
    }

    /// The ruleset generation now, if it is tracked.
    fn generation_now(&mut self) -> Option<u32> {
        self.generation.as_mut().and_then(Generation::read)
    }

    /// After `commits` transactions of ours that began at generation `before`:
    /// the picture stays valid only if nobody else committed in between.
    fn picture_valid_after(&mut self, before: Option<u32>, commits: u32) {
        let after = self.generation_now();
        self.picture.generation = match (before, after) {
            (Some(b), Some(a)) if a == b.wrapping_add(commits) => Some(a),
            _ => None,
        };
    }

    /// Creation of a missing chain and its jump: returns the chain's rules
    /// (empty if it was missing) and the lines that restore what is missing.
    fn ensure_chain(
        &mut self,
        family: usize,
        spec: &ChainSpec,
    ) -> FwResult<(Vec<ListedRule>, Vec<String>)> {
        let mut lines = Vec::new();
        let listed = match self.list_chain(family, &spec.table, &spec.chain)? {
            Some(listed) => listed,
            None => {
                lines.push(format!(":{} - [0:0]", spec.chain));
                Vec::new()
            }
        };
        lines.extend(self.plan_jump(family, spec)?);
        Ok((listed, lines))
    }

    /// The jump from `from_chain` to our chain, if it is missing (a firewall
    /// reload may have flushed INPUT since we started). A missing user-defined
    /// `from_chain` (DOCKER-USER before Docker runs) is created; Docker keeps it.
    fn plan_jump(&mut self, family: usize, spec: &ChainSpec) -> FwResult<Vec<String>> {
        let ChainSpec {
            table,
            chain,
            from_chain,
            jump_position,
            ..
        } = spec;
        let mut lines = Vec::new();
        let from = match self.list_chain(family, table, from_chain)? {
            Some(listed) => listed,
            None => {
                lines.push(format!(":{from_chain} - [0:0]"));
                Vec::new()
            }
        };
        let jump = format!("-j {chain}");
        if !from.iter().any(|r| r.spec == jump) {
            let position = (*jump_position as usize).min(from.len() + 1);
            lines.push(format!("-I {from_chain} {position} {jump}"));
        }
        Ok(lines)
    }

    /// Chains, jumps, and the removal of leftovers for one family and table.
    fn plan_init(&mut self, family: usize, table: &str, now: u64) -> FwResult<Vec<String>> {
        let mut lines = Vec::new();
        for (_, spec) in self.chains_in(table) {
            let (listed, setup) = self.ensure_chain(family, &spec)?;
            let (creates, jumps): (Vec<String>, Vec<String>) =
                setup.into_iter().partition(|l| l.starts_with(':'));
            lines.extend(creates);
            let stale = listed.iter().filter(|r| {
                r.grant
                    .as_ref()
                    .is_some_and(|(_, exp)| self.flush_at_init || *exp <= now)
            });
            lines.extend(stale.map(|r| format!("-D {} {}", spec.chain, r.spec)));
            lines.extend(jumps);
        }
        Ok(lines)
    }

    /// Plan one family's grants: per table, the restore lines and their undo.
    /// Every chain involved is listed first, so all rules of one grant get the
    /// same expiry (the latest of the request and what is already there).
    fn plan_grant_family(
        &mut self,
        family: usize,
        wanted: &[(Rule, u64)],
        fresh: bool,
    ) -> FwResult<Vec<(String, Plan)>> {
        let configured: Vec<Role> = self.chains.iter().map(|(role, _)| *role).collect();
        let needed: Vec<Vec<Role>> = wanted
            .iter()
            .map(|(r, _)| roles_for(r, &configured))
            .collect();
        let mut tables = Vec::new();
        let mut latest: HashMap<&Rule, u64> = wanted.iter().map(|(r, exp)| (r, *exp)).collect();
        for table in self.tables() {
            let mut chains = Vec::new();
            let mut setup = Vec::new();
            for (role, spec) in self.chains_in(&table) {
                if !needed.iter().any(|roles| roles.contains(&role)) {
                    continue;
                }
                // Taken out of the picture while planning; put back once applied.
                let known = fresh
                    .then(|| self.picture.chains.remove(&(family, role)))
                    .flatten();
                let listed = match known {
                    Some(rules) => rules,
                    None => {
                        let (listed, lines) = self.ensure_chain(family, &spec)?;
                        setup.extend(lines);
                        ChainRules::from_listing(listed)
                    }
                };
                for (rule, l) in latest.iter_mut() {
                    for (_, exp) in listed.of(rule) {
                        *l = (*l).max(*exp);
                    }
                }
                chains.push((role, spec, listed));
            }
            if !chains.is_empty() {
                tables.push((table, setup, chains));
            }
        }
        let mut plans = Vec::new();
        for (table, setup, chains) in tables {
            let mut plan = Plan {
                lines: setup,
                ..Plan::default()
            };
            for (role, spec, listed) in chains {
                let here: Vec<(Rule, u64)> = wanted
                    .iter()
                    .zip(&needed)
                    .filter(|(_, roles)| roles.contains(&role))
                    .map(|((rule, _), _)| (rule.clone(), latest[rule]))
                    .collect();
                plan.extend(plan_chain(role, &spec, self.prepend, &listed, &here));
                self.picture.chains.insert((family, role), listed);
            }
            plans.push((table, plan));
        }
        Ok(plans)
    }

    /// Undo applied transactions, newest first (a grant is all or nothing).
    fn roll_back(&mut self, applied: &[(usize, String, Vec<String>)]) {
        for (family, table, undo) in applied.iter().rev() {
            if let Err(undo_error) = self.apply(*family, table, undo) {
                tracing::error!(error = %undo_error, "iptables: could not roll back a partial grant");
            }
        }
    }

    /// Delete the listed grants `select` picks, in one transaction per family
    /// and table; returns each removed grant once.
    fn delete_grants(&mut self, mut select: impl FnMut(&Rule, u64) -> bool) -> FwResult<Vec<Rule>> {
        let before = self.generation_now();
        let fresh = before.is_some() && before == self.picture.generation;
        self.picture.generation = None;
        let mut removed: Vec<Rule> = Vec::new();
        let mut seen: HashSet<Rule> = HashSet::new();
        let mut commits = 0;
        for family in 0..self.families.len() {
            for table in self.tables() {
                let mut lines = Vec::new();
                for (role, spec) in self.chains_in(&table) {
                    let Some(listed) = self.list_chain(family, &table, &spec.chain)? else {
                        continue;
                    };
                    let (gone, kept): (Vec<ListedRule>, Vec<ListedRule>) =
                        listed.into_iter().partition(|r| {
                            r.grant
                                .as_ref()
                                .is_some_and(|(rule, exp)| select(rule, *exp))
                        });
                    for r in &gone {
                        lines.push(format!("-D {} {}", spec.chain, r.spec));
                        let (rule, _) = r.grant.as_ref().expect("selected rules are grants");
                        if seen.insert(rule.clone()) {
                            removed.push(rule.clone());
                        }
                    }
                    if let Some(known) = self.picture.chains.get_mut(&(family, role)) {
                        *known = ChainRules::from_listing(kept);
                    }
                }
                if !lines.is_empty() {
                    self.apply(family, &table, &lines)?;
                    commits += 1;
                }
            }
        }
        if fresh {
            self.picture_valid_after(before, commits);
        }
        Ok(removed)
    }

    /// Remove the jumps, our rules and our chains of one table (fwknopd's exit
    /// behaviour).
    fn remove_chains(&mut self, family: usize, table: &str) -> FwResult<()> {
        let mut lines = Vec::new();
        for (_, spec) in self.chains_in(table) {
            if self.list_chain(family, table, &spec.chain)?.is_none() {
                continue;
            }
            let from = self
                .list_chain(family, table, &spec.from_chain)?
                .unwrap_or_default();
            let jump = format!("-j {}", spec.chain);
            lines.extend(
                from.iter()
                    .filter(|r| r.spec == jump)
                    .map(|_| format!("-D {} {jump}", spec.from_chain)),
            );
            lines.push(format!("-F {}", spec.chain));
            lines.push(format!("-X {}", spec.chain));
        }
        self.apply(family, table, &lines)
    }
}

/// Merge repeated rules of one batch, keeping the latest expiry, in first-seen order.
fn dedup(openings: &[&Opening]) -> Vec<(Rule, u64)> {
    let mut merged: Vec<(Rule, u64)> = Vec::new();
    let mut at: HashMap<&Rule, usize> = HashMap::new();
    for o in openings {
        match at.get(&o.rule) {
            Some(&i) => merged[i].1 = merged[i].1.max(o.expires_at),
            None => {
                at.insert(&o.rule, merged.len());
                merged.push((o.rule.clone(), o.expires_at));
            }
        }
    }
    merged
}

impl Firewall for IptablesBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Create the chains and jumps if missing, and delete grants that expired by
    /// `now` (all grants with `flush_at_init`); live ones stay. One transaction
    /// per family and table; running it again changes nothing.
    fn init(&mut self, now: u64) -> FwResult<()> {
        for family in 0..self.families.len() {
            for table in self.tables() {
                let lines = self.plan_init(family, &table, now)?;
                self.apply(family, &table, &lines)?;
                let removed = lines.iter().filter(|l| l.starts_with("-D ")).count();
                if removed > 0 {
                    tracing::info!(table = %table, removed, "iptables: removed leftover rules at start");
                }
            }
        }
        self.init_block_sets()?;
        self.ready = true;
        Ok(())
    }

    /// One transaction per family and table (`filter`, then `nat` for NAT
    /// grants); if a later one fails, the earlier ones are undone.
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        let mut by_family: Vec<Vec<&Opening>> = vec![Vec::new(); self.families.len()];
        for o in openings {
            by_family[self.check(&o.rule)?].push(o);
        }
        if !self.ready {
            let now = self.clock.now();
            self.init(now)?;
        }
        let before = self.generation_now();
        let fresh = before.is_some() && before == self.picture.generation;
        if !fresh {
            self.picture.chains.clear(); // listed again below
        }
        self.picture.generation = None; // until this batch is known to be the only change
        let mut applied: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut changes = Vec::new();
        for (family, openings) in by_family.iter().enumerate().filter(|(_, o)| !o.is_empty()) {
            let plans = match self.plan_grant_family(family, &dedup(openings), fresh) {
                Ok(plans) => plans,
                Err(e) => {
                    self.roll_back(&applied);
                    return Err(e);
                }
            };
            for (table, plan) in plans {
                if let Err(e) = self.apply(family, &table, &plan.lines) {
                    self.roll_back(&applied);
                    return Err(e);
                }
                let commits = u32::from(!plan.lines.is_empty());
                applied.push((family, table, plan.undo));
                changes.push((family, commits, plan.changes));
            }
        }
        let mut commits = 0;
        for (family, n, chain_changes) in changes {
            commits += n;
            for change in chain_changes {
                if let Some(known) = self.picture.chains.get_mut(&(family, change.role)) {
                    known.apply(&change);
                }
            }
        }
        self.picture_valid_after(before, commits);
        Ok(())
    }

    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        self.delete_grants(|rule, _| rules.contains(rule))
            .map(|_| ())
    }

    /// Each grant once, NAT grants with their NAT, however many rules it has.
    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let now = self.clock.now();
        let mut openings: Vec<Opening> = Vec::new();
        for family in 0..self.families.len() {
            for (_, spec) in self.chains.clone() {
                let Some(listed) = self.list_chain(family, &spec.table, &spec.chain)? else {
                    continue;
                };
                for opening in listed.iter().filter_map(|r| r.opening(now)) {
                    match openings.iter_mut().find(|o| o.rule == opening.rule) {
                        Some(seen) if seen.expires_at >= opening.expires_at => {}
                        Some(seen) => *seen = opening,
                        None => openings.push(opening),
                    }
                }
            }
        }
        Ok(openings)
    }

    /// `iptables -t TABLE -n -L CHAIN --line-numbers` for every managed chain that
    /// exists, as fwknopd's --fw-list prints its chains.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        let mut out = String::new();
        for family in 0..self.families.len() {
            for (_, spec) in self.chains.clone() {
                if self.list_chain(family, &spec.table, &spec.chain)?.is_none() {
                    continue;
                }
                let mut argv = vec![self.families[family].iptables.clone()];
                argv.extend(self.wait_args());
                argv.extend(
                    ["-t", &spec.table, "-n", "-L", &spec.chain, "--line-numbers"]
                        .map(String::from),
                );
                out.push_str(&self.run(&argv, None)?);
                out.push('\n');
            }
        }
        out.push_str(&self.block_listing()?);
        Ok(Some(out))
    }

    /// Delete every grant and block; the chains, the jumps and foreign rules stay.
    fn flush(&mut self) -> FwResult<()> {
        self.delete_grants(|_, _| true)?;
        self.flush_block_sets()
    }

    /// One listing per chain and one transaction per family and table.
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

    fn supports(&self, feature: RuleFeature) -> bool {
        match feature {
            RuleFeature::Destination => !self.docker(),
            RuleFeature::ForwardAll | RuleFeature::SourcePort => true,
        }
    }

    /// Needs `ipset`; see [`crate::block`].
    fn enable_blocking(&mut self) -> FwResult<()> {
        self.enable_block_sets()
    }

    fn block(&mut self, blocks: &[Block]) -> FwResult<()> {
        self.block_in_sets(blocks)
    }

    /// With `flush_at_exit` (default): remove the jumps, the rules and the
    /// chains; if that fails (e.g. another rule still references a chain), at
    /// least delete the grants.
    fn shutdown(&mut self) -> FwResult<()> {
        if !self.flush_at_exit {
            return Ok(());
        }
        self.ready = false;
        let mut first_error = self.remove_block_sets().err();
        for family in 0..self.families.len() {
            for table in self.tables() {
                if let Err(e) = self.remove_chains(family, &table) {
                    tracing::warn!(error = %e, "iptables: could not remove a chain at exit; deleting the grants only");
                    first_error.get_or_insert(e);
                }
            }
        }
        let result = match first_error {
            None => Ok(()),
            Some(e) => self.flush().and(Err(e)),
        };
        self.sessions.clear(); // their processes end and are reaped
        result
    }
}
