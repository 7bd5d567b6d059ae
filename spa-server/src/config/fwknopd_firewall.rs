//! Which firewall a fwknopd.conf was written for, and the action that acts like
//! that fwknopd build.
//!
//! fwknopd picks its firewall when it is built, and each build reads its own
//! variables: `IPT_*` (iptables), `FIREWD_*` (firewalld), `PF_*` (pf), `IPFW_*`
//! (ipfw). A file setting one build's variables selects that backend. A file
//! setting two builds' variables is refused: no fwknopd would read both, so one
//! half would silently be ignored. `FIREWALL_EXE` is a hint when no variable
//! decides (its file name `firewall-cmd`, `pfctl`, `ipfw` or `iptables`), and an
//! error when it names another firewall than the variables do. A file with none
//! of these acts like fwknopd on Linux: iptables; on FreeBSD like fwknopd's
//! FreeBSD build (its configure takes ipfw before pf): ipfw; on macOS: pf.
//! Off Linux, a file that selects iptables or firewalld is refused at the line
//! that selects it (`config/platform.rs`).

use super::conf_file::{parse_num, ConfError, Entry, Findings};
use super::ActionConfig;
use postern_backend_common::Platform;
use serde_json::{Map, Value};

/// The firewall a fwknopd build drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwknopdFirewall {
    Iptables,
    Firewalld,
    Pf,
    Ipfw,
}

impl FwknopdFirewall {
    /// The firewall whose fwknopd build reads `var`, if only one does.
    fn of_var(var: &str) -> Option<FwknopdFirewall> {
        const PREFIXES: [(&str, FwknopdFirewall); 8] = [
            ("IPT_", FwknopdFirewall::Iptables),
            ("ENABLE_IPT_", FwknopdFirewall::Iptables),
            ("FLUSH_IPT_", FwknopdFirewall::Iptables),
            ("FIREWD_", FwknopdFirewall::Firewalld),
            ("ENABLE_FIREWD_", FwknopdFirewall::Firewalld),
            ("FLUSH_FIREWD_", FwknopdFirewall::Firewalld),
            ("PF_", FwknopdFirewall::Pf),
            ("IPFW_", FwknopdFirewall::Ipfw),
        ];
        if var.starts_with("FLUSH_IPFW_") {
            return Some(FwknopdFirewall::Ipfw);
        }
        PREFIXES
            .iter()
            .find(|(prefix, _)| var.starts_with(prefix))
            .map(|(_, fw)| *fw)
    }

    /// The firewall a FIREWALL_EXE path runs, by its file name.
    fn of_exe(path: &str) -> Option<FwknopdFirewall> {
        let name = path.rsplit('/').next().unwrap_or(path);
        match name {
            "firewall-cmd" => Some(FwknopdFirewall::Firewalld),
            "pfctl" => Some(FwknopdFirewall::Pf),
            "ipfw" => Some(FwknopdFirewall::Ipfw),
            "iptables" | "ip6tables" | "iptables-nft" | "iptables-legacy" => {
                Some(FwknopdFirewall::Iptables)
            }
            _ => None,
        }
    }

