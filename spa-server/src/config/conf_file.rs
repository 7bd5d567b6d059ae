//! The line format shared by fwknopd.conf and access.conf:
//! `VAR<space>value[;…]`, `#` comments, optional `:` after the variable name.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub var: String,
    pub value: String,
    pub origin: Origin,
}

/// What reading found besides errors.
#[derive(Debug, Default)]
pub struct Findings {
    /// Logged at start.
    pub warnings: Vec<String>,
    /// Variables neither fwknopd nor postern knows. A misspelt restriction
    /// (`REQUIRE_SOURCE_ADRESS`) would silently open more, so these are errors
    /// unless the caller asked to be lenient.
    pub unknown: Vec<ConfError>,
}

impl Findings {
    pub fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {message}")]
pub struct ConfError {
    pub origin: Origin,
    pub message: String,
}

impl ConfError {
    pub fn new(origin: &Origin, message: impl Into<String>) -> Self {
        ConfError {
            origin: origin.clone(),
            message: message.into(),
        }
    }

    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfError {
            origin: Origin {
                file: file.to_path_buf(),
                line: 0,
            },
            message: message.into(),
        }
    }
}

/// Split one file's text into entries. A line with a variable and no value is an error.
pub fn parse_lines(file: &Path, text: &str) -> Result<Vec<Entry>, ConfError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            line: i + 1,
        };
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (var, rest) = line
            .split_once(|c: char| c.is_whitespace())
            .unwrap_or((line, ""));
        // The value ends at ';' or end of line, like fwknop's own reader.
        let value = rest.split(';').next().unwrap_or("").trim();
        if value.is_empty() {
            return Err(ConfError::new(
                &origin,
                format!("`{var}` has no value (expected `{var} <value>`)"),
            ));
        }
        out.push(Entry {
            var: var.trim_end_matches(':').to_string(),
            value: value.to_string(),
            origin,
        });
    }
    Ok(out)
}

/// fwknop's yes/no, read as both daemons read it: a value starting with `Y`
/// (any case) is yes, one starting with `N` is no. Anything else (`1`, `TRUE`)
/// is refused: fwknopd reads it as no, and most readers as yes, so either
/// reading opens more than the file means for some variable.
pub fn parse_bool(entry: &Entry) -> Result<bool, ConfError> {
    match entry.value.bytes().next().map(|b| b.to_ascii_uppercase()) {
        Some(b'Y') => Ok(true),
        Some(b'N') => Ok(false),
        _ => Err(ConfError::new(
            &entry.origin,
            format!(
                "{} expects Y or N, got `{}` (fwknopd reads anything but Y… as N)",
                entry.var, entry.value
            ),
        )),
    }
}

pub fn parse_num<T: std::str::FromStr>(entry: &Entry) -> Result<T, ConfError> {
    entry.value.parse().map_err(|_| {
        ConfError::new(
            &entry.origin,
            format!("{} expects a number, got `{}`", entry.var, entry.value),
        )
    })
}

/// A TOML list of strings, or one comma-separated string as access.conf and
/// fwknopd.conf write lists, as one comma-joined string for their parsers.
pub fn comma_joined<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Text {
        One(String),
        Many(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        Text::One(s) => s,
        Text::Many(v) => v.join(","),
    })
}

/// A number within fwknopd's range for the variable (its `range_check`), so a
/// file fwknopd would refuse is not read with a value fwknopd never runs with.
pub fn parse_range<T>(entry: &Entry, lo: T, hi: T) -> Result<T, ConfError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let value: T = parse_num(entry)?;
    if value < lo || value > hi {
        return Err(ConfError::new(
            &entry.origin,
            format!("{} must be within {lo}-{hi}, got {value}", entry.var),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_comments_and_semicolons() {
        let text = "# c\n\nPCAP_INTF   eth0;\nSOURCE: ANY\n  KEY  my key  \n";
        let e = parse_lines(Path::new("f.conf"), text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].var.as_str(), e[0].value.as_str(), e[0].origin.line),
            ("PCAP_INTF", "eth0", 3)
        );
        assert_eq!((e[1].var.as_str(), e[1].value.as_str()), ("SOURCE", "ANY"));
        assert_eq!(e[2].value, "my key");
    }

    #[test]
    fn yes_and_no_as_fwknopd_reads_them_and_nothing_else() {
        let entries = parse_lines(
            Path::new("f.conf"),
            "A Y\nB yes\nC N\nD no\nE 1\nF TRUE\nG 0\n",
        )
        .unwrap();
        let read: Vec<_> = entries.iter().map(|e| parse_bool(e).ok()).collect();
        assert_eq!(
            read,
            [
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                None,
                None,
                None
            ]
        );
        let err = parse_bool(&entries[4]).unwrap_err().to_string();
        assert_eq!(
            err,
            "f.conf:5: E expects Y or N, got `1` (fwknopd reads anything but Y… as N)"
        );
    }

    #[test]
    fn numbers_outside_fwknopds_range_name_the_line() {
        let e = parse_lines(Path::new("f.conf"), "A 0\nB 70000\nC 5\n").unwrap();
        assert_eq!(
            parse_range(&e[0], 1u16, 65535).unwrap_err().to_string(),
            "f.conf:1: A must be within 1-65535, got 0"
        );
        assert!(parse_range(&e[1], 1u16, 65535).is_err(), "70000 is no u16");
        assert_eq!(parse_range(&e[2], 1u64, 100_000).unwrap(), 5);
    }

    #[test]
    fn a_variable_without_value_names_file_and_line() {
        let err = parse_lines(Path::new("/etc/x.conf"), "A 1\nKEY\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/x.conf:2: `KEY` has no value (expected `KEY <value>`)"
        );
    }
}
