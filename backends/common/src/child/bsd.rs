//! FreeBSD and macOS: no capabilities. A child running as root has all of
//! root's power, so only the empty set can be handed on (the configuration
//! check refuses any other; the lock-down refuses it again). What the child
//! gets (see the parent module):
//!
//! 1. every descriptor above 2 close-on-exec (FreeBSD:
//!    `close_range(CLOSE_RANGE_CLOEXEC)`; a kernel without that flag, and
//!    macOS, one descriptor at a time);
//! 2. the configured user: setgroups, setresgid, setresuid (macOS has no
//!    setres*id: setgid and setuid, then the ids are checked);
//! 3. a confined child (command, script) gets no-new-privileges, so exec
//!    ignores setuid and setgid bits: FreeBSD 14+ `procctl(PROC_NO_NEW_PRIVS_CTL)`.
//!    A confined child that runs as another user than root must have it (a
//!    setuid program would otherwise give it back what the switch took), so
//!    where the system cannot (FreeBSD before 14, macOS) it is not started.
//!    For a child that stays root it is best effort: root loses nothing to
//!    a setuid program.

use super::{check, mark_cloexec_one_by_one};
use super::{CapSet, ChildPrivileges};
use crate::platform::Platform;
use std::io;

impl CapSet {
    /// No capability sets exist: this process holds none of them, so any set
    /// asked for is missing (and refused).
    pub fn permitted_now() -> io::Result<CapSet> {
        Ok(CapSet::EMPTY)
    }
}

impl ChildPrivileges {
    /// Refused before fork, with the reason: capabilities to hand on, or a
    /// child switched away from root where no-new-privileges is missing.
    pub(super) fn can_lock_down(&self) -> io::Result<()> {
        if let Some(set) = self.capabilities.filter(|c| !c.is_empty()) {
            return Err(io::Error::other(format!(
                "capabilities {set} cannot be handed on: {} has none, and the child \
                 would run with all of root's power",
                Platform::CURRENT
            )));
        }
        if self.needs_no_new_privs() {
            no_new_privs_supported().map_err(|e| {
                io::Error::other(format!(
                    "refusing to start a command as a user other than root without \
                     no-new-privileges (a setuid program could make it root again): {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Runs in the forked child.
    pub(super) fn lock_down(&self) -> io::Result<()> {
        mark_descriptors_cloexec()?;
        if self.capabilities.is_some_and(|c| !c.is_empty()) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        if let Some(id) = self.identity {
            // SAFETY: setgroups reads no pointer when the count is 0; the
            // others take plain numbers.
            check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
            switch_ids(id.uid, id.gid)?;
        }
        if self.capabilities.is_some() && !self.allow_setuid_programs {
            match set_no_new_privs() {
                Ok(()) => {}
                Err(e) if self.needs_no_new_privs() => return Err(e),
                // Still root: a setuid program gives it nothing it lacks.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// A confined child (no setuid programs wanted) that will not run as root.
    fn needs_no_new_privs(&self) -> bool {
        // SAFETY: getuid cannot fail.
        let uid = self
            .identity
            .map_or_else(|| unsafe { libc::getuid() }, |id| id.uid);
        self.capabilities.is_some() && !self.allow_setuid_programs && uid != 0
    }
}

/// Every descriptor above stderr closes at exec.
fn mark_descriptors_cloexec() -> io::Result<()> {
    #[cfg(target_os = "freebsd")]
    {
        // SAFETY: close_range takes no pointers.
        let ret = unsafe {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            )
        };
        if ret == 0 {
            return Ok(());
        }
    }
    // A FreeBSD kernel without CLOSE_RANGE_CLOEXEC (EINVAL), macOS: one at a time.
    mark_cloexec_one_by_one()
}

#[cfg(not(target_os = "macos"))]
fn switch_ids(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain numbers.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// macOS has no setres*id: as root, setgid and setuid set the real, effective
/// and saved ids; then each is read back.
#[cfg(target_os = "macos")]
fn switch_ids(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain numbers.
    check(unsafe { libc::setgid(gid) })?;
    check(unsafe { libc::setuid(uid) })?;
    let switched = unsafe {
        libc::getgid() == gid
            && libc::getegid() == gid
            && libc::getuid() == uid
            && libc::geteuid() == uid
    };
    if switched {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// exec ignores setuid/setgid bits from now on, in this process and its children.
#[cfg(target_os = "freebsd")]
fn set_no_new_privs() -> io::Result<()> {
    let mut enable: libc::c_int = libc::PROC_NO_NEW_PRIVS_ENABLE;
    // SAFETY: P_PID with id 0 is the calling process; data points to a live c_int.
    check(unsafe {
        libc::procctl(
            libc::P_PID,
            0,
            libc::PROC_NO_NEW_PRIVS_CTL,
            (&mut enable as *mut libc::c_int).cast(),
        )
    })
}

/// Whether [`set_no_new_privs`] can work here: the status query exists on the
/// same kernels as the control (FreeBSD 14+) and changes nothing.
#[cfg(target_os = "freebsd")]
fn no_new_privs_supported() -> io::Result<()> {
    let mut status: libc::c_int = 0;
    // SAFETY: as above; the kernel writes one c_int.
    check(unsafe {
        libc::procctl(
            libc::P_PID,
            0,
            libc::PROC_NO_NEW_PRIVS_STATUS,
            (&mut status as *mut libc::c_int).cast(),
        )
    })
    .map_err(|e| {
        io::Error::other(format!(
            "procctl(PROC_NO_NEW_PRIVS_STATUS) failed ({e}): FreeBSD 14 or later is needed"
        ))
    })
}

#[cfg(not(target_os = "freebsd"))]
fn set_no_new_privs() -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(not(target_os = "freebsd"))]
fn no_new_privs_supported() -> io::Result<()> {
    Err(io::Error::other(format!(
        "{} has no no-new-privileges control",
        Platform::CURRENT
    )))
}
