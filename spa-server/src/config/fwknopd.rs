//! fwknopd.conf, read unchanged and mapped onto postern's own configuration.

use super::conf_file::{
    parse_bool, parse_lines, parse_num, parse_range, ConfError, Entry, Findings,
};
use super::fwknopd_firewall::FwknopdFirewall;
use super::{ActionConfig, CaptureConfig, ReplayConfig, ServerConfig};
use postern_backend_common::Platform;
use std::collections::HashMap;
use std::path::Path;

/// Every variable fwknopd 2.6.10 knows. Those posternd has no use for are in
/// [`NO_EFFECT`] (warned about); the rest are read below.
const KNOWN: &[&str] = &[
    "CONFIG_FILE",
    "OVERRIDE_CONFIG",
    "FIREWALL_TYPE",
    "PCAP_INTF",
    "PCAP_FILE",
    "ENABLE_PCAP_PROMISC",
    "PCAP_FILTER",
    "PCAP_DISPATCH_COUNT",
    "PCAP_LOOP_SLEEP",
    "ENABLE_PCAP_ANY_DIRECTION",
    "EXIT_AT_INTF_DOWN",
    "MAX_SNIFF_BYTES",
    "ENABLE_SPA_PACKET_AGING",
    "MAX_SPA_PACKET_AGE",
    "ENABLE_DIGEST_PERSISTENCE",
    "RULES_CHECK_THRESHOLD",
    "CMD_EXEC_TIMEOUT",
    "BLACKLIST",
    "ENABLE_SPA_OVER_HTTP",
    "ALLOW_ANY_USER_AGENT",
    "ENABLE_TCP_SERVER",
    "TCPSERV_PORT",
    "ENABLE_UDP_SERVER",
    "UDPSERV_PORT",
    "UDPSERV_SELECT_TIMEOUT",
    "ENABLE_NFQ_CAPTURE",
    "NFQ_INTERFACE",
    "NFQ_PORT",
    "NFQ_TABLE",
    "NFQ_CHAIN",
    "NFQ_QUEUE_NUMBER",
    "NFQ_LOOP_SLEEP",
    "LOCALE",
    "SYSLOG_IDENTITY",
    "SYSLOG_FACILITY",
    "ENABLE_EXTERNAL_CMDS",
    "EXTERNAL_CMD_OPEN",
    "EXTERNAL_CMD_CLOSE",
    "EXTERNAL_CMD_ALARM",
    "ENABLE_EXT_CMD_PREFIX",
    "EXT_CMD_PREFIX",
    "ENABLE_X_FORWARDED_FOR",
    "ENABLE_DESTINATION_RULE",
    "ENABLE_RULE_PREPEND",
    "ENABLE_NAT_DNS",
    "ENABLE_FIREWD_FORWARDING",
    "ENABLE_FIREWD_LOCAL_NAT",
    "ENABLE_FIREWD_SNAT",
    "SNAT_TRANSLATE_IP",
    "ENABLE_FIREWD_OUTPUT",
    "FLUSH_FIREWD_AT_INIT",
    "FLUSH_FIREWD_AT_EXIT",
    "FIREWD_INPUT_ACCESS",
    "FIREWD_OUTPUT_ACCESS",
    "FIREWD_FORWARD_ACCESS",
    "FIREWD_DNAT_ACCESS",
    "FIREWD_SNAT_ACCESS",
    "FIREWD_MASQUERADE_ACCESS",
    "ENABLE_FIREWD_COMMENT_CHECK",
    "ENABLE_IPT_FORWARDING",
    "ENABLE_IPT_LOCAL_NAT",
    "ENABLE_IPT_SNAT",
    "ENABLE_IPT_OUTPUT",
    "FLUSH_IPT_AT_INIT",
    "FLUSH_IPT_AT_EXIT",
    "IPT_INPUT_ACCESS",
    "IPT_OUTPUT_ACCESS",
    "IPT_FORWARD_ACCESS",
    "IPT_DNAT_ACCESS",
    "IPT_SNAT_ACCESS",
    "IPT_MASQUERADE_ACCESS",
    "ENABLE_IPT_COMMENT_CHECK",
    "FLUSH_IPFW_AT_INIT",
    "FLUSH_IPFW_AT_EXIT",
    "IPFW_START_RULE_NUM",
    "IPFW_MAX_RULES",
    "IPFW_ACTIVE_SET_NUM",
    "IPFW_EXPIRE_SET_NUM",
    "IPFW_EXPIRE_PURGE_INTERVAL",
    "IPFW_ADD_CHECK_STATE",
    "PF_ANCHOR_NAME",
    "PF_EXPIRE_INTERVAL",
    "FWKNOP_RUN_DIR",
    "FWKNOP_CONF_DIR",
    "ACCESS_FILE",
    "ACCESS_FOLDER",
    "FWKNOP_PID_FILE",
    "DIGEST_FILE",
    "DIGEST_DB_FILE",
    "GPG_HOME_DIR",
    "GPG_EXE",
    "SUDO_EXE",
    "FIREWALL_EXE",
    "VERBOSE",
    "AFL_PKT_FILE",
    "FAULT_INJECTION_TAG",
];

/// fwknopd reads lines into buffers of this size (MAX_LINE_LEN), so no value it
/// uses, expanded or not, is longer.
const MAX_VALUE_LEN: usize = 1024;

