//! `posternd -D`, in fwknopd 2.6.10's form (config_init.c `dump_config`, then
//! access.c `dump_access_list`), so what was read can be diffed against
//! `fwknopd -D` on the same files. Keys are printed as fwknopd prints them,
//! `<see the access.conf file>`: never a secret.

use super::{AccessStanza, AddrList, ConfigSources, ServerConfig};
use std::fmt::Write;

/// fwknopd's variables in its dump order, with the value it shows when the
/// file sets none (an iptables build of 2.6.10). `None`: computed below.
const VARIABLES: &[(&str, Option<&str>)] = &[
    ("CONFIG_FILE", None),
    ("OVERRIDE_CONFIG", None),
    ("PCAP_INTF", Some("eth0")),
    ("PCAP_FILE", Some("<not set>")),
    ("ENABLE_PCAP_PROMISC", Some("N")),
    ("PCAP_FILTER", Some("udp port 62201")),
    ("PCAP_DISPATCH_COUNT", Some("100")),
    ("PCAP_LOOP_SLEEP", Some("100000")),
    ("ENABLE_PCAP_ANY_DIRECTION", Some("<not set>")),
    ("EXIT_AT_INTF_DOWN", Some("Y")),
    ("MAX_SNIFF_BYTES", Some("1500")),
    ("ENABLE_SPA_PACKET_AGING", Some("Y")),
    ("MAX_SPA_PACKET_AGE", Some("120")),
    ("ENABLE_DIGEST_PERSISTENCE", Some("Y")),
    ("RULES_CHECK_THRESHOLD", Some("20")),
    ("CMD_EXEC_TIMEOUT", Some("<not set>")),
    ("ENABLE_SPA_OVER_HTTP", Some("N")),
    ("ENABLE_TCP_SERVER", Some("N")),
    ("TCPSERV_PORT", Some("62201")),
    ("ENABLE_UDP_SERVER", Some("N")),
    ("UDPSERV_PORT", Some("62201")),
    ("UDPSERV_SELECT_TIMEOUT", Some("500000")),
    ("LOCALE", Some("<not set>")),
    ("SYSLOG_IDENTITY", Some("fwknopd")),
    ("SYSLOG_FACILITY", Some("LOG_DAEMON")),
    ("ENABLE_X_FORWARDED_FOR", Some("N")),
    ("ENABLE_DESTINATION_RULE", Some("N")),
    ("ENABLE_RULE_PREPEND", Some("N")),
    ("ENABLE_NAT_DNS", Some("Y")),
    ("ENABLE_IPT_FORWARDING", Some("N")),
    ("ENABLE_IPT_LOCAL_NAT", Some("N")),
    ("ENABLE_IPT_SNAT", Some("N")),
    ("SNAT_TRANSLATE_IP", Some("<not set>")),
    ("ENABLE_IPT_OUTPUT", Some("N")),
    ("FLUSH_IPT_AT_INIT", Some("Y")),
    ("FLUSH_IPT_AT_EXIT", Some("Y")),
    (
        "IPT_INPUT_ACCESS",
        Some("ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1"),
    ),
    (
        "IPT_OUTPUT_ACCESS",
        Some("ACCEPT, filter, OUTPUT, 1, FWKNOP_OUTPUT, 1"),
    ),
    (
        "IPT_FORWARD_ACCESS",
        Some("ACCEPT, filter, FORWARD, 1, FWKNOP_FORWARD, 1"),
    ),
    (
        "IPT_DNAT_ACCESS",
        Some("DNAT, nat, PREROUTING, 1, FWKNOP_PREROUTING, 1"),
    ),
    (
        "IPT_SNAT_ACCESS",
        Some("SNAT, nat, POSTROUTING, 1, FWKNOP_POSTROUTING, 1"),
    ),
    (
        "IPT_MASQUERADE_ACCESS",
        Some("MASQUERADE, nat, POSTROUTING, 1, FWKNOP_MASQUERADE, 1"),
    ),
    ("ENABLE_IPT_COMMENT_CHECK", Some("Y")),
    ("FWKNOP_RUN_DIR", Some(super::fwknopd::DEFAULT_RUN_DIR)),
    ("FWKNOP_CONF_DIR", Some(super::fwknopd::DEFAULT_CONF_DIR)),
    ("ACCESS_FILE", None),
    ("ACCESS_FOLDER", Some("<not set>")),
    ("FWKNOP_PID_FILE", None),
    ("DIGEST_FILE", None),
    ("GPG_HOME_DIR", None),
    ("GPG_EXE", Some("/usr/bin/gpg")),
    ("SUDO_EXE", Some("/usr/bin/sudo")),
    ("FIREWALL_EXE", Some("/usr/sbin/iptables")),
    ("VERBOSE", Some("<not set>")),
    ("FAULT_INJECTION_TAG", Some("<not set>")),
];

