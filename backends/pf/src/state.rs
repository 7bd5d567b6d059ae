//! The pf backend's record of what it put in its tables and until when.
//!
//! pf table entries carry no data, so the expiry of each entry lives here: a JSON
//! file replaced atomically (temporary file, fsync, rename), mode 0600.

use serde::{Deserialize, Serialize};
use spa_core::firewall::{Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::render::TableKey;
use postern_backend_common::state::write_private;

/// One address in one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub source: IpAddr,
    /// `tcp` or `udp`.
    pub proto: String,
    pub port: u16,
    /// ENABLE_DESTINATION_RULE: the IPv4 address the grant is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    /// A grant pinned to the client's source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    pub expires_at: u64,
    /// When the entry was (last) added to the pf table; pf's own timestamp for
    /// `-T expire` is at least this late.
    pub added_at: u64,
}

impl Entry {
    pub fn new(rule: &Rule, expires_at: u64, added_at: u64) -> Self {
        Entry {
            source: rule.source,
            proto: rule.proto.name().into(),
            port: rule.port,
            destination: rule.destination,
            source_port: rule.source_port,
            expires_at,
            added_at,
        }
    }

    fn proto(&self) -> Proto {
        if self.proto == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }

    pub fn table(&self) -> TableKey {
        let dst = match self.destination {
            Some(IpAddr::V4(d)) => Some(d),
            _ => None,
        };
        TableKey {
            proto: self.proto(),
            port: self.port,
            dst,
            sport: self.source_port,
        }
    }

    pub fn rule(&self) -> Rule {
        self.table().rule(self.source)
    }

    pub fn is(&self, rule: &Rule) -> bool {
        self.rule() == *rule
    }

    pub fn opening(&self, now: u64) -> Opening {
        Opening {
            rule: self.rule(),
            timeout_secs: u32::try_from(self.expires_at.saturating_sub(now)).unwrap_or(u32::MAX),
            expires_at: self.expires_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Doc {
    version: u32,
    anchor: String,
    entries: Vec<Entry>,
}

const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded entries; an absent file means none. An unreadable or corrupt
    /// file, or one written for another anchor, is an error: guessing could leave
    /// a port open past its time.
    pub fn load(&self, anchor: &str) -> Result<Vec<Entry>, String> {
        let path = self.path.display();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read state file {path}: {e}")),
        };
        let doc: Doc = serde_json::from_str(&text)
            .map_err(|e| format!("state file {path} is corrupt ({e}); fix or remove it"))?;
        if doc.version != VERSION {
            return Err(format!(
                "state file {path} has version {}, expected {VERSION}",
                doc.version
            ));
        }
        if doc.anchor != anchor {
            return Err(format!(
                "state file {path} belongs to anchor `{}`, not `{anchor}`; flush that anchor (`pfctl -a {} -F all`) and remove the file, or set another `state_file`",
                doc.anchor, doc.anchor
            ));
        }
        Ok(doc.entries)
    }

    pub fn save(&self, anchor: &str, entries: &[Entry]) -> Result<(), String> {
        let doc = Doc {
            version: VERSION,
            anchor: anchor.into(),
            entries: entries.to_vec(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                }
            }
            write_private(&self.path, &text)
        };
        write().map_err(|e| format!("cannot write state file {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(port: u16) -> Entry {
        let rule = Rule::new("192.0.2.1".parse().unwrap(), Proto::Udp, port);
        Entry::new(&rule, 1030, 1000)
    }

    #[test]
    fn round_trip_mode_and_anchor_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("sub/pf.json"));
        assert_eq!(file.load("postern").unwrap(), Vec::new());
        file.save("postern", &[entry(53), entry(54)]).unwrap();
        assert_eq!(file.load("postern").unwrap(), vec![entry(53), entry(54)]);
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = file.load("fwknop").unwrap_err();
        assert!(e.contains("belongs to anchor `postern`"), "{e}");
        assert_eq!(entry(53).table().name(), "postern_udp_53");
        assert_eq!(entry(53).opening(1010).timeout_secs, 20);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pf.json");
        std::fs::write(&path, "{oops").unwrap();
        assert!(StateFile::new(&path)
            .load("postern")
            .unwrap_err()
            .contains("corrupt"));
    }
}