/// Expand `$VAR` references to other variables of the same file (fwknopd does this
/// for paths such as `FWKNOP_PID_FILE $FWKNOP_RUN_DIR/fwknopd.pid`). `None` when the
/// result would exceed [`MAX_VALUE_LEN`]: each line can double a value
/// (`A $A$A`), so a few hundred bytes of file could otherwise take all memory.
fn expand(value: &str, vars: &HashMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match vars.get(&after[..name_len]) {
            Some(v) if name_len > 0 => out.push_str(v),
            _ => out.push_str(&rest[pos..pos + 1 + name_len]),
        }
        if out.len() > MAX_VALUE_LEN {
            return None;
        }
        rest = &after[name_len..];
    }
    out.push_str(rest);
    (out.len() <= MAX_VALUE_LEN).then_some(out)
}

/// fwknopd's FWKNOP_RUN_DIR when the file sets none.
pub const DEFAULT_RUN_DIR: &str = "/var/run/fwknop";

/// fwknopd's FWKNOP_CONF_DIR when the file sets none.
pub const DEFAULT_CONF_DIR: &str = "/etc/fwknop";

/// Apply fwknopd.conf to `cfg` (which holds postern's defaults).
pub fn apply_fwknopd_conf(
    path: &Path,
    cfg: &mut ServerConfig,
    findings: &mut Findings,
) -> Result<(), ConfError> {
    apply_fwknopd_files(&[path.to_path_buf()], cfg, findings)
}

/// Apply fwknopd.conf and its `-O` override files, as fwknopd reads them: one
/// after the other into the same variables, so a later file's value wins and a
/// `$VAR` is expanded with the value set so far (by any earlier file). Every
/// file is checked as the main one is (owner, mode, unknown variables, values).
pub fn apply_fwknopd_files(
    paths: &[std::path::PathBuf],
    cfg: &mut ServerConfig,
    findings: &mut Findings,
) -> Result<(), ConfError> {
    let Some((main, cli_overrides)) = paths.split_first() else {
        return Ok(());
    };
    let mut entries = read_entries(main)?;
    // As fwknopd: the main file's OVERRIDE_CONFIG (a comma list) names the
    // override files, in place of -O; override files' own are not followed.
    let overrides: Vec<std::path::PathBuf> =
        match entries.iter().rev().find(|e| e.var == "OVERRIDE_CONFIG") {
            Some(e) => {
                if !cli_overrides.is_empty() {
                    findings.warn(format!(
                        "{}: OVERRIDE_CONFIG replaces the files given with -O (as fwknopd)",
                        e.origin
                    ));
                }
                split_list_on(&e.value, &[','])
                    .into_iter()
                    .map(Into::into)
                    .collect()
            }
            None => cli_overrides.to_vec(),
        };
    for path in &overrides {
        entries.extend(read_entries(path)?);
    }
    apply_entries(entries, cfg, findings, Platform::CURRENT)
}

/// One fwknopd.conf-format file, checked as a file posternd trusts.
fn read_entries(path: &Path) -> Result<Vec<Entry>, ConfError> {
    super::trust::check(path, "fwknopd.conf", super::trust::Trust::Trusted)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfError::file(path, format!("cannot read: {e}")))?;
    parse_lines(path, &text)
}

/// Apply fwknopd.conf `text` as if it had been read from `path` (the name is only
/// used in messages): [`apply_fwknopd_conf`] without the read, for fuzzing and tests.
pub fn apply_fwknopd_text(
    path: &Path,
    text: &str,
    cfg: &mut ServerConfig,
    findings: &mut Findings,
) -> Result<(), ConfError> {
    apply_entries(parse_lines(path, text)?, cfg, findings, Platform::CURRENT)
}

