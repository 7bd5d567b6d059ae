//! Command-line flags: fwknop 2.6.10's client options with the same names and
//! meanings, plus `--qr`. Values stay strings here; [`crate::settings`] checks
//! them with the same code that checks rc-file variables.

use crate::settings::{NO_WGET, NO_WGET_AGENT};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "postern",
    about = "Single Packet Authorization client, compatible with fwknop 2.x",
    override_usage = "postern -A <port list> [-s|-R|-a] -D <spa_server> [options]\n       \
                      postern [options] ssh [USER@]HOST [-- SSH_ARGUMENTS]",
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_override_self = true,
    infer_long_args = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Named stanza of the rc file providing some or all options
    #[arg(
        short = 'n',
        long = "named-config",
        value_name = "STANZA",
        allow_hyphen_values = true
    )]
    pub named_config: Option<String>,

    /// Ports/protocols to open on the server, e.g. tcp/22 or tcp/22,udp/53
    #[arg(
        short = 'A',
        long = "access",
        value_name = "PORT_LIST",
        allow_hyphen_values = true
    )]
    pub access: Option<String>,

    /// IP address to allow inside the SPA packet (also `resolve` or `source`)
    #[arg(short = 'a', long = "allow-ip", value_name = "IP", conflicts_with_all = ["source_ip", "resolve_ip"])]
    pub allow_ip: Option<String>,

    /// Hostname or IP address of the SPA server
    #[arg(
        short = 'D',
        long = "destination",
        value_name = "HOST",
        allow_hyphen_values = true
    )]
    pub destination: Option<String>,

    /// Add an HMAC to the SPA packet (authenticated encryption)
    #[arg(long = "use-hmac")]
    pub use_hmac: bool,

    /// Save the packet to FILE
    #[arg(
        short = 'B',
        long = "save-packet",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    pub save_packet: Option<PathBuf>,

    /// Append to the -B file instead of replacing it
    #[arg(short = 'b', long = "save-packet-append")]
    pub save_packet_append: bool,

    /// Command for the server to run instead of an access request
    #[arg(
        short = 'C',
        long = "server-cmd",
        value_name = "COMMAND",
        allow_hyphen_values = true
    )]
    pub server_cmd: Option<String>,

    /// NAT access to an internal service: <internal IP or host>[,:]<port>
    #[arg(
        short = 'N',
        long = "nat-access",
        value_name = "HOST:PORT",
        allow_hyphen_values = true
    )]
    pub nat_access: Option<String>,

    /// Destination port of the SPA packet (default 62201)
    #[arg(
        short = 'p',
        long = "server-port",
        value_name = "PORT",
        allow_hyphen_values = true
    )]
    pub server_port: Option<String>,

    /// Transport of the SPA packet: udp (default), tcp, http (a GET request over
    /// TCP, for servers with ENABLE_SPA_OVER_HTTP), or udpraw, tcpraw, icmp (built
    /// on a raw socket: root or CAP_NET_RAW; IPv4 only)
    #[arg(
        short = 'P',
        long = "server-proto",
        value_name = "PROTO",
        allow_hyphen_values = true
    )]
    pub server_proto: Option<String>,

    /// Send the SPA packet as an HTTP request through this proxy (implies -P http)
    #[arg(
        short = 'H',
        long = "http-proxy",
        value_name = "HOST[:PORT]",
        allow_hyphen_values = true
    )]
    pub http_proxy: Option<String>,

    /// Let the server allow the packet's source address (sends 0.0.0.0)
    #[arg(short = 's', long = "source-ip", conflicts_with = "resolve_ip")]
    pub source_ip: bool,

    /// Source port of the SPA packet
    #[arg(
        short = 'S',
        long = "source-port",
        value_name = "PORT",
        allow_hyphen_values = true
    )]
    pub source_port: Option<String>,

    /// Resolve the external IP address over HTTPS (see --resolve-url)
    #[arg(
        short = 'R',
        long = "resolve-ip-https",
        visible_alias = "resolve-ip-http"
    )]
    pub resolve_ip: bool,

    /// Resolve the external IP over plain HTTP (not recommended)
    #[arg(long = "resolve-http-only")]
    pub resolve_http_only: bool,

    /// URL answering with the client's IP address (implies -R)
    #[arg(long = "resolve-url", value_name = "URL", allow_hyphen_values = true)]
    pub resolve_url: Option<String>,

    /// HTTP User-Agent for -R
    #[arg(
        short = 'u',
        long = "user-agent",
        value_name = "AGENT",
        allow_hyphen_values = true
    )]
    pub user_agent: Option<String>,

    /// Username inside the SPA packet
    #[arg(
        short = 'U',
        long = "spoof-user",
        value_name = "USER",
        allow_hyphen_values = true
    )]
    pub spoof_user: Option<String>,

    /// Read the encryption key from FILE (lines `<server>: <key>`)
    #[arg(short = 'G', long = "get-key", value_name = "FILE", conflicts_with_all = ["key_rijndael", "key_base64_rijndael"])]
    pub get_key: Option<PathBuf>,

    /// Read the HMAC key from FILE (lines `<server>: <key>`)
    #[arg(long = "get-hmac-key", value_name = "FILE", conflicts_with_all = ["key_hmac", "key_base64_hmac"])]
    pub get_hmac_key: Option<PathBuf>,

    /// Read the key (then the HMAC key, if needed) from standard input
    #[arg(long = "stdin")]
    pub stdin: bool,

    /// Read the key (then the HMAC key, if needed) from file descriptor N
    #[arg(
        long = "fd",
        value_name = "N",
        conflicts_with = "stdin",
        allow_hyphen_values = true
    )]
    pub fd: Option<String>,

    /// Generate a Rijndael key and an HMAC key
    #[arg(short = 'k', long = "key-gen")]
    pub key_gen: bool,

    /// Generate keys and write them to FILE (mode 0600)
    #[arg(
        short = 'K',
        long = "key-gen-file",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    pub key_gen_file: Option<PathBuf>,

    /// Also print the generated keys as a terminal QR code
    #[arg(long = "qr")]
    pub qr: bool,

    /// postern extension: send postern's native protocol instead of fwknop's
    /// (rc: PROTOCOL native; see docs/protocol.md)
    #[arg(long = "native")]
    pub native: bool,

    /// postern extension: the server's public key for --native, a `postern-srv1:`
    /// line or a file holding it (rc: SERVER_PUBLIC_KEY)
    #[arg(long = "server-key", value_name = "LINE|FILE")]
    pub server_key: Option<String>,

    /// postern extension: this client's private key file for --native (rc: CLIENT_KEY_FILE)
    #[arg(long = "client-key", value_name = "FILE")]
    pub client_key: Option<PathBuf>,

    /// postern extension: add ML-KEM-768 to --native's key exchange (packets of
    /// 1236-1322 bytes; rc: NATIVE_HYBRID Y)
    #[arg(long = "hybrid")]
    pub hybrid: bool,

    /// postern extension: a TOTP code from your authenticator, sent in the --native packet
    #[arg(long = "totp", value_name = "CODE")]
    pub totp: Option<String>,

    /// postern extension: ask the server to pin the grant to this source port of
    /// yours (--native)
    #[arg(long = "pin-source-port", value_name = "PORT")]
    pub pin_source_port: Option<String>,

    /// Set by `--connect`: the local port a native knock pins its grant to
    /// unless --pin-source-port names one.
    #[arg(skip)]
    pub connect_pin: Option<crate::connect::PinOffer>,

    /// postern extension: make a native client key in FILE (mode 0600), print its
    /// public key line (for `posternd client add`) and a QR code
    #[arg(long = "gen-client-key", value_name = "FILE")]
    pub gen_client_key: Option<PathBuf>,

    /// postern extension: make a TOTP secret, print its otpauth:// URI and a QR code
    /// for your authenticator app, and write the URI to FILE (mode 0600) for the server
    #[arg(long = "totp-setup", value_name = "FILE")]
    pub totp_setup: Option<PathBuf>,

    /// Rijndael key length for --key-gen (bytes, default 32)
    #[arg(long = "key-len", value_name = "BYTES", allow_hyphen_values = true)]
    pub key_len: Option<String>,

    /// HMAC key length for --key-gen (bytes)
    #[arg(
        long = "hmac-key-len",
        value_name = "BYTES",
        allow_hyphen_values = true
    )]
    pub hmac_key_len: Option<String>,

    /// Rijndael key (passphrase); visible to other local users
    #[arg(
        long = "key-rijndael",
        value_name = "KEY",
        conflicts_with = "key_base64_rijndael",
        allow_hyphen_values = true
    )]
    pub key_rijndael: Option<String>,

    /// Base64 Rijndael key; visible to other local users
    #[arg(
        long = "key-base64-rijndael",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub key_base64_rijndael: Option<String>,

    /// Base64 HMAC key; visible to other local users
    #[arg(
        long = "key-base64-hmac",
        value_name = "KEY",
        conflicts_with = "key_hmac",
        allow_hyphen_values = true
    )]
    pub key_base64_hmac: Option<String>,

    /// HMAC key (passphrase); visible to other local users
    #[arg(long = "key-hmac", value_name = "KEY", allow_hyphen_values = true)]
    pub key_hmac: Option<String>,

    /// Send the packet to a random destination port (10000-65535)
    #[arg(short = 'r', long = "rand-port")]
    pub rand_port: bool,

    /// Build the packet and print it, do not send it
    #[arg(short = 'T', long = "test")]
    pub test: bool,

    /// Verbose output (repeatable)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Knock, wait until HOST:PORT accepts a connection (knocking up to three
    /// times), then carry stdin and stdout over it, for ssh's ProxyCommand:
    /// `ProxyCommand postern --connect %h:%p -n STANZA`. postern's own option.
    #[arg(long = "connect", value_name = "HOST:PORT")]
    pub connect: Option<String>,

    /// After the knock, connect to the requested TCP port(s) until they open;
    /// fail if they do not within SECONDS (default 5). postern's own option.
    #[arg(
        long = "wait",
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "5",
        value_parser = wait_seconds
    )]
    pub wait: Option<f32>,

    /// Print the version and exit
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    /// SPA message digest: md5, sha1, sha256 (default), sha384, sha512, sha3_256, sha3_512
    #[arg(
        short = 'm',
        long = "digest-type",
        value_name = "DIGEST",
        allow_hyphen_values = true
    )]
    pub digest_type: Option<String>,

    /// Rijndael mode: cbc (default), ecb, cfb, ofb, ctr, legacy
    #[arg(
        short = 'M',
        long = "encryption-mode",
        value_name = "MODE",
        allow_hyphen_values = true
    )]
    pub encryption_mode: Option<String>,

    /// Firewall timeout the server should use, in seconds
    #[arg(
        short = 'f',
        long = "fw-timeout",
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    pub fw_timeout: Option<String>,

    /// HMAC digest: md5, sha1, sha256 (default), sha384, sha512, sha3_256, sha3_512
    #[arg(
        long = "hmac-digest-type",
        value_name = "DIGEST",
        allow_hyphen_values = true
    )]
    pub hmac_digest_type: Option<String>,

    /// Path of the rc file (default $HOME/.fwknoprc)
    #[arg(long = "rc-file", value_name = "FILE", allow_hyphen_values = true)]
    pub rc_file: Option<PathBuf>,

    /// Do not read or create an rc file
    #[arg(long = "no-rc-file")]
    pub no_rc_file: bool,

    /// Never look up the home directory (needs --rc-file or --no-rc-file)
    #[arg(long = "no-home-dir")]
    pub no_home_dir: bool,

    /// Save the command-line options to the stanza named by -n (or -D)
    #[arg(long = "save-rc-stanza")]
    pub save_rc_stanza: bool,

    /// With --save-rc-stanza: replace the stanza's keys without asking
    #[arg(long = "force-stanza")]
    pub force_stanza: bool,

    /// List the stanzas of the rc file
    #[arg(long = "stanza-list")]
    pub stanza_list: bool,

    /// Do not save this command line (in ~/.fwknop.run or the -E file)
    #[arg(long = "no-save-args")]
    pub no_save_args: bool,

    /// Save the command line to FILE instead of ~/.fwknop.run (read by -l, --show-last)
    #[arg(
        short = 'E',
        long = "save-args-file",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    pub save_args_file: Option<String>,

    /// Run the last saved command line again (other arguments are ignored, as fwknop)
    #[arg(short = 'l', long = "last-cmd")]
    pub last_cmd: bool,

    /// Print the last saved command line and exit
    #[arg(long = "show-last")]
    pub show_last: bool,

    /// Only use IPv4 addresses for the SPA server name
    #[arg(
        short = '4',
        long = "server-resolve-ipv4",
        conflicts_with = "server_resolve_ipv6"
    )]
    pub server_resolve_ipv4: bool,

    /// Only use IPv6 addresses for the SPA server name (knock over IPv6)
    #[arg(short = '6', long = "server-resolve-ipv6")]
    pub server_resolve_ipv6: bool,

    /// Request local NAT access via a forwarded port on the server
    #[arg(long = "nat-local")]
    pub nat_local: bool,

    /// Port the server should forward for NAT access
    #[arg(long = "nat-port", value_name = "PORT", allow_hyphen_values = true)]
    pub nat_port: Option<String>,

    /// Pick a random port for NAT access
    #[arg(long = "nat-rand-port")]
    pub nat_rand_port: bool,

    /// Add time to the packet timestamp (e.g. 60, 5m, 2h, 1d)
    #[arg(
        long = "time-offset-plus",
        value_name = "TIME",
        allow_hyphen_values = true
    )]
    pub time_offset_plus: Option<String>,

    /// Subtract time from the packet timestamp
    #[arg(
        long = "time-offset-minus",
        value_name = "TIME",
        allow_hyphen_values = true
    )]
    pub time_offset_minus: Option<String>,

    /// Encrypt with GPG (OpenPGP) instead of Rijndael; needs --gpg-recipient-key
    #[arg(short = 'g', long = "gpg-encryption")]
    pub gpg_encryption: bool,

    /// GPG key (ID, fingerprint or user ID) of the server to encrypt to (implies -g)
    #[arg(
        long = "gpg-recipient-key",
        visible_alias = "gpg-recipient",
        value_name = "KEY_ID",
        allow_hyphen_values = true
    )]
    pub gpg_recipient_key: Option<String>,

    /// Your GPG key to sign the packet with (implies -g)
    #[arg(
        long = "gpg-signer-key",
        value_name = "KEY_ID",
        allow_hyphen_values = true
    )]
    pub gpg_signer_key: Option<String>,

    /// GnuPG home directory holding the keyrings (implies -g)
    #[arg(long = "gpg-home-dir", value_name = "DIR", allow_hyphen_values = true)]
    pub gpg_home_dir: Option<String>,

    /// Path of the gpg program gpgme should run (implies -g)
    #[arg(long = "gpg-exe", value_name = "PATH", allow_hyphen_values = true)]
    pub gpg_exe: Option<String>,

    /// Let gpg-agent supply the signing passphrase (implies -g)
    #[arg(long = "gpg-agent")]
    pub gpg_agent: bool,

    /// The signing key has no passphrase: do not ask for one (implies -g)
    #[arg(long = "gpg-no-signing-pw")]
    pub gpg_no_signing_pw: bool,

    /// Source IP address of the packet (-P udpraw, tcpraw or icmp only)
    #[arg(
        short = 'Q',
        long = "spoof-source",
        visible_alias = "spoof-src",
        value_name = "IP",
        allow_hyphen_values = true
    )]
    pub spoof_source: Option<String>,

    /// ICMP type of -P icmp (0-40, default 0: echo reply)
    #[arg(long = "icmp-type", value_name = "TYPE", allow_hyphen_values = true)]
    pub icmp_type: Option<String>,

    /// ICMP code of -P icmp (0-15, default 0)
    #[arg(long = "icmp-code", value_name = "CODE", allow_hyphen_values = true)]
    pub icmp_code: Option<String>,

    /// `postern [options] ssh HOST`: see [`SshArgs`].
    #[command(subcommand)]
    pub command: Option<Command>,

    // ---- fwknop options postern recognises and refuses, saying why ----
    /// Refused: postern never runs wget (-R uses its own HTTPS client)
    #[arg(
        short = 'w',
        long = "wget-cmd",
        value_name = "PATH",
        allow_hyphen_values = true
    )]
    pub wget_cmd: Option<String>,
    /// Refused: postern never runs wget (-u sets -R's User-Agent)
    #[arg(long = "use-wget-user-agent")]
    pub use_wget_user_agent: bool,
    /// Refused: only fwknop's test-suite builds have it
    #[arg(
        long = "fault-injection-tag",
        value_name = "TAG",
        allow_hyphen_values = true
    )]
    pub fault_injection_tag: Option<String>,
}

