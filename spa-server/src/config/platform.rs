//! Settings only Linux can honour, refused elsewhere when the configuration
//! is read, naming the file and line (or the `[[table]]` of a TOML file).
//!
//! - The nftables, iptables and firewalld actions and the NFQUEUE capture:
//!   netfilter and its tools are Linux's. They are not built elsewhere, and a
//!   configuration moved from Linux must say so, not fail at start as an
//!   unknown or missing backend.
//! - Capabilities handed on to commands and scripts (CMD_CAPABILITIES, a
//!   script action's `capabilities`): the BSDs have none, and the child would
//!   run with all of root's power, more than the file gives it.
//!
//! Each decision takes the platform as a value, so Linux tests check the
//! answers FreeBSD gives. fwknopd.conf is checked where it is read
//! (`fwknopd.rs`, `fwknopd_firewall.rs`), with the same messages.

use super::{ActionConfig, ServerConfig};
use postern_backend_common::{CapSet, Platform};
use std::path::Path;

/// Why the action `kind` cannot run on `platform`, if it cannot.
pub fn action_refusal(kind: &str, platform: Platform) -> Option<String> {
    let linux_only = matches!(kind, "nftables" | "iptables" | "firewalld");
    (linux_only && platform != Platform::Linux).then(|| {
        format!(
            "the {kind} action is Linux-only; on {platform} use {}",
            platform.firewalls()
        )
    })
}

/// Why the capture `kind` cannot run on `platform`, if it cannot.
pub fn capture_refusal(kind: &str, platform: Platform) -> Option<String> {
    (kind == "nfqueue" && platform != Platform::Linux).then(|| {
        format!(
            "the nfqueue capture (NFQUEUE) is Linux-only; on {platform} use the udp, tcp \
             or pcap capture"
        )
    })
}

/// Why `setting` = `set` cannot be honoured on `platform`, if it cannot.
pub fn capabilities_refusal(setting: &str, set: CapSet, platform: Platform) -> Option<String> {
    (!set.is_empty() && !platform.has_capabilities()).then(|| {
        format!(
            "{setting} {set}: {platform} has no capabilities, so a command or script \
             given some would run with all of root's power; remove {setting}"
        )
    })
}

/// Where the configuration came from, to name the place of a setting.
pub enum Source<'a> {
    /// A native TOML file and its text.
    Toml { path: &'a Path, text: &'a str },
    /// fwknopd.conf (checked as it is read: see the module docs).
    Fwknopd(&'a Path),
    /// No file: built-in defaults.
    Defaults,
}

impl Source<'_> {
    /// Entry `index` of the `count` entries of the array of tables `table`:
    /// `file:line` of its `[[table]]` header when the file has exactly
    /// `count` of them (else entries came from elsewhere, e.g. defaults or
    /// POSTERN_* variables, and only the number is told).
    fn place(&self, table: &str, index: usize, count: usize) -> String {
        let entry = format!("[[{table}]] #{}", index + 1);
        match self {
            Source::Toml { path, text } => match header_line(text, table, index, count) {
                Some(line) => format!("{}:{line}: {entry}", path.display()),
                None => format!("{}: {entry}", path.display()),
            },
            Source::Fwknopd(path) => format!("{}: {entry}", path.display()),
            Source::Defaults => format!("built-in defaults: {entry}"),
        }
    }
}

/// The line (1-based) of the `index`-th `[[table]]` header of `text`, if
/// it has `count` of them (read with toml_edit, which keeps each table's
/// place in the file).
fn header_line(text: &str, table: &str, index: usize, count: usize) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let tables = doc.get(table)?.as_array_of_tables()?;
    if tables.len() != count {
        return None;
    }
    let at = tables.get(index)?.span()?.start;
    Some(text[..at].matches('\n').count() + 1)
}