/// `entries` read as fwknopd built for `platform` reads them.
fn apply_entries(
    mut entries: Vec<Entry>,
    cfg: &mut ServerConfig,
    findings: &mut Findings,
    platform: Platform,
) -> Result<(), ConfError> {
    let mut vars: HashMap<String, String> = HashMap::new();
    for e in entries.iter_mut() {
        e.value = expand(&e.value, &vars).ok_or_else(|| {
            ConfError::new(
                &e.origin,
                format!(
                    "{} is longer than {MAX_VALUE_LEN} bytes once its $VARs are expanded",
                    e.var
                ),
            )
        })?;
        vars.insert(e.var.clone(), e.value.clone());
    }
    // The effective values, for `posternd -D` (fwknopd's dump).
    cfg.fwknopd_vars = vars.into_iter().collect();
    let get = |name: &str| entries.iter().rev().find(|e| e.var == name);
    let flag = |name: &str, default: bool| -> Result<bool, ConfError> {
        get(name).map(parse_bool).unwrap_or(Ok(default))
    };

    for e in &entries {
        if !KNOWN.contains(&e.var.as_str()) {
            findings.unknown.push(ConfError::new(
                &e.origin,
                format!("unknown fwknopd.conf variable `{}`", e.var),
            ));
        }
    }

    if let Some(e) = get("MAX_SPA_PACKET_AGE") {
        cfg.server.max_packet_age = parse_range(e, 1, 100_000)?;
    }
    cfg.server.packet_aging = flag("ENABLE_SPA_PACKET_AGING", true)?;
    cfg.server.run_dir =
        get("FWKNOP_RUN_DIR").map_or(DEFAULT_RUN_DIR.into(), |e| e.value.clone().into());
    // As fwknopd, so log alerts and units written for it keep working.
    cfg.server.syslog_identity =
        get("SYSLOG_IDENTITY").map_or("fwknopd".into(), |e| e.value.clone());
    if let Some(e) = get("SYSLOG_FACILITY") {
        crate::service::parse_facility(&e.value).map_err(|m| ConfError::new(&e.origin, m))?;
        cfg.server.syslog_facility = e.value.clone();
    }
    // Unset: fwknopd.pid in the run dir (also one moved by -r).
    cfg.server.pid_file = get("FWKNOP_PID_FILE").map(|e| e.value.clone().into());
    cfg.server.pid_file_name = "fwknopd.pid".into();
    if let Some(e) = get("UDPSERV_PORT") {
        cfg.server.udp_server_port = Some(parse_range(e, 1, u16::MAX)?);
    }
    if let Some(e) = get("CMD_EXEC_TIMEOUT") {
        cfg.server.cmd_exec_timeout = parse_num(e)?;
    }
    // Defaults for GPG stanzas without GPG_HOME_DIR / GPG_EXE of their own.
    if let Some(e) = get("GPG_HOME_DIR") {
        cfg.server.gpg_home_dir = Some(e.value.clone().into());
    }
    if let Some(e) = get("GPG_EXE") {
        cfg.server.gpg_exe = Some(e.value.clone().into());
    }
    // The sudo of ENABLE_CMD_SUDO_EXEC stanzas.
    if let Some(e) = get("SUDO_EXE") {
        cfg.server.sudo_exe = Some(e.value.clone().into());
    }
    cfg.server.spa_over_http = flag("ENABLE_SPA_OVER_HTTP", false)?;
    cfg.server.allow_any_user_agent = flag("ALLOW_ANY_USER_AGENT", false)?;
    cfg.server.x_forwarded_for = flag("ENABLE_X_FORWARDED_FOR", false)?;
    // fwknopd's default is Y; a resolved target is still checked as any other.
    cfg.server.nat.dns = flag("ENABLE_NAT_DNS", true)?;
    cfg.server.destination_rule = flag("ENABLE_DESTINATION_RULE", false)?;
    if let Some(e) = get("RULES_CHECK_THRESHOLD") {
        cfg.server.rules_check_threshold = parse_range(e, 0, 131_071)?;
    }
    if let Some(e) = get("BLACKLIST") {
        cfg.server.blacklist = super::parse_blacklist(&e.value)
            .map_err(|m| ConfError::new(&e.origin, format!("BLACKLIST: {m}")))?;
    }
    // postern keeps its own store; fwknopd's digest cache is imported, not reused.
    cfg.replay = if flag("ENABLE_DIGEST_PERSISTENCE", true)? {
        let fwknop_run_dir = get("FWKNOP_RUN_DIR")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        let cache = get("DIGEST_FILE")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| format!("{fwknop_run_dir}/digest.cache"));
        ReplayConfig::File {
            path: None,
            import_fwknop: Some(cache.into()),
        }
    } else {
        ReplayConfig::Memory
    };
    // As fwknopd: ACCESS_FOLDER if set, else ACCESS_FILE, else access.conf in
    // FWKNOP_CONF_DIR (-a / --access-folder still win).
    if let Some(e) = get("ACCESS_FOLDER") {
        cfg.access_folder = Some(e.value.clone().into());
    } else if let Some(e) = get("ACCESS_FILE") {
        cfg.access_file = Some(e.value.clone().into());
    } else {
        let conf_dir = get("FWKNOP_CONF_DIR").map_or(DEFAULT_CONF_DIR, |e| e.value.as_str());
        cfg.access_file = Some(Path::new(conf_dir).join("access.conf"));
    }

    // Captures: fwknopd sniffs with pcap unless its UDP server is enabled.
    let port = |name: &str| -> Result<u16, ConfError> {
        get(name)
            .map(|e| parse_range(e, 1, u16::MAX))
            .unwrap_or(Ok(62201))
    };
    let mut captures = Vec::new();
    if flag("ENABLE_NFQ_CAPTURE", false)? {
        if let (Some(e), Some(why)) = (
            get("ENABLE_NFQ_CAPTURE"),
            super::platform::capture_refusal("nfqueue", platform),
        ) {
            return Err(ConfError::new(
                &e.origin,
                format!("ENABLE_NFQ_CAPTURE: {why}"),
            ));
        }
        captures.push(nfq_capture(&get)?);
    } else if flag("ENABLE_UDP_SERVER", false)? {
        captures.push(CaptureConfig::Udp {
            listen: super::any_address(port("UDPSERV_PORT")?),
        });
    } else {
        let interfaces = get("PCAP_INTF")
            .map(|e| split_list(&e.value))
            .unwrap_or_else(|| vec!["eth0".into()]);
        let filter = get("PCAP_FILTER")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| "udp port 62201".into());
        let promisc = flag("ENABLE_PCAP_PROMISC", false)?;
        let snaplen = get("MAX_SNIFF_BYTES")
            .map(|e| parse_range(e, 1, 32_768))
            .transpose()?
            .unwrap_or(1500);
        captures.push(CaptureConfig::Pcap {
            interfaces,
            filter,
            promisc,
            snaplen,
            any_direction: flag("ENABLE_PCAP_ANY_DIRECTION", false)?,
            file: get("PCAP_FILE").map(|e| e.value.clone().into()),
        });
    }
    if flag("ENABLE_TCP_SERVER", false)? {
        captures.push(CaptureConfig::tcp(super::any_address(port(
            "TCPSERV_PORT",
        )?)));
    }
    cfg.capture = captures;

    // Started from fwknop's files with no postern-native action: act like the
    // fwknopd build the file was written for.
    let firewall = FwknopdFirewall::chosen(&entries, platform)?;
    if cfg.action.is_empty() {
        cfg.action.push(fwknopd_action(firewall, &get, findings)?);
    } else if let Some(e) =
        get("ENABLE_IPT_OUTPUT").filter(|_| flag("ENABLE_IPT_OUTPUT", false).unwrap_or(false))
    {
        findings.warn(format!(
            "{}: ENABLE_IPT_OUTPUT applies to the iptables action fwknopd.conf sets up, not to the configured one; set `output` on an iptables action",
            e.origin
        ));
    }
    let nat_flag = |switch: &str| match firewall.nat_infix() {
        Some(infix) => flag(&format!("ENABLE_{infix}_{switch}"), false),
        None => Ok(false),
    };
    cfg.server.nat.forwarding = nat_flag("FORWARDING")?;
    cfg.server.nat.local = nat_flag("LOCAL_NAT")?;
    if nat_flag("SNAT")? {
        let snat = match get("SNAT_TRANSLATE_IP") {
            Some(e) => e
                .value
                .parse()
                .map(spa_core::firewall::Snat::To)
                .map_err(|_| {
                    ConfError::new(
                        &e.origin,
                        format!("SNAT_TRANSLATE_IP expects an address, got `{}`", e.value),
                    )
                })?,
            None => spa_core::firewall::Snat::Masquerade,
        };
        cfg.server.nat.snat = Some(super::SnatSetting(snat));
    }
    for e in &entries {
        if let Some((_, why)) = NO_EFFECT.iter().find(|(name, _)| *name == e.var) {
            findings.warn(format!(
                "{}: {} has no effect in posternd: {why}",
                e.origin, e.var
            ));
        }
    }
    if let Some(e) = get("VERBOSE") {
        cfg.server.verbose = parse_num(e)?;
    }
    Ok(())
}