    /// What fwknopd calls it in its messages and build options.
    pub fn name(self) -> &'static str {
        match self {
            FwknopdFirewall::Iptables => "iptables",
            FwknopdFirewall::Firewalld => "firewalld",
            FwknopdFirewall::Pf => "pf",
            FwknopdFirewall::Ipfw => "ipfw",
        }
    }

    /// The infix of its NAT switches (`ENABLE_<X>_FORWARDING`, …); pf and ipfw
    /// builds of fwknopd have no NAT.
    pub fn nat_infix(self) -> Option<&'static str> {
        match self {
            FwknopdFirewall::Iptables => Some("IPT"),
            FwknopdFirewall::Firewalld => Some("FIREWD"),
            FwknopdFirewall::Pf | FwknopdFirewall::Ipfw => None,
        }
    }

    /// What fwknopd built on `platform` drives when nothing says otherwise.
    fn default_on(platform: Platform) -> FwknopdFirewall {
        match platform {
            Platform::Linux => FwknopdFirewall::Iptables,
            Platform::FreeBsd => FwknopdFirewall::Ipfw,
            Platform::MacOs | Platform::OtherBsd => FwknopdFirewall::Pf,
        }
    }

    /// The firewall `entries` (fwknopd.conf and its `-O` files, in order) were
    /// written for, on `platform`. Errors name both lines when they disagree,
    /// and the line that chose a firewall `platform` does not have.
    pub fn chosen(entries: &[Entry], platform: Platform) -> Result<FwknopdFirewall, ConfError> {
        let mut by_var: Option<(FwknopdFirewall, &Entry)> = None;
        for e in entries {
            let Some(fw) = FwknopdFirewall::of_var(&e.var) else {
                continue;
            };
            match by_var {
                None => by_var = Some((fw, e)),
                Some((first, first_entry)) if first != fw => {
                    return Err(ConfError::new(
                        &e.origin,
                        format!(
                        "{} is a variable of fwknopd's {} build, but {} sets {} of its {} build; \
                             a fwknopd.conf is written for one firewall: remove one of them",
                        e.var,
                        fw.name(),
                        first_entry.origin,
                        first_entry.var,
                        first.name()
                    ),
                    ))
                }
                Some(_) => {}
            }
        }
        let exe = entries.iter().rev().find(|e| e.var == "FIREWALL_EXE");
        let hinted = exe.and_then(|e| FwknopdFirewall::of_exe(&e.value).map(|fw| (fw, e)));
        match (by_var, hinted) {
            (Some((fw, var)), Some((hint, exe))) if fw != hint => Err(ConfError::new(
                &exe.origin,
                format!(
                    "FIREWALL_EXE {} is {}, but {} sets {}, a variable of fwknopd's {} build",
                    exe.value,
                    hint.name(),
                    var.origin,
                    var.var,
                    fw.name()
                ),
            )),
            (Some((fw, by)), _) | (None, Some((fw, by))) => {
                match super::platform::action_refusal(fw.name(), platform) {
                    None => Ok(fw),
                    Some(why) if by.var == "FIREWALL_EXE" => Err(ConfError::new(
                        &by.origin,
                        format!("FIREWALL_EXE {} is {}: {why}", by.value, fw.name()),
                    )),
                    Some(why) => Err(ConfError::new(
                        &by.origin,
                        format!(
                            "{} is a variable of fwknopd's {} build: {why}",
                            by.var,
                            fw.name()
                        ),
                    )),
                }
            }
            (None, None) => Ok(FwknopdFirewall::default_on(platform)),
        }
    }
}

/// fwknopd's default chain layout, used when posternd is started from fwknopd.conf.
const FWKNOPD_INPUT_ACCESS: &str = "ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1";
/// fwknopd's IPT_OUTPUT_ACCESS default (used with ENABLE_IPT_OUTPUT Y).
pub(super) const FWKNOPD_OUTPUT_ACCESS: &str = "ACCEPT, filter, OUTPUT, 1, FWKNOP_OUTPUT, 1";
/// fwknopd.conf variable, iptables action field, fwknopd's default.
const FWKNOPD_NAT_CHAINS: [(&str, &str, &str); 4] = [
    (
        "IPT_FORWARD_ACCESS",
        "forward",
        "ACCEPT, filter, FORWARD, 1, FWKNOP_FORWARD, 1",
    ),
    (
        "IPT_DNAT_ACCESS",
        "dnat",
        "DNAT, nat, PREROUTING, 1, FWKNOP_PREROUTING, 1",
    ),
    (
        "IPT_SNAT_ACCESS",
        "snat",
        "SNAT, nat, POSTROUTING, 1, FWKNOP_POSTROUTING, 1",
    ),
    (
        "IPT_MASQUERADE_ACCESS",
        "masquerade",
        "MASQUERADE, nat, POSTROUTING, 1, FWKNOP_MASQUERADE, 1",
    ),
];

/// Builds an action's settings from fwknopd.conf values.
struct Settings<'a, G> {
    get: &'a G,
    map: Map<String, Value>,
}

