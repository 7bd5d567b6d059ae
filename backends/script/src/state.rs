//! Pending close commands, kept in memory and optionally in a state file so a
//! restarted daemon still runs the closes a previous run owed.

use postern_backend_common::state::write_private;
use serde::{Deserialize, Serialize};
use spa_core::firewall::{Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One opened rule whose close command has not run successfully yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingClose {
    pub source: IpAddr,
    /// `tcp` or `udp`.
    pub proto: String,
    pub port: u16,
    /// The source port the grant is pinned to (`$SPORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// ENABLE_DESTINATION_RULE: the address the knock was sent to (`$DST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    pub timeout_secs: u32,
    pub expires_at: u64,
    /// The close argv, rendered when the rule was opened so it undoes exactly that.
    pub close: Vec<String>,
    /// Failed close attempts so far.
    #[serde(default)]
    pub failures: u32,
    /// After a failure, the next attempt waits until this time (unix seconds).
    #[serde(default)]
    pub retry_at: u64,
}

impl PendingClose {
    pub fn new(opening: &Opening, close: Vec<String>) -> Self {
        PendingClose {
            source: opening.rule.source,
            proto: opening.rule.proto.name().to_string(),
            port: opening.rule.port,
            source_port: opening.rule.source_port,
            destination: opening.rule.destination,
            timeout_secs: opening.timeout_secs,
            expires_at: opening.expires_at,
            close,
            failures: 0,
            retry_at: 0,
        }
    }

    pub fn rule(&self) -> Rule {
        // The file is ours; an unknown protocol can only come from hand editing.
        let proto = self.proto.parse().unwrap_or(Proto::Tcp);
        Rule {
            destination: self.destination,
            source_port: self.source_port,
            ..Rule::new(self.source, proto, self.port)
        }
    }

    pub fn opening(&self) -> Opening {
        Opening {
            rule: self.rule(),
            timeout_secs: self.timeout_secs,
            expires_at: self.expires_at,
        }
    }

    /// Record a failed attempt and back off: 1, 2, 4 … seconds, at most 5 minutes.
    pub fn failed(&mut self, now: u64) {
        self.failures = self.failures.saturating_add(1);
        let delay = 1u64 << self.failures.min(10).saturating_sub(1);
        self.retry_at = now + delay.min(300);
    }
}

/// The script a state file belongs to, so a daemon that starts with a different
/// configuration still finds (and runs) the closes it owes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScriptOrigin {
    pub open: String,
    pub close: Option<String>,
    #[serde(default)]
    pub capabilities: postern_backend_common::CapSet,
}

#[derive(Serialize, Deserialize)]
struct StateDoc {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    script: Option<ScriptOrigin>,
    pending: Vec<PendingClose>,
}

const STATE_VERSION: u32 = 1;

/// A JSON state file, replaced atomically (write to a temporary file, rename).
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    origin: Option<ScriptOrigin>,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile {
            path: path.into(),
            origin: None,
        }
    }

    /// Saved files also record which script they belong to.
    pub fn with_origin(mut self, origin: ScriptOrigin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The script a saved file belongs to (`None` for files without one).
    pub fn origin_on_disk(&self) -> Result<Option<ScriptOrigin>, String> {
        Ok(self.read_doc()?.and_then(|d| d.script))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pending closes on disk; an absent file means none. A file that cannot be
    /// read or parsed is an error: forgetting its closes would leave ports open.
    pub fn load(&self) -> Result<Vec<PendingClose>, String> {
        Ok(self.read_doc()?.map(|d| d.pending).unwrap_or_default())
    }

    fn read_doc(&self) -> Result<Option<StateDoc>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read state file {}: {e}",
                    self.path.display()
                ))
            }
        };
        let doc: StateDoc = serde_json::from_str(&text).map_err(|e| {
            format!(
                "state file {} is corrupt ({e}); fix or remove it",
                self.path.display()
            )
        })?;
        if doc.version != STATE_VERSION {
            return Err(format!(
                "state file {} has version {}, expected {STATE_VERSION}",
                self.path.display(),
                doc.version
            ));
        }
        Ok(Some(doc))
    }

    pub fn save(&self, pending: &[PendingClose]) -> Result<(), String> {
        let doc = StateDoc {
            version: STATE_VERSION,
            script: self.origin.clone(),
            pending: pending.to_vec(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        // 0600: the close commands may reveal addresses and internal tooling.
        write_private(&self.path, &text)
            .map_err(|e| format!("cannot write state file {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(port: u16) -> PendingClose {
        let opening = Opening {
            rule: Rule::new("192.0.2.1".parse().unwrap(), Proto::Udp, port),
            timeout_secs: 30,
            expires_at: 1000,
        };
        PendingClose::new(&opening, vec!["close".into(), port.to_string()])
    }

    #[test]
    fn round_trips_and_absent_means_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("script.json"));
        assert_eq!(file.load().unwrap(), Vec::new());
        let list = vec![pending(1), pending(2)];
        file.save(&list).unwrap();
        assert_eq!(file.load().unwrap(), list);
        assert_eq!(list[1].rule().proto, Proto::Udp);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(StateFile::new(&path)
            .load()
            .unwrap_err()
            .contains("corrupt"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut p = pending(1);
        p.failed(100);
        assert_eq!(p.retry_at, 101);
        p.failed(100);
        assert_eq!(p.retry_at, 102);
        for _ in 0..20 {
            p.failed(100);
        }
        assert_eq!(p.retry_at, 400);
    }
}
