//! Helpers for running the built `postern` binary in a private HOME.
#![allow(dead_code)]

use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DecodedMessage, DigestType, EncryptionMode};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const KEY_B64: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
pub const HMAC_B64: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

pub struct Env {
    pub home: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    pub fn rc_path(&self) -> PathBuf {
        self.path(".fwknoprc")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("LOGNAME", "tester")
            .env_remove("SPOOF_USER")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null());
        // No controlling terminal: a missing key must fail instead of prompting.
        // SAFETY: setsid is async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Run expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "postern {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run expecting failure with exactly one line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        one_line_failure(self.run(args), args)
    }
}

pub fn one_line_failure(out: Output, what: &[&str]) -> String {
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success(),
        "postern {what:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "postern {what:?}: expected one stderr line, got {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err.trim_end().to_string()
}

pub fn read_packet(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'));
    text.trim_end().to_string()
}

pub fn b64(s: &str) -> Vec<u8> {
    spa_core::b64::decode(s).unwrap()
}

pub fn open(
    wire: &str,
    key: &[u8],
    mode: EncryptionMode,
    hmac: Option<(DigestType, &[u8])>,
) -> DecodedMessage {
    let keys = PacketKeys {
        key,
        mode,
        hmac: hmac.map(|(digest, key)| HmacKey { digest, key }),
    };
    packet::open(wire.as_bytes(), &keys).unwrap_or_else(|e| panic!("packet does not open: {e}"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