impl<'a, G: Fn(&str) -> Option<&'a Entry>> Settings<'a, G> {
    fn new(get: &'a G) -> Self {
        Settings {
            get,
            map: Map::new(),
        }
    }

    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.map.insert(key.into(), value.into());
    }

    /// fwknopd.conf's yes/no `var`, or fwknopd's `default` when unset.
    fn yes(&self, var: &str, default: bool) -> Result<bool, ConfError> {
        match (self.get)(var) {
            Some(e) => super::conf_file::parse_bool(e),
            None => Ok(default),
        }
    }

    /// `key` from fwknopd.conf's `var`, or fwknopd's `default` when unset.
    fn flag(&mut self, key: &str, var: &str, default: bool) -> Result<(), ConfError> {
        let value = self.yes(var, default)?;
        self.set(key, value);
        Ok(())
    }

    /// `key` from an `IPT_*_ACCESS` chain spec in `var` (checked here, so a bad
    /// one names its line), or fwknopd's `default`.
    fn chain_spec(&mut self, key: &str, var: &str, default: &str) -> Result<(), ConfError> {
        let spec = match (self.get)(var) {
            Some(e) => checked_chain_spec(e)?,
            None => default.to_string(),
        };
        self.set(key, spec);
        Ok(())
    }

    /// `key` from a number in `var`; left to the backend's default when unset.
    fn number<T>(&mut self, key: &str, var: &str) -> Result<(), ConfError>
    where
        T: std::str::FromStr + Into<Value>,
    {
        if let Some(e) = (self.get)(var) {
            let n: T = parse_num(e)?;
            self.set(key, n);
        }
        Ok(())
    }

    fn text(&mut self, key: &str, var: &str) {
        if let Some(e) = (self.get)(var) {
            self.set(key, e.value.clone());
        }
    }

    /// The typed action; the backend's own check of the values (as for a
    /// TOML file) puts its message at the first of `vars` the file sets
    /// (else at the file), so a bad value names its line.
    fn action(mut self, kind: &str, vars: &[&str]) -> Result<ActionConfig, ConfError> {
        self.map.insert("type".into(), kind.into());
        let message = match serde_json::from_value::<ActionConfig>(Value::Object(self.map)) {
            Ok(action) => match validate(&action) {
                Ok(()) => return Ok(action),
                Err(m) => m,
            },
            Err(e) => e.to_string(),
        };
        let at = vars.iter().find_map(|v| (self.get)(v));
        Err(match at {
            Some(e) => ConfError::new(&e.origin, message),
            None => ConfError::file(
                std::path::Path::new("fwknopd.conf"),
                format!("the {kind} action: {message}"),
            ),
        })
    }
}

/// The checks of backends whose settings fwknopd.conf numbers can break.
fn validate(action: &ActionConfig) -> Result<(), String> {
    match action {
        #[cfg(feature = "pf")]
        ActionConfig::Pf(c) => c.validate(),
        #[cfg(feature = "ipfw")]
        ActionConfig::Ipfw(c) => c.validate(),
        _ => Ok(()),
    }
}

/// An `IPT_*_ACCESS` value as the iptables backend reads it.
fn checked_chain_spec(e: &Entry) -> Result<String, ConfError> {
    #[cfg(all(feature = "iptables", target_os = "linux"))]
    e.value
        .parse::<postern_backend_iptables::ChainSpec>()
        .and_then(|spec| spec.validate())
        .map_err(|m| ConfError::new(&e.origin, format!("{}: {m}", e.var)))?;
    Ok(e.value.clone())
}

