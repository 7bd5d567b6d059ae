//! The `~/.fwknoprc` file in fwknop's format: `[stanza]` headers, `VAR value`
//! lines, `#` or `;` comments. Reading keeps every line so a stanza can be
//! rewritten while the rest of the file (comments included) stays as it was.

use crate::error::{ClientError, Result};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The stanza every run reads first.
pub const DEFAULT_STANZA: &str = "default";
/// File name in the home directory.
pub const RC_FILE_NAME: &str = ".fwknoprc";
/// Variables whose values are keys: they make a readable rc file unsafe.
pub const KEY_VARS: &[&str] = &[
    "KEY",
    "KEY_BASE64",
    "HMAC_KEY",
    "HMAC_KEY_BASE64",
    "GPG_SIGNING_PW",
    "GPG_SIGNING_PW_BASE64",
];
/// Variables fwknop does not overwrite in an existing stanza without asking.
pub const CRITICAL_VARS: &[&str] = &[
    "KEY",
    "KEY_BASE64",
    "HMAC_KEY",
    "HMAC_KEY_BASE64",
    "GPG_RECIPIENT",
    "GPG_SIGNER",
    "GPG_SIGNING_PW",
    "GPG_SIGNING_PW_BASE64",
];
/// Postern extension variables whose value is the rest of the line (may hold spaces).
const WHOLE_LINE_VARS: &[&str] = &["SERVER_COMMAND"];

/// One classified line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Empty or comment.
    Blank,
    Section(String),
    Param {
        name: String,
        value: String,
    },
    /// Not a section and not `VAR value`.
    Invalid,
}

/// `VAR value` from one stanza, with its 1-based line number.
#[derive(Clone, PartialEq, Eq)]
pub struct RcEntry {
    pub name: String,
    pub value: String,
    pub line: usize,
}

impl std::fmt::Debug for RcEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if KEY_VARS.contains(&self.name.as_str()) {
            "<redacted>"
        } else {
            &self.value
        };
        write!(f, "{}={} (line {})", self.name, value, self.line)
    }
}

