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
                  stop gracefully, SIGHUP reloads the access stanzas without dropping live grants \
                  (and reopens the audit log), SIGUSR1 reopens the audit log."
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
    /// Print the configuration as fwknopd -D does (variables, then access
    /// stanzas; keys shown as `<see the access.conf file>`) and exit.
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
    /// Make the running posternd re-read fwknopd.conf and access.conf (SIGHUP).
    #[arg(short = 'R', long)]
    pub restart: bool,
    /// Say whether posternd is running.
    #[arg(short = 'S', long)]
    pub status: bool,
    /// List every rule of the chains/tables the configured firewall uses, not
    /// only postern's (as fwknopd's --fw-list-all), then exit.
    #[arg(long = "fw-list-all")]
    pub fw_list_all: bool,
    /// fwknopd.conf-format file(s), comma separated, whose variables override
    /// those of the main file (later files win).
    #[arg(short = 'O', long = "override-config", value_name = "FILE[,FILE…]")]
    pub override_config: Option<String>,
    /// Exit after this many packets were captured (valid or not, as fwknopd
    /// counts them), removing the grants as on SIGTERM.
    #[arg(short = 'C', long = "packet-limit", value_name = "N")]
    pub packet_limit: Option<String>,
    #[arg(short = 'l', long = "locale", hide = true)]
    pub locale: Option<String>,
    /// fwknopd's switch away from `iptables -C`, which posternd never uses:
    /// accepted so units written for fwknopd start, with no effect.
    #[arg(long = "no-ipt-check-support", hide = true)]
    pub no_ipt_check_support: bool,
    #[arg(long = "no-firewd-check-support", hide = true)]
    pub no_firewd_check_support: bool,
    /// Rename the digest cache (and posternd's replay store) to `<name>-old`
    /// at start and begin with an empty one.
    #[arg(long = "rotate-digest-cache")]
    pub rotate_digest_cache: bool,
    /// Parse the digest cache (fwknopd's file and posternd's store), report
    /// errors and exit (non-zero if a file is malformed).
    #[arg(long = "exit-parse-digest-cache")]
    pub exit_parse_digest_cache: bool,
    /// Print fwknopd's server error codes and exit.
    #[arg(long = "dump-serv-err-codes")]
    pub dump_serv_err_codes: bool,
    /// Print the merged configuration as postern TOML (keys redacted) and exit.
    #[arg(long = "dump-config-toml")]
    pub dump_config_toml: bool,
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
    /// sudo program for ENABLE_CMD_SUDO_EXEC stanzas (overrides SUDO_EXE).
    #[arg(long = "sudo-exe", value_name = "PATH")]
    pub sudo_exe: Option<String>,
    /// Write the decision audit log (one JSON line per decision) to FILE, or to
    /// stdout with `-` (overrides `[audit] path`). The file is reopened on
    /// SIGHUP and SIGUSR1, for logrotate.
    #[arg(long = "audit-log", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the configuration and print the merged result with keys redacted.
    CheckConfig,
    /// The server's key for postern's native protocol (docs/protocol.md).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Clients registered for the native protocol: one file per client in a directory.
    #[command(subcommand)]
    Client(ClientCommand),
}

/// Default server key file of the native protocol.
pub const DEFAULT_SERVER_KEY: &str = "/etc/postern/server.key";
/// Default directory of registered native clients.
pub const DEFAULT_CLIENTS_DIR: &str = "/etc/postern/clients";

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make the server's static key (X25519 and ML-KEM-768) in FILE, mode 0600 (never
    /// over an existing file), and print the public key line to give clients.
    Generate {
        #[arg(value_name = "FILE", default_value = DEFAULT_SERVER_KEY)]
        file: PathBuf,
    },
    /// Print the public key line of an existing server key.
    Public {
        #[arg(value_name = "FILE", default_value = DEFAULT_SERVER_KEY)]
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Register a client: writes DIR/NAME.pub (mode 0600) with its public key line
    /// (from `postern --gen-client-key`).
    Add {
        name: String,
        #[arg(value_name = "PUBKEY")]
        public_key: String,
        /// The client's TOTP secret: an otpauth:// URI or a file holding one
        /// (from `postern --totp-setup FILE`).
        #[arg(long = "totp-secret", value_name = "URI|FILE")]
        totp_secret: Option<String>,
        #[arg(long = "clients-dir", value_name = "DIR", default_value = DEFAULT_CLIENTS_DIR)]
        dir: PathBuf,
    },
    /// Revoke a client: removes DIR/NAME.pub and nothing else.
    Remove {
        name: String,
        #[arg(long = "clients-dir", value_name = "DIR", default_value = DEFAULT_CLIENTS_DIR)]
        dir: PathBuf,
    },
    /// List the registered clients (name, public key, whether a TOTP secret is set).
    List {
        #[arg(long = "clients-dir", value_name = "DIR", default_value = DEFAULT_CLIENTS_DIR)]
        dir: PathBuf,
    },
}

