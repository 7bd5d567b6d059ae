//! The contract between posternd and a firewall backend.
//!
//! A backend is small and synchronous; the server drives it from one task that
//! owns it, so a burst of grants can be applied as one batch. Expiry lives in the
//! firewall where the firewall can do it ([`Firewall::expires_in_kernel`]); else the
//! daemon calls [`Firewall::expire`] on a timer and the rules carry their expiry so
//! [`Firewall::init`] can reconcile leftovers after a restart.

use crate::request::Proto;
use std::fmt;
use std::net::IpAddr;
use thiserror::Error;

/// Source rewriting for forwarded grants (FORCE_SNAT / FORCE_MASQUERADE,
/// ENABLE_IPT_SNAT with SNAT_TRANSLATE_IP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Snat {
    /// Rewrite to the address of the outgoing interface.
    Masquerade,
    /// Rewrite to this address.
    To(IpAddr),
}

/// Forwarding of a granted port to an inner host (fwknop's NAT access).
///
/// The rule's `port` is the port the client connects to on the firewall host;
/// traffic to it from `source` is sent to `to_addr:to_port`.
/// - forward NAT (`local == false`): DNAT in prerouting plus a forward accept for
///   `source → to_addr:to_port`, and the optional `snat` on the way out;
/// - local NAT (`local == true`): DNAT to a port of the firewall host itself plus
///   an input accept for `source → to_port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NatRule {
    /// Where the traffic goes. For local NAT this is a local address.
    pub to_addr: IpAddr,
    pub to_port: u16,
    /// Local NAT: redirect to a port on the firewall host itself.
    pub local: bool,
    pub snat: Option<Snat>,
    /// False with DISABLE_DNAT: only the forward accept is made, the client
    /// reaches the inner host by its own address.
    pub dnat: bool,
    /// FORWARD_ALL: every protocol and port from the source goes to `to_addr`
    /// (forward accept and DNAT without protocol or port; `to_port` is unused).
    pub forward_all: bool,
}

impl NatRule {
    /// The grant in one word for rule comments, `nat_<port>_<to_addr>_<to_port>`
    /// plus `_local`, `_nodnat`, `_all`, `_masq` or `_snat_<addr>` as they apply, so a
    /// backend that lists its rules can return the grant as it was made.
    pub fn tag(&self, port: u16) -> String {
        let mut text = format!("nat_{port}_{}_{}", self.to_addr, self.to_port);
        if self.local {
            text.push_str("_local");
        }
        if !self.dnat {
            text.push_str("_nodnat");
        }
        if self.forward_all {
            text.push_str("_all");
        }
        match &self.snat {
            Some(Snat::Masquerade) => text.push_str("_masq"),
            Some(Snat::To(addr)) => text.push_str(&format!("_snat_{addr}")),
            None => {}
        }
        text
    }

    /// The grant's port and NAT from a [`NatRule::tag`]; `None` for anything else.
    pub fn parse_tag(tag: &str) -> Option<(u16, NatRule)> {
        let mut words = tag.strip_prefix("nat_")?.split('_');
        let port = words.next()?.parse().ok()?;
        let to_addr = words.next()?.parse().ok()?;
        let to_port = words.next()?.parse().ok()?;
        let mut nat = NatRule {
            to_addr,
            to_port,
            local: false,
            snat: None,
            dnat: true,
            forward_all: false,
        };
        while let Some(word) = words.next() {
            match word {
                "local" => nat.local = true,
                "nodnat" => nat.dnat = false,
                "all" => nat.forward_all = true,
                "masq" => nat.snat = Some(Snat::Masquerade),
                "snat" => nat.snat = Some(Snat::To(words.next()?.parse().ok()?)),
                _ => return None,
            }
        }
        Some((port, nat))
    }
}

/// One opening: `source` may reach `proto/port` (at `destination` when set).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub source: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub nat: Option<NatRule>,
    /// ENABLE_DESTINATION_RULE: the grant matches only packets to this address of
    /// the server (the knock's own destination). `None`: any address. A backend
    /// that cannot match it must refuse the rule, never drop the match.
    pub destination: Option<IpAddr>,
    /// Source-port pinning (postern's native protocol): the grant matches only
    /// connections from this source port of `source`. `None`: any source port.
    /// A backend that cannot match it must refuse the rule, never drop the match.
    pub source_port: Option<u16>,
}

/// A part of a [`Rule`] some backends cannot render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleFeature {
    /// [`Rule::destination`] (ENABLE_DESTINATION_RULE).
    Destination,
    /// [`NatRule::forward_all`] (FORWARD_ALL).
    ForwardAll,
    /// [`Rule::source_port`] (a native knock's pinned source port).
    SourcePort,
}