/// The whole `-D` text.
pub fn fwknopd_dump(cfg: &ServerConfig, sources: &ConfigSources) -> String {
    let mut out = String::from("Current fwknopd config settings:\n");
    for (i, (name, value)) in variable_values(cfg, sources).iter().enumerate() {
        let _ = writeln!(out, "{i:3}. {name:<28} =  '{value}'");
    }
    out.push_str("\nCurrent fwknopd access settings:\n");
    for (i, s) in cfg.access.iter().enumerate() {
        stanza(&mut out, i + 1, s);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// (variable, value as fwknopd shows it), in fwknopd's order.
pub fn variable_values(cfg: &ServerConfig, sources: &ConfigSources) -> Vec<(&'static str, String)> {
    let vars = &cfg.fwknopd_vars;
    let set = |name: &str| vars.get(name).cloned();
    let run_dir = set("FWKNOP_RUN_DIR").unwrap_or_else(|| super::fwknopd::DEFAULT_RUN_DIR.into());
    let config_file = sources
        .config
        .as_ref()
        .map_or("<not set>".into(), |p| p.display().to_string());
    VARIABLES
        .iter()
        .map(|&(name, default)| {
            let value = match name {
                "CONFIG_FILE" => config_file.clone(),
                // fwknopd's option loop falls through from `-c` into `-O`, so
                // without -O it shows the config file here; shown the same.
                "OVERRIDE_CONFIG" if sources.overrides.is_empty() => config_file.clone(),
                "OVERRIDE_CONFIG" => sources
                    .overrides
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                "ACCESS_FILE" => match &sources.access {
                    Some(a) => a.display().to_string(),
                    None => set(name).unwrap_or_else(|| {
                        let conf_dir = set("FWKNOP_CONF_DIR")
                            .unwrap_or_else(|| super::fwknopd::DEFAULT_CONF_DIR.into());
                        format!("{conf_dir}/access.conf")
                    }),
                },
                "FWKNOP_PID_FILE" => set(name).unwrap_or_else(|| format!("{run_dir}/fwknopd.pid")),
                "DIGEST_FILE" => set(name).unwrap_or_else(|| format!("{run_dir}/digest.cache")),
                "GPG_HOME_DIR" => set(name).unwrap_or_else(|| {
                    std::env::var("HOME").map_or("<not set>".into(), |h| format!("{h}/.gnupg"))
                }),
                _ => set(name).unwrap_or_else(|| default.unwrap_or("<not set>").to_string()),
            };
            (name, value)
        })
        .collect()
}

fn or_not_set(v: Option<String>) -> String {
    v.unwrap_or_else(|| "<not set>".into())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn addr_list(a: &AddrList) -> String {
    match a {
        AddrList::Any => "ANY".into(),
        AddrList::Nets(nets) => nets
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// fwknopd's HMAC digest numbers (fko.h: md5 1 … sha3_512 7).
fn digest_number(d: spa_core::DigestType) -> u8 {
    use spa_core::DigestType::*;
    match d {
        Md5 => 1,
        Sha1 => 2,
        Sha256 => 3,
        Sha384 => 4,
        Sha512 => 5,
        Sha3_256 => 6,
        Sha3_512 => 7,
    }
}

fn stanza(out: &mut String, n: usize, s: &AccessStanza) {
    // fwknopd's own placeholder for a key it read: never the key itself.
    const SEE: &str = "<see the access.conf file>";
    let key = |k: &Option<spa_core::Secret>| k.as_ref().map(|_| SEE.to_string());
    let ports = |p: &[spa_core::ProtoPort]| {
        (!p.is_empty()).then(|| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let key_len = s.rijndael_key().map_or(0, |k| k.bytes().len());
    let hmac_len = s.hmac_secret().map_or(0, |k| k.bytes().len());
    let expire = s
        .access_expire_epoch
        .filter(|&t| t > 0)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        });
    let rows: Vec<(&str, String)> = vec![
        (
            "DESTINATION",
            or_not_set(s.destination.as_ref().map(addr_list)),
        ),
        ("OPEN_PORTS", or_not_set(ports(&s.open_ports))),
        ("RESTRICT_PORTS", or_not_set(ports(&s.restrict_ports))),
        // fwknopd fills KEY from KEY_BASE64 too (and HMAC_KEY likewise).
        ("KEY", or_not_set(s.rijndael_key().map(|_| SEE.to_string()))),
        ("KEY_BASE64", or_not_set(key(&s.key_base64))),
        ("KEY_LEN", key_len.to_string()),
        (
            "HMAC_KEY",
            or_not_set(s.hmac_secret().map(|_| SEE.to_string())),
        ),
        ("HMAC_KEY_BASE64", or_not_set(key(&s.hmac_key_base64))),
        ("HMAC_KEY_LEN", hmac_len.to_string()),
        (
            "HMAC_DIGEST_TYPE",
            digest_number(s.hmac_digest_type).to_string(),
        ),
        ("FW_ACCESS_TIMEOUT", s.fw_access_timeout.to_string()),
        ("MAX_FW_TIMEOUT", s.max_fw_timeout.to_string()),
        ("ENABLE_CMD_EXEC", yes_no(s.enable_cmd_exec).into()),
        (
            "ENABLE_CMD_SUDO_EXEC",
            yes_no(s.enable_cmd_sudo_exec).into(),
        ),
        (
            "CMD_SUDO_EXEC_USER",
            or_not_set(s.cmd_sudo_exec_user.clone()),
        ),
        (
            "CMD_SUDO_EXEC_GROUP",
            or_not_set(s.cmd_sudo_exec_group.clone()),
        ),
        ("CMD_EXEC_USER", or_not_set(s.cmd_exec_user.clone())),
        ("CMD_EXEC_GROUP", or_not_set(s.cmd_exec_group.clone())),
        ("CMD_CYCLE_OPEN", or_not_set(s.cmd_cycle_open.clone())),
        ("CMD_CYCLE_CLOSE", or_not_set(s.cmd_cycle_close.clone())),
        (
            "CMD_CYCLE_TIMER",
            s.cmd_cycle_timer.unwrap_or(0).to_string(),
        ),
        ("REQUIRE_USERNAME", or_not_set(s.require_username.clone())),
        (
            "REQUIRE_SOURCE_ADDRESS",
            yes_no(s.require_source_address).into(),
        ),
        (
            "FORCE_NAT (ip)",
            or_not_set(s.force_nat.as_ref().map(|f| f.addr.to_string())),
        ),
        ("FORCE_NAT (proto)", "<not set>".into()),
        (
            "FORCE_NAT (port)",
            s.force_nat.as_ref().map_or(0, |f| f.port).to_string(),
        ),
        (
            "FORCE_SNAT (ip)",
            or_not_set(s.force_snat.map(|a| a.to_string())),
        ),
        ("FORCE_MASQUERADE", yes_no(s.force_masquerade).into()),
        ("DISABLE_DNAT", yes_no(s.disable_dnat).into()),
        ("FORWARD_ALL", yes_no(s.forward_all).into()),
        ("ACCESS_EXPIRE", or_not_set(expire)),
        (
            "GPG_HOME_DIR",
            or_not_set(s.gpg_home_dir.as_ref().map(|p| p.display().to_string())),
        ),
        (
            "GPG_EXE",
            or_not_set(s.gpg_exe.as_ref().map(|p| p.display().to_string())),
        ),
        ("GPG_DECRYPT_ID", or_not_set(s.gpg_decrypt_id.clone())),
        ("GPG_DECRYPT_PW", or_not_set(key(&s.gpg_decrypt_pw))),
        (
            "GPG_REQUIRE_SIG",
            yes_no(s.gpg_require_sig.unwrap_or(false)).into(),
        ),
        (
            "GPG_IGNORE_SIG_VERIFY_ERROR",
            yes_no(s.gpg_ignore_sig_verify_error).into(),
        ),
        (
            "GPG_REMOTE_ID",
            or_not_set((!s.gpg_remote_id.is_empty()).then(|| s.gpg_remote_id.join(","))),
        ),
        (
            "GPG_FINGERPRINT_ID",
            or_not_set((!s.gpg_fingerprint_id.is_empty()).then(|| s.gpg_fingerprint_id.join(","))),
        ),
    ];
    let _ = writeln!(out, "SOURCE ({n}):  {}", addr_list(&s.source));
    out.push_str("==============================================================\n");
    for (name, value) in rows {
        let _ = writeln!(out, "{name:>27}:  {value}");
    }
}