/// postern's commands (fwknop has none: without one, postern knocks).
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Knock, then ssh to HOST through the port it opens
    ///
    /// Runs `ssh -o ProxyCommand='postern --connect %h:%p OPTIONS' HOST SSH_ARGUMENTS`,
    /// OPTIONS being the options given before `ssh` (plus `-n HOST` when
    /// ~/.fwknoprc has a stanza named HOST and no -n is given). ssh resolves
    /// HOST and its port from its own configuration; postern knocks, waits
    /// until the port opens (knocking up to three times), then carries the
    /// connection.
    Ssh(SshArgs),
}

/// `postern [options] ssh [USER@]HOST [-- SSH_ARGUMENTS]`.
#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// ssh's destination; HOST is also the ~/.fwknoprc stanza unless -n names one
    #[arg(value_name = "[USER@]HOST")]
    pub host: String,

    /// Passed to ssh after the destination: options, then a remote command
    #[arg(last = true, value_name = "SSH_ARGUMENTS")]
    pub ssh_args: Vec<String>,
}

/// Why `--fault-injection-tag` is refused.
pub const NO_FAULT_INJECTION: &str =
    "only fwknop builds made for its test suite (libfiu) have it; postern has no fault injection";

/// How parsing ended when it did not produce options.
#[derive(Debug)]
pub enum CliExit {
    /// --help: print this text to stdout, exit 0.
    Help(String),
    /// A parse error, already reduced to one line.
    Error(String),
}

