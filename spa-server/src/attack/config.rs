//! `[attack]` in postern.toml: when a source counts as attacking, and what then.

use crate::pipeline::Stage;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Opt-in attack detection (absent: nothing is counted). Defaults, and why:
/// 10 refused packets within 60 s is far beyond a client with a wrong key
/// retrying by hand, yet a flood crosses it in a blink; blocking is off unless
/// `block_secs` is set, because a UDP source address is easily forged (see the
/// README: someone could get another host blocked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// Refused packets from one source that make it an attacker…
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// …counted within this many seconds from its first counted refusal.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Drop new traffic from an attacker in the firewall for this long (the
    /// kernel expires the block); 0: detect only (log, metrics, hook).
    #[serde(default)]
    pub block_secs: u32,
    /// The stages whose refusals count: `hmac`, `decrypt`, `replay` (default),
    /// and on request `precheck` (malformed packets: also random noise) and
    /// `policy` (knocks with valid keys that policy refused).
    #[serde(default = "default_count")]
    pub count: Vec<String>,
    /// A source whose knock was granted is neither counted nor blocked for
    /// this long afterwards, and its count starts again from zero.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// Sources never counted nor blocked (addresses or networks).
    #[serde(default, with = "exempt_list", skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<ipnet::IpNet>,
    /// Sources tracked at once (counts and recent grants); beyond it the least
    /// recently seen is forgotten, so memory stays flat under spoofed floods.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// Sources blocked at once by this posternd at most; further attackers are
    /// logged but not blocked until blocks expire.
    #[serde(default = "default_max_blocked")]
    pub max_blocked: usize,
    /// Run on each detection: an absolute program path and its arguments, no
    /// shell, with `POSTERN_SOURCE`, `POSTERN_FAILURES`, `POSTERN_WINDOW_SECS`,
    /// `POSTERN_STAGE`, `POSTERN_REASON` and `POSTERN_BLOCK_SECS` set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook: Vec<String>,
    /// Seconds a hook may run before it is killed.
    #[serde(default = "default_hook_timeout_secs")]
    pub hook_timeout_secs: u64,
    /// Hooks running at once at most; a detection beyond that runs none (logged).
    #[serde(default = "default_max_hooks")]
    pub max_hooks: usize,
}

fn default_threshold() -> u32 {
    10
}
fn default_window_secs() -> u64 {
    60
}
fn default_count() -> Vec<String> {
    ["hmac", "decrypt", "replay"].map(String::from).to_vec()
}
fn default_grace_secs() -> u64 {
    3600
}
fn default_max_sources() -> usize {
    10_000
}
fn default_max_blocked() -> usize {
    10_000
}
fn default_hook_timeout_secs() -> u64 {
    10
}
fn default_max_hooks() -> usize {
    4
}

impl Default for AttackConfig {
    fn default() -> Self {
        AttackConfig {
            threshold: default_threshold(),
            window_secs: default_window_secs(),
            block_secs: 0,
            count: default_count(),
            grace_secs: default_grace_secs(),
            exempt: Vec::new(),
            max_sources: default_max_sources(),
            max_blocked: default_max_blocked(),
            hook: Vec::new(),
            hook_timeout_secs: default_hook_timeout_secs(),
            max_hooks: default_max_hooks(),
        }
    }
}

/// The longest block: ipset's timeout limit (2^31/1000 s, about 24 days).
pub const MAX_BLOCK_SECS: u32 = 2_147_483;
/// The most blocks at once: an ipset's default `maxelem`.
pub const MAX_BLOCKED: usize = 65_536;
/// The most sources tracked (a few hundred bytes each).
pub const MAX_SOURCES: usize = 1 << 20;

impl AttackConfig {
    /// The stages `count` names; an error names the bad entry.
    pub fn counted_stages(&self) -> Result<Vec<Stage>, String> {
        if self.count.is_empty() {
            return Err("count is empty: nothing would ever be counted".into());
        }
        self.count
            .iter()
            .map(|name| match name.as_str() {
                "precheck" => Ok(Stage::Precheck),
                "hmac" => Ok(Stage::Hmac),
                "decrypt" => Ok(Stage::Decrypt),
                "replay" => Ok(Stage::Replay),
                "policy" => Ok(Stage::Policy),
                "blacklist" | "action" | "overload" => Err(format!(
                    "count: `{name}` refusals are not the sender's doing (BLACKLIST, a firewall \
                     error, a full queue) and cannot be counted"
                )),
                other => Err(format!(
                    "count: unknown stage `{other}` (expected precheck, hmac, decrypt, replay or policy)"
                )),
            })
            .collect()
    }