/// The `iptables` action as fwknopd's iptables build: its chains, flushing,
/// rule placement, output chain and, with NAT on, its NAT chains.
pub fn iptables_action<'a>(
    get: &'a impl Fn(&str) -> Option<&'a Entry>,
) -> Result<ActionConfig, ConfError> {
    let mut s = Settings::new(get);
    s.chain_spec("input", "IPT_INPUT_ACCESS", FWKNOPD_INPUT_ACCESS)?;
    s.flag("flush_at_init", "FLUSH_IPT_AT_INIT", true)?;
    s.flag("flush_at_exit", "FLUSH_IPT_AT_EXIT", true)?;
    // fwknopd appends new rules unless ENABLE_RULE_PREPEND is set.
    s.flag("prepend", "ENABLE_RULE_PREPEND", false)?;
    if s.yes("ENABLE_IPT_OUTPUT", false)? {
        s.chain_spec("output", "IPT_OUTPUT_ACCESS", FWKNOPD_OUTPUT_ACCESS)?;
    }
    s.text("iptables", "FIREWALL_EXE");
    let mut nat_on = false;
    for var in [
        "ENABLE_IPT_FORWARDING",
        "ENABLE_IPT_LOCAL_NAT",
        "ENABLE_IPT_SNAT",
    ] {
        nat_on |= s.yes(var, false)?;
    }
    // With NAT on, the NAT chains are fwknopd.conf's, or fwknopd's defaults.
    if nat_on {
        for (var, key, default) in FWKNOPD_NAT_CHAINS {
            s.chain_spec(key, var, default)?;
        }
    }
    s.action("iptables", &[])
}

/// The `firewalld` action as fwknopd's firewalld build configures itself.
///
/// fwknopd's firewalld build runs iptables commands through `firewall-cmd
/// --direct --passthrough` into its own chains (FIREWD_*_ACCESS). postern
/// instead adds rich rules with firewalld's own timeouts over D-Bus: with
/// firewalld's nftables backend an accept in an iptables chain does not
/// override firewalld's own reject, and the rich rules expire in firewalld even
/// if posternd dies. So the chain names are not used; the targets must be the
/// ones fwknopd's defaults name (an access chain that drops or rejects cannot be
/// honoured by an accepting rich rule and is refused). FIREWALL_EXE only
/// selects the build: postern never runs firewall-cmd.
pub fn firewalld_action<'a>(
    get: &'a impl Fn(&str) -> Option<&'a Entry>,
    findings: &mut Findings,
) -> Result<ActionConfig, ConfError> {
    const TARGETS: [(&str, &str); 6] = [
        ("FIREWD_INPUT_ACCESS", "ACCEPT"),
        ("FIREWD_OUTPUT_ACCESS", "ACCEPT"),
        ("FIREWD_FORWARD_ACCESS", "ACCEPT"),
        ("FIREWD_DNAT_ACCESS", "DNAT"),
        ("FIREWD_SNAT_ACCESS", "SNAT"),
        ("FIREWD_MASQUERADE_ACCESS", "MASQUERADE"),
    ];
    for (var, target) in TARGETS {
        let Some(e) = get(var) else { continue };
        let fields: Vec<&str> = e.value.split(',').map(str::trim).collect();
        if fields.len() != 6 {
            return Err(ConfError::new(
                &e.origin,
                format!(
                    "{var} expects `target, table, from_chain, jump_position, to_chain, rule_position`, got `{}`",
                    e.value
                ),
            ));
        }
        if !fields[0].eq_ignore_ascii_case(target) {
            return Err(ConfError::new(
                &e.origin,
                format!(
                    "{var}: target `{}` cannot be honoured by the firewalld action, whose grants \
                     are firewalld rich rules; only {target} is",
                    fields[0]
                ),
            ));
        }
    }
    for var in TARGETS.iter().map(|(var, _)| *var) {
        if let Some(e) = get(var) {
            findings.warn(format!(
                "{}: {var}: only the target is used; the table, chains and positions have no \
                 effect (grants are firewalld rich rules, ordered by firewalld)",
                e.origin
            ));
        }
    }
    if let Some(e) = get("ENABLE_RULE_PREPEND") {
        if super::conf_file::parse_bool(e)? {
            findings.warn(format!(
                "{}: ENABLE_RULE_PREPEND has no effect with firewalld: rich rules have no order",
                e.origin
            ));
        }
    }
    if let (Some(on), Some(ip)) = (get("ENABLE_FIREWD_SNAT"), get("SNAT_TRANSLATE_IP")) {
        if super::conf_file::parse_bool(on)? {
            return Err(ConfError::new(
                &ip.origin,
                format!(
                    "SNAT_TRANSLATE_IP {}: firewalld rich rules can masquerade but not rewrite to a \
                     given address; remove SNAT_TRANSLATE_IP to masquerade ({} ENABLE_FIREWD_SNAT), \
                     or use the iptables or nftables action",
                    ip.value, on.origin
                ),
            ));
        }
    }
    if let Some(e) = get("ENABLE_FIREWD_OUTPUT") {
        if super::conf_file::parse_bool(e)? {
            // Opens nothing less: firewalld's zones do not filter what this
            // host sends; only a policy from HOST could, and it is the admin's.
            findings.warn(format!(
                "{}: ENABLE_FIREWD_OUTPUT: firewalld lets this host's replies out unless a \
                 policy from HOST filters them, so no output rules are added",
                e.origin
            ));
        }
    }
    let mut s = Settings::new(get);
    s.flag("flush_at_init", "FLUSH_FIREWD_AT_INIT", true)?;
    s.flag("flush_at_exit", "FLUSH_FIREWD_AT_EXIT", true)?;
    s.action("firewalld", &[])
}

