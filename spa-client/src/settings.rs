//! Client settings and the rc-file variables that carry them.
//!
//! Precedence is fwknop's: built-in defaults < `[default]` stanza < named stanza <
//! command line. The command line is turned into the same `VARIABLE value`
//! assignments an rc file holds, so both are checked by one piece of code, and
//! `--save-rc-stanza` writes exactly the variables the command line set.

use crate::cli::Cli;
use crate::error::{ClientError, Result};
use crate::rcfile::RcEntry;
use spa_core::{DigestType, EncryptionMode};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use zeroize::Zeroizing;

/// Why fwknop's wget settings (`-w`/`WGET_CMD`, `--use-wget-user-agent`/
/// `USE_WGET_USER_AGENT`) have no meaning here.
pub const NO_WGET: &str = "postern never runs wget: -R fetches --resolve-url over HTTPS with its own client (use -a IP to skip the lookup)";
pub const NO_WGET_AGENT: &str =
    "postern never runs wget: -R sends the User-Agent postern/VERSION, or the one -u AGENT names";

/// fwknop's default SPA destination port.
pub const DEFAULT_SERVER_PORT: u16 = 62201;
/// Largest client timeout fwknopd decodes.
pub const MAX_FW_TIMEOUT: u32 = 65535;
/// fwknop refuses keys longer than this (passphrases are cut to it).
pub const MAX_KEY_LEN: usize = 128;

macro_rules! vars {
    ($($v:ident => $name:literal),* $(,)?) => {
        /// A variable of the rc file. Declaration order is the order fwknop writes them in.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Var { $($v),* }
        impl Var {
            pub const ALL: &'static [Var] = &[$(Var::$v),*];
            pub fn name(self) -> &'static str {
                match self { $(Var::$v => $name),* }
            }
        }
    };
}

vars! {
    DigestType => "DIGEST_TYPE",
    SpaServerProto => "SPA_SERVER_PROTO",
    SpaServerPort => "SPA_SERVER_PORT",
    SpaSourcePort => "SPA_SOURCE_PORT",
    FwTimeout => "FW_TIMEOUT",
    AllowIp => "ALLOW_IP",
    TimeOffset => "TIME_OFFSET",
    EncryptionMode => "ENCRYPTION_MODE",
    UseGpg => "USE_GPG",
    UseGpgAgent => "USE_GPG_AGENT",
    GpgRecipient => "GPG_RECIPIENT",
    GpgSigner => "GPG_SIGNER",
    GpgHomedir => "GPG_HOMEDIR",
    GpgExe => "GPG_EXE",
    GpgSigningPw => "GPG_SIGNING_PW",
    GpgSigningPwBase64 => "GPG_SIGNING_PW_BASE64",
    GpgNoSigningPw => "GPG_NO_SIGNING_PW",
    SpoofUser => "SPOOF_USER",
    SpoofSourceIp => "SPOOF_SOURCE_IP",
    Access => "ACCESS",
    SpaServer => "SPA_SERVER",
    RandPort => "RAND_PORT",
    Key => "KEY",
    KeyBase64 => "KEY_BASE64",
    HmacDigestType => "HMAC_DIGEST_TYPE",
    HmacKeyBase64 => "HMAC_KEY_BASE64",
    HmacKey => "HMAC_KEY",
    UseHmac => "USE_HMAC",
    UseWgetUserAgent => "USE_WGET_USER_AGENT",
    KeyFile => "KEY_FILE",
    HmacKeyFile => "HMAC_KEY_FILE",
    NatAccess => "NAT_ACCESS",
    HttpUserAgent => "HTTP_USER_AGENT",
    ResolveUrl => "RESOLVE_URL",
    ServerResolveIpv4 => "SERVER_RESOLVE_IPV4",
    NatLocal => "NAT_LOCAL",
    NatRandPort => "NAT_RAND_PORT",
    NatPort => "NAT_PORT",
    Verbose => "VERBOSE",
    ResolveIpHttp => "RESOLVE_IP_HTTP",
    ResolveIpHttps => "RESOLVE_IP_HTTPS",
    ResolveHttpOnly => "RESOLVE_HTTP_ONLY",
    WgetCmd => "WGET_CMD",
    NoSaveArgs => "NO_SAVE_ARGS",
    // postern extensions (read only: fwknop refuses a stanza holding them, so
    // --save-rc-stanza never writes them)
    ServerCommand => "SERVER_COMMAND",
    IcmpType => "ICMP_TYPE",
    IcmpCode => "ICMP_CODE",
    ServerResolveIpv6 => "SERVER_RESOLVE_IPV6",
    // postern's native protocol (docs/protocol.md)
    Protocol => "PROTOCOL",
    ServerPublicKey => "SERVER_PUBLIC_KEY",
    ClientKeyFile => "CLIENT_KEY_FILE",
    NativeHybrid => "NATIVE_HYBRID",
}

impl Var {
    /// Exact, case-sensitive lookup (as fwknop does).
    pub fn from_name(name: &str) -> Option<Var> {
        Var::ALL.iter().copied().find(|v| v.name() == name)
    }

