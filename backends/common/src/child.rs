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

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A set of Linux capabilities, as a kernel bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CapSet(u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    pub fn of(caps: &[caps::Capability]) -> Self {
        CapSet(caps.iter().fold(0, |bits, c| bits | c.bitmask()))
    }

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
            set = set.union(CapSet::parse_one(name)?);
        }
        Ok(set)
    }

    fn parse_one(name: &str) -> Result<Self, String> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        full.parse::<caps::Capability>()
            .map(|c| CapSet(c.bitmask()))
            .map_err(|_| {
                format!("unknown capability `{name}` (names look like net_admin or CAP_NET_RAW)")
            })
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

    /// The capabilities in kernel order.
    pub fn iter(self) -> impl Iterator<Item = caps::Capability> {
        let mut known: Vec<caps::Capability> = caps::all()
            .into_iter()
            .filter(|c| self.0 & c.bitmask() != 0)
            .collect();
        known.sort_by_key(|c| c.index());
        known.into_iter()
    }

    /// The same set for the `caps` crate (what the daemon keeps for itself).
    pub fn to_caps(self) -> caps::CapsHashSet {
        self.iter().collect()
    }

    /// The calling thread's permitted set.
    pub fn permitted_now() -> io::Result<CapSet> {
        let have = caps::read(None, caps::CapSet::Permitted)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(CapSet(have.iter().fold(0, |b, c| b | c.bitmask())))
    }
}

impl std::fmt::Display for CapSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<String> = self
            .iter()
            .map(|c| c.to_string()["CAP_".len()..].to_ascii_lowercase())
            .collect();
        f.write_str(&names.join(","))
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
    pub(crate) fn apply(self, cmd: &mut Command) {
        // SAFETY: the hook only makes system calls on values copied in here; it
        // allocates nothing and takes no locks, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || self.lock_down());
        }
    }

    /// Runs in the forked child.
    fn lock_down(&self) -> io::Result<()> {
        mark_descriptors_cloexec()?;
        if let Some(id) = self.identity {
            let keep_caps = id.uid != 0 && self.capabilities.is_some_and(|c| !c.is_empty());
            if keep_caps {
                // Else setresuid clears the permitted set we mean to keep.
                check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })?;
            }
            check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
            check(unsafe { libc::setresgid(id.gid, id.gid, id.gid) })?;
            check(unsafe { libc::setresuid(id.uid, id.uid, id.uid) })?;
        }
        clear_ambient()?;
        let Some(set) = self.capabilities else {
            return Ok(());
        };
        set_capabilities(set)?;
        // SAFETY (all libc calls here): plain system calls without pointers.
        if unsafe { libc::getuid() } != 0 {
            for cap in 0..64u64 {
                if set.0 & (1 << cap) != 0 {
                    check(unsafe {
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap as libc::c_ulong,
                            0 as libc::c_ulong,
                            0 as libc::c_ulong,
                        )
                    })?;
                }
            }
        }
        if !self.allow_setuid_programs {
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
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

/// Every descriptor above stderr closes at exec.
fn mark_descriptors_cloexec() -> io::Result<()> {
    // SAFETY: close_range takes no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one descriptor at a time, up to the limit.
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

fn clear_ambient() -> io::Result<()> {
    // SAFETY: prctl without pointers.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    match check(ret) {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r,
    }
}

/// capset(2) with permitted = effective = inheritable = `set`.
fn set_capabilities(set: CapSet) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |w: u32| Data {
        effective: w,
        permitted: w,
        inheritable: w,
    };
    let data = [word(set.0 as u32), word((set.0 >> 32) as u32)];
    // SAFETY: both pointers are to live, correctly laid out kernel structs.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret as libc::c_int)
}

#[cfg(test)]
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