/// ENABLE_NFQ_CAPTURE Y (which fwknopd prefers to its UDP server and to pcap):
/// the NFQUEUE capture with the NFQ_* values, fwknopd's defaults for those unset.
/// NFQ_LOOP_SLEEP, fwknopd's pause between polls, has no effect (NO_EFFECT).
fn nfq_capture<'a>(
    get: &impl Fn(&str) -> Option<&'a super::conf_file::Entry>,
) -> Result<CaptureConfig, ConfError> {
    let mut s = crate::capture::nfqueue::Settings::default();
    if let Some(e) = get("NFQ_QUEUE_NUMBER") {
        s.queue = parse_num(e)?;
    }
    if let Some(e) = get("NFQ_PORT") {
        s.port = parse_num(e)?;
    }
    s.interface = get("NFQ_INTERFACE")
        .map(|e| e.value.clone())
        .filter(|i| !i.is_empty());
    if let Some(e) = get("NFQ_TABLE") {
        s.table.clone_from(&e.value);
    }
    if let Some(e) = get("NFQ_CHAIN") {
        s.chain.clone_from(&e.value);
    }
    if let Err(bad) = s.check() {
        let var = match bad.field {
            "port" => "NFQ_PORT",
            "table" => "NFQ_TABLE",
            "chain" => "NFQ_CHAIN",
            _ => "NFQ_INTERFACE",
        };
        // fwknopd's defaults pass the check: a bad value came from the file.
        if let Some(e) = get(var).or_else(|| get("ENABLE_NFQ_CAPTURE")) {
            return Err(ConfError::new(&e.origin, format!("{var}: {}", bad.message)));
        }
    }
    Ok(CaptureConfig::Nfqueue(s))
}

/// The action of the fwknopd build `firewall` (see [`FwknopdFirewall::chosen`]).
fn fwknopd_action<'a>(
    firewall: FwknopdFirewall,
    get: &'a impl Fn(&str) -> Option<&'a super::conf_file::Entry>,
    findings: &mut Findings,
) -> Result<ActionConfig, ConfError> {
    use super::fwknopd_firewall::{firewalld_action, ipfw_action, iptables_action, pf_action};
    match firewall {
        FwknopdFirewall::Iptables => iptables_action(get),
        FwknopdFirewall::Firewalld => firewalld_action(get, findings),
        FwknopdFirewall::Pf => pf_action(get),
        FwknopdFirewall::Ipfw => ipfw_action(get),
    }
}