impl RuleFeature {
    fn used_by(self, rule: &Rule) -> bool {
        match self {
            RuleFeature::Destination => rule.destination.is_some(),
            RuleFeature::ForwardAll => rule.nat.as_ref().is_some_and(|n| n.forward_all),
            RuleFeature::SourcePort => rule.source_port.is_some(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RuleFeature::Destination => {
                "grants bound to the packet's destination address (ENABLE_DESTINATION_RULE)"
            }
            RuleFeature::ForwardAll => "forwarding all ports (FORWARD_ALL)",
            RuleFeature::SourcePort => "grants pinned to a source port (--pin-source-port)",
        }
    }
}

impl fmt::Display for RuleFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl Rule {
    /// A plain opening: no NAT, any destination.
    pub fn new(source: IpAddr, proto: Proto, port: u16) -> Rule {
        Rule {
            source,
            proto,
            port,
            nat: None,
            destination: None,
            source_port: None,
        }
    }

    /// This rule pinned to `source_port` (or not, with `None`).
    pub fn pinned(self, source_port: Option<u16>) -> Rule {
        Rule {
            source_port,
            ..self
        }
    }

    /// [`FirewallError::Unsupported`] for a pinned rule that also uses NAT, a
    /// destination or FORWARD_ALL, for backends that pin plain grants only.
    pub fn refuse_pinned_unless_plain(&self, backend: &'static str) -> FwResult<()> {
        if self.source_port.is_some() && (self.nat.is_some() || self.destination.is_some()) {
            return Err(FirewallError::Unsupported {
                backend,
                what: format!(
                    "{} with NAT or a destination address ({self})",
                    RuleFeature::SourcePort.describe()
                ),
            });
        }
        Ok(())
    }

