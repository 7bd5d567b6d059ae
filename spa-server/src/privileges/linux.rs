//! posternd keeps only the capabilities its work needs: CAP_NET_ADMIN for the
//! firewall and the NFQUEUE capture's queue, CAP_NET_RAW for pcap (and iptables-legacy's raw socket),
//! CAP_NET_BIND_SERVICE for a capture on a port below 1024, CAP_SETUID,
//! CAP_SETGID and CAP_KILL when a stanza runs commands as another user, and what
//! the configuration hands on to scripts and commands.
//!
//! Capabilities belong to threads, not processes, so the drop happens on the main
//! thread before any other thread exists (before the tokio runtime, the action
//! thread, the GPG pool and the pcap threads start): every thread inherits the
//! reduced sets. The bounding set shrinks too, so tools posternd starts later
//! (iptables, gpg) cannot regain more.

use caps::{CapSet, Capability, CapsHashSet};
use std::fmt;

/// What the configuration needs.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    /// A firewall action (anything but `log`), or the NFQUEUE capture.
    pub firewall: bool,
    /// pcap capture, or a tool that opens raw sockets (iptables-legacy, also
    /// when it adds the NFQUEUE capture's rule).
    pub raw_sockets: bool,
    /// A UDP or TCP capture listens on a port below 1024.
    pub low_port: bool,
    /// Commands run as another user (CMD_EXEC_USER, sudo): switching needs
    /// SETUID/SETGID, and ending one that overran its time limit needs KILL.
    pub switch_user: bool,
    /// Capabilities scripts and commands are configured to keep (they can only
    /// get what posternd itself holds).
    pub for_children: CapsHashSet,
}

pub fn required(needs: &Needs) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if needs.firewall {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    if needs.raw_sockets {
        keep.insert(Capability::CAP_NET_RAW);
    }
    if needs.low_port {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    if needs.switch_user {
        keep.extend([
            Capability::CAP_SETUID,
            Capability::CAP_SETGID,
            Capability::CAP_KILL,
        ]);
    }
    keep.extend(needs.for_children.iter().copied());
    keep
}

/// The calling thread's sets after the drop, read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub bounding: CapsHashSet,
}

impl Held {
    pub fn of_this_thread() -> Result<Held, String> {
        let read = |set| caps::read(None, set).map_err(|e| e.to_string());
        Ok(Held {
            effective: read(CapSet::Effective)?,
            permitted: read(CapSet::Permitted)?,
            bounding: read(CapSet::Bounding)?,
        })
    }
}

/// `CAP_KILL, CAP_NET_ADMIN` (sorted), or `none`.
pub fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    v.join(", ")
}

impl fmt::Display for Held {
    /// The form posternd logs (and its tests check against /proc).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.effective == self.permitted && self.permitted == self.bounding {
            write!(
                f,
                "effective, permitted and bounding sets: {}",
                names(&self.effective)
            )
        } else {
            write!(
                f,
                "effective: {}; permitted: {}; bounding: {}",
                names(&self.effective),
                names(&self.permitted),
                names(&self.bounding)
            )
        }
    }
}

/// Drop everything but what `needs` asks for, on the calling thread (call it
/// before any other thread starts). Errors when a needed capability is missing:
/// posternd would otherwise fail later, half set up, or run commands as root
/// that should run as another user.
pub fn drop_to(needs: &Needs) -> Result<Held, String> {
    let keep = required(needs);
    let have = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let missing: CapsHashSet = keep.difference(&have).copied().collect();
    if !missing.is_empty() {
        return Err(format!(
            "posternd needs {} for this configuration but does not hold {} \
             (run it as root; a systemd unit must list them in CapabilityBoundingSet)",
            names(&keep),
            names(&missing)
        ));
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| e.to_string())?;
    for cap in bounding.difference(&keep) {
        // Needs CAP_SETPCAP, which is only given up below.
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    let held = Held::of_this_thread()?;
    if held.effective != keep || held.permitted != keep || held.bounding != keep {
        return Err(format!("capabilities not reduced as asked: {held}"));
    }
    Ok(held)
}

/// Parse a capability name as `caps` knows it: `CAP_NET_ADMIN` or `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse()
        .map_err(|_| format!("`{name}` is not a Linux capability (e.g. net_admin, net_raw)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_map_to_capabilities() {
        assert_eq!(required(&Needs::default()), CapsHashSet::new());
        let all = Needs {
            firewall: true,
            raw_sockets: true,
            low_port: true,
            switch_user: true,
            for_children: CapsHashSet::from([Capability::CAP_DAC_OVERRIDE]),
        };
        assert_eq!(
            names(&required(&all)),
            "CAP_DAC_OVERRIDE, CAP_KILL, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW, \
             CAP_SETGID, CAP_SETUID"
        );
    }

    #[test]
    fn capability_names_parse_both_ways() {
        assert_eq!(parse_capability("net_admin"), Ok(Capability::CAP_NET_ADMIN));
        assert_eq!(parse_capability("CAP_NET_RAW"), Ok(Capability::CAP_NET_RAW));
        assert!(parse_capability("net_adm").is_err());
    }

    #[test]
    fn held_sets_render_as_logged() {
        let s = CapsHashSet::from([Capability::CAP_NET_RAW, Capability::CAP_NET_ADMIN]);
        let held = Held {
            effective: s.clone(),
            permitted: s.clone(),
            bounding: s,
        };
        assert_eq!(
            held.to_string(),
            "effective, permitted and bounding sets: CAP_NET_ADMIN, CAP_NET_RAW"
        );
    }
}