/// fwknopd.conf variables that mean nothing to posternd, and why: each one
/// present is warned about at start, naming its line, so none is ignored
/// silently. None of them can make a grant wider.
const NO_EFFECT: [(&str, &str); 19] = [
    ("CONFIG_FILE", "the file is the one given with -c"),
    (
        "FIREWALL_TYPE",
        "the firewall follows the file's IPT_/FIREWD_/PF_/IPFW_ variables (or the action)",
    ),
    (
        "ENABLE_FIREWD_COMMENT_CHECK",
        "firewalld grants are rich rules with firewalld's own timeouts, not commented rules",
    ),
    ("LOCALE", "posternd's messages are not localised"),
    (
        "EXIT_AT_INTF_DOWN",
        "a pcap capture reopens its interface when it comes back",
    ),
    (
        "PCAP_DISPATCH_COUNT",
        "the pcap capture takes every packet the kernel hands it",
    ),
    (
        "PCAP_LOOP_SLEEP",
        "the pcap capture waits on its socket instead of sleeping",
    ),
    (
        "UDPSERV_SELECT_TIMEOUT",
        "the UDP capture waits on its socket instead of polling",
    ),
    (
        "NFQ_LOOP_SLEEP",
        "the NFQUEUE capture waits on its queue instead of sleeping",
    ),
    (
        "ENABLE_IPT_COMMENT_CHECK",
        "posternd's iptables rules always carry their expiry in a comment",
    ),
    ("ENABLE_EXTERNAL_CMDS", "fwknopd 2.6.10 ignores it too"),
    ("EXTERNAL_CMD_OPEN", "fwknopd 2.6.10 ignores it too"),
    ("EXTERNAL_CMD_CLOSE", "fwknopd 2.6.10 ignores it too"),
    ("EXTERNAL_CMD_ALARM", "fwknopd 2.6.10 ignores it too"),
    ("ENABLE_EXT_CMD_PREFIX", "fwknopd 2.6.10 ignores it too"),
    ("EXT_CMD_PREFIX", "fwknopd 2.6.10 ignores it too"),
    (
        "DIGEST_DB_FILE",
        "the digest cache is DIGEST_FILE (fwknopd's file format), imported at start",
    ),
    ("AFL_PKT_FILE", "fuzzing input of fwknopd's test builds"),
    (
        "FAULT_INJECTION_TAG",
        "fault injection of fwknopd's test builds",
    ),
];

fn split_list(text: &str) -> Vec<String> {
    split_list_on(text, &[',', ' '])
}

