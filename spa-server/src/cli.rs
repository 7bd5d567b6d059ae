//! posternd's command line: fwknopd's flags, plus `check-config`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "posternd",
    version,
    about = "postern SPA server: opens a port for a client that sends one valid, authenticated packet",
    long_about = "postern SPA server. Reads fwknopd.conf/access.conf unchanged (-c/-a) or a native \
                  postern.toml (-c FILE.toml, POSTERN_* environment overrides).\n\nSignals: SIGTERM/SIGINT \
                  stop gracefully, SIGHUP reloads the access stanzas without dropping live grants."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// fwknopd.conf, or a native postern .toml file.
    #[arg(short = 'c', long = "config-file", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// access.conf with the access stanzas.
    #[arg(short = 'a', long = "access-file", global = true, value_name = "FILE")]
    pub access: Option<PathBuf>,
    /// A folder of access.conf files: every `*.conf` in it, in name order.
    #[arg(long = "access-folder", global = true, value_name = "DIR")]
    pub access_folder: Option<PathBuf>,
    /// Stay in the foreground, logging to stderr (by default posternd forks into
    /// the background once it serves and logs to syslog, as fwknopd).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Interface(s) for the pcap capture (overrides PCAP_INTF).
    #[arg(short = 'i', long, value_name = "INTF")]
    pub interface: Option<String>,
    /// BPF filter for the pcap capture (overrides PCAP_FILTER).
    #[arg(short = 'P', long = "pcap-filter", value_name = "FILTER")]
    pub pcap_filter: Option<String>,
    /// Read packets from a pcap file instead of an interface.
    #[arg(long = "pcap-file", value_name = "FILE")]
    pub pcap_file: Option<PathBuf>,
    /// Use the UDP server capture instead of pcap.
    #[arg(short = 'U', long = "udp-server")]
    pub udp_server: bool,
    /// Directory for the pid file and replay cache.
    #[arg(short = 'r', long = "run-dir", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// fwknopd's digest cache (DIGEST_FILE): its digests stay refused as replays.
    #[arg(short = 'd', long = "digest-file", value_name = "FILE")]
    pub digest_file: Option<PathBuf>,
    /// Pid file (default <run dir>/posternd.pid; fwknopd.pid with fwknop's files).
    #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Test mode: process packets, log what would be granted, change no firewall.
    #[arg(short = 't', long)]
    pub test: bool,
    /// More logging (-v debug: why each packet was refused; -vv trace).
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print the merged configuration (keys redacted) and exit.
    #[arg(short = 'D', long = "dump-config")]
    pub dump_config: bool,
    /// Parse the configuration and exit.
    #[arg(long = "exit-parse-config")]
    pub exit_parse_config: bool,
    /// Warn about unknown fwknopd.conf / access.conf variables and ignore them,
    /// instead of refusing the file (a misspelt restriction then does nothing).
    #[arg(long = "lenient-config")]
    pub lenient_config: bool,
    /// List the firewall rules postern created, then exit.
    #[arg(long = "fw-list")]
    pub fw_list: bool,
    /// Remove every firewall rule postern created, then exit.
    #[arg(long = "fw-flush")]
    pub fw_flush: bool,
    /// Stop the running posternd (SIGTERM to the pid in the pid file).
    #[arg(short = 'K', long)]
    pub kill: bool,
    /// Make the running posternd reload its access stanzas (SIGHUP).
    #[arg(short = 'R', long)]
    pub restart: bool,
    /// Say whether posternd is running.
    #[arg(short = 'S', long)]
    pub status: bool,
    /// fwknopd options postern does not implement (each gives a clear error).
    #[arg(long = "fw-list-all", hide = true)]
    pub fw_list_all: bool,
    #[arg(short = 'O', long = "override-config", hide = true)]
    pub override_config: Option<String>,
    #[arg(short = 'C', long = "packet-limit", hide = true)]
    pub packet_limit: Option<String>,
    #[arg(short = 'l', long = "locale", hide = true)]
    pub locale: Option<String>,
    #[arg(long = "rotate-digest-cache", hide = true)]
    pub rotate_digest_cache: bool,
    /// In the foreground, log to syslog too.
    #[arg(long = "syslog-enable")]
    pub syslog_enable: bool,
    /// pcap captures also take packets the host sends (ENABLE_PCAP_ANY_DIRECTION).
    #[arg(long = "pcap-any-direction")]
    pub pcap_any_direction: bool,
    /// Generate a Rijndael key and an HMAC key as `fwknop --key-gen` does, print
    /// them (or write them to --key-gen-file) and exit.
    #[arg(short = 'k', long = "key-gen")]
    pub key_gen: bool,
    /// Write the generated keys to FILE (mode 0600) instead of printing them.
    #[arg(long = "key-gen-file", value_name = "FILE")]
    pub key_gen_file: Option<PathBuf>,
    /// Bytes of the generated Rijndael key (default 32).
    #[arg(long = "key-len", value_name = "N")]
    pub key_len: Option<String>,
    /// Bytes of the generated HMAC key (default: the digest's block size).
    #[arg(long = "hmac-key-len", value_name = "N")]
    pub hmac_key_len: Option<String>,
    /// HMAC digest the generated key is for (default sha256).
    #[arg(long = "hmac-digest-type", value_name = "DIGEST")]
    pub hmac_digest_type: Option<String>,
    /// GnuPG home directory for GPG stanzas without GPG_HOME_DIR
    #[arg(long = "gpg-home-dir", value_name = "DIR")]
    pub gpg_home_dir: Option<String>,
    /// gpg program for GPG stanzas without GPG_EXE
    #[arg(long = "gpg-exe", value_name = "PATH")]
    pub gpg_exe: Option<String>,
    #[arg(long = "sudo-exe", hide = true)]
    pub sudo_exe: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the configuration and print the merged result with keys redacted.
    CheckConfig,
}

impl Cli {
    /// The first fwknopd flag given that posternd does not support.
    pub fn unsupported_flag(&self) -> Option<&'static str> {
        [
            (self.fw_list_all, "--fw-list-all"),
            (self.override_config.is_some(), "--override-config"),
            (self.packet_limit.is_some(), "--packet-limit"),
            (self.locale.is_some(), "--locale"),
            (self.rotate_digest_cache, "--rotate-digest-cache"),
            (self.sudo_exe.is_some(), "--sudo-exe"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}
