//! Configuration of the pf backend, with fwknopd.conf's names noted.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[action] type = "pf"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PfConfig {
    /// The pfctl program (fwknopd's FIREWALL_EXE).
    pub pfctl: String,
    /// postern's anchor (PF_ANCHOR_NAME). It must be referenced from the main
    /// ruleset, e.g. `anchor "postern"` in /etc/pf.conf; nested names such as
    /// `com.apple/postern` work under a wildcard `anchor "com.apple/*"`.
    pub anchor: String,
    /// Refuse to start when the main ruleset does not reference the anchor
    /// (fwknopd's check at init). Grants in an unreferenced anchor do nothing.
    pub check_anchor: bool,
    /// Accept IPv6 clients (their addresses go into the same tables; the pass
    /// rules name no address family, so they match both).
    pub ipv6: bool,
    /// Where the expiry of each table entry is recorded (mode 0600), so a
    /// restarted daemon knows which leftovers are still live. pf tables carry
    /// no per-entry data. Unset: [`PfConfig::DEFAULT_STATE_FILE`] (posternd
    /// puts it in its `run_dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Upper bound on how long an entry stays in a table without being re-added;
    /// posternd runs `pfctl -T expire <this>` on its tables as a safety net, and so
    /// can a cron job while posternd is down. Longer grants are refused. 0 turns
    /// the safety net off.
    pub max_grant_secs: u32,
    /// fwknopd flushes its anchor at start. postern defaults to reconciling:
    /// expired leftovers are removed, live grants survive a restart.
    pub flush_at_init: bool,
    /// Flush the anchor at shutdown (fwknopd always does).
    pub flush_at_exit: bool,
    /// PF_EXPIRE_INTERVAL: how often the daemon should call `expire` (seconds).
    /// The backend itself does not use it.
    pub expire_interval_secs: u32,
    /// Time limit for each pfctl command.
    pub command_timeout_secs: u64,
}

impl Default for PfConfig {
    fn default() -> Self {
        PfConfig {
            pfctl: "pfctl".into(),
            anchor: "postern".into(),
            check_anchor: true,
            ipv6: true,
            state_file: None,
            max_grant_secs: 86_400,
            flush_at_init: false,
            flush_at_exit: true,
            expire_interval_secs: 1,
            command_timeout_secs: 30,
        }
    }
}

impl PfConfig {
    /// Where the state file is when `state_file` is unset.
    pub const DEFAULT_STATE_FILE: &'static str = "/var/lib/postern/pf.json";

    /// The state file in use.
    pub fn state_file(&self) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_STATE_FILE))
    }

    /// Check the anchor name is a safe pfctl argument and a valid pf anchor path.
    pub fn validate(&self) -> Result<(), String> {
        validate_anchor(&self.anchor)?;
        if self.pfctl.is_empty() {
            return Err("`pfctl` must name the pfctl program".into());
        }
        Ok(())
    }
}

/// pf anchor paths: `/`-separated names of letters, digits, `_`, `-`, `.`;
/// names starting with `_` are reserved by pf.
pub fn validate_anchor(anchor: &str) -> Result<(), String> {
    if anchor.is_empty() || anchor.len() > 255 {
        return Err(format!("anchor `{anchor}` must be 1-255 characters"));
    }
    for part in anchor.split('/') {
        let ok = !part.is_empty()
            && !part.starts_with(['_', '-', '.'])
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(format!(
                "anchor `{anchor}`: each `/`-separated part must be letters, digits, `_`, `-` or `.`, not starting with `_`, `-` or `.` (e.g. `postern` or `com.apple/postern`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: PfConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, PfConfig::default());
        let c: PfConfig =
            serde_json::from_str(r#"{"anchor": "fwknop", "flush_at_init": true}"#).unwrap();
        assert_eq!((c.anchor.as_str(), c.flush_at_init), ("fwknop", true));
        let e = serde_json::from_str::<PfConfig>(r#"{"anchr": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("anchr"), "{e}");
    }

    #[test]
    fn anchor_names() {
        for good in ["postern", "fwknop", "com.apple/postern", "a-b_c.d"] {
            validate_anchor(good).unwrap();
        }
        for bad in ["", "_reserved", "-f", "a//b", "a b", "x;y", "/abs", "a/"] {
            assert!(validate_anchor(bad).is_err(), "{bad}");
        }
    }
}