impl Cli {
    /// The first fwknopd flag given that posternd does not support.
    pub fn unsupported_flag(&self) -> Option<&'static str> {
        self.locale.is_some().then_some("--locale")
    }
}

impl Cli {
    /// `-O a.conf,b.conf` as fwknopd splits it: at every comma, in order.
    pub fn override_files(&self) -> Vec<PathBuf> {
        self.override_config
            .as_deref()
            .map(|list| {
                list.split(',')
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `-C N`: fwknopd takes 0 ..= 2^31 (0: no limit).
    pub fn packet_limit(&self) -> Result<Option<u64>, String> {
        let Some(text) = &self.packet_limit else {
            return Ok(None);
        };
        match text.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) if n <= 1 << 31 => Ok(Some(n)),
            _ => Err(format!("invalid -C packet count limit '{text}'")),
        }
    }
}

/// fwknopd 2.6.10's server error codes (fwknopd_errors.h), as
/// `fwknopd --dump-serv-err-codes` prints them: scripts written for fwknopd
/// look these numbers up. The strings are fwknopd's, typos included.
pub const SERVER_ERROR_CODES: &[(u32, &str)] = &[
    (4096, "Data is not a valid SPA message format"),
    (4097, "Not enough data to be a valid SPA message"),
    (4098, "Data is not an SPA message"),
    (
        4099,
        "SPA via HTTP request, but ENABLE_SPA_OVER_HTTP is not set",
    ),
    (4100, "Error creating FKO context for incoming data."),
    (4101, "Unable to retrieve digest from the SPA data."),
    (4102, "Error trying to access the digest.cache file"),
    (4103, "Detected SPA message replay"),
    (
        4104,
        "SPA message timestamp is outside the allowable window",
    ),
    (4105, "SPA message did not pass access checks"),
    (
        4106,
        "An error occurred while executing an SPA command message",
    ),
    (4107, "Unsupported SPA message operation"),
    (4108, "Undefined/unknown fwknopd Error"),
    (4109, "General SPA message processing error"),
    (8192, "An error occurred while tring to add a firewall rule"),
    (
        8193,
        "An error occurred while tring to delete a firewall rule",
    ),
    (8194, "Unknown/unclassified firewall rule processing error"),
];

/// `--dump-serv-err-codes` output, line for line as fwknopd's.
pub fn server_error_codes_text() -> String {
    SERVER_ERROR_CODES
        .iter()
        .map(|(code, text)| format!("err code: {code}, err string: '{text}'\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_list_and_packet_limit_as_fwknopd_reads_them() {
        let cli = Cli::parse_from(["posternd", "-O", "a.conf,b.conf", "-C", "5"]);
        assert_eq!(
            cli.override_files(),
            vec![PathBuf::from("a.conf"), PathBuf::from("b.conf")]
        );
        assert_eq!(cli.packet_limit(), Ok(Some(5)));
        for (given, want) in [("0", Ok(None)), ("2147483648", Ok(Some(1 << 31)))] {
            let cli = Cli::parse_from(["posternd", "-C", given]);
            assert_eq!(cli.packet_limit(), want);
        }
        for bad in ["x", "2147483649", "1.5"] {
            let cli = Cli::parse_from(["posternd", "--packet-limit", bad]);
            assert!(cli.packet_limit().is_err(), "{bad}");
        }
        assert_eq!(Cli::parse_from(["posternd"]).unsupported_flag(), None);
    }

    #[test]
    fn error_codes_print_as_fwknopd() {
        let text = server_error_codes_text();
        assert_eq!(text.lines().count(), 17);
        assert!(text
            .starts_with("err code: 4096, err string: 'Data is not a valid SPA message format'\n"));
    }
}
