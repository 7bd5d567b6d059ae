//! The system posternd runs on, for the settings only some systems can honour.
//!
//! Decisions that depend on it take a [`Platform`] as a value (callers pass
//! [`Platform::CURRENT`]), so tests on Linux can check what FreeBSD answers.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Linux,
    FreeBsd,
    MacOs,
    /// Another BSD: built like FreeBSD where it builds at all, never checked.
    OtherBsd,
}

impl Platform {
    /// The system this build is for.
    pub const CURRENT: Platform = if cfg!(target_os = "linux") {
        Platform::Linux
    } else if cfg!(target_os = "freebsd") {
        Platform::FreeBsd
    } else if cfg!(target_os = "macos") {
        Platform::MacOs
    } else {
        Platform::OtherBsd
    };

    /// Linux capabilities: a child that runs as root can be left with fewer
    /// than root's powers. Elsewhere root is all or nothing.
    pub fn has_capabilities(self) -> bool {
        self == Platform::Linux
    }

    /// The firewall actions that work there, for messages.
    pub fn firewalls(self) -> &'static str {
        match self {
            Platform::Linux => "nftables, iptables or firewalld",
            Platform::MacOs => "pf",
            Platform::FreeBsd | Platform::OtherBsd => "pf or ipfw",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::Linux => "Linux",
            Platform::FreeBsd => "FreeBSD",
            Platform::MacOs => "macOS",
            Platform::OtherBsd => "this BSD",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linux_has_capabilities() {
        assert!(Platform::Linux.has_capabilities());
        for p in [Platform::FreeBsd, Platform::MacOs, Platform::OtherBsd] {
            assert!(!p.has_capabilities(), "{p}");
        }
        assert_eq!(Platform::FreeBsd.firewalls(), "pf or ipfw");
        #[cfg(target_os = "linux")]
        assert_eq!(Platform::CURRENT, Platform::Linux);
    }
}