/// What `cfg` asks for that `platform` cannot do: every refusal, one per line,
/// each with its place. Warnings: what runs with more power there than on
/// Linux without being refused.
pub fn check(
    cfg: &ServerConfig,
    source: &Source,
    platform: Platform,
) -> Result<Vec<String>, String> {
    let mut refused = Vec::new();
    let mut warnings = Vec::new();
    for (i, action) in cfg.action.iter().enumerate() {
        let at = || source.place("action", i, cfg.action.len());
        if let Some(why) = action_refusal(action.kind(), platform) {
            refused.push(format!("{}: {why}", at()));
        }
        if let ActionConfig::Script(s) = action {
            if let Some(why) = capabilities_refusal("capabilities", s.capabilities, platform) {
                refused.push(format!("{} (`script`): {why}", at()));
            }
        }
    }
    for (i, capture) in cfg.capture.iter().enumerate() {
        if let Some(why) = capture_refusal(capture.name(), platform) {
            let at = source.place("capture", i, cfg.capture.len());
            refused.push(format!("{at}: {why}"));
        }
    }
    // `[[access]]` tables come first, then the stanzas of access.conf files.
    let in_toml = cfg.access.iter().filter(|s| s.origin.is_none()).count();
    for (i, s) in cfg.access.iter().enumerate() {
        let at = || match (&s.cmd_capabilities_origin, &s.origin) {
            (Some(line), _) | (None, Some(line)) => line.to_string(),
            (None, None) => source.place("access", i, in_toml),
        };
        if let Some(why) = capabilities_refusal("CMD_CAPABILITIES", s.cmd_capabilities, platform) {
            refused.push(format!("{}: {why}", at()));
        }
        let as_root = s.cmd_exec_user.as_deref().is_none_or(|u| u == "root");
        if !platform.has_capabilities() && s.enable_cmd_exec && as_root {
            let at = s
                .origin
                .as_ref()
                .map_or_else(|| source.place("access", i, in_toml), ToString::to_string);
            warnings.push(format!(
                "{at}: ENABLE_CMD_EXEC without CMD_EXEC_USER: client commands{} run as root \
                 with all of root's power on {platform} (no capabilities to take away); set \
                 CMD_EXEC_USER",
                if s.enable_cmd_sudo_exec {
                    " (through sudo)"
                } else {
                    ""
                }
            ));
        }
    }
    if refused.is_empty() {
        Ok(warnings)
    } else {
        Err(refused.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{access, CaptureConfig, Findings};
    use std::net::SocketAddr;

    const FREEBSD: Platform = Platform::FreeBsd;

    fn toml_config(text: &str) -> ServerConfig {
        use figment::providers::{Format, Serialized, Toml};
        figment::Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn check_toml(text: &str, platform: Platform) -> Result<Vec<String>, String> {
        let cfg = toml_config(text);
        let source = Source::Toml {
            path: Path::new("/etc/postern/postern.toml"),
            text,
        };
        check(&cfg, &source, platform)
    }

    #[test]
    fn linux_only_actions_and_captures_are_refused_elsewhere() {
        for kind in ["nftables", "iptables", "firewalld"] {
            assert_eq!(action_refusal(kind, Platform::Linux), None);
            assert_eq!(
                action_refusal(kind, FREEBSD).as_deref(),
                Some(
                    format!("the {kind} action is Linux-only; on FreeBSD use pf or ipfw").as_str()
                )
            );
            assert!(action_refusal(kind, Platform::MacOs)
                .unwrap()
                .ends_with("on macOS use pf"));
        }
        for kind in ["pf", "ipfw", "script", "plugin", "log", "auto"] {
            assert_eq!(action_refusal(kind, FREEBSD), None, "{kind}");
        }
        assert_eq!(capture_refusal("nfqueue", Platform::Linux), None);
        assert!(capture_refusal("nfqueue", FREEBSD)
            .unwrap()
            .starts_with("the nfqueue capture (NFQUEUE) is Linux-only; on FreeBSD use"));
        for kind in ["udp", "tcp", "pcap"] {
            assert_eq!(capture_refusal(kind, FREEBSD), None, "{kind}");
        }
    }

    #[test]
    fn handing_on_capabilities_is_refused_where_there_are_none() {
        let raw = CapSet::parse("net_raw").unwrap();
        assert_eq!(
            capabilities_refusal("CMD_CAPABILITIES", raw, Platform::Linux),
            None
        );
        assert_eq!(
            capabilities_refusal("CMD_CAPABILITIES", CapSet::EMPTY, FREEBSD),
            None
        );
        assert_eq!(
            capabilities_refusal("CMD_CAPABILITIES", raw, FREEBSD).unwrap(),
            "CMD_CAPABILITIES net_raw: FreeBSD has no capabilities, so a command or script \
             given some would run with all of root's power; remove CMD_CAPABILITIES"
        );
    }

    /// A TOML file moved from Linux: each refusal names the file, the line of
    /// its `[[table]]` header and what to use instead; all are told at once.
    #[test]
    fn a_linux_toml_on_freebsd_is_refused_at_each_table() {
        let text = "[server]\nmax_packet_age = 60\n\n\
                    [[capture]]\ntype = \"udp\"\nlisten = \"0.0.0.0:62201\"\n\n\
                    [[capture]] # the queue\ntype = \"nfqueue\"\n\n\
                    [[action]]\ntype = \"log\"\n\n\
                    [[action]]\ntype = \"nftables\"\n\n\
                    [[action]]\ntype = \"script\"\nopen = \"/bin/true\"\ncapabilities = \"net_admin\"\n\n\
                    [[access]]\nsource = \"ANY\"\nkey = \"k\"\ncmd_capabilities = \"net_raw\"\n";
        assert_eq!(check_toml(text, Platform::Linux), Ok(vec![]));
        let err = check_toml(text, FREEBSD).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            [
                "/etc/postern/postern.toml:14: [[action]] #2: the nftables action is \
                 Linux-only; on FreeBSD use pf or ipfw",
                "/etc/postern/postern.toml:17: [[action]] #3 (`script`): capabilities \
                 net_admin: FreeBSD has no capabilities, so a command or script given some \
                 would run with all of root's power; remove capabilities",
                "/etc/postern/postern.toml:8: [[capture]] #2: the nfqueue capture (NFQUEUE) \
                 is Linux-only; on FreeBSD use the udp, tcp or pcap capture",
                "/etc/postern/postern.toml:22: [[access]] #1: CMD_CAPABILITIES net_raw: \
                 FreeBSD has no capabilities, so a command or script given some would run \
                 with all of root's power; remove CMD_CAPABILITIES",
            ]
        );
    }

    /// Entries the file does not hold as `[[table]]` headers get their number only.
    #[test]
    fn without_matching_headers_only_the_number_is_told() {
        assert_eq!(
            header_line("[[action]]\n[[action]]\n", "action", 1, 2),
            Some(2)
        );
        assert_eq!(header_line("[[ action ]]  # x\n", "action", 0, 1), Some(1));
        assert_eq!(header_line("[[actions]]\n", "action", 0, 1), None);
        assert_eq!(header_line("[[action]]\n", "action", 0, 2), None);
        let cfg = ServerConfig {
            capture: vec![CaptureConfig::Nfqueue(Default::default())],
            ..ServerConfig::default()
        };
        let source = Source::Toml {
            path: Path::new("p.toml"),
            text: "",
        };
        let err = check(&cfg, &source, FREEBSD).unwrap_err();
        assert!(
            err.starts_with("p.toml: [[capture]] #1: the nfqueue capture"),
            "{err}"
        );
        assert!(check(&cfg, &Source::Defaults, FREEBSD)
            .unwrap_err()
            .starts_with("built-in defaults: [[capture]] #1: "));
        let listen: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let fine = ServerConfig {
            capture: vec![CaptureConfig::Udp { listen }, CaptureConfig::tcp(listen)],
            ..ServerConfig::default()
        };
        assert_eq!(check(&fine, &Source::Defaults, FREEBSD), Ok(vec![]));
    }

    /// access.conf: CMD_CAPABILITIES is refused at its own line; commands
    /// that run as root are warned about (they keep root's power there).
    #[test]
    fn access_conf_capabilities_are_refused_at_their_line() {
        let text = "SOURCE ANY\nKEY k\nCMD_CAPABILITIES net_raw\n\n\
                    SOURCE 192.0.2.1\nKEY k2\nENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\n\n\
                    SOURCE 192.0.2.2\nKEY k3\nENABLE_CMD_EXEC Y\n";
        let stanzas = access::parse_access_text(
            Path::new("/etc/fwknop/access.conf"),
            text,
            &mut Findings::default(),
        )
        .unwrap();
        let cfg = ServerConfig {
            access: stanzas,
            ..ServerConfig::default()
        };
        let source = Source::Fwknopd(Path::new("/etc/fwknop/fwknopd.conf"));
        assert_eq!(
            check(&cfg, &source, FREEBSD).unwrap_err(),
            "/etc/fwknop/access.conf:3: CMD_CAPABILITIES net_raw: FreeBSD has no \
             capabilities, so a command or script given some would run with all of root's \
             power; remove CMD_CAPABILITIES"
        );
        assert_eq!(check(&cfg, &source, Platform::Linux), Ok(vec![]));
        let without: Vec<_> = cfg
            .access
            .iter()
            .cloned()
            .map(|mut s| {
                s.cmd_capabilities = CapSet::EMPTY;
                s
            })
            .collect();
        let cfg = ServerConfig {
            access: without,
            ..cfg
        };
        let warnings = check(&cfg, &source, FREEBSD).unwrap();
        assert_eq!(
            warnings,
            [
                "/etc/fwknop/access.conf:10: ENABLE_CMD_EXEC without CMD_EXEC_USER: client \
              commands run as root with all of root's power on FreeBSD (no capabilities to \
              take away); set CMD_EXEC_USER"
            ]
        );
        assert_eq!(check(&cfg, &source, Platform::Linux), Ok(vec![]));
    }
}