/// Classify one line the way fwknop reads it: the value is the first token after
/// the name and stops at a space, tab, `;` or `#`; a trailing `:` on the name is dropped.
pub fn parse_line(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
        return Line::Blank;
    }
    if let Some(rest) = trimmed.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => Line::Section(rest[..end].to_string()),
            None => Line::Invalid,
        };
    }
    let (raw_name, rest) = trimmed
        .split_once(char::is_whitespace)
        .unwrap_or((trimmed, ""));
    let name = match raw_name.rfind(':') {
        Some(i) => &raw_name[..i],
        None => raw_name,
    };
    let rest = rest.trim_start();
    let value = if WHOLE_LINE_VARS.contains(&name) {
        rest.trim_end()
    } else {
        let end = rest
            .find([' ', '\t', ';', '#', '\r', '\n'])
            .unwrap_or(rest.len());
        &rest[..end]
    };
    if name.is_empty() || value.is_empty() {
        return Line::Invalid;
    }
    Line::Param {
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// `VAR value` formatted as fwknop writes it.
pub fn format_param(name: &str, value: &str) -> String {
    format!("{name:<24}    {value}")
}

fn same_stanza(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// An rc file held in memory.
#[derive(Clone, Debug)]
pub struct RcFile {
    pub path: PathBuf,
    lines: Vec<String>,
}

impl RcFile {
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Self {
        RcFile {
            path: path.into(),
            lines: text.lines().map(str::to_string).collect(),
        }
    }

    /// Read the file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                Ok(Some(RcFile::parse(path, &text)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::RcFile(format!(
                "cannot read rc file {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn text(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        out
    }

    fn classified(&self) -> impl Iterator<Item = (usize, &str, Line)> + '_ {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, l.as_str(), parse_line(l)))
    }

    /// Names of all stanzas in file order (duplicates removed, `default` included).
    pub fn stanza_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, _, line) in self.classified() {
            if let Line::Section(name) = line {
                if !names.iter().any(|n| same_stanza(n, &name)) {
                    names.push(name);
                }
            }
        }
        names
    }

    pub fn has_stanza(&self, name: &str) -> bool {
        self.stanza_names().iter().any(|n| same_stanza(n, name))
    }

    /// The `VAR value` lines of every section called `name` (case-insensitive).
    /// A malformed line inside those sections is an error, as in fwknop.
    pub fn stanza_entries(&self, name: &str) -> Result<Vec<RcEntry>> {
        let mut inside = false;
        let mut out = Vec::new();
        for (no, _, line) in self.classified() {
            match line {
                Line::Section(s) => inside = same_stanza(&s, name),
                Line::Param { name, value } if inside => out.push(RcEntry {
                    name,
                    value,
                    line: no,
                }),
                Line::Invalid if inside => {
                    return Err(ClientError::RcFile(format!(
                        "rc file {} line {no}: expected `VARIABLE value`",
                        self.path.display()
                    )))
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Does any line set a key variable?
    pub fn holds_keys(&self) -> bool {
        self.classified()
            .any(|(_, _, line)| matches!(line, Line::Param { ref name, .. } if KEY_VARS.contains(&name.as_str())))
    }

    /// The file with stanza `name` replaced by `vars`, keeping the existing lines whose
    /// names are in `keep` and every comment. A missing stanza is appended at the end.
    pub fn with_stanza_replaced(
        &self,
        name: &str,
        vars: &[(String, String)],
        keep: &[String],
    ) -> RcFile {
        let mut out: Vec<String> = Vec::with_capacity(self.lines.len() + vars.len() + 2);
        let mut inside = false;
        let mut written = false;
        for (_, raw, line) in self.classified() {
            match &line {
                Line::Section(s) => {
                    inside = same_stanza(s, name);
                    out.push(raw.to_string());
                    if inside && !written {
                        out.extend(vars.iter().map(|(n, v)| format_param(n, v)));
                        written = true;
                    }
                }
                Line::Param { name: var, .. } if inside => {
                    if keep.iter().any(|k| k == var) {
                        out.push(raw.to_string());
                    }
                }
                _ => out.push(raw.to_string()),
            }
        }
        if !written {
            if out.last().is_some_and(|l| !l.trim().is_empty()) {
                out.push(String::new());
            }
            out.push(format!("[{name}]"));
            out.extend(vars.iter().map(|(n, v)| format_param(n, v)));
        }
        RcFile {
            path: self.path.clone(),
            lines: out,
        }
    }

    /// Write the file atomically with mode 0600 (temporary file, then rename).
    pub fn save(&self) -> Result<()> {
        let tmp = self.path.with_file_name(format!(
            "{}.postern-{}.tmp",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(RC_FILE_NAME),
            std::process::id()
        ));
        let result = (|| -> io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.text().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ClientError::RcFile(format!("cannot write rc file {}: {e}", self.path.display()))
        })
    }
}

/// Short starter file written on first use, mode 0600 (fwknop does the same).
const INITIAL_TEXT: &str = "\
# fwknop/postern client rc file.
#
# [default] applies to every run; a named stanza, chosen with -n NAME,
# overrides it; command-line options override both. One `VARIABLE value`
# per line, e.g.
#
#   [myserver]
#   SPA_SERVER          192.0.2.10
#   ACCESS              tcp/22
#   ALLOW_IP            resolve
#   KEY_BASE64          <from postern --key-gen>
#   HMAC_KEY_BASE64     <from postern --key-gen>
#
# Lines starting with # or ; are comments.

[default]

";

/// Create the starter rc file (only if it does not exist yet).
pub fn create_initial(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            ClientError::RcFile(format!("cannot create rc file {}: {e}", path.display()))
        })?;
    f.write_all(INITIAL_TEXT.as_bytes())
        .map_err(|e| ClientError::RcFile(format!("cannot write rc file {}: {e}", path.display())))
}

/// What is wrong with an rc file's ownership or mode.
#[derive(Debug, PartialEq, Eq)]
pub enum PermCheck {
    Ok,
    /// Worth a warning, but usable.
    Warn(String),
}