    /// postern's own variables, which fwknop does not know.
    pub fn is_extension(self) -> bool {
        matches!(
            self,
            Var::ServerCommand
                | Var::IcmpType
                | Var::IcmpCode
                | Var::ServerResolveIpv6
                | Var::Protocol
                | Var::ServerPublicKey
                | Var::ClientKeyFile
                | Var::NativeHybrid
        )
    }

    /// Values never echoed in messages.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Var::Key
                | Var::KeyBase64
                | Var::HmacKey
                | Var::HmacKeyBase64
                | Var::GpgSigningPw
                | Var::GpgSigningPwBase64
        )
    }
}

/// A string that is wiped on drop and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    pub fn new(s: &str) -> Self {
        SecretText(Zeroizing::new(s.to_string()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    Passphrase(SecretText),
    Base64(SecretText),
    /// `-G` / `KEY_FILE`: lines `<server>: <key>`.
    File(PathBuf),
}

/// The transport for the SPA packet (fwknop's -P names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProto {
    Udp,
    Tcp,
    Http,
    UdpRaw,
    TcpRaw,
    Icmp,
}

impl ServerProto {
    pub fn name(self) -> &'static str {
        match self {
            ServerProto::Udp => "udp",
            ServerProto::Tcp => "tcp",
            ServerProto::Http => "http",
            ServerProto::UdpRaw => "udpraw",
            ServerProto::TcpRaw => "tcpraw",
            ServerProto::Icmp => "icmp",
        }
    }

    /// The modes that build their own IP header on a raw socket (and may spoof it).
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            ServerProto::UdpRaw | ServerProto::TcpRaw | ServerProto::Icmp
        )
    }
}

impl FromStr for ServerProto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            ServerProto::Udp,
            ServerProto::Tcp,
            ServerProto::Http,
            ServerProto::UdpRaw,
            ServerProto::TcpRaw,
            ServerProto::Icmp,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| "unrecognized protocol (use udp, tcp or http)".to_string())
    }
}

impl Settings {
    /// The addresses of the server name to knock (`-4`, `-6`).
    pub fn family(&self) -> crate::send::Family {
        crate::send::Family::from_flags(self.server_resolve_ipv4, self.server_resolve_ipv6)
    }
}

/// The address the server should open the firewall for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowIp {
    /// An IPv4 address (as fwknop), an IPv6 one (postern's extension), or the
    /// unspecified `0.0.0.0` for "the packet's source" (`-s`).
    Addr(IpAddr),
    /// Ask a web service for our external address (-R).
    Resolve,
}

/// Everything the rc file and command line can set.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub digest: Option<DigestType>,
    pub server_proto: Option<ServerProto>,
    pub server_port: Option<u16>,
    pub source_port: Option<u16>,
    pub fw_timeout: Option<u32>,
    pub allow: Option<AllowIp>,
    pub time_offset_plus: u64,
    pub time_offset_minus: u64,
    pub mode: Option<EncryptionMode>,
    /// `-M asymmetric` / `ENCRYPTION_MODE asymmetric`: GPG mode (needs a recipient).
    pub asymmetric: bool,
    pub use_gpg: bool,
    pub use_gpg_agent: bool,
    pub gpg_no_signing_pw: bool,
    pub gpg_recipient: Option<String>,
    pub gpg_signer: Option<String>,
    pub gpg_home_dir: Option<String>,
    pub gpg_exe: Option<String>,
    pub spoof_user: Option<String>,
    /// `-Q` / `SPOOF_SOURCE_IP`: the IP source of a raw knock.
    pub spoof_source_ip: Option<Ipv4Addr>,
    /// `--icmp-type` / `--icmp-code` of `-P icmp` (fwknop's defaults: 0, 0).
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub access: Option<String>,
    pub spa_server: Option<String>,
    pub rand_port: bool,
    pub key: Option<KeySpec>,
    pub hmac_digest: Option<DigestType>,
    pub hmac_key: Option<KeySpec>,
    pub use_hmac: bool,
    pub use_wget_user_agent: bool,
    pub nat_access: Option<String>,
    pub user_agent: Option<String>,
    pub resolve_url: Option<String>,
    pub server_resolve_ipv4: bool,
    /// `-6` / `SERVER_RESOLVE_IPV6`: knock over IPv6 only.
    pub server_resolve_ipv6: bool,
    pub nat_local: bool,
    pub nat_rand_port: bool,
    pub nat_port: Option<u16>,
    pub verbose: u8,
    pub resolve_http_only: bool,
    pub wget_cmd: Option<String>,
    pub no_save_args: bool,
    pub server_command: Option<String>,
    /// `PROTOCOL native` / `--native`: send postern's own protocol (docs/protocol.md).
    pub native: bool,
    /// `SERVER_PUBLIC_KEY` / `--server-key`: a `postern-srv1:` line or a file holding one.
    pub server_public_key: Option<String>,
    /// `CLIENT_KEY_FILE` / `--client-key`: this client's private key file (mode 0600).
    pub client_key_file: Option<String>,
    /// `NATIVE_HYBRID Y` / `--hybrid`: add ML-KEM-768 to the key exchange.
    pub native_hybrid: bool,
    /// Variables given on the command line (what --save-rc-stanza writes).
    pub cli_vars: BTreeSet<Var>,
}