fn split_list_on(text: &str, separators: &[char]) -> Vec<String> {
    text.split(separators)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/fwknopd_conf: each `A $A$A` line doubled the value, so this
    /// 284-byte file asked for 2^40 bytes.
    #[test]
    fn expansion_is_bounded_and_the_error_names_the_line() {
        let text = format!("A x\n{}", "A $A$A\n".repeat(40));
        let mut cfg = ServerConfig::default();
        let err = apply_fwknopd_text(
            Path::new("f.conf"),
            &text,
            &mut cfg,
            &mut Findings::default(),
        )
        .unwrap_err();
        // x doubled 10 times is 1024 bytes, still allowed; the 11th doubling is not.
        assert_eq!(
            err.to_string(),
            "f.conf:12: A is longer than 1024 bytes once its $VARs are expanded"
        );
        let long = format!("PCAP_FILTER {}\n", "x".repeat(MAX_VALUE_LEN));
        assert!(apply_fwknopd_text(
            Path::new("f.conf"),
            &long,
            &mut cfg,
            &mut Findings::default()
        )
        .is_ok());
    }

    fn load(text: &str) -> (ServerConfig, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fwknopd.conf");
        std::fs::write(&p, text).unwrap();
        let mut cfg = ServerConfig::default();
        let mut f = Findings::default();
        apply_fwknopd_conf(&p, &mut cfg, &mut f).unwrap();
        let mut w = f.warnings;
        w.extend(f.unknown.iter().map(|e| e.to_string()));
        (cfg, w)
    }

    #[test]
    fn udp_server_mode_and_variables() {
        let (cfg, w) = load("ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 40001;\nMAX_SPA_PACKET_AGE 60;\nFWKNOP_RUN_DIR /tmp/x;\nDIGEST_FILE $FWKNOP_RUN_DIR/digest.cache;\nBOGUS 1\n");
        assert!(
            matches!(cfg.capture.as_slice(), [CaptureConfig::Udp { listen }] if listen.port() == 40001)
        );
        assert_eq!(cfg.server.max_packet_age, 60);
        assert!(cfg.server.gpg_home_dir.is_none());
        let (gpg, _) = load("GPG_HOME_DIR /etc/fwknop/gnupg;\nGPG_EXE /usr/bin/gpg;\n");
        assert_eq!(
            gpg.server.gpg_home_dir.as_deref(),
            Some(std::path::Path::new("/etc/fwknop/gnupg"))
        );
        assert_eq!(
            gpg.server.gpg_exe.as_deref(),
            Some(std::path::Path::new("/usr/bin/gpg"))
        );
        assert!(
            matches!(&cfg.replay, ReplayConfig::File { path: None, import_fwknop: Some(p) } if p.to_str() == Some("/tmp/x/digest.cache"))
        );
        assert_eq!(cfg.action[0].kind(), "iptables");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains(":6: unknown fwknopd.conf variable `BOGUS`"),
            "{w:?}"
        );
    }

    /// On FreeBSD, ENABLE_NFQ_CAPTURE is refused at its line; a file without
    /// firewall variables gets fwknopd's FreeBSD firewall, ipfw.
    #[test]
    fn on_freebsd_the_nfq_capture_is_refused_at_its_line() {
        let on_freebsd = |text: &str| {
            let mut cfg = ServerConfig::default();
            let entries = parse_lines(Path::new("/etc/fwknop/fwknopd.conf"), text).unwrap();
            apply_entries(
                entries,
                &mut cfg,
                &mut Findings::default(),
                Platform::FreeBsd,
            )
            .map(|()| cfg)
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            on_freebsd("MAX_SPA_PACKET_AGE 60;\nENABLE_NFQ_CAPTURE Y;\n")
                .err()
                .as_deref(),
            Some(
                "/etc/fwknop/fwknopd.conf:2: ENABLE_NFQ_CAPTURE: the nfqueue capture (NFQUEUE) \
                 is Linux-only; on FreeBSD use the udp, tcp or pcap capture"
            )
        );
        let cfg = on_freebsd("ENABLE_NFQ_CAPTURE N;\nENABLE_UDP_SERVER Y;\n").unwrap();
        assert!(matches!(
            cfg.capture.as_slice(),
            [CaptureConfig::Udp { .. }]
        ));
        assert_eq!(cfg.action[0].kind(), "ipfw");
    }

    #[test]
    fn nfq_capture_takes_the_nfq_values_and_fwknopds_defaults() {
        use crate::capture::nfqueue::Settings;
        // As fwknopd: NFQ capture wins over the UDP server. Not "unsupported"
        // any more; only the polling pause is said to have no effect.
        let (cfg, w) = load("ENABLE_NFQ_CAPTURE Y;\nENABLE_UDP_SERVER Y;\nNFQ_LOOP_SLEEP 100;\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains(":3: NFQ_LOOP_SLEEP has no effect"), "{w:?}");
        assert_eq!(cfg.capture, [CaptureConfig::Nfqueue(Settings::default())]);
        assert_eq!(
            Settings::default(),
            Settings {
                queue: 1,
                port: 62201,
                interface: None,
                table: "mangle".into(),
                chain: "FWKNOP_NFQ".into(),
                rules: None,
            }
        );
        let (cfg, _) = load(
            "ENABLE_NFQ_CAPTURE Y;\nNFQ_INTERFACE eth1;\nNFQ_PORT 40001;\nNFQ_TABLE filter;\n\
             NFQ_CHAIN SPA_Q;\nNFQ_QUEUE_NUMBER 7;\nENABLE_TCP_SERVER Y;\n",
        );
        assert_eq!(
            cfg.capture[0],
            CaptureConfig::Nfqueue(Settings {
                queue: 7,
                port: 40001,
                interface: Some("eth1".into()),
                table: "filter".into(),
                chain: "SPA_Q".into(),
                rules: None,
            })
        );
        assert!(matches!(cfg.capture[1], CaptureConfig::Tcp { .. }));
        assert_eq!(cfg.action[0].kind(), "iptables");
        // Off (fwknopd's default): pcap as before.
        let (cfg, _) = load("ENABLE_NFQ_CAPTURE N;\nNFQ_PORT 1;\n");
        assert!(matches!(cfg.capture[0], CaptureConfig::Pcap { .. }));
    }

    #[test]
    fn an_nfq_chain_posternd_cannot_own_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fwknopd.conf");
        for (text, want) in [
            (
                "ENABLE_NFQ_CAPTURE Y;\nNFQ_CHAIN INPUT;\n",
                ":2: NFQ_CHAIN: `INPUT`",
            ),
            (
                "ENABLE_NFQ_CAPTURE Y;\n\nNFQ_TABLE nat;\n",
                ":3: NFQ_TABLE: `nat`",
            ),
            (
                "NFQ_INTERFACE a b;\nENABLE_NFQ_CAPTURE Y;\n",
                ":1: NFQ_INTERFACE: `a b`",
            ),
            (
                "ENABLE_NFQ_CAPTURE Y;\nNFQ_PORT 70000;\n",
                ":2: NFQ_PORT expects",
            ),
            (
                "ENABLE_NFQ_CAPTURE Y;\nNFQ_PORT 0;\n",
                ":2: NFQ_PORT: 0 is not a port",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let err =
                apply_fwknopd_conf(&p, &mut ServerConfig::default(), &mut Findings::default())
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_bad_chain_spec_names_its_line() {
        let mut cfg = ServerConfig::default();
        let err = apply_fwknopd_text(
            Path::new("fwknopd.conf"),
            "MAX_SPA_PACKET_AGE 60;\nIPT_INPUT_ACCESS ACCEPT, filter, INPUT;\n",
            &mut cfg,
            &mut Findings::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("fwknopd.conf:2: IPT_INPUT_ACCESS: "),
            "{err}"
        );
    }

    #[test]
    fn nat_dns_defaults_to_yes_as_in_fwknopd() {
        assert!(load("MAX_SPA_PACKET_AGE 60;\n").0.server.nat.dns);
        assert!(!load("ENABLE_NAT_DNS N;\n").0.server.nat.dns);
    }

    #[test]
    fn firewalld_build_settings_rich_rules_cannot_follow_are_named() {
        let (cfg, w) = load(
            "FIREWD_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\nENABLE_RULE_PREPEND Y;\n",
        );
        assert_eq!(cfg.action[0].kind(), "firewalld");
        assert!(
            w.iter()
                .any(|l| l.contains(":1: FIREWD_INPUT_ACCESS: only the target is used"))
                && w.iter()
                    .any(|l| l.contains(":2: ENABLE_RULE_PREPEND has no effect with firewalld")),
            "{w:?}"
        );
    }

    #[test]
    fn variables_without_effect_are_named_and_verbose_is_honoured() {
        // One file cannot hold two firewall builds' variables: the firewalld one
        // is checked alone.
        let firewalld_only = |name: &str| name.contains("FIREWD");
        let iptables_build: Vec<_> = NO_EFFECT
            .iter()
            .filter(|(name, _)| !firewalld_only(name))
            .collect();
        let firewalld_var = NO_EFFECT.iter().find(|(name, _)| firewalld_only(name));
        let (_, w) = load(&format!("{} Y;\n", firewalld_var.unwrap().0));
        assert!(
            w.iter()
                .any(|l| l.contains(":1: ENABLE_FIREWD_COMMENT_CHECK has no effect")),
            "{w:?}"
        );
        let text: String = iptables_build
            .iter()
            .map(|(name, _)| format!("{name} Y;\n"))
            .chain(["VERBOSE 2;\n".to_string()])
            .collect();
        let (cfg, w) = load(&text);
        assert_eq!(w.len(), iptables_build.len(), "{w:?}");
        for (i, (name, _)) in iptables_build.iter().enumerate() {
            assert!(
                w[i].contains(&format!(":{}: {name} has no effect in posternd: ", i + 1)),
                "{w:?}"
            );
        }
        assert_eq!(cfg.server.verbose, 2);
    }

    #[test]
    fn access_stanzas_are_found_as_fwknopd_finds_them() {
        let (cfg, _) = load("MAX_SPA_PACKET_AGE 60;\n");
        assert_eq!(
            cfg.access_file.as_deref(),
            Some(std::path::Path::new("/etc/fwknop/access.conf"))
        );
        let (cfg, _) = load("FWKNOP_CONF_DIR /srv/fw;\n");
        assert_eq!(
            cfg.access_file.as_deref(),
            Some(std::path::Path::new("/srv/fw/access.conf"))
        );
        let (cfg, _) = load("FWKNOP_CONF_DIR /srv/fw;\nACCESS_FILE $FWKNOP_CONF_DIR/a.conf;\n");
        assert_eq!(
            cfg.access_file.as_deref(),
            Some(std::path::Path::new("/srv/fw/a.conf"))
        );
        let (cfg, _) = load("ACCESS_FOLDER /etc/fwknop/access.d;\n");
        assert_eq!(cfg.access_file, None);
        assert_eq!(
            cfg.access_folder.as_deref(),
            Some(std::path::Path::new("/etc/fwknop/access.d"))
        );
    }

    #[test]
    fn destination_output_prepend_and_rules_check_reach_their_settings() {
        let (cfg, w) = load("ENABLE_UDP_SERVER Y;\n");
        assert!(!cfg.server.destination_rule);
        assert_eq!(cfg.server.rules_check_threshold, 20);
        let s = &cfg.action[0].settings();
        assert_eq!(s["prepend"], false, "fwknopd appends by default");
        assert!(!s.contains_key("output"));
        assert!(w.is_empty(), "{w:?}");
        let (cfg, w) = load("ENABLE_DESTINATION_RULE Y;\nRULES_CHECK_THRESHOLD 0;\nENABLE_RULE_PREPEND Y;\nENABLE_IPT_OUTPUT Y;\n");
        assert!(cfg.server.destination_rule);
        assert_eq!(cfg.server.rules_check_threshold, 0);
        let s = &cfg.action[0].settings();
        assert_eq!(s["prepend"], true);
        assert_eq!(
            s["output"],
            super::super::fwknopd_firewall::FWKNOPD_OUTPUT_ACCESS
        );
        assert!(w.is_empty(), "{w:?}");
        let (cfg, _) =
            load("ENABLE_IPT_OUTPUT Y;\nIPT_OUTPUT_ACCESS ACCEPT, filter, OUTPUT, 2, MY_OUT, 1;\n");
        assert_eq!(
            cfg.action[0].settings()["output"],
            "ACCEPT, filter, OUTPUT, 2, MY_OUT, 1"
        );
    }

    #[test]
    fn blacklist_is_read_and_errors_name_the_line() {
        let (cfg, w) = load("BLACKLIST 192.0.2.1, 10.0.0.0/8 2001:db8::/32;\n");
        let got: Vec<String> = cfg.server.blacklist.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["192.0.2.1/32", "10.0.0.0/8", "2001:db8::/32"]);
        assert!(w.is_empty(), "{w:?}");
        for bad in ["10.0.0.300", "ANY"] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("fwknopd.conf");
            std::fs::write(&p, format!("ENABLE_UDP_SERVER Y;\nBLACKLIST {bad};\n")).unwrap();
            let err =
                apply_fwknopd_conf(&p, &mut ServerConfig::default(), &mut Findings::default())
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("fwknopd.conf:2: BLACKLIST"), "{bad}: {err}");
        }
    }

    #[test]
    fn spa_over_http() {
        let (cfg, w) = load("ENABLE_SPA_OVER_HTTP Y;\n");
        assert!(cfg.server.spa_over_http && !cfg.server.allow_any_user_agent);
        assert!(w.is_empty(), "{w:?}");
        let (cfg, _) =
            load("ENABLE_SPA_OVER_HTTP Y;\nALLOW_ANY_USER_AGENT Y;\nENABLE_X_FORWARDED_FOR Y;\n");
        assert!(cfg.server.allow_any_user_agent && cfg.server.x_forwarded_for);
    }

    #[test]
    fn pcap_any_direction() {
        let (cfg, _) = load("ENABLE_PCAP_ANY_DIRECTION Y;\n");
        assert!(matches!(
            cfg.capture[0],
            CaptureConfig::Pcap {
                any_direction: true,
                ..
            }
        ));
    }

    #[test]
    fn pcap_mode_by_default_with_tcp_server() {
        let (cfg, _) = load("PCAP_INTF eth1;\nPCAP_FILTER udp port 5000;\nENABLE_TCP_SERVER Y;\nENABLE_DIGEST_PERSISTENCE N;\nIPT_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\n");
        match &cfg.capture[0] {
            CaptureConfig::Pcap {
                interfaces,
                filter,
                any_direction,
                ..
            } => {
                assert_eq!(interfaces, &["eth1"]);
                assert_eq!(filter, "udp port 5000");
                assert!(!any_direction, "fwknopd captures inbound only by default");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(cfg.capture[1], CaptureConfig::Tcp { .. }));
        assert!(matches!(cfg.replay, ReplayConfig::Memory));
        assert_eq!(
            cfg.action[0].settings()["input"],
            "ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1"
        );
        assert_eq!(cfg.action[0].settings()["flush_at_init"], true);
    }

    #[test]
    fn nat_settings_reach_policy_and_the_iptables_chains() {
        let (cfg, _) = load("ENABLE_IPT_FORWARDING Y;\nENABLE_IPT_SNAT Y;\nSNAT_TRANSLATE_IP 192.0.2.1;\nIPT_DNAT_ACCESS DNAT, nat, PREROUTING, 2, MY_DNAT, 1;\n");
        assert!(cfg.server.nat.forwarding && !cfg.server.nat.local);
        assert_eq!(
            cfg.server.nat.snat,
            Some(super::super::SnatSetting(spa_core::firewall::Snat::To(
                "192.0.2.1".parse().unwrap()
            )))
        );
        let s = &cfg.action[0].settings();
        assert_eq!(s["dnat"], "DNAT, nat, PREROUTING, 2, MY_DNAT, 1");
        assert_eq!(
            s["forward"],
            "ACCEPT, filter, FORWARD, 1, FWKNOP_FORWARD, 1"
        );
        let (plain, _) = load("PCAP_INTF eth0;\n");
        assert!(!plain.action[0].settings().contains_key("forward"));
    }

    #[test]
    fn a_bad_value_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fwknopd.conf");
        std::fs::write(&p, "# x\nMAX_SPA_PACKET_AGE two;\n").unwrap();
        let err = apply_fwknopd_conf(&p, &mut ServerConfig::default(), &mut Findings::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("fwknopd.conf:2: MAX_SPA_PACKET_AGE expects a number, got `two`"),
            "{err}"
        );
    }

    #[test]
    fn override_files_win_expand_with_earlier_values_and_name_their_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let main = write(
            "fwknopd.conf",
            "MAX_SPA_PACKET_AGE 120;\nFWKNOP_RUN_DIR /tmp/a;\n",
        );
        let o1 = write(
            "o1.conf",
            "MAX_SPA_PACKET_AGE 60;\nDIGEST_FILE $FWKNOP_RUN_DIR/d.cache;\n",
        );
        let o2 = write("o2.conf", "FWKNOP_RUN_DIR /tmp/b;\n");
        let mut cfg = ServerConfig::default();
        apply_fwknopd_files(&[main.clone(), o1, o2], &mut cfg, &mut Findings::default()).unwrap();
        assert_eq!(cfg.server.max_packet_age, 60);
        assert_eq!(cfg.server.run_dir, std::path::PathBuf::from("/tmp/b"));
        // Expanded when read, with the run dir as it was then (fwknopd's order).
        assert_eq!(cfg.fwknopd_vars["DIGEST_FILE"], "/tmp/a/d.cache");
        let bad = write("bad.conf", "\nMAX_SPA_PACKET_AGE soon;\n");
        let err = apply_fwknopd_files(
            &[main, bad.clone()],
            &mut ServerConfig::default(),
            &mut Findings::default(),
        )
        .unwrap_err();
        assert_eq!(err.origin.file, bad);
        assert_eq!(err.origin.line, 2);
    }

    #[test]
    fn override_config_in_the_main_file_replaces_dash_o() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let o1 = write("o1.conf", "MAX_SPA_PACKET_AGE 33;\n");
        let o2 = write("o2.conf", "PCAP_FILTER udp port 40000;\n");
        let dash_o = write("cli.conf", "MAX_SPA_PACKET_AGE 77;\n");
        let main = write(
            "fwknopd.conf",
            &format!("OVERRIDE_CONFIG {}, {};\n", o1.display(), o2.display()),
        );
        let mut cfg = ServerConfig::default();
        let mut findings = Findings::default();
        apply_fwknopd_files(&[main.clone(), dash_o], &mut cfg, &mut findings).unwrap();
        assert_eq!(cfg.server.max_packet_age, 33);
        assert!(
            matches!(&cfg.capture[0], CaptureConfig::Pcap { filter, .. } if filter == "udp port 40000")
        );
        assert!(
            findings.warnings[0].contains("fwknopd.conf:1: OVERRIDE_CONFIG replaces"),
            "{:?}",
            findings.warnings
        );
        let mut cfg = ServerConfig::default();
        apply_fwknopd_files(&[main], &mut cfg, &mut Findings::default()).unwrap();
        assert_eq!(cfg.server.max_packet_age, 33);
    }
}
