//! [`NftablesBackend`]: the `Firewall` implementation.

use crate::changes::{self, Change, SetChange};
use crate::config::{ApplyWith, NftablesConfig};
use crate::keys::{elements, SetId};
use crate::listing::{parse_table, TableState};
use crate::netlink::batch::Batch;
use crate::netlink::{BatchError, NfSocket};
use crate::setup::{all_sets, setup_ruleset};
use crate::shadow::{shadowing_in_iptables_save, shadowing_in_ruleset, ShadowWarning};
use crate::BACKEND;
use postern_backend_common::SystemRunner;
use spa_core::clock::{Clock, SystemClock};
use spa_core::firewall::{
    Block, CommandRunner, Firewall, FirewallError, FwResult, Opening, Rule, RuleFeature, Snat,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// postern's nftables backend. See the crate docs for the ruleset it owns.
pub struct NftablesBackend {
    config: NftablesConfig,
    runner: Box<dyn CommandRunner>,
    netns: Option<PathBuf>,
    socket: Option<NfSocket>,
    nft_program: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    /// Expiry of the grants this backend knows to be live (seeded from the kernel
    /// at init), so a repeated grant with a shorter timeout never cuts one short.
    expiries: HashMap<Rule, u64>,
}

impl std::fmt::Debug for NftablesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftablesBackend")
            .field("config", &self.config)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

fn missing_permission() -> FirewallError {
    FirewallError::Missing {
        backend: BACKEND,
        what: "permission to change nftables (CAP_NET_ADMIN)".into(),
        hint: "run posternd as root or give it CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN)".into(),
    }
}

impl NftablesBackend {
    /// A backend for the current network namespace, running `nft` through
    /// [`SystemRunner`]. Nothing touches the kernel before [`Firewall::init`].
    pub fn new(config: NftablesConfig) -> FwResult<NftablesBackend> {
        config.validate()?;
        Ok(NftablesBackend {
            config,
            runner: Box::new(SystemRunner::default()),
            netns: None,
            socket: None,
            nft_program: None,
            clock: Arc::new(SystemClock),
            expiries: HashMap::new(),
        })
    }

    /// Runs `nft` through `runner` instead (tests: a recording fake).
    pub fn with_runner(mut self, runner: Box<dyn CommandRunner>) -> NftablesBackend {
        self.runner = runner;
        self
    }

    /// Manages the firewall of another network namespace (`/var/run/netns/NAME`):
    /// `nft` runs under `nsenter --net=PATH`, the netlink socket is created inside it.
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> NftablesBackend {
        self.netns = Some(path.into());
        self.socket = None;
        self
    }

    pub fn config(&self) -> &NftablesConfig {
        &self.config
    }

    /// Rules outside postern's table that would drop granted packets (nftables
    /// tables of others, iptables-nft, and legacy iptables). posternd logs these at
    /// start; they are warnings, never errors.
    pub fn shadowing_warnings(&mut self) -> FwResult<Vec<ShadowWarning>> {
        let ruleset = self.nft(&["-j", "list", "ruleset"], None)?;
        let (family, table, mark) = (
            self.config.family,
            self.config.table.clone(),
            self.config.grant_mark,
        );
        // NAT grants are forwarded, so a drop on the forward hook defeats them.
        let forward = self.config.nat;
        let mut warnings = shadowing_in_ruleset(&ruleset, family, &table, mark, forward);
        let legacy = [
            ("iptables-legacy-save", family.has_v4()),
            ("ip6tables-legacy-save", family.has_v6()),
        ];
        for (tool, relevant) in legacy {
            let Some(program) = relevant.then(|| find_program(tool)).flatten() else {
                continue;
            };
            let argv = self.wrap_argv(program.to_string_lossy().into_owned(), &[]);
            // A legacy tool that fails just means there is nothing legacy to check.
            if let Ok(save) = self.runner.run(&argv, None) {
                warnings.extend(shadowing_in_iptables_save(
                    &save,
                    tool.trim_end_matches("-save"),
                    mark,
                    forward,
                ));
            }
        }
        Ok(warnings)
    }

    /// The kernel's ruleset generation id; each committed transaction adds one.
    /// Lets tests and diagnostics see how many transactions a change took.
    pub fn ruleset_generation(&mut self) -> FwResult<u32> {
        let socket = self.socket()?;
        socket.generation().map_err(|e| FirewallError::Other {
            backend: BACKEND,
            message: format!("reading the ruleset generation: {e}"),
        })
    }

    fn table_label(&self) -> String {
        format!("{} {}", self.config.family, self.config.table)
    }

    fn wrap_argv(&self, program: String, args: &[&str]) -> Vec<String> {
        let mut argv = Vec::with_capacity(args.len() + 4);
        if let Some(ns) = &self.netns {
            argv.extend([
                "nsenter".to_string(),
                format!("--net={}", ns.display()),
                "--".to_string(),
            ]);
        }
        argv.push(program);
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// Runs `nft ARGS`; a missing program or permission becomes `Missing`.
    fn nft(&mut self, args: &[&str], stdin: Option<&str>) -> FwResult<String> {
        let program = match &self.nft_program {
            Some(p) => p.clone(),
            None => {
                let p =
                    find_program(&self.config.nft_path).ok_or_else(|| FirewallError::Missing {
                        backend: BACKEND,
                        what: format!("the `{}` command", self.config.nft_path),
                        hint:
                            "install nftables (Debian/Ubuntu: apt install nftables) or set nft_path"
                                .into(),
                    })?;
                if self.netns.is_some() && find_program("nsenter").is_none() {
                    return Err(FirewallError::Missing {
                        backend: BACKEND,
                        what: "the `nsenter` command (to reach another network namespace)".into(),
                        hint: "install util-linux".into(),
                    });
                }
                self.nft_program = Some(p.clone());
                p
            }
        };
        let argv = self.wrap_argv(program.to_string_lossy().into_owned(), args);
        self.runner.run(&argv, stdin).map_err(|e| match e {
            FirewallError::Command { ref stderr, .. }
                if stderr.contains("Operation not permitted") =>
            {
                missing_permission()
            }
            other => other,
        })
    }

    /// `nft -j list table`; `Ok(None)` when the table does not exist.
    fn read_table(&mut self) -> FwResult<Option<TableState>> {
        let (family, table) = (self.config.family.name(), self.config.table.clone());
        match self.nft(&["-j", "list", "table", family, &table], None) {
            Ok(out) => parse_table(&out)
                .map(Some)
                .map_err(|message| FirewallError::Other {
                    backend: BACKEND,
                    message,
                }),
            Err(FirewallError::Command { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn socket(&mut self) -> FwResult<&mut NfSocket> {
        if self.socket.is_none() {
            let opened = match &self.netns {
                Some(ns) => NfSocket::open_in_netns(ns),
                None => NfSocket::open(),
            };
            let socket = opened.map_err(|e| match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => FirewallError::Missing {
                    backend: BACKEND,
                    what: "nfnetlink support in the kernel (nf_tables)".into(),
                    hint: format!("load the nf_tables module, or set apply_with = \"nft\" ({e})"),
                },
                _ => FirewallError::Other {
                    backend: BACKEND,
                    message: format!("opening the netfilter netlink socket: {e}"),
                },
            })?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_mut().expect("just opened"))
    }

    /// Checks a batch before anything is sent, so a bad opening rejects the
    /// whole batch and nothing of it is applied.
    fn check_family(&self, rule: &Rule) -> FwResult<()> {
        // Pinned grants have one set, `grantspin`, for plain grants.
        rule.refuse_pinned_unless_plain(BACKEND)?;
        if rule.nat.is_some() {
            // Only plain grants have a destination-bound set.
            rule.refuse(BACKEND, &[RuleFeature::Destination])?;
        }
        if rule
            .destination
            .is_some_and(|d| d.is_ipv4() != rule.source.is_ipv4())
        {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: format!("{rule}: source and destination of different address families"),
            });
        }
        let family = self.config.family;
        let ok = match rule.source {
            IpAddr::V4(_) => family.has_v4(),
            IpAddr::V6(_) => family.has_v6(),
        };
        if !ok {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: format!("{rule} in a table of family `{family}` (use family = \"inet\" for IPv4 and IPv6)"),
            });
        }
        let Some(nat) = &rule.nat else { return Ok(()) };
        if !self.config.nat {
            return Err(FirewallError::Unsupported {
                backend: BACKEND,
                what: format!("NAT grants with `nat = false` ({rule}): set `nat = true`"),
            });
        }
        let snat = match (&nat.snat, nat.local) {
            (Some(Snat::To(addr)), false) => Some(*addr),
            _ => None,
        };
        for addr in [Some(nat.to_addr), snat].into_iter().flatten() {
            if addr.is_ipv4() != rule.source.is_ipv4() {
                return Err(FirewallError::Unsupported {
                    backend: BACKEND,
                    what: format!("NAT between IPv4 and IPv6 ({rule}: {addr})"),
                });
            }
        }
        Ok(())
    }

    /// Applies the changes as one transaction; on failure says whether a map
    /// element clashed (its key already maps to other data).
    fn try_apply(&mut self, steps: &[(Change, &SetChange)]) -> Result<(), (bool, FirewallError)> {
        if steps.iter().all(|(_, c)| c.is_empty()) {
            return Ok(());
        }
        let (family, table) = (self.config.family, self.config.table.clone());
        match self.config.apply_with {
            ApplyWith::Nft => {
                let mut batch = nftables::batch::Batch::new();
                for (change, set_change) in steps {
                    changes::to_nft_json(&mut batch, family.json(), &table, *change, set_change);
                }
                self.nft_json(&batch.to_nftables()).map_err(|e| {
                    let clash = matches!(&e, FirewallError::Command { stderr, .. } if stderr.contains("File exists"));
                    (clash, e)
                })
            }
            ApplyWith::Netlink => {
                let socket = self.socket().map_err(|e| (false, e))?;
                let mut batch = Batch::new(socket.next_seq());
                for (change, set_change) in steps {
                    changes::to_netlink(&mut batch, family.nfproto(), &table, *change, set_change);
                }
                let result = socket.execute(&batch.finish());
                result.map_err(|e| (e.errno() == Some(libc::EEXIST), self.batch_error(e)))
            }
        }
    }

    fn apply(&mut self, steps: &[(Change, &SetChange)]) -> FwResult<()> {
        self.try_apply(steps).map_err(|(_, e)| e)
    }

    /// The NAT grants now in the kernel (other than `except`) whose map
    /// elements hold other data for a key `change` uses: a NAT grant of the
    /// same client and port to another destination.
    fn clashing(&mut self, change: &SetChange, except: &[Rule]) -> FwResult<Vec<Rule>> {
        let current = self.read_table()?.map(|s| s.grants).unwrap_or_default();
        let wanted: Vec<(SetId, &[u8], &[u8])> = change
            .by_set
            .values()
            .flatten()
            .filter_map(|(e, _)| e.data.as_deref().map(|d| (e.set, e.key.as_slice(), d)))
            .collect();
        let clashes = |r: &Rule| {
            elements(r).iter().any(|e| {
                let data = e.data.as_deref();
                wanted.iter().any(|(set, key, d)| {
                    *set == e.set && *key == e.key.as_slice() && data.is_some_and(|x| x != *d)
                })
            })
        };
        Ok(current
            .into_iter()
            .map(|g| g.rule)
            .filter(|r| r.nat.is_some() && !except.contains(r) && clashes(r))
            .collect())
    }

    fn nft_json(&mut self, doc: &nftables::schema::Nftables<'_>) -> FwResult<()> {
        let json = serde_json::to_string(doc).map_err(|e| FirewallError::Other {
            backend: BACKEND,
            message: format!("rendering nft JSON: {e}"),
        })?;
        self.nft(&["-j", "-f", "-"], Some(&json)).map(drop)
    }

    fn batch_error(&self, e: BatchError) -> FirewallError {
        if e.errno() == Some(libc::EPERM) {
            return missing_permission();
        }
        let message = match e {
            BatchError::Io(e) => format!("netlink: {e}"),
            BatchError::Rejected { errno, what } if errno == libc::ENOENT => format!(
                "{what}: no such table or set in the kernel; was table `{}` deleted? (init recreates it). Nothing of this batch was applied",
                self.table_label()
            ),
            BatchError::Rejected { errno, what } => {
                format!("{what}: {}. Nothing of this batch was applied", std::io::Error::from_raw_os_error(errno))
            }
        };
        FirewallError::Other {
            backend: BACKEND,
            message,
        }
    }

    fn remember(&mut self, openings: &[Opening], timeouts: &[u32]) {
        for (o, t) in openings.iter().zip(timeouts) {
            let granted_at = o.expires_at.saturating_sub(u64::from(o.timeout_secs));
            self.expiries
                .insert(o.rule.clone(), granted_at + u64::from(*t));
        }
    }

    /// Empty the block sets (a part of [`Firewall::flush`]); sets that do not
    /// exist (blocking never ran) are no error.
    fn flush_blocks(&mut self) -> FwResult<()> {
        let fams = crate::block::families(&self.config);
        let (family, table) = (self.config.family, self.config.table.clone());
        for fam in fams {
            let name = crate::block::set_name(fam);
            let result = match self.config.apply_with {
                ApplyWith::Nft => self.nft(&["flush", "set", family.name(), &table, name], None),
                ApplyWith::Netlink => {
                    let socket = self.socket()?;
                    let mut batch = Batch::new(socket.next_seq());
                    batch.flush_set(crate::netlink::batch::SetTarget {
                        family: family.nfproto(),
                        table: &table,
                        set: name,
                    });
                    match socket.execute(&batch.finish()) {
                        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(String::new()),
                        other => other
                            .map(|_| String::new())
                            .map_err(|e| self.batch_error(e)),
                    }
                }
            };
            match result {
                Err(FirewallError::Command { stderr, .. })
                    if stderr.contains("No such file or directory") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Read the time (unix seconds) from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl Firewall for NftablesBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Creates (or re-asserts) the table, sets and chain in one transaction. Live
    /// grants survive: they are kernel-timed elements of sets that `add` leaves alone.
    fn init(&mut self, _now: u64) -> FwResult<()> {
        let state = self.read_table()?;
        let doc = setup_ruleset(&self.config, state.as_ref().map(|s| &s.existing));
        self.nft_json(&doc)?;
        if self.config.apply_with == ApplyWith::Netlink {
            self.socket()?;
        }
        // Grants of a previous run are still live in the kernel: remember until when.
        let now = self.clock.now();
        self.expiries = state
            .into_iter()
            .flat_map(|s| s.grants)
            .filter_map(|g| Some((g.rule, now + u64::from(g.remaining_secs?))))
            .collect();
        Ok(())
    }

    /// One transaction for the whole burst. A NAT grant whose client and port
    /// already map elsewhere replaces that older grant in the same transaction.
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            self.check_family(&o.rule)?;
            if o.timeout_secs == 0 {
                // A zero timeout means "never expires" to the kernel.
                return Err(FirewallError::Other {
                    backend: BACKEND,
                    message: format!("{}: timeout must be at least 1 s", o.rule),
                });
            }
        }
        // A repeat never shortens a live grant: its timeout is the later of the two.
        let now = self.clock.now();
        self.expiries.retain(|_, exp| *exp > now);
        let timeouts: Vec<u32> = openings
            .iter()
            .map(|o| {
                let granted_at = o.expires_at.saturating_sub(u64::from(o.timeout_secs));
                let live = self
                    .expiries
                    .get(&o.rule)
                    .map_or(0, |exp| exp.saturating_sub(granted_at));
                o.timeout_secs.max(u32::try_from(live).unwrap_or(u32::MAX))
            })
            .collect();
        let set_change = SetChange::new(
            openings
                .iter()
                .zip(&timeouts)
                .map(|(o, t)| (&o.rule, Some(*t))),
        );
        match self.try_apply(&[(Change::Grant, &set_change)]) {
            Err((true, e)) if set_change.has_map_elements() => {
                let wanted: Vec<Rule> = openings.iter().map(|o| o.rule.clone()).collect();
                let old = self.clashing(&set_change, &wanted)?;
                if old.is_empty() {
                    return Err(e);
                }
                let revoke = SetChange::new(old.iter().map(|r| (r, None)));
                self.apply(&[(Change::Revoke, &revoke), (Change::Grant, &set_change)])?;
                self.remember(openings, &timeouts);
                Ok(())
            }
            Ok(()) => {
                self.remember(openings, &timeouts);
                Ok(())
            }
            Err((_, e)) => Err(e),
        }
    }

    /// Missing rules are no error. A NAT element whose key now belongs to
    /// another grant (same client and port, other destination) is left to it.
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        // A rule of a family (or NAT) this table has no set for cannot be present.
        let family = self.config.family;
        let present = rules.iter().filter(|r| match r.source {
            IpAddr::V4(_) => family.has_v4(),
            IpAddr::V6(_) => family.has_v6(),
        });
        let present = present.filter(|r| r.nat.is_none() || self.config.nat);
        for r in rules {
            self.expiries.remove(r);
        }
        let mut set_change = SetChange::new(present.map(|r| (r, None)));
        match self.try_apply(&[(Change::Revoke, &set_change)]) {
            Err((true, e)) if set_change.has_map_elements() => {
                let others: Vec<_> = self
                    .clashing(&set_change, rules)?
                    .iter()
                    .flat_map(elements)
                    .collect();
                if others.is_empty() {
                    return Err(e);
                }
                set_change.retain(|e| !others.iter().any(|o| o.set == e.set && o.key == e.key));
                self.apply(&[(Change::Revoke, &set_change)])
            }
            other => other.map_err(|(_, e)| e),
        }
    }

    /// `nft list table FAMILY TABLE`: postern's table as nft prints it.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        let family = self.config.family.to_string();
        let table = self.config.table.clone();
        self.nft(&["list", "table", &family, &table], None)
            .map(Some)
    }

    fn list(&mut self) -> FwResult<Vec<Opening>> {
        let now = self.clock.now();
        let state = self.read_table()?.ok_or_else(|| FirewallError::Other {
            backend: BACKEND,
            message: format!(
                "table `{}` does not exist (init creates it)",
                self.table_label()
            ),
        })?;
        Ok(state
            .grants
            .into_iter()
            .map(|g| match g.remaining_secs {
                Some(s) => Opening {
                    rule: g.rule,
                    timeout_secs: s,
                    expires_at: now + u64::from(s),
                },
                None => Opening {
                    rule: g.rule,
                    timeout_secs: u32::MAX,
                    expires_at: u64::MAX,
                },
            })
            .collect())
    }

    fn flush(&mut self) -> FwResult<()> {
        self.expiries.clear();
        let sets: Vec<SetId> = all_sets(&self.config);
        let (family, table) = (self.config.family, self.config.table.clone());
        match self.config.apply_with {
            ApplyWith::Nft => {
                self.nft_json(&changes::flush_nft_json(family.json(), &table, &sets))?
            }
            ApplyWith::Netlink => {
                let socket = self.socket()?;
                let mut batch = Batch::new(socket.next_seq());
                changes::flush_netlink(&mut batch, family.nfproto(), &table, &sets);
                let result = socket.execute(&batch.finish());
                result.map_err(|e| self.batch_error(e))?
            }
        }
        self.flush_blocks()
    }

    fn expires_in_kernel(&self) -> bool {
        true
    }

    /// `block4`/`block6` and their drop rules are made by the next `init`.
    fn enable_blocking(&mut self) -> FwResult<()> {
        self.config.block_sources = true;
        Ok(())
    }

    /// One transaction for the whole batch. A source of a family the table has
    /// no set for (an IPv6 one in an `ip` table) is not blocked, and named in
    /// the error once the others are.
    fn block(&mut self, blocks: &[Block]) -> FwResult<()> {
        if !self.config.block_sources {
            return Err(FirewallError::Other {
                backend: BACKEND,
                message: "blocking was not enabled before init".into(),
            });
        }
        let (fit, rest) = crate::block::split(&self.config, blocks);
        if !fit.is_empty() {
            match self.config.apply_with {
                ApplyWith::Nft => {
                    let mut batch = nftables::batch::Batch::new();
                    crate::block::to_nft_json(&mut batch, &self.config, &fit);
                    self.nft_json(&batch.to_nftables())?;
                }
                ApplyWith::Netlink => {
                    let (family, table) = (self.config.family, self.config.table.clone());
                    let socket = self.socket()?;
                    let mut batch = Batch::new(socket.next_seq());
                    crate::block::to_netlink(&mut batch, family.nfproto(), &table, &fit);
                    let result = socket.execute(&batch.finish());
                    result.map_err(|e| self.batch_error(e))?;
                }
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        let rest: Vec<String> = rest.iter().map(ToString::to_string).collect();
        Err(FirewallError::Unsupported {
            backend: BACKEND,
            what: format!(
                "blocking {} in a table of family `{}`",
                rest.join(", "),
                self.config.family
            ),
        })
    }

    /// Destination-bound grants: plain ones only (a `grantsdst` set), so not
    /// with NAT on. FORWARD_ALL: with NAT on (the `*all` sets and maps).
    /// Pinned source ports: plain grants (a `grantspin` set).
    fn supports(&self, feature: RuleFeature) -> bool {
        match feature {
            RuleFeature::Destination => !self.config.nat,
            RuleFeature::ForwardAll => self.config.nat,
            RuleFeature::SourcePort => true,
        }
    }

    /// Grants stay: the kernel removes each at its timeout, daemon or not.
    fn shutdown(&mut self) -> FwResult<()> {
        Ok(())
    }
}

/// Resolves a program name like a shell would, also looking in the sbin
/// directories (often missing from a service's PATH, and where `nft` lives).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}