fn is_yes(v: &str) -> bool {
    v.eq_ignore_ascii_case("y")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Y"
    } else {
        "N"
    }
}

pub fn parse_port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| "must be a port number 1..65535".to_string())
}

/// A port where 0 means "not set" (fwknop writes 0 for an unset source or NAT port).
pub fn parse_port_or_zero(v: &str) -> Result<Option<u16>, String> {
    if v == "0" {
        return Ok(None);
    }
    parse_port(v).map(Some)
}

pub fn parse_fw_timeout(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|&t| t <= MAX_FW_TIMEOUT)
        .ok_or_else(|| format!("must be a number of seconds within [0-{MAX_FW_TIMEOUT}]"))
}

/// fwknop's time offset: digits, optionally followed by a unit whose first letter is
/// m (minutes), h (hours) or d (days); other letters are skipped (`60sec` = 60 s).
pub fn parse_time_offset(v: &str) -> Result<u64, String> {
    const BAD: &str = "expected seconds, or a number with m, h or d (e.g. 90, 5m, 2h, 1d)";
    let mut digits = String::new();
    let mut unit = 1u64;
    for c in v.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'm' | 'M' => {
                unit = 60;
                break;
            }
            'h' | 'H' => {
                unit = 3600;
                break;
            }
            'd' | 'D' => {
                unit = 86_400;
                break;
            }
            _ => {}
        }
    }
    if digits.is_empty() || digits.len() > 8 {
        return Err(BAD.into());
    }
    let n: u64 = digits.parse().map_err(|_| BAD.to_string())?;
    if n > 2 << 15 {
        return Err(format!("at most {} units", 2 << 15));
    }
    Ok(n * unit)
}

fn parse_digest(v: &str) -> Result<DigestType, String> {
    DigestType::from_str(v).map_err(|_| {
        "must be one of md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512".to_string()
    })
}

fn parse_mode(v: &str) -> Result<EncryptionMode, String> {
    EncryptionMode::from_str(v)
        .map_err(|_| "must be one of cbc, ecb, cfb, ofb, ctr, legacy, asymmetric".to_string())
}

fn parse_allow_ip(v: &str) -> Result<AllowIp, String> {
    if v.eq_ignore_ascii_case("source") {
        return Ok(AllowIp::Addr(Ipv4Addr::UNSPECIFIED.into()));
    }
    if v.eq_ignore_ascii_case("resolve") {
        return Ok(AllowIp::Resolve);
    }
    // The message parser decides what an address is, so the client never
    // writes one the server would refuse.
    spa_core::request::AccessRequest::parse(&format!("{v},tcp/1"))
        .map(|r| AllowIp::Addr(r.allow_ip))
        .map_err(|_| "must be an IPv4 or IPv6 address, `resolve` or `source`".to_string())
}

/// `--icmp-type` / `--icmp-code`: 0 to fwknop's maximum.
fn parse_icmp_field(v: &str, max: u8) -> Result<u8, String> {
    v.parse::<u8>()
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("must be in [0-{max}]"))
}

fn check_base64(v: &str) -> Result<SecretText, String> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if ok && spa_core::b64::decode(v).is_some_and(|d| !d.is_empty()) {
        Ok(SecretText::new(v))
    } else {
        Err("is not valid base64".into())
    }
}

fn parse_verbose(v: &str) -> Result<u8, String> {
    if is_yes(v) {
        return Ok(1);
    }
    if v.eq_ignore_ascii_case("n") {
        return Ok(0);
    }
    v.parse::<u8>()
        .ok()
        .filter(|&n| n <= 4)
        .ok_or_else(|| "must be Y, N or a level 0..4".to_string())
}

/// A non-fatal remark made while applying a variable.
pub type Warning = String;

