//! Linux capability names by number (linux/capability.h), the one table
//! `CapSet` reads and prints them with on every system: off Linux the `caps`
//! crate does not build, yet a capability setting is still read there, so
//! the configuration check can refuse it by name. A test on Linux keeps the
//! table equal to `caps`.

/// Index = capability number.
pub(super) const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The bit mask of one name, any case, with or without `CAP_`.
pub(super) fn bit_of(name: &str) -> Option<u64> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare).map(|i| 1 << i)
}

/// The names of the bits set in `bits`, in number order.
pub(super) fn names_of(bits: u64) -> Vec<String> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_kernels_as_caps_knows_it() {
        let all = caps::all();
        assert_eq!(all.len(), NAMES.len());
        for cap in all {
            let name = cap.to_string();
            assert_eq!(bit_of(&name), Some(cap.bitmask()), "{name}");
            assert_eq!(
                names_of(cap.bitmask()),
                [name["CAP_".len()..].to_ascii_lowercase()]
            );
        }
        assert_eq!(bit_of("Net_Admin"), Some(1 << 12));
        assert_eq!(bit_of("net_magic"), None);
    }
}