/// The `pf` action as fwknopd's pf build: its anchor (default `fwknop`), flushed
/// at start and at exit.
pub fn pf_action<'a>(
    get: &'a impl Fn(&str) -> Option<&'a Entry>,
) -> Result<ActionConfig, ConfError> {
    let mut s = Settings::new(get);
    s.set("anchor", "fwknop");
    s.text("anchor", "PF_ANCHOR_NAME");
    s.set("expire_interval_secs", 30);
    s.number::<u32>("expire_interval_secs", "PF_EXPIRE_INTERVAL")?;
    s.text("pfctl", "FIREWALL_EXE");
    s.set("flush_at_init", true);
    s.set("flush_at_exit", true);
    s.action("pf", &["PF_ANCHOR_NAME"])
}

/// The `ipfw` action as fwknopd's ipfw build: rule numbers, sets, purge interval,
/// check-state and flushing from IPFW_* / FLUSH_IPFW_*. IPFW_MAX_RULES left unset
/// is postern's 1000 (fwknopd.conf's documented value), not fwknopd's compiled
/// 65535, which from rule 10000 would run into ipfw's default rule.
pub fn ipfw_action<'a>(
    get: &'a impl Fn(&str) -> Option<&'a Entry>,
) -> Result<ActionConfig, ConfError> {
    let mut s = Settings::new(get);
    s.text("ipfw", "FIREWALL_EXE");
    s.number::<u32>("start_rule_num", "IPFW_START_RULE_NUM")?;
    s.number::<u32>("max_rules", "IPFW_MAX_RULES")?;
    s.number::<u8>("active_set", "IPFW_ACTIVE_SET_NUM")?;
    s.number::<u8>("expire_set", "IPFW_EXPIRE_SET_NUM")?;
    s.number::<u32>("expire_purge_interval_secs", "IPFW_EXPIRE_PURGE_INTERVAL")?;
    s.flag("add_check_state", "IPFW_ADD_CHECK_STATE", false)?;
    s.flag("flush_at_init", "FLUSH_IPFW_AT_INIT", true)?;
    s.flag("flush_at_exit", "FLUSH_IPFW_AT_EXIT", true)?;
    s.action(
        "ipfw",
        &[
            "IPFW_MAX_RULES",
            "IPFW_START_RULE_NUM",
            "IPFW_EXPIRE_SET_NUM",
            "IPFW_ACTIVE_SET_NUM",
            "IPFW_EXPIRE_PURGE_INTERVAL",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::super::conf_file::parse_lines;
    use super::super::fwknopd::apply_fwknopd_text;
    use super::super::ServerConfig;
    use super::*;
    use std::path::Path;

    fn chosen(text: &str) -> Result<FwknopdFirewall, String> {
        chosen_on(text, Platform::Linux)
    }

    fn chosen_on(text: &str, platform: Platform) -> Result<FwknopdFirewall, String> {
        let entries = parse_lines(Path::new("f.conf"), text).unwrap();
        FwknopdFirewall::chosen(&entries, platform).map_err(|e| e.to_string())
    }

    /// On FreeBSD a file that names no firewall acts like fwknopd's FreeBSD
    /// build (ipfw); pf and ipfw files are read as on Linux; one that selects
    /// iptables or firewalld is refused at the line that selects it.
    #[test]
    fn on_freebsd_linux_firewalls_are_refused_at_their_line() {
        use FwknopdFirewall::*;
        let freebsd = |text| chosen_on(text, Platform::FreeBsd);
        assert_eq!(freebsd("MAX_SPA_PACKET_AGE 60;\n"), Ok(Ipfw));
        assert_eq!(
            chosen_on("MAX_SPA_PACKET_AGE 60;\n", Platform::MacOs),
            Ok(Pf)
        );
        assert_eq!(freebsd("PF_ANCHOR_NAME spa;\n"), Ok(Pf));
        assert_eq!(freebsd("FIREWALL_EXE /sbin/pfctl;\n"), Ok(Pf));
        assert_eq!(freebsd("IPFW_START_RULE_NUM 2000;\n"), Ok(Ipfw));
        assert_eq!(
            freebsd("# x\nIPT_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\n"),
            Err(
                "f.conf:2: IPT_INPUT_ACCESS is a variable of fwknopd's iptables build: the \
                 iptables action is Linux-only; on FreeBSD use pf or ipfw"
                    .into()
            )
        );
        assert_eq!(
            freebsd("FLUSH_FIREWD_AT_INIT N;\n"),
            Err(
                "f.conf:1: FLUSH_FIREWD_AT_INIT is a variable of fwknopd's firewalld build: \
                 the firewalld action is Linux-only; on FreeBSD use pf or ipfw"
                    .into()
            )
        );
        assert_eq!(
            freebsd("MAX_SPA_PACKET_AGE 60;\nFIREWALL_EXE /usr/sbin/iptables;\n"),
            Err(
                "f.conf:2: FIREWALL_EXE /usr/sbin/iptables is iptables: the iptables action \
                 is Linux-only; on FreeBSD use pf or ipfw"
                    .into()
            )
        );
    }

    fn load(text: &str) -> Result<ServerConfig, String> {
        let mut cfg = ServerConfig::default();
        apply_fwknopd_text(
            Path::new("f.conf"),
            text,
            &mut cfg,
            &mut Findings::default(),
        )
        .map(|_| cfg)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn each_builds_variables_select_its_firewall() {
        use FwknopdFirewall::*;
        assert_eq!(chosen("MAX_SPA_PACKET_AGE 60;\n"), Ok(Iptables));
        assert_eq!(
            chosen("IPT_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\n"),
            Ok(Iptables)
        );
        assert_eq!(chosen("FLUSH_FIREWD_AT_INIT N;\n"), Ok(Firewalld));
        assert_eq!(chosen("ENABLE_FIREWD_FORWARDING Y;\n"), Ok(Firewalld));
        assert_eq!(chosen("PF_ANCHOR_NAME spa;\n"), Ok(Pf));
        assert_eq!(chosen("FLUSH_IPFW_AT_EXIT N;\n"), Ok(Ipfw));
        assert_eq!(chosen("IPFW_START_RULE_NUM 2000;\n"), Ok(Ipfw));
        // Shared names decide nothing.
        assert_eq!(
            chosen("SNAT_TRANSLATE_IP 192.0.2.1;\nENABLE_NAT_DNS N;\n"),
            Ok(Iptables)
        );
    }

    #[test]
    fn firewall_exe_is_a_hint_and_must_agree() {
        use FwknopdFirewall::*;
        assert_eq!(chosen("FIREWALL_EXE /bin/firewall-cmd;\n"), Ok(Firewalld));
        assert_eq!(chosen("FIREWALL_EXE /sbin/pfctl;\n"), Ok(Pf));
        assert_eq!(chosen("FIREWALL_EXE /sbin/ipfw;\n"), Ok(Ipfw));
        assert_eq!(chosen("FIREWALL_EXE /usr/sbin/iptables;\n"), Ok(Iptables));
        // A wrapper of the admin's own says nothing.
        assert_eq!(
            chosen("FIREWALL_EXE /usr/local/bin/fw-wrap;\nPF_ANCHOR_NAME x;\n"),
            Ok(Pf)
        );
        let err = chosen("FIREWD_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\nFIREWALL_EXE /sbin/iptables;\n").unwrap_err();
        assert_eq!(
            err,
            "f.conf:2: FIREWALL_EXE /sbin/iptables is iptables, but f.conf:1 sets FIREWD_INPUT_ACCESS, a variable of fwknopd's firewalld build"
        );
    }

    #[test]
    fn two_builds_variables_are_refused_naming_both_lines() {
        let err = chosen("# x\nFLUSH_FIREWD_AT_INIT Y;\nMAX_SPA_PACKET_AGE 60;\nIPT_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\n").unwrap_err();
        assert!(err.starts_with("f.conf:4: IPT_INPUT_ACCESS is a variable of fwknopd's iptables build, but f.conf:2 sets FLUSH_FIREWD_AT_INIT of its firewalld build"), "{err}");
        let err = chosen("PF_ANCHOR_NAME a;\nIPFW_MAX_RULES 10;\n").unwrap_err();
        assert!(
            err.contains("f.conf:2: IPFW_MAX_RULES")
                && err.contains("f.conf:1 sets PF_ANCHOR_NAME"),
            "{err}"
        );
        assert!(load("ENABLE_IPT_FORWARDING N;\nENABLE_FIREWD_FORWARDING Y;\n").is_err());
    }

    #[test]
    fn a_firewalld_file_gives_the_firewalld_action_and_its_nat() {
        let cfg = load("FLUSH_FIREWD_AT_EXIT N;\nENABLE_FIREWD_FORWARDING Y;\nENABLE_FIREWD_LOCAL_NAT Y;\nENABLE_FIREWD_SNAT Y;\nFIREWD_INPUT_ACCESS ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;\nFIREWALL_EXE /usr/bin/firewall-cmd;\n").unwrap();
        let a = &cfg.action[0];
        assert_eq!(a.kind(), "firewalld");
        assert_eq!(a.settings()["flush_at_init"], true);
        assert_eq!(a.settings()["flush_at_exit"], false);
        assert!(!a.settings().contains_key("input"));
        assert!(cfg.server.nat.forwarding && cfg.server.nat.local);
        assert_eq!(
            cfg.server.nat.snat,
            Some(super::super::SnatSetting(
                spa_core::firewall::Snat::Masquerade
            ))
        );
        // The backend takes these settings.
        #[cfg(all(feature = "firewalld", target_os = "linux"))]
        assert!(matches!(a, ActionConfig::Firewalld(_)));
        let plain = load("FIREWALL_EXE /usr/bin/firewall-cmd;\n").unwrap();
        assert_eq!(plain.action[0].kind(), "firewalld");
        assert!(!plain.server.nat.forwarding && plain.server.nat.snat.is_none());
    }

    #[test]
    fn firewalld_output_is_warned_about() {
        let mut cfg = ServerConfig::default();
        let mut findings = Findings::default();
        apply_fwknopd_text(
            Path::new("f.conf"),
            "FLUSH_FIREWD_AT_INIT Y;\nENABLE_FIREWD_OUTPUT Y;\n",
            &mut cfg,
            &mut findings,
        )
        .unwrap();
        assert_eq!(findings.warnings.len(), 1, "{:?}", findings.warnings);
        assert!(findings.warnings[0].starts_with("f.conf:2: ENABLE_FIREWD_OUTPUT"));
    }

    #[test]
    fn firewalld_settings_it_cannot_honour_name_their_line() {
        let err = load("ENABLE_FIREWD_SNAT Y;\nSNAT_TRANSLATE_IP 192.0.2.1;\n").unwrap_err();
        assert!(
            err.starts_with(
                "f.conf:2: SNAT_TRANSLATE_IP 192.0.2.1: firewalld rich rules can masquerade"
            ),
            "{err}"
        );
        // Without SNAT on, fwknopd ignores the address too.
        assert!(load("ENABLE_FIREWD_SNAT N;\nSNAT_TRANSLATE_IP 192.0.2.1;\n").is_ok());
        let err =
            load("\nFIREWD_INPUT_ACCESS DROP, filter, INPUT, 1, FWKNOP_INPUT, 1;\n").unwrap_err();
        assert!(
            err.starts_with("f.conf:2: FIREWD_INPUT_ACCESS: target `DROP`"),
            "{err}"
        );
        let err = load("FIREWD_FORWARD_ACCESS ACCEPT, filter;\n").unwrap_err();
        assert!(
            err.starts_with("f.conf:1: FIREWD_FORWARD_ACCESS expects"),
            "{err}"
        );
    }

    #[test]
    fn a_pf_file_gives_the_pf_action() {
        let cfg = load("PF_ANCHOR_NAME spa;\nPF_EXPIRE_INTERVAL 10;\nFIREWALL_EXE /sbin/pfctl;\n")
            .unwrap();
        let a = &cfg.action[0];
        assert_eq!(a.kind(), "pf");
        assert_eq!(a.settings()["anchor"], "spa");
        assert_eq!(a.settings()["expire_interval_secs"], 10);
        assert_eq!(a.settings()["pfctl"], "/sbin/pfctl");
        assert_eq!(a.settings()["flush_at_init"], true);
        let cfg = load("FIREWALL_EXE /sbin/pfctl;\n").unwrap();
        assert_eq!(cfg.action[0].settings()["anchor"], "fwknop");
        assert_eq!(cfg.action[0].settings()["expire_interval_secs"], 30);
        assert!(!cfg.server.nat.forwarding);
        let err = load("PF_EXPIRE_INTERVAL soon;\n").unwrap_err();
        assert!(
            err.starts_with("f.conf:1: PF_EXPIRE_INTERVAL expects a number"),
            "{err}"
        );
        #[cfg(feature = "pf")]
        {
            let err = load("\nPF_ANCHOR_NAME _bad;\n").unwrap_err();
            assert!(err.starts_with("f.conf:2: anchor `_bad`"), "{err}");
        }
    }

    #[test]
    fn an_ipfw_file_gives_the_ipfw_action() {
        let cfg = load("IPFW_START_RULE_NUM 2000;\nIPFW_MAX_RULES 50;\nIPFW_ACTIVE_SET_NUM 3;\nIPFW_EXPIRE_SET_NUM 4;\nIPFW_EXPIRE_PURGE_INTERVAL 20;\nIPFW_ADD_CHECK_STATE Y;\nFLUSH_IPFW_AT_INIT N;\n").unwrap();
        let a = &cfg.action[0];
        assert_eq!(a.kind(), "ipfw");
        for (key, value) in [
            ("start_rule_num", Value::from(2000)),
            ("max_rules", 50.into()),
            ("active_set", 3.into()),
            ("expire_set", 4.into()),
            ("expire_purge_interval_secs", 20.into()),
            ("add_check_state", true.into()),
            ("flush_at_init", false.into()),
            ("flush_at_exit", true.into()),
        ] {
            assert_eq!(a.settings()[key], value, "{key}");
        }
        #[cfg(feature = "ipfw")]
        {
            let err = load("IPFW_ACTIVE_SET_NUM 2;\nIPFW_EXPIRE_SET_NUM 2;\n").unwrap_err();
            assert!(
                err.starts_with("f.conf:2: active_set and expire_set"),
                "{err}"
            );
            let err = load("IPFW_START_RULE_NUM 65000;\nIPFW_MAX_RULES 1000;\n").unwrap_err();
            assert!(err.starts_with("f.conf:2: rule numbers"), "{err}");
        }
        let err = load("IPFW_ACTIVE_SET_NUM 300;\n").unwrap_err();
        assert!(
            err.starts_with("f.conf:1: IPFW_ACTIVE_SET_NUM expects a number"),
            "{err}"
        );
    }
}