impl Cli {
    /// Parse `args` (including the program name).
    pub fn parse_args<I, T>(args: I) -> Result<Cli, CliExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match Cli::try_parse_from(args) {
            Ok(cli) => Ok(cli),
            Err(e) => match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Err(CliExit::Help(e.render().to_string()))
                }
                _ => Err(CliExit::Error(one_line_error(&e))),
            },
        }
    }

    /// The first fwknop flag in use that postern refuses, with the reason.
    pub fn refused_flag(&self) -> Option<(&'static str, &'static str)> {
        let flags: [(bool, &'static str, &'static str); 3] = [
            (self.wget_cmd.is_some(), "-w/--wget-cmd", NO_WGET),
            (
                self.use_wget_user_agent,
                "--use-wget-user-agent",
                NO_WGET_AGENT,
            ),
            (
                self.fault_injection_tag.is_some(),
                "--fault-injection-tag",
                NO_FAULT_INJECTION,
            ),
        ];
        flags
            .into_iter()
            .find(|(used, _, _)| *used)
            .map(|(_, name, why)| (name, why))
    }
}

/// clap's multi-line error reduced to its first line, without the `error: ` tag.
/// `--wait`'s SECONDS: checked here, before any knock is sent.
fn wait_seconds(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err(format!("expects 0 < SECONDS <= 3600, got `{text}`")),
    }
}

