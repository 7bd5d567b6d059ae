//! After setup posternd keeps only the capabilities its work needs: CAP_NET_ADMIN
//! for the firewall, CAP_NET_RAW for pcap (and iptables-legacy's raw socket), CAP_SETUID/CAP_SETGID only when a
//! stanza runs commands as another user. The bounding set shrinks too, so tools
//! posternd starts later (iptables, nft) cannot regain more.

use caps::{CapSet, Capability, CapsHashSet};

/// What the configuration needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// pcap capture, or a tool that opens raw sockets (iptables-legacy).
    pub raw_sockets: bool,
    pub switch_user: bool,
    /// CMD_CYCLE scripts may need anything; keep everything then.
    pub arbitrary_scripts: bool,
}

pub fn required(needs: Needs) -> CapsHashSet {
    let mut keep = CapsHashSet::from([Capability::CAP_NET_ADMIN]);
    if needs.raw_sockets {
        keep.insert(Capability::CAP_NET_RAW);
    }
    if needs.switch_user {
        keep.extend([Capability::CAP_SETUID, Capability::CAP_SETGID]);
    }
    keep
}

/// Drop everything else. Returns what was kept, or why nothing was dropped.
pub fn drop_to(needs: Needs) -> Result<CapsHashSet, String> {
    if needs.arbitrary_scripts {
        return Err("CMD_CYCLE scripts are configured; keeping all capabilities".into());
    }
    let keep = required(needs);
    let have = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    if !keep.is_subset(&have) {
        return Err(format!(
            "not privileged enough to drop to {keep:?} (have {have:?})"
        ));
    }
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Needs CAP_SETPCAP, which we still have until the sets below shrink.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    Ok(keep)
}
