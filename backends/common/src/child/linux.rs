//! Linux: capability sets through the `caps` crate, and the child lock-down
//! (see the parent module) with capabilities, the ambient set and
//! `PR_SET_NO_NEW_PRIVS`.

use super::{check, mark_cloexec_one_by_one, CapSet, ChildPrivileges};
use std::io;

impl CapSet {
    pub fn of(caps: &[caps::Capability]) -> Self {
        CapSet(caps.iter().fold(0, |bits, c| bits | c.bitmask()))
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

impl ChildPrivileges {
    /// Nothing to check before fork: every step works on the kernels posternd
    /// supports, and old kernels are handled in the child.
    pub(super) fn can_lock_down(&self) -> io::Result<()> {
        Ok(())
    }

    /// Runs in the forked child.
    pub(super) fn lock_down(&self) -> io::Result<()> {
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
    mark_cloexec_one_by_one()
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