fn one_line_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.trim().strip_prefix("error: ").unwrap_or(first.trim());
    format!("{first} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, CliExit> {
        Cli::parse_args(std::iter::once("postern").chain(args.iter().copied()))
    }

    #[test]
    fn wait_seconds_are_checked_before_any_knock() {
        assert_eq!(parse(&["--wait"]).unwrap().wait, Some(5.0));
        assert_eq!(parse(&["--wait", "1.5"]).unwrap().wait, Some(1.5));
        for bad in ["-1", "0", "3601", "soon"] {
            assert!(
                matches!(parse(&["--wait", bad]), Err(CliExit::Error(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fwknop_style_flags_parse() {
        let cli = parse(&[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "srv",
            "-vv",
            "-T",
            "--use-hmac",
        ])
        .unwrap();
        assert_eq!(cli.access.as_deref(), Some("tcp/22"));
        assert_eq!(cli.allow_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(cli.verbose, 2);
        assert!(cli.test && cli.use_hmac);
    }

    #[test]
    fn last_occurrence_wins_and_long_prefixes_work() {
        let cli = parse(&["-A", "tcp/22", "--acc", "udp/53", "--dest=host"]).unwrap();
        assert_eq!(cli.access.as_deref(), Some("udp/53"));
        assert_eq!(cli.destination.as_deref(), Some("host"));
    }

    #[test]
    fn refused_flags_are_named_with_a_reason() {
        let cli = parse(&["-g", "-A", "tcp/22", "--gpg-recipient-key", "ABCD1234"]).unwrap();
        assert_eq!(cli.refused_flag(), None);
        let cli = parse(&["--spoof-src", "1.2.3.4", "--icmp-type", "8", "-P", "icmp"]).unwrap();
        assert_eq!(cli.refused_flag(), None);
        assert_eq!(cli.spoof_source.as_deref(), Some("1.2.3.4"));
        let cli = parse(&["-w", "/usr/bin/wget"]).unwrap();
        assert_eq!(cli.refused_flag(), Some(("-w/--wget-cmd", NO_WGET)));
        let cli = parse(&["--use-wget-user-agent"]).unwrap();
        assert_eq!(cli.refused_flag().unwrap().0, "--use-wget-user-agent");
        let cli = parse(&["--fault-injection-tag", "x"]).unwrap();
        assert_eq!(cli.refused_flag().unwrap().0, "--fault-injection-tag");
    }

    #[test]
    fn errors_are_one_line() {
        match parse(&["--bogus"]) {
            Err(CliExit::Error(msg)) => {
                assert!(!msg.contains('\n'));
                assert!(msg.contains("--bogus"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(&["-a", "1.2.3.4", "-s"]),
            Err(CliExit::Error(_))
        ));
    }
}