    /// [`FirewallError::Unsupported`] if the rule uses one of `missing`, which
    /// `backend` cannot render: such a rule is refused, never rendered wider.
    pub fn refuse(&self, backend: &'static str, missing: &[RuleFeature]) -> FwResult<()> {
        match missing.iter().find(|f| f.used_by(self)) {
            Some(f) => Err(FirewallError::Unsupported {
                backend,
                what: format!("{} ({self})", f.describe()),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(sport) = self.source_port {
            write!(f, " port {sport}")?;
        }
        write!(f, " -> {}/{}", self.proto, self.port)?;
        if let Some(d) = self.destination {
            write!(f, " at {d}")?;
        }
        if let Some(n) = &self.nat {
            write!(
                f,
                " (NAT to {}:{}{})",
                n.to_addr,
                n.to_port,
                if n.local { ", local" } else { "" }
            )?;
            if n.forward_all {
                write!(f, " (all ports)")?;
            }
        }
        Ok(())
    }
}

/// A rule with its lifetime. Times are unix seconds, passed in by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Opening {
    pub rule: Rule,
    /// How long the rule lives from now, in seconds (what a kernel timeout gets).
    pub timeout_secs: u32,
    /// Absolute expiry, for backends that record it in the rule (comments, labels).
    pub expires_at: u64,
}

/// The addresses in the IP header of the SPA packet behind a grant: what a
/// script's `$PKT_SRC` and `$DST` are (the allowed address may differ: `-a`,
/// X-Forwarded-For, a fleet member's grant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketAddresses {
    pub source: IpAddr,
    pub source_port: u16,
    /// Where it was sent, when the capture can tell.
    pub destination: Option<IpAddr>,
}

/// A source whose new traffic the firewall drops for a while (attack detection:
/// too many packets from it failed). Times are unix seconds, passed in by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    pub source: IpAddr,
    /// How long the block lives from now, in seconds (what a kernel timeout gets).
    pub timeout_secs: u32,
    /// Absolute expiry.
    pub expires_at: u64,
}

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("backend `{backend}` requires {what}, which is missing: {hint}")]
    Missing {
        backend: &'static str,
        what: String,
        hint: String,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("backend `{backend}` does not support {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error("backend `{backend}`: {message}")]
    Other {
        backend: &'static str,
        message: String,
    },
}

pub type FwResult<T> = std::result::Result<T, FirewallError>;

pub trait Firewall: Send {
    /// Backend name as used in config (`nftables`, `iptables`, …).
    fn name(&self) -> &'static str;

    /// Create the backend's own table/chain/anchor and remove what a previous run
    /// left that has expired by `now`. Idempotent; never touches other rules.
    fn init(&mut self, now: u64) -> FwResult<()>;

    /// Apply all openings as one batch where the firewall allows it. A rule already
    /// present is refreshed, never duplicated, and never shortened: it lives until
    /// the later of its old and new expiry. On error nothing of the batch stays.
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()>;

    /// [`grant`](Firewall::grant), knowing the SPA packet behind each opening
    /// (`packets[i]` for `openings[i]`; `None` where there is none, e.g. a
    /// fleet member's grant). Only backends that render packet addresses (the
    /// script backend's `$PKT_SRC`, `$DST`) look at them.
    fn grant_from_packets(
        &mut self,
        openings: &[Opening],
        packets: &[Option<PacketAddresses>],
    ) -> FwResult<()> {
        let _ = packets;
        self.grant(openings)
    }

    /// Remove these rules (missing ones are not an error).
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()>;

    /// Current openings made by this backend.
    fn list(&mut self) -> FwResult<Vec<Opening>>;

    /// Remove everything this backend added (its own table/chain stays usable).
    fn flush(&mut self) -> FwResult<()>;

    /// Remove what has expired by `now`; returns what was removed. Backends whose
    /// firewall expires rules itself return an empty list.
    fn expire(&mut self, now: u64) -> FwResult<Vec<Rule>> {
        if self.expires_in_kernel() {
            return Ok(Vec::new());
        }
        let expired: Vec<Rule> = self
            .list()?
            .into_iter()
            .filter(|o| o.expires_at <= now)
            .map(|o| o.rule)
            .collect();
        if !expired.is_empty() {
            self.revoke(&expired)?;
        }
        Ok(expired)
    }

    /// True when the firewall removes rules at their timeout by itself, so grants
    /// never outlive a killed daemon.
    fn expires_in_kernel(&self) -> bool;

    /// Whether this backend, as configured, renders rules using `feature`; the
    /// server refuses a configuration that needs one it lacks at start (its
    /// `grant` refuses such rules anyway).
    fn supports(&self, feature: RuleFeature) -> bool {
        let _ = feature;
        false
    }

    /// Called once at shutdown. Kernel-expiring backends leave grants to expire.
    fn shutdown(&mut self) -> FwResult<()> {
        Ok(())
    }

    /// Make this backend able to [`block`](Firewall::block) sources: called
    /// before [`init`](Firewall::init) when the configuration asks for blocking,
    /// so init can create what blocks need (a set, a rule). A backend that
    /// cannot block sources, with blocks that expire by themselves, returns
    /// [`FirewallError::Unsupported`], and the server refuses to start.
    fn enable_blocking(&mut self) -> FwResult<()> {
        Err(FirewallError::Unsupported {
            backend: self.name(),
            what: "blocking sources ([attack] block_secs)".into(),
        })
    }

    /// Drop new traffic from each source until its block times out, in the
    /// firewall (a block outlives the daemon and expires on its own). A source
    /// blocked already is blocked again for the new timeout. Established
    /// connections, and what a grant of the source accepts, are not cut.
    fn block(&mut self, blocks: &[Block]) -> FwResult<()> {
        let _ = blocks;
        Err(FirewallError::Unsupported {
            backend: self.name(),
            what: "blocking sources ([attack] block_secs)".into(),
        })
    }

    /// The firewall's own listing of what this backend manages (its chains, its
    /// table), as the firewall's tool prints it: what `--fw-list` shows, as
    /// fwknopd shows its chains. `None` where the firewall has no such listing.
    fn native_listing(&mut self) -> FwResult<Option<String>> {
        Ok(None)
    }
}

/// Runs external tools as argv (never through a shell). Backends take one so their
/// logic can be tested with a recording fake.
pub trait CommandRunner: Send {
    /// Run `argv` with optional stdin; return stdout, or an error naming the command.
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String>;

    /// Start `argv` as a long-lived child (stdin, stdout and stderr piped), under
    /// the same rules as [`CommandRunner::run`]: argv without a shell, nothing
    /// inherited but what `run` passes on. Backends feed such a child many
    /// requests (e.g. `iptables-restore`) instead of starting a tool for each.
    /// `None`: this runner only runs commands (a recording fake); callers then
    /// fall back to [`CommandRunner::run`] per request.
    fn spawn(&mut self, argv: &[String]) -> Option<FwResult<std::process::Child>> {
        let _ = argv;
        None
    }
}

/// A firewall that only remembers: the rules it holds now, and every grant it was
/// asked for. Clones share the same memory, so a test (or an embedding program)
/// can hand one to the server and watch it. Touches no real firewall.
#[derive(Clone, Debug, Default)]
pub struct MemoryFirewall {
    memory: std::sync::Arc<std::sync::Mutex<Memory>>,
    kernel_expiry: bool,
}

#[derive(Debug, Default)]
struct Memory {
    open: Vec<Opening>,
    granted: Vec<Opening>,
    blocked: Vec<Block>,
}

impl MemoryFirewall {
    /// `kernel_expiry`: claim that rules expire by themselves (the daemon then
    /// never sweeps them), or not (the daemon calls [`Firewall::expire`]).
    pub fn new(kernel_expiry: bool) -> Self {
        MemoryFirewall {
            memory: Default::default(),
            kernel_expiry,
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic elsewhere while holding it leaves plain data: keep using it.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rules open now.
    pub fn open(&self) -> Vec<Opening> {
        self.memory().open.clone()
    }

    /// Every opening granted so far, repeats included, oldest first.
    pub fn granted(&self) -> Vec<Opening> {
        self.memory().granted.clone()
    }

    /// Every block asked for so far, oldest first.
    pub fn blocked(&self) -> Vec<Block> {
        self.memory().blocked.clone()
    }
}

impl Firewall for MemoryFirewall {
    fn name(&self) -> &'static str {
        "memory"
    }
    /// Leftovers of an earlier instance that are due by `now` go, as in a real
    /// backend's reconciliation.
    fn init(&mut self, now: u64) -> FwResult<()> {
        self.memory().open.retain(|o| o.expires_at > now);
        Ok(())
    }
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        let mut m = self.memory();
        for o in openings {
            // A repeated grant never shortens the one in place.
            match m.open.iter_mut().find(|x| x.rule == o.rule) {
                Some(x) if x.expires_at >= o.expires_at => {}
                Some(x) => *x = o.clone(),
                None => m.open.push(o.clone()),
            }
        }
        m.granted.extend_from_slice(openings);
        Ok(())
    }
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        self.memory().open.retain(|o| !rules.contains(&o.rule));
        Ok(())
    }
    fn list(&mut self) -> FwResult<Vec<Opening>> {
        Ok(self.open())
    }
    fn flush(&mut self) -> FwResult<()> {
        let mut m = self.memory();
        m.open.clear();
        m.blocked.clear();
        Ok(())
    }
    fn expires_in_kernel(&self) -> bool {
        self.kernel_expiry
    }
    fn enable_blocking(&mut self) -> FwResult<()> {
        Ok(())
    }
    fn block(&mut self, blocks: &[Block]) -> FwResult<()> {
        self.memory().blocked.extend_from_slice(blocks);
        Ok(())
    }
    fn supports(&self, _: RuleFeature) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that says nothing about blocking cannot block: the server
    /// refuses `[attack] block_secs` with it at start.
    #[test]
    fn blocking_is_unsupported_unless_a_backend_implements_it() {
        struct Plain;
        impl Firewall for Plain {
            fn name(&self) -> &'static str {
                "plain"
            }
            fn init(&mut self, _: u64) -> FwResult<()> {
                Ok(())
            }
            fn grant(&mut self, _: &[Opening]) -> FwResult<()> {
                Ok(())
            }
            fn revoke(&mut self, _: &[Rule]) -> FwResult<()> {
                Ok(())
            }
            fn list(&mut self) -> FwResult<Vec<Opening>> {
                Ok(Vec::new())
            }
            fn flush(&mut self) -> FwResult<()> {
                Ok(())
            }
            fn expires_in_kernel(&self) -> bool {
                true
            }
        }
        let e = Plain.enable_blocking().unwrap_err().to_string();
        assert_eq!(
            e,
            "backend `plain` does not support blocking sources ([attack] block_secs)"
        );
        assert!(Plain.block(&[]).is_err());
        let mut memory = MemoryFirewall::new(true);
        memory.enable_blocking().unwrap();
        let b = Block {
            source: "192.0.2.1".parse().unwrap(),
            timeout_secs: 5,
            expires_at: 105,
        };
        memory.block(std::slice::from_ref(&b)).unwrap();
        assert_eq!(memory.blocked(), [b]);
        memory.flush().unwrap();
        assert!(memory.blocked().is_empty());
    }

    #[test]
    fn nat_tags_round_trip() {
        for snat in [
            None,
            Some(Snat::Masquerade),
            Some(Snat::To("192.0.2.1".parse().unwrap())),
        ] {
            for (local, dnat, forward_all) in [
                (false, true, false),
                (true, true, false),
                (false, false, false),
                (false, true, true),
                (false, false, true),
            ] {
                let nat = NatRule {
                    to_addr: "10.0.0.2".parse().unwrap(),
                    to_port: 22,
                    local,
                    snat: snat.clone(),
                    dnat,
                    forward_all,
                };
                let tag = nat.tag(55000);
                assert_eq!(NatRule::parse_tag(&tag), Some((55000, nat)), "{tag}");
            }
        }
        assert_eq!(NatRule::parse_tag("nat_1_x_2"), None);
        assert_eq!(NatRule::parse_tag("nat_1_10.0.0.2_2_what"), None);
        assert_eq!(NatRule::parse_tag("postern_exp_5"), None);
    }
}