impl Settings {
    /// Apply one `VARIABLE value`. The error is a reason, without the variable's name.
    pub fn apply(&mut self, var: Var, v: &str) -> Result<Option<Warning>, String> {
        match var {
            Var::DigestType => self.digest = Some(parse_digest(v)?),
            Var::SpaServerProto => self.server_proto = Some(v.parse()?),
            Var::SpaServerPort => self.server_port = Some(parse_port(v)?),
            Var::SpaSourcePort => self.source_port = parse_port_or_zero(v)?,
            Var::FwTimeout => self.fw_timeout = Some(parse_fw_timeout(v)?),
            Var::AllowIp => self.allow = Some(parse_allow_ip(v)?),
            Var::TimeOffset => {
                let (minus, rest) = match v.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, v),
                };
                let secs = parse_time_offset(rest)?;
                (self.time_offset_plus, self.time_offset_minus) =
                    if minus { (0, secs) } else { (secs, 0) };
            }
            Var::EncryptionMode if v.eq_ignore_ascii_case("asymmetric") => self.asymmetric = true,
            Var::EncryptionMode => {
                self.mode = Some(parse_mode(v)?);
                self.asymmetric = false;
            }
            Var::UseGpg => self.use_gpg |= is_yes(v),
            Var::UseGpgAgent => self.use_gpg_agent |= is_yes(v),
            Var::GpgNoSigningPw => self.gpg_no_signing_pw |= is_yes(v),
            Var::GpgRecipient => self.gpg_recipient = Some(v.to_string()),
            Var::Protocol => {
                self.native = match v.to_ascii_lowercase().as_str() {
                    "native" => true,
                    "fwknop" => false,
                    _ => return Err("must be `native` or `fwknop`".into()),
                }
            }
            Var::ServerPublicKey => self.server_public_key = Some(v.to_string()),
            Var::ClientKeyFile => self.client_key_file = Some(v.to_string()),
            Var::NativeHybrid => self.native_hybrid = is_yes(v),
            Var::GpgSigner => self.gpg_signer = Some(v.to_string()),
            // fwknop drops a trailing path separator.
            Var::GpgHomedir => {
                self.gpg_home_dir = Some(
                    v.strip_suffix('/')
                        .filter(|d| !d.is_empty())
                        .unwrap_or(v)
                        .to_string(),
                )
            }
            Var::GpgExe => self.gpg_exe = Some(v.to_string()),
            // fwknop uses the GPG signing passphrase as the key when GPG is off.
            Var::Key | Var::GpgSigningPw => {
                self.key = Some(KeySpec::Passphrase(SecretText::new(v)))
            }
            Var::KeyBase64 | Var::GpgSigningPwBase64 => {
                self.key = Some(KeySpec::Base64(check_base64(v)?))
            }
            Var::KeyFile => self.key = Some(KeySpec::File(PathBuf::from(v))),
            Var::SpoofUser => self.spoof_user = Some(v.to_string()),
            Var::SpoofSourceIp => {
                self.spoof_source_ip = Some(
                    v.parse::<Ipv4Addr>()
                        .map_err(|_| "must be an IPv4 address".to_string())?,
                )
            }
            Var::Access => self.access = Some(v.to_string()),
            Var::SpaServer => self.spa_server = Some(v.to_string()),
            Var::RandPort => self.rand_port |= is_yes(v),
            Var::HmacDigestType => self.hmac_digest = Some(parse_digest(v)?),
            Var::HmacKeyBase64 => {
                self.hmac_key = Some(KeySpec::Base64(check_base64(v)?));
                self.use_hmac = true;
            }
            Var::HmacKey => {
                self.hmac_key = Some(KeySpec::Passphrase(SecretText::new(v)));
                self.use_hmac = true;
            }
            Var::HmacKeyFile => {
                self.hmac_key = Some(KeySpec::File(PathBuf::from(v)));
                self.use_hmac = true;
            }
            Var::UseHmac => self.use_hmac |= is_yes(v),
            Var::UseWgetUserAgent => {
                self.use_wget_user_agent = is_yes(v);
                if self.use_wget_user_agent {
                    return Ok(Some(format!(
                        "USE_WGET_USER_AGENT ignored: {NO_WGET_AGENT}"
                    )));
                }
            }
            Var::NatAccess => self.nat_access = Some(v.to_string()),
            Var::HttpUserAgent => self.user_agent = Some(v.to_string()),
            Var::ResolveUrl => self.resolve_url = Some(v.to_string()),
            Var::ServerResolveIpv4 => self.server_resolve_ipv4 |= is_yes(v),
            Var::ServerResolveIpv6 => self.server_resolve_ipv6 |= is_yes(v),
            Var::NatLocal => self.nat_local |= is_yes(v),
            Var::NatRandPort => self.nat_rand_port |= is_yes(v),
            Var::NatPort => self.nat_port = parse_port_or_zero(v)?,
            Var::Verbose => self.verbose = parse_verbose(v)?,
            Var::ResolveIpHttp | Var::ResolveIpHttps => {
                if is_yes(v) {
                    self.allow = Some(AllowIp::Resolve);
                }
            }
            Var::ResolveHttpOnly => self.resolve_http_only |= is_yes(v),
            Var::WgetCmd => {
                self.wget_cmd = Some(v.to_string());
                return Ok(Some(format!("WGET_CMD ignored: {NO_WGET}")));
            }
            Var::NoSaveArgs => self.no_save_args |= is_yes(v),
            Var::ServerCommand => self.server_command = Some(v.to_string()),
            Var::IcmpType => self.icmp_type = Some(parse_icmp_field(v, crate::raw::MAX_ICMP_TYPE)?),
            Var::IcmpCode => self.icmp_code = Some(parse_icmp_field(v, crate::raw::MAX_ICMP_CODE)?),
        }
        Ok(None)
    }

    /// Apply the entries of one stanza. An unknown variable is an error, as in
    /// fwknop (a misspelt setting would otherwise knock with a default).
    pub fn apply_rc_entries(&mut self, entries: &[RcEntry], file: &str) -> Result<Vec<Warning>> {
        let mut warnings = Vec::new();
        for e in entries {
            let Some(var) = Var::from_name(&e.name) else {
                return Err(ClientError::RcFile(format!(
                    "rc file {file} line {}: unknown variable {}",
                    e.line, e.name
                )));
            };
            match self.apply(var, &e.value) {
                Ok(w) => warnings.extend(w),
                Err(reason) => {
                    let shown = if var.is_secret() {
                        String::new()
                    } else {
                        format!(" '{}'", e.value)
                    };
                    return Err(ClientError::RcFile(format!(
                        "rc file {file} line {}: invalid {}{shown}: {reason}",
                        e.line,
                        var.name()
                    )));
                }
            }
        }
        Ok(warnings)
    }

    /// Apply the command line on top of the rc-file settings.
    pub fn apply_cli(&mut self, cli: &Cli) -> Result<Vec<Warning>> {
        let mut warnings = Vec::new();
        for a in cli_assignments(cli) {
            match self.apply(a.var, &a.value) {
                Ok(w) => warnings.extend(w),
                Err(reason) => {
                    let shown = if a.var.is_secret() {
                        String::new()
                    } else {
                        format!(" '{}'", a.value.as_str())
                    };
                    return Err(ClientError::usage(format!(
                        "invalid {}{shown}: {reason}",
                        a.flag
                    )));
                }
            }
            if a.saved {
                self.cli_vars.insert(a.var);
            }
        }
        if cli.hmac_key_len.is_some() {
            self.use_hmac = true;
            self.cli_vars.insert(Var::UseHmac);
        }
        if cli.key_base64_hmac.is_some() || cli.key_hmac.is_some() || cli.hmac_digest_type.is_some()
        {
            self.use_hmac = true;
            self.cli_vars.insert(Var::UseHmac);
        }
        Ok(warnings)
    }

    /// The value fwknop writes for `var` in a saved stanza.
    pub fn render(&self, var: Var) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        let key_text = |k: &Option<KeySpec>, want_b64: bool| match k {
            Some(KeySpec::Passphrase(s)) if !want_b64 => s.expose().to_string(),
            Some(KeySpec::Base64(s)) if want_b64 => s.expose().to_string(),
            _ => String::new(),
        };
        match var {
            Var::DigestType => self
                .digest
                .unwrap_or(DigestType::Sha256)
                .name()
                .to_uppercase(),
            Var::SpaServerProto => self
                .server_proto
                .unwrap_or(ServerProto::Udp)
                .name()
                .to_string(),
            Var::SpaServerPort => self.server_port.unwrap_or(DEFAULT_SERVER_PORT).to_string(),
            Var::SpaSourcePort => self.source_port.unwrap_or(0).to_string(),
            Var::FwTimeout => self.fw_timeout.map(|t| t.to_string()).unwrap_or_default(),
            Var::AllowIp => match self.allow {
                Some(AllowIp::Addr(ip)) => ip.to_string(),
                Some(AllowIp::Resolve) => "resolve".into(),
                None => String::new(),
            },
            Var::TimeOffset if self.time_offset_minus > 0 => format!("-{}", self.time_offset_minus),
            Var::TimeOffset => self.time_offset_plus.to_string(),
            Var::EncryptionMode if self.asymmetric => "asymmetric".to_string(),
            Var::EncryptionMode => mode_display_name(self.mode.unwrap_or_default()).to_string(),
            Var::UseGpg => yes_no(self.use_gpg).into(),
            Var::UseGpgAgent => yes_no(self.use_gpg_agent).into(),
            Var::GpgNoSigningPw => yes_no(self.gpg_no_signing_pw).into(),
            Var::GpgRecipient => opt(&self.gpg_recipient),
            Var::Protocol => if self.native { "native" } else { "fwknop" }.into(),
            Var::ServerPublicKey => opt(&self.server_public_key),
            Var::ClientKeyFile => opt(&self.client_key_file),
            Var::NativeHybrid => yes_no(self.native_hybrid).into(),
            Var::GpgSigner => opt(&self.gpg_signer),
            Var::GpgHomedir => opt(&self.gpg_home_dir),
            Var::GpgExe => opt(&self.gpg_exe),
            Var::GpgSigningPw | Var::Key => key_text(&self.key, false),
            Var::GpgSigningPwBase64 | Var::KeyBase64 => key_text(&self.key, true),
            Var::KeyFile => match &self.key {
                Some(KeySpec::File(p)) => p.display().to_string(),
                _ => String::new(),
            },
            Var::SpoofUser => opt(&self.spoof_user),
            Var::SpoofSourceIp => self
                .spoof_source_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            Var::Access => opt(&self.access),
            Var::SpaServer => opt(&self.spa_server),
            Var::RandPort => yes_no(self.rand_port).into(),
            Var::HmacDigestType => self
                .hmac_digest
                .unwrap_or(DigestType::Sha256)
                .name()
                .to_uppercase(),
            Var::HmacKeyBase64 => key_text(&self.hmac_key, true),
            Var::HmacKey => key_text(&self.hmac_key, false),
            Var::HmacKeyFile => match &self.hmac_key {
                Some(KeySpec::File(p)) => p.display().to_string(),
                _ => String::new(),
            },
            Var::UseHmac => yes_no(self.use_hmac).into(),
            Var::UseWgetUserAgent => yes_no(self.use_wget_user_agent).into(),
            Var::NatAccess => opt(&self.nat_access),
            Var::HttpUserAgent => opt(&self.user_agent),
            Var::ResolveUrl => opt(&self.resolve_url),
            Var::ServerResolveIpv4 => yes_no(self.server_resolve_ipv4).into(),
            Var::ServerResolveIpv6 => yes_no(self.server_resolve_ipv6).into(),
            Var::NatLocal => yes_no(self.nat_local).into(),
            Var::NatRandPort => yes_no(self.nat_rand_port).into(),
            Var::NatPort => self.nat_port.unwrap_or(0).to_string(),
            Var::Verbose if self.verbose <= 1 => yes_no(self.verbose == 1).into(),
            Var::Verbose => self.verbose.to_string(),
            Var::ResolveIpHttp | Var::ResolveIpHttps => {
                yes_no(self.allow == Some(AllowIp::Resolve)).into()
            }
            Var::ResolveHttpOnly => yes_no(self.resolve_http_only).into(),
            Var::WgetCmd => opt(&self.wget_cmd),
            Var::NoSaveArgs => yes_no(self.no_save_args).into(),
            Var::ServerCommand => opt(&self.server_command),
            Var::IcmpType => self.icmp_type.map(|t| t.to_string()).unwrap_or_default(),
            Var::IcmpCode => self.icmp_code.map(|c| c.to_string()).unwrap_or_default(),
        }
    }

    /// `VARIABLE value` pairs for the variables the command line set, in fwknop's order.
    /// Extension variables and empty values are left out so fwknop can still read the file.
    pub fn stanza_vars(&self, extra: &[Var]) -> Vec<(String, String)> {
        let wanted: BTreeSet<Var> = self.cli_vars.iter().chain(extra).copied().collect();
        wanted
            .into_iter()
            .filter(|v| !v.is_extension())
            .map(|v| (v.name().to_string(), self.render(v)))
            .filter(|(_, value)| !value.is_empty())
            .collect()
    }
}