/// fwknop wants user read/write only. Postern refuses a group/world-readable file
/// that holds keys and warns about the rest.
pub fn check_permissions(path: &Path, holds_keys: bool) -> Result<PermCheck> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PermCheck::Ok),
        Err(e) => {
            return Err(ClientError::RcFile(format!(
                "cannot stat rc file {}: {e}",
                path.display()
            )))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if holds_keys {
            return Err(ClientError::RcFile(format!(
                "rc file {} holds keys but is accessible by other users (mode {mode:04o}); run: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
        return Ok(PermCheck::Warn(format!(
            "[-] file: {} permissions should only be user read/write (0600, -rw-------)",
            path.display()
        )));
    }
    if meta.uid() != crate::user::effective_uid() {
        return Ok(PermCheck::Warn(format!(
            "[-] file: {} not owned by current effective user id",
            path.display()
        )));
    }
    Ok(PermCheck::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
[default]
DIGEST_TYPE  sha256
VERBOSE:     N   # trailing comment

[MySSH]
SPA_SERVER   192.0.2.10
ACCESS       tcp/22;ignored
KEY_BASE64   abc=
SERVER_COMMAND  echo hello world

[other]
ACCESS udp/53
";

    #[test]
    fn lines_are_classified_like_fwknop() {
        assert_eq!(parse_line("  # x"), Line::Blank);
        assert_eq!(parse_line("; x"), Line::Blank);
        assert_eq!(parse_line(" [a b] junk"), Line::Section("a b".into()));
        assert_eq!(parse_line("[open"), Line::Invalid);
        assert_eq!(parse_line("KEY"), Line::Invalid);
        assert_eq!(parse_line("KEY #x"), Line::Invalid);
        assert_eq!(
            parse_line("KEY: secret rest"),
            Line::Param {
                name: "KEY".into(),
                value: "secret".into()
            }
        );
        assert_eq!(
            parse_line("ACCESS\ttcp/22#c"),
            Line::Param {
                name: "ACCESS".into(),
                value: "tcp/22".into()
            }
        );
    }

    #[test]
    fn stanzas_are_read_case_insensitively() {
        let rc = RcFile::parse("/x", SAMPLE);
        assert_eq!(rc.stanza_names(), ["default", "MySSH", "other"]);
        assert!(rc.has_stanza("myssh"));
        let e = rc.stanza_entries("myssh").unwrap();
        let pairs: Vec<_> = e
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("SPA_SERVER", "192.0.2.10"),
                ("ACCESS", "tcp/22"),
                ("KEY_BASE64", "abc="),
                ("SERVER_COMMAND", "echo hello world")
            ]
        );
        assert_eq!(rc.stanza_entries("default").unwrap()[1].value, "N");
        assert!(rc.holds_keys());
    }

    #[test]
    fn malformed_line_in_used_stanza_is_an_error() {
        let rc = RcFile::parse("/x", "[a]\nKEY\n[b]\nACCESS tcp/1\n");
        assert!(rc.stanza_entries("a").is_err());
        assert!(rc.stanza_entries("b").is_ok());
    }

    #[test]
    fn stanza_replacement_keeps_the_rest() {
        let rc = RcFile::parse("/x", SAMPLE);
        let vars = vec![("ACCESS".to_string(), "tcp/2222".to_string())];
        let new = rc.with_stanza_replaced("myssh", &vars, &["KEY_BASE64".to_string()]);
        let text = new.text();
        assert!(text.starts_with("# comment\n[default]\nDIGEST_TYPE  sha256\n"));
        assert!(text.contains("[MySSH]\nACCESS                      tcp/2222\nKEY_BASE64   abc=\n"));
        assert!(!text.contains("SPA_SERVER"));
        assert!(text.contains("[other]\nACCESS udp/53\n"));
        // A new stanza goes at the end.
        let added = rc.with_stanza_replaced("new", &vars, &[]);
        assert!(added
            .text()
            .ends_with("ACCESS udp/53\n\n[new]\nACCESS                      tcp/2222\n"));
        assert_eq!(added.stanza_entries("new").unwrap()[0].value, "tcp/2222");
    }
}
