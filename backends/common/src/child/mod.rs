//! What a child process posternd starts may keep: descriptors, user, capabilities.
//!
//! posternd runs as root, and a process root execs gets `P' = P(inheritable) |
//! bounding set` (capabilities(7)): every command would hold the daemon's
//! capabilities and every descriptor it opened without `O_CLOEXEC` (the pcap
//! socket among them). [`ChildPrivileges::apply`] installs the one `pre_exec`
//! hook every spawn goes through ([`crate::exec::run_limited`]). In the child,
//! between fork and exec, it:
//!
//! 1. marks every descriptor above 2 close-on-exec (`close_range(3, ~0,
//!    CLOSE_RANGE_CLOEXEC)`, or a loop on old kernels); marking instead of
//!    closing keeps std's own exec-error pipe working, so a missing program is
//!    still a spawn error;
//! 2. switches user (setgroups, setresgid, setresuid), while CAP_SETUID and
//!    CAP_SETGID are still there;
//! 3. clears the ambient set; for confined children sets permitted, effective
//!    and inheritable to the configured set (default: empty), raises it as
//!    ambient when the child is not root (the only way a non-root process keeps a
//!    capability across exec), and sets `PR_SET_NO_NEW_PRIVS`, so exec cannot
//!    regain the bounding set: with it the kernel intersects the new permitted
//!    set with the old one (and ignores setuid bits and file capabilities).
//!
//! Only raw system calls run there: no allocation between fork and exec.
//!
//! That is Linux (`linux.rs`). FreeBSD and macOS have no capabilities
//! (`bsd.rs`): a child that runs as root has all of root's power, so a
//! non-empty set is refused; the descriptors and the user switch are the same,
//! and a confined child gets no-new-privileges where the system has it
//! (FreeBSD 14+), or is not started as a user other than root.

#[cfg(not(target_os = "linux"))]
mod bsd;
mod cap_names;
#[cfg(target_os = "linux")]
mod linux;

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A set of Linux capabilities, as a kernel bit mask, named from one table
/// (`cap_names.rs`) on every system. Elsewhere only the empty set can be
/// handed on; the names are still read, so a configuration can be refused
/// naming them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CapSet(u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    /// Comma- or space-separated names, any case, with or without `CAP_`
    /// (`net_admin,NET_RAW`, `CAP_KILL`); empty or `none` is the empty set.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = CapSet::EMPTY;
        for name in text
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if name.eq_ignore_ascii_case("none") {
                continue;
            }
            let bit = cap_names::bit_of(name).ok_or_else(|| {
                format!("unknown capability `{name}` (names look like net_admin or CAP_NET_RAW)")
            })?;
            set = set.union(CapSet(bit));
        }
        Ok(set)
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    /// The capabilities of `self` not in `other`.
    pub fn minus(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn is_subset(self, of: CapSet) -> bool {
        self.0 & !of.0 == 0
    }

    pub fn bits(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for CapSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&cap_names::names_of(self.0).join(","))
    }
}

impl std::str::FromStr for CapSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CapSet::parse(s)
    }
}

impl serde::Serialize for CapSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_string().split(',').filter(|n| *n != "none"))
    }
}

impl<'de> serde::Deserialize<'de> for CapSet {
    /// A list of names (`["net_admin"]`) or one comma-separated string.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Text {
            One(String),
            Many(Vec<String>),
        }
        let joined = match Text::deserialize(d)? {
            Text::One(s) => s,
            Text::Many(v) => v.join(","),
        };
        CapSet::parse(&joined).map_err(serde::de::Error::custom)
    }
}

/// The user a child runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// What a child keeps; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildPrivileges {
    /// Switch to this user (supplementary groups dropped); `None`: the daemon's.
    pub identity: Option<Identity>,
    /// `None`: the daemon's capabilities, for firewall tools (iptables needs
    /// NET_ADMIN/NET_RAW). `Some(set)`: exactly `set` (client commands, scripts).
    pub capabilities: Option<CapSet>,
    /// Leave `PR_SET_NO_NEW_PRIVS` off so a setuid program works: only for sudo
    /// started as a non-root CMD_EXEC_USER (it then has no capabilities itself,
    /// and sudo gets the daemon's bounding set through its setuid bit).
    pub allow_setuid_programs: bool,
}

impl ChildPrivileges {
    /// A firewall tool: the daemon's user and capabilities, no inherited descriptors.
    pub fn firewall_tool() -> Self {
        ChildPrivileges::default()
    }

    /// A command or script: the daemon's user, only `capabilities`.
    pub fn confined(capabilities: CapSet) -> Self {
        ChildPrivileges {
            identity: None,
            capabilities: Some(capabilities),
            allow_setuid_programs: false,
        }
    }

    /// Install the lock-down on `cmd` (done by [`crate::exec::run_limited`]).
    /// An error: this system cannot lock the child down as asked (checked here,
    /// where the error can say why; the child can only pass an errno back).
    pub(crate) fn apply(self, cmd: &mut Command) -> io::Result<()> {
        self.can_lock_down()?;
        // SAFETY: the hook only makes system calls on values copied in here; it
        // allocates nothing and takes no locks, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || self.lock_down());
        }
        Ok(())
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mark every descriptor from 3 up to the descriptor limit close-on-exec, one
/// at a time: where close_range(CLOSE_RANGE_CLOEXEC) is missing.
fn mark_cloexec_one_by_one() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let top = limit.rlim_cur.min(1 << 20) as libc::c_int;
    for fd in 3..top {
        // SAFETY: fcntl on a number; EBADF for descriptors that are not open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 {
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use caps::Capability::*;

    #[test]
    fn parses_names_in_any_spelling() {
        let set = CapSet::parse("net_admin, CAP_NET_RAW kill").unwrap();
        assert_eq!(set, CapSet::of(&[CAP_NET_ADMIN, CAP_NET_RAW, CAP_KILL]));
        assert_eq!(set.to_string(), "kill,net_admin,net_raw");
        assert_eq!(set.to_string().parse::<CapSet>().unwrap(), set);
        assert_eq!(CapSet::parse("").unwrap(), CapSet::EMPTY);
        assert_eq!(CapSet::parse("none").unwrap(), CapSet::EMPTY);
        assert!(CapSet::parse("net_admin,net_magic")
            .unwrap_err()
            .contains("`net_magic`"));
    }

    #[test]
    fn serde_takes_a_list_or_a_string() {
        #[derive(serde::Deserialize)]
        struct T {
            c: CapSet,
        }
        let t: T = serde_json::from_str(r#"{"c":["net_admin","net_raw"]}"#).unwrap();
        assert_eq!(t.c, CapSet::of(&[CAP_NET_ADMIN, CAP_NET_RAW]));
        let t: T = serde_json::from_str(r#"{"c":"kill"}"#).unwrap();
        assert_eq!(t.c, CapSet::of(&[CAP_KILL]));
        assert!(serde_json::from_str::<T>(r#"{"c":["bogus"]}"#).is_err());
        assert_eq!(
            serde_json::to_string(&CapSet::of(&[CAP_KILL])).unwrap(),
            r#"["kill"]"#
        );
    }
}
