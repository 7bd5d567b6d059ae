//! Who the packet says it comes from, picked the way fwknop picks it:
//! `SPOOF_USER`, `LOGNAME`, the effective user's name, `USER`, then `NO_USER`.

use spa_core::message::MAX_USERNAME_LEN;
use std::ffi::CStr;

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Name and home directory of the effective user from the password database.
fn passwd_entry() -> Option<(String, String)> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame;
    // getpwuid_r writes only inside `pwd` and `buf` and sets `result` to &pwd or null.
    let rc = unsafe {
        libc::getpwuid_r(
            effective_uid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name/pw_dir point to NUL-terminated strings inside `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    let dir = if pwd.pw_dir.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned()
    };
    Some((name, dir))
}

/// The effective user's home directory from the password database.
pub fn passwd_home() -> Option<String> {
    passwd_entry().map(|(_, dir)| dir).filter(|d| !d.is_empty())
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// The user name fwknop would put in the packet when no -U / SPOOF_USER variable is set.
pub fn default_username() -> String {
    env_nonempty("SPOOF_USER")
        .or_else(|| env_nonempty("LOGNAME"))
        .or_else(|| {
            passwd_entry()
                .map(|(name, _)| name)
                .filter(|n| !n.is_empty())
        })
        .or_else(|| env_nonempty("USER"))
        .unwrap_or_else(|| "NO_USER".to_string())
}

/// fwknop cuts a user name to 63 bytes (its buffer holds 64 with the NUL).
pub fn truncate_username(name: &str) -> String {
    let max = MAX_USERNAME_LEN - 1;
    if name.len() <= max {
        return name.to_string();
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_to_63_bytes() {
        assert_eq!(truncate_username(&"a".repeat(100)).len(), 63);
        assert_eq!(truncate_username("bob"), "bob");
    }

    #[test]
    fn some_name_is_always_found() {
        assert!(!default_username().is_empty());
    }
}