    /// Values that would misbehave, or a hook that could be swapped by someone
    /// else, are refused; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.threshold == 0 {
            return Err("threshold must be at least 1".into());
        }
        if self.window_secs == 0 {
            return Err("window_secs must be at least 1".into());
        }
        if self.block_secs > MAX_BLOCK_SECS {
            return Err(format!(
                "block_secs {} is more than {MAX_BLOCK_SECS} (about 24 days, the longest timeout an ipset takes)",
                self.block_secs
            ));
        }
        if self.grace_secs == 0 {
            return Err(
                "grace_secs must be at least 1: a source that just knocked must not be blocked"
                    .into(),
            );
        }
        if !(1..=MAX_SOURCES).contains(&self.max_sources) {
            return Err(format!("max_sources must be from 1 to {MAX_SOURCES}"));
        }
        if !(1..=MAX_BLOCKED).contains(&self.max_blocked) {
            return Err(format!("max_blocked must be from 1 to {MAX_BLOCKED}"));
        }
        self.counted_stages()?;
        if let Some(program) = self.hook.first() {
            if !Path::new(program).is_absolute() {
                return Err(format!("hook: `{program}` must be an absolute path"));
            }
            crate::config::trust::check(
                Path::new(program),
                "the [attack] hook",
                crate::config::trust::Trust::Trusted,
            )
            .map_err(|e| format!("hook: {e}"))?;
            if self.hook_timeout_secs == 0 {
                return Err("hook_timeout_secs must be at least 1".into());
            }
            if self.max_hooks == 0 {
                return Err("max_hooks must be at least 1".into());
            }
        }
        Ok(())
    }
}

mod exempt_list {
    use serde::{Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    /// A TOML array of addresses/networks, or one comma-separated string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        let joined = crate::config::conf_file::comma_joined(d)?;
        match crate::config::AddrList::parse(&joined) {
            Ok(crate::config::AddrList::Nets(nets)) => Ok(nets),
            Ok(crate::config::AddrList::Any) => Err(serde::de::Error::custom(
                "exempt: ANY would turn attack detection off; list addresses or networks",
            )),
            Err(m) => Err(serde::de::Error::custom(format!("exempt: {m}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Result<AttackConfig, String> {
        let c: AttackConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn an_empty_section_takes_the_defaults_and_blocks_nothing() {
        let c = parse("").unwrap();
        assert_eq!(c, AttackConfig::default());
        assert_eq!(c.block_secs, 0);
        assert_eq!(
            c.counted_stages().unwrap(),
            [Stage::Hmac, Stage::Decrypt, Stage::Replay]
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (text, want) in [
            ("threshold = 0", "threshold must be at least 1"),
            ("window_secs = 0", "window_secs must be at least 1"),
            ("block_secs = 3000000", "block_secs 3000000 is more than"),
            ("grace_secs = 0", "grace_secs must be at least 1"),
            ("max_sources = 0", "max_sources must be from 1"),
            ("max_blocked = 70000", "max_blocked must be from 1 to 65536"),
            ("count = []", "count is empty"),
            (
                "count = [\"hmac\", \"overload\"]",
                "`overload` refusals are not",
            ),
            ("count = [\"hamc\"]", "unknown stage `hamc`"),
            ("exempt = [\"ANY\"]", "exempt: ANY would turn"),
            ("exempt = [\"10.0.0.300\"]", "exempt:"),
            (
                "hook = [\"notify\"]",
                "hook: `notify` must be an absolute path",
            ),
            (
                "hook = [\"/nonexistent/hook\"]",
                "cannot read the [attack] hook",
            ),
            ("treshold = 3", "unknown field `treshold`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_hook_others_may_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o777)).unwrap();
        let text = format!("hook = [\"{}\", \"--flag\"]", hook.display());
        let e = parse(&text).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(parse(&text).unwrap().hook.len(), 2);
    }
}
