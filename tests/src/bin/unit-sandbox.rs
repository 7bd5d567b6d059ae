//! `unit-sandbox UNIT_FILE PROGRAM [ARGS…]`: run PROGRAM under the kernel-side
//! sandbox a systemd unit asks for, where no systemd runs (this machine, CI):
//!
//! - `SystemCallFilter=` lines, with groups expanded by the real
//!   `systemd-analyze syscall-filter` and systemd's rules (a first allow list
//!   also allows `@default`; later `~` lines remove, later plain lines add;
//!   anything else kills the process with SIGSYS, as systemd does);
//! - `RestrictAddressFamilies=` (other families get EAFNOSUPPORT);
//! - `CapabilityBoundingSet=`, `NoNewPrivileges=`, `UMask=`.
//!
//! Mount-namespace settings (ProtectSystem, PrivateTmp, …) are not applied.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("unit-sandbox: {msg}");
    std::process::exit(111);
}

/// `[Service]` settings of the unit: every value of each key, in order.
fn service_settings(unit: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.entry(k.trim().into())
                    .or_default()
                    .push(v.trim().into());
            }
        }
    }
    out
}

/// Every group `systemd-analyze syscall-filter` knows, with its direct members.
fn syscall_groups() -> HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .output()
        .unwrap_or_else(|e| fail(format!("systemd-analyze: {e}")));
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().into()).or_default();
        } else if line.trim().is_empty() || !line.starts_with(' ') {
            current = None;
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.starts_with('#') {
                groups.get_mut(g).expect("group").push(item.into());
            }
        }
    }
    groups
}

fn expand(item: &str, groups: &HashMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    if item.starts_with('@') {
        let members = groups
            .get(item)
            .unwrap_or_else(|| fail(format!("unknown syscall group {item}")));
        for m in members {
            expand(m, groups, out);
        }
    } else {
        out.insert(item.into());
    }
}

/// The system calls the unit allows, by systemd's rules.
fn allowed_syscalls(lines: &[String], groups: &HashMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        if i == 0 && deny {
            fail("a deny-list first SystemCallFilter= is not handled");
        }
        if i == 0 {
            expand("@default", groups, &mut allowed);
        }
        for item in items.split_whitespace() {
            let mut set = BTreeSet::new();
            expand(item, groups, &mut set);
            if deny {
                allowed.retain(|s| !set.contains(s));
            } else {
                allowed.extend(set);
            }
        }
    }
    allowed
}

fn family_number(name: &str) -> i32 {
    match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        other => fail(format!("address family {other} not known to unit-sandbox")),
    }
}

fn syscall_filter(allowed: &BTreeSet<String>) -> ScmpFilterContext {
    let mut f = ScmpFilterContext::new_filter(ScmpAction::KillProcess)
        .unwrap_or_else(|e| fail(format!("seccomp: {e}")));
    for name in allowed {
        // Names of other architectures (…32, _time64) are unknown here.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            f.add_rule(ScmpAction::Allow, sc)
                .unwrap_or_else(|e| fail(format!("seccomp rule {name}: {e}")));
        }
    }
    f
}

fn family_filter(families: &[String]) -> ScmpFilterContext {
    let allowed: Vec<i32> = families
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(family_number)
        .collect();
    let mut f = ScmpFilterContext::new_filter(ScmpAction::Allow)
        .unwrap_or_else(|e| fail(format!("seccomp: {e}")));
    let socket = ScmpSyscall::from_name("socket").expect("socket");
    for family in (0..46).filter(|f| !allowed.contains(f)) {
        f.add_rule_conditional(
            ScmpAction::Errno(libc::EAFNOSUPPORT),
            socket,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, family as u64)],
        )
        .unwrap_or_else(|e| fail(format!("seccomp family rule: {e}")));
    }
    f
}

fn capability_number(name: &str) -> u32 {
    name.parse::<caps::Capability>()
        .unwrap_or_else(|_| fail(format!("unknown capability {name}")))
        .index()
        .into()
}

fn limit_bounding_set(lines: &[String]) {
    let keep: Vec<u32> = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(capability_number)
        .collect();
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !keep.contains(c)) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            fail(format!(
                "PR_CAPBSET_DROP {cap}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(unit_path), Some(program)) = (args.next(), args.next()) else {
        fail("usage: unit-sandbox UNIT_FILE PROGRAM [ARGS…]");
    };
    let unit =
        std::fs::read_to_string(&unit_path).unwrap_or_else(|e| fail(format!("{unit_path}: {e}")));
    let settings = service_settings(&unit);
    let get = |k: &str| settings.get(k).cloned().unwrap_or_default();

    if let Some(mask) = get("UMask").last() {
        let mask = u32::from_str_radix(mask, 8).unwrap_or_else(|_| fail("UMask"));
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    let bounding = get("CapabilityBoundingSet");
    if !bounding.is_empty() {
        limit_bounding_set(&bounding);
    }
    if get("NoNewPrivileges").last().map(String::as_str) == Some("yes") {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail("PR_SET_NO_NEW_PRIVS");
        }
    }
    let families = get("RestrictAddressFamilies");
    let filter_lines = get("SystemCallFilter");
    let groups = syscall_groups();
    let allowed = allowed_syscalls(&filter_lines, &groups);
    eprintln!(
        "unit-sandbox: {} system calls allowed by {unit_path}",
        allowed.len()
    );
    // Stacked filters: the kernel applies the stricter answer of the two.
    if !families.is_empty() {
        family_filter(&families)
            .load()
            .unwrap_or_else(|e| fail(format!("seccomp load: {e}")));
    }
    if !filter_lines.is_empty() {
        syscall_filter(&allowed)
            .load()
            .unwrap_or_else(|e| fail(format!("seccomp load: {e}")));
    }
    let err = Command::new(&program).args(args).exec();
    fail(format!("exec {program}: {err}"));
}