/// fwknop's spelling of a mode in rc files and dumps.
pub fn mode_display_name(mode: EncryptionMode) -> &'static str {
    match mode {
        EncryptionMode::Cbc => "CBC",
        EncryptionMode::Ecb => "ECB",
        EncryptionMode::Cfb => "CFB",
        EncryptionMode::Ofb => "OFB",
        EncryptionMode::Ctr => "CTR",
        EncryptionMode::Legacy => "legacy",
    }
}

/// One command-line option expressed as an rc variable.
struct Assignment {
    var: Var,
    value: Zeroizing<String>,
    flag: &'static str,
    /// Whether --save-rc-stanza writes it (fwknop does not save -s, for instance).
    saved: bool,
}

fn cli_assignments(cli: &Cli) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut push = |var: Var, value: &str, flag: &'static str, saved: bool| {
        out.push(Assignment {
            var,
            value: Zeroizing::new(value.to_string()),
            flag,
            saved,
        });
    };
    let opt = |o: &Option<String>| o.clone();
    let strings: [(Option<String>, Var, &'static str); 21] = [
        (opt(&cli.digest_type), Var::DigestType, "-m/--digest-type"),
        (
            opt(&cli.server_proto),
            Var::SpaServerProto,
            "-P/--server-proto",
        ),
        (
            opt(&cli.server_port),
            Var::SpaServerPort,
            "-p/--server-port",
        ),
        (
            opt(&cli.source_port),
            Var::SpaSourcePort,
            "-S/--source-port",
        ),
        (opt(&cli.fw_timeout), Var::FwTimeout, "-f/--fw-timeout"),
        (opt(&cli.allow_ip), Var::AllowIp, "-a/--allow-ip"),
        (
            opt(&cli.encryption_mode),
            Var::EncryptionMode,
            "-M/--encryption-mode",
        ),
        (opt(&cli.spoof_user), Var::SpoofUser, "-U/--spoof-user"),
        (opt(&cli.access), Var::Access, "-A/--access"),
        (opt(&cli.destination), Var::SpaServer, "-D/--destination"),
        (opt(&cli.key_rijndael), Var::Key, "--key-rijndael"),
        (
            opt(&cli.key_base64_rijndael),
            Var::KeyBase64,
            "--key-base64-rijndael",
        ),
        (
            opt(&cli.hmac_digest_type),
            Var::HmacDigestType,
            "--hmac-digest-type",
        ),
        (
            opt(&cli.key_base64_hmac),
            Var::HmacKeyBase64,
            "--key-base64-hmac",
        ),
        (opt(&cli.key_hmac), Var::HmacKey, "--key-hmac"),
        (opt(&cli.nat_access), Var::NatAccess, "-N/--nat-access"),
        (opt(&cli.user_agent), Var::HttpUserAgent, "-u/--user-agent"),
        (opt(&cli.resolve_url), Var::ResolveUrl, "--resolve-url"),
        (
            opt(&cli.spoof_source),
            Var::SpoofSourceIp,
            "-Q/--spoof-source",
        ),
        (opt(&cli.icmp_type), Var::IcmpType, "--icmp-type"),
        (opt(&cli.icmp_code), Var::IcmpCode, "--icmp-code"),
    ];
    for (value, var, flag) in strings {
        if let Some(v) = value {
            push(var, &v, flag, true);
        }
    }
    // fwknop: every --gpg-* option also turns GPG mode on.
    let gpg_strings: [(Option<String>, Var, &'static str); 4] = [
        (
            opt(&cli.gpg_recipient_key),
            Var::GpgRecipient,
            "--gpg-recipient-key",
        ),
        (opt(&cli.gpg_signer_key), Var::GpgSigner, "--gpg-signer-key"),
        (opt(&cli.gpg_home_dir), Var::GpgHomedir, "--gpg-home-dir"),
        (opt(&cli.gpg_exe), Var::GpgExe, "--gpg-exe"),
    ];
    let mut gpg_on = cli.gpg_encryption || cli.gpg_agent || cli.gpg_no_signing_pw;
    for (value, var, flag) in gpg_strings {
        if let Some(v) = value {
            push(var, &v, flag, true);
            gpg_on = true;
        }
    }
    if gpg_on {
        push(Var::UseGpg, "Y", "-g/--gpg-encryption", true);
    }
    if cli.gpg_agent {
        push(Var::UseGpgAgent, "Y", "--gpg-agent", true);
    }
    if cli.gpg_no_signing_pw {
        push(Var::GpgNoSigningPw, "Y", "--gpg-no-signing-pw", true);
    }
    if cli.native {
        push(Var::Protocol, "native", "--native", true);
    }
    if cli.hybrid {
        push(Var::NativeHybrid, "Y", "--hybrid", true);
    }
    if let Some(v) = &cli.server_key {
        push(Var::ServerPublicKey, v, "--server-key", true);
    }
    if let Some(p) = &cli.client_key {
        push(
            Var::ClientKeyFile,
            &p.to_string_lossy(),
            "--client-key",
            true,
        );
    }
    if let Some(p) = &cli.get_key {
        push(Var::KeyFile, &p.to_string_lossy(), "-G/--get-key", true);
    }
    if let Some(p) = &cli.get_hmac_key {
        push(
            Var::HmacKeyFile,
            &p.to_string_lossy(),
            "--get-hmac-key",
            true,
        );
    }
    if let Some(p) = &cli.nat_port {
        push(Var::NatPort, p, "--nat-port", true);
    }
    if let Some(t) = &cli.time_offset_plus {
        push(Var::TimeOffset, t, "--time-offset-plus", true);
    }
    if let Some(t) = &cli.time_offset_minus {
        push(
            Var::TimeOffset,
            &format!("-{t}"),
            "--time-offset-minus",
            true,
        );
    }
    let flags: [(bool, Var, &'static str, bool); 11] = [
        (cli.source_ip, Var::AllowIp, "-s/--source-ip", false),
        (
            cli.resolve_ip,
            Var::ResolveIpHttps,
            "-R/--resolve-ip-https",
            true,
        ),
        (
            cli.resolve_http_only,
            Var::ResolveHttpOnly,
            "--resolve-http-only",
            true,
        ),
        (
            cli.resolve_http_only,
            Var::ResolveIpHttps,
            "--resolve-http-only",
            true,
        ),
        (cli.rand_port, Var::RandPort, "-r/--rand-port", true),
        (cli.use_hmac, Var::UseHmac, "--use-hmac", true),
        (
            cli.server_resolve_ipv4,
            Var::ServerResolveIpv4,
            "-4/--server-resolve-ipv4",
            true,
        ),
        (
            cli.server_resolve_ipv6,
            Var::ServerResolveIpv6,
            "-6/--server-resolve-ipv6",
            true,
        ),
        (cli.nat_local, Var::NatLocal, "--nat-local", true),
        (cli.nat_rand_port, Var::NatRandPort, "--nat-rand-port", true),
        (cli.no_save_args, Var::NoSaveArgs, "--no-save-args", true),
    ];
    for (on, var, flag, saved) in flags {
        if on {
            let value = if var == Var::AllowIp { "source" } else { "Y" };
            push(var, value, flag, saved);
        }
    }
    if cli.verbose > 0 {
        push(
            Var::Verbose,
            &cli.verbose.min(4).to_string(),
            "-v/--verbose",
            true,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rcfile::RcFile;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_args(std::iter::once("postern").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn time_offsets_follow_fwknop() {
        assert_eq!(parse_time_offset("60"), Ok(60));
        assert_eq!(parse_time_offset("60sec"), Ok(60));
        assert_eq!(parse_time_offset("5min"), Ok(300));
        assert_eq!(parse_time_offset("2H"), Ok(7200));
        assert_eq!(parse_time_offset("1days"), Ok(86_400));
        assert!(parse_time_offset("min").is_err());
        let mut s = Settings::default();
        s.apply(Var::TimeOffset, "-30").unwrap();
        assert_eq!((s.time_offset_plus, s.time_offset_minus), (0, 30));
        assert_eq!(s.render(Var::TimeOffset), "-30");
    }

    #[test]
    fn precedence_default_then_stanza_then_cli() {
        let rc = RcFile::parse(
            "/rc",
            "[default]\nSPA_SERVER_PORT 1111\nDIGEST_TYPE md5\nACCESS tcp/1\n[s]\nSPA_SERVER_PORT 2222\nACCESS tcp/2\n",
        );
        let mut s = Settings::default();
        s.apply_rc_entries(&rc.stanza_entries("default").unwrap(), "/rc")
            .unwrap();
        s.apply_rc_entries(&rc.stanza_entries("s").unwrap(), "/rc")
            .unwrap();
        s.apply_cli(&cli(&["-A", "udp/3"])).unwrap();
        assert_eq!(s.server_port, Some(2222));
        assert_eq!(s.digest, Some(DigestType::Md5));
        assert_eq!(s.access.as_deref(), Some("udp/3"));
        assert_eq!(
            s.cli_vars.iter().copied().collect::<Vec<_>>(),
            [Var::Access]
        );
    }

    #[test]
    fn later_key_source_replaces_earlier_one() {
        let mut s = Settings::default();
        s.apply(Var::Key, "pass").unwrap();
        s.apply_cli(&cli(&["--key-base64-rijndael", "AAAA"]))
            .unwrap();
        assert!(matches!(s.key, Some(KeySpec::Base64(_))));
    }

    #[test]
    fn bad_values_name_the_flag_but_not_secrets() {
        let mut s = Settings::default();
        let e = s.apply_cli(&cli(&["-p", "99999"])).unwrap_err().to_string();
        assert!(e.contains("-p/--server-port") && e.contains("99999"), "{e}");
        let e = s
            .apply_cli(&cli(&["--key-base64-rijndael", "not*base64"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--key-base64-rijndael") && !e.contains("not*base64"),
            "{e}"
        );
    }

    #[test]
    fn unknown_rc_variables_are_errors_as_in_fwknop() {
        let mut s = Settings::default();
        let rc = RcFile::parse("/rc", "[default]\nACCESS tcp/22\nCLIENT_TIMEOUT 60\n");
        let err = s
            .apply_rc_entries(&rc.stanza_entries("default").unwrap(), "/rc")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rc file /rc line 3: unknown variable CLIENT_TIMEOUT"
        );
    }

    #[test]
    fn raw_mode_settings_from_the_rc_file_and_the_command_line() {
        let rc = RcFile::parse(
            "/rc",
            "[default]\nSPA_SERVER_PROTO icmp\nICMP_TYPE 8\nICMP_CODE 0\nSPOOF_SOURCE_IP 192.0.2.9\n",
        );
        let mut s = Settings::default();
        s.apply_rc_entries(&rc.stanza_entries("default").unwrap(), "/rc")
            .unwrap();
        assert_eq!(s.server_proto, Some(ServerProto::Icmp));
        assert_eq!((s.icmp_type, s.icmp_code), (Some(8), Some(0)));
        assert_eq!(s.spoof_source_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        s.apply_cli(&cli(&["--icmp-code", "3", "-Q", "192.0.2.10"]))
            .unwrap();
        assert_eq!(s.icmp_code, Some(3));
        // -Q is fwknop's SPOOF_SOURCE_IP and is saved; the ICMP variables are
        // postern's own and never written (fwknop refuses unknown variables).
        let saved: Vec<String> = s.stanza_vars(&[]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(saved, ["SPOOF_SOURCE_IP"]);
        for (var, bad) in [
            ("ICMP_TYPE", "41"),
            ("ICMP_CODE", "16"),
            ("SPOOF_SOURCE_IP", "host"),
        ] {
            let rc = RcFile::parse("/rc", &format!("[default]\n{var} {bad}\n"));
            let e = Settings::default()
                .apply_rc_entries(&rc.stanza_entries("default").unwrap(), "/rc")
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 2") && e.contains(var), "{e}");
        }
    }

    #[test]
    fn wget_variables_are_ignored_with_the_reason() {
        let rc = RcFile::parse(
            "/rc",
            "[default]\nWGET_CMD /usr/bin/wget\nUSE_WGET_USER_AGENT Y\n",
        );
        let w = Settings::default()
            .apply_rc_entries(&rc.stanza_entries("default").unwrap(), "/rc")
            .unwrap();
        assert_eq!(
            w,
            [
                format!("WGET_CMD ignored: {NO_WGET}"),
                format!("USE_WGET_USER_AGENT ignored: {NO_WGET_AGENT}")
            ]
        );
    }

    #[test]
    fn rendering_matches_fwknop_spelling() {
        let mut s = Settings::default();
        s.apply_cli(&cli(&[
            "-M",
            "ctr",
            "-m",
            "sha3_256",
            "-f",
            "30",
            "--key-base64-hmac",
            "AAAA",
            "-R",
        ]))
        .unwrap();
        let vars = s.stanza_vars(&[]);
        let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("ENCRYPTION_MODE"), Some("CTR"));
        assert_eq!(get("DIGEST_TYPE"), Some("SHA3_256"));
        assert_eq!(get("FW_TIMEOUT"), Some("30"));
        assert_eq!(get("HMAC_KEY_BASE64"), Some("AAAA"));
        assert_eq!(get("USE_HMAC"), Some("Y"));
        assert_eq!(get("RESOLVE_IP_HTTPS"), Some("Y"));
        // Written in fwknop's variable order.
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "DIGEST_TYPE",
                "FW_TIMEOUT",
                "ENCRYPTION_MODE",
                "HMAC_KEY_BASE64",
                "USE_HMAC",
                "RESOLVE_IP_HTTPS"
            ]
        );
    }
}
