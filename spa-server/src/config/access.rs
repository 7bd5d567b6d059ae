//! access.conf: stanzas that each start with `SOURCE` and say who may open what.

pub use super::conf_file::Findings;
use super::conf_file::{parse_bool, parse_lines, parse_num, ConfError, Entry, Origin};
use super::secure_read;
use ipnet::{IpNet, Ipv4Net};
use postern_backend_common::{CapSet, SudoExec};
use serde::{Deserialize, Serialize};
use spa_core::request::parse_proto_ports;
use spa_core::{DigestType, EncryptionMode, ProtoPort, Secret};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// fwknop's defaults for a stanza.
pub const DEFAULT_FW_ACCESS_TIMEOUT: u32 = 30;
pub const DEFAULT_MAX_FW_TIMEOUT: u32 = 300;
const MAX_INCLUDE_DEPTH: usize = 3;
/// The value fwknop's stock access.conf has for every key. fwknopd refuses it
/// (in any case): it must never become a working key.
const PLACEHOLDER: &str = "__CHANGEME__";
/// What an `%include_keys` file may set: fwknopd's list (the keys and the GPG
/// key settings) plus HMAC_DIGEST_TYPE, which belongs with the HMAC key.
const INCLUDE_KEYS_VARS: &[&str] = &[
    "KEY",
    "KEY_BASE64",
    "HMAC_KEY",
    "HMAC_KEY_BASE64",
    "HMAC_DIGEST_TYPE",
    "GPG_DECRYPT_ID",
    "GPG_DECRYPT_PW",
    "GPG_ALLOW_NO_PW",
    "GPG_REQUIRE_SIG",
    "GPG_DISABLE_SIG",
    "GPG_IGNORE_SIG_VERIFY_ERROR",
    "GPG_REMOTE_ID",
    "GPG_FINGERPRINT_ID",
];

/// An address list that may be `ANY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AddrListText", into = "AddrListText")]
pub enum AddrList {
    Any,
    Nets(Vec<IpNet>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum AddrListText {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<AddrListText> for AddrList {
    type Error = String;
    fn try_from(t: AddrListText) -> Result<Self, String> {
        match t {
            AddrListText::One(s) => AddrList::parse(&s),
            AddrListText::Many(v) => AddrList::parse(&v.join(",")),
        }
    }
}

impl From<AddrList> for AddrListText {
    fn from(a: AddrList) -> Self {
        match a {
            AddrList::Any => AddrListText::One("ANY".into()),
            AddrList::Nets(n) => AddrListText::Many(n.iter().map(|n| n.to_string()).collect()),
        }
    }
}

impl AddrList {
    /// `ANY`, or comma-separated addresses and networks (CIDR, or IPv4 with a
    /// dotted netmask as fwknopd also takes them).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("ANY") {
                return Ok(AddrList::Any);
            }
            nets.push(parse_net(item)?);
        }
        if nets.is_empty() {
            return Err("empty address list".into());
        }
        Ok(AddrList::Nets(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            AddrList::Any => true,
            AddrList::Nets(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// One address or network: `a.b.c.d`, `a.b.c.d/n`, IPv6 alike, or fwknopd's
/// `a.b.c.d/255.255.255.0`. A netmask that is not contiguous is refused: it
/// would match a scattered set of addresses no network names.
fn parse_net(item: &str) -> Result<IpNet, String> {
    if let Ok(net) = item.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = item.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    if let Some((addr, mask)) = item.split_once('/') {
        if let (Ok(addr), Ok(mask)) = (addr.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>()) {
            return Ipv4Net::with_netmask(addr, mask)
                .map(IpNet::V4)
                .map_err(|_| {
                    format!("`{item}`: netmask {mask} is not contiguous (list the networks it covers as a.b.c.d/n)")
                });
        }
    }
    Err(format!(
        "`{item}` is not an address, network (a.b.c.d/n, a.b.c.d/255.255.255.0) or ANY"
    ))
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One access stanza, from access.conf or from `[[access]]` in the native TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessStanza {
    pub source: AddrList,
    #[serde(default)]
    pub destination: Option<AddrList>,
    /// Ports a client may ask for; empty means whatever it asks for.
    #[serde(default, with = "proto_port_list")]
    pub open_ports: Vec<ProtoPort>,
    /// Ports a client may never get.
    #[serde(default, with = "proto_port_list")]
    pub restrict_ports: Vec<ProtoPort>,
    #[serde(default, with = "secret_text", skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    #[serde(default, with = "secret_b64", skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<Secret>,
    #[serde(default, with = "secret_text", skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<Secret>,
    #[serde(default, with = "secret_b64", skip_serializing_if = "Option::is_none")]
    pub hmac_key_base64: Option<Secret>,
    #[serde(default = "default_digest", with = "display_fromstr")]
    pub hmac_digest_type: DigestType,
    /// The HMAC key made once, at the first packet screened ([`Self::hmac_keyed`]);
    /// a stanza is not changed once loaded (a reload makes new ones).
    #[serde(skip)]
    hmac_keyed: std::sync::OnceLock<spa_core::digest::KeyedHmac>,
    #[serde(default, with = "display_fromstr")]
    pub encryption_mode: EncryptionMode,
    #[serde(default)]
    pub require_username: Option<String>,
    /// Refuse packets whose allow-IP is 0.0.0.0 (the client's -s).
    #[serde(default)]
    pub require_source_address: bool,
    #[serde(default = "default_timeout")]
    pub fw_access_timeout: u32,
    /// Cap on a client-requested timeout (-f).
    #[serde(default = "default_max_timeout")]
    pub max_fw_timeout: u32,
    /// Unix time after which the stanza no longer grants anything.
    #[serde(default)]
    pub access_expire_epoch: Option<i64>,
    #[serde(default)]
    pub enable_cmd_exec: bool,
    #[serde(default)]
    pub cmd_exec_user: Option<String>,
    #[serde(default)]
    pub cmd_exec_group: Option<String>,
    #[serde(default)]
    pub cmd_cycle_open: Option<String>,
    #[serde(default)]
    pub cmd_cycle_close: Option<String>,
    #[serde(default)]
    pub cmd_cycle_timer: Option<u32>,
    /// CMD_CAPABILITIES (postern): capabilities this stanza's client commands and
    /// CMD_CYCLE scripts keep, e.g. `net_admin,net_raw`; none by default.
    #[serde(default, skip_serializing_if = "CapSet::is_empty")]
    pub cmd_capabilities: CapSet,
    /// ENABLE_CMD_SUDO_EXEC: client commands run through sudo.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_cmd_sudo_exec: bool,
    /// CMD_SUDO_EXEC_USER: `sudo -u` (root when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd_sudo_exec_user: Option<String>,
    /// CMD_SUDO_EXEC_GROUP: `sudo -g`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd_sudo_exec_group: Option<String>,
    /// FORCE_NAT `IP PORT`: every access from this stanza is forwarded there.
    #[serde(default)]
    pub force_nat: Option<ForceNat>,
    /// FORCE_SNAT `IP`: rewrite the source of forwarded traffic to this address.
    #[serde(default)]
    pub force_snat: Option<IpAddr>,
    #[serde(default)]
    pub force_masquerade: bool,
    #[serde(default)]
    pub disable_dnat: bool,
    /// FORWARD_ALL: a forwarded NAT grant carries every protocol and port from
    /// the client to its target. Unless FORCE_NAT names the target, NAT_ALLOW
    /// must allow every port of it (`NET:*`) and RESTRICT_PORTS must be empty.
    #[serde(default)]
    pub forward_all: bool,
    /// NAT_ALLOW: the only targets a client's forwarding request (`-N`) may
    /// lead to. Without it, the target's port must pass OPEN_PORTS. Loopback,
    /// link-local, multicast, broadcast and unspecified targets (local NAT
    /// too) need an entry inside that range.
    #[serde(
        default,
        with = "nat_allow_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nat_allow: Vec<NatAllow>,
    /// GPG_HOME_DIR: the keyring with the server's secret key (gpgme's default,
    /// `$GNUPGHOME` or `~/.gnupg`, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_home_dir: Option<PathBuf>,
    /// GPG_EXE: the gpg program gpgme runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_exe: Option<PathBuf>,
    /// The server's SUDO_EXE / `--sudo-exe` (not an access.conf variable: the
    /// daemon copies it in, see `daemon::apply_server_defaults`).
    #[serde(skip)]
    pub sudo_exe: Option<PathBuf>,
    /// GPG_DECRYPT_ID: the server key packets are encrypted to (informational, as in
    /// fwknopd: gpg finds the secret key by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_decrypt_id: Option<String>,
    /// GPG_DECRYPT_PW: passphrase of the server's secret key; turns GPG on.
    #[serde(default, with = "secret_text", skip_serializing_if = "Option::is_none")]
    pub gpg_decrypt_pw: Option<Secret>,
    /// GPG_ALLOW_NO_PW: the secret key has no passphrase; turns GPG on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gpg_allow_no_pw: bool,
    /// GPG_REQUIRE_SIG; unset means fwknopd's default: yes, unless GPG_DISABLE_SIG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_require_sig: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub gpg_disable_sig: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub gpg_ignore_sig_verify_error: bool,
    /// GPG_REMOTE_ID: key IDs allowed to sign (comma list).
    #[serde(default, with = "string_list", skip_serializing_if = "Vec::is_empty")]
    pub gpg_remote_id: Vec<String>,
    /// GPG_FINGERPRINT_ID: fingerprints allowed to sign (comma list).
    #[serde(default, with = "string_list", skip_serializing_if = "Vec::is_empty")]
    pub gpg_fingerprint_id: Vec<String>,
    /// PROTOCOL (postern): `fwknop` (default) or `native`, postern's own protocol
    /// (docs/protocol.md).
    #[serde(default, skip_serializing_if = "StanzaProtocol::is_fwknop")]
    pub protocol: StanzaProtocol,
    /// NATIVE_CLIENTS (postern): registered native clients (`posternd client list`)
    /// this stanza is for, comma list; `*` for every registered client.
    #[serde(default, with = "string_list", skip_serializing_if = "Vec::is_empty")]
    pub native_clients: Vec<String>,
    /// REQUIRE_TOTP (postern): native packets must carry the client's current TOTP code.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_totp: bool,
    /// REQUIRE_HYBRID (postern): native packets must use X25519 + ML-KEM-768.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_hybrid: bool,
    /// Where the stanza starts, for messages.
    #[serde(skip)]
    pub origin: Option<Origin>,
    /// Where its CMD_CAPABILITIES line is, for the refusal off Linux.
    #[serde(skip)]
    pub cmd_capabilities_origin: Option<Origin>,
}

/// Which protocol a stanza speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StanzaProtocol {
    #[default]
    Fwknop,
    Native,
}

impl StanzaProtocol {
    pub fn is_fwknop(&self) -> bool {
        *self == StanzaProtocol::Fwknop
    }
}

/// One NAT_ALLOW entry: a forwarding target a client may ask for (`-N`).
/// `NET:PORT` or `NET:*`, NET an address or CIDR network, IPv6 in brackets
/// (`[fd00::/64]:22`). The port matches whatever protocol the request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NatAllow {
    pub net: IpNet,
    /// `None` for `*`: any port.
    pub port: Option<u16>,
}

impl NatAllow {
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.net.contains(&canonical(addr)) && self.port.is_none_or(|p| p == port)
    }
}

impl std::str::FromStr for NatAllow {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let form = || {
            format!("`{t}` is not `ADDRESS[/BITS]:PORT` or `ADDRESS[/BITS]:*` (IPv6 as `[ADDRESS]:PORT`)")
        };
        let (net, port) = match t.strip_prefix('[') {
            Some(rest) => rest.split_once("]:").ok_or_else(form)?,
            None => t
                .rsplit_once(':')
                .filter(|(n, _)| !n.contains(':'))
                .ok_or_else(form)?,
        };
        let net = match net.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => net.parse::<IpAddr>().map(IpNet::from).map_err(|_| form())?,
        };
        let port = match port.trim() {
            "*" => None,
            p => Some(
                p.parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("`{p}` in `{t}` is not a port 1..65535 or *"))?,
            ),
        };
        Ok(NatAllow {
            net: net.trunc(),
            port,
        })
    }
}

impl TryFrom<String> for NatAllow {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<NatAllow> for String {
    fn from(a: NatAllow) -> String {
        let port = a.port.map_or("*".to_string(), |p| p.to_string());
        match a.net {
            IpNet::V6(n) => format!("[{n}]:{port}"),
            IpNet::V4(n) => format!("{n}:{port}"),
        }
    }
}

/// NAT_ALLOW's comma list.
pub fn parse_nat_allow(text: &str) -> Result<Vec<NatAllow>, String> {
    let list: Vec<NatAllow> = split_list(text)
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("NAT_ALLOW is empty".into());
    }
    Ok(list)
}

/// FORCE_NAT's `IP PORT` (fwknop's format; `IP:PORT` and `IP,PORT` also accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ForceNat {
    pub addr: IpAddr,
    pub port: u16,
}

impl std::str::FromStr for ForceNat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (addr, port) = t
            .rsplit_once([' ', '\t', ','])
            .or_else(|| t.rsplit_once(':').filter(|(a, _)| !a.contains(':')))
            .ok_or_else(|| format!("`{t}` is not `IP PORT`"))?;
        let addr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let port = port
            .trim()
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{port}` is not a port 1..65535"))?;
        Ok(ForceNat { addr, port })
    }
}

impl TryFrom<String> for ForceNat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ForceNat> for String {
    fn from(f: ForceNat) -> String {
        format!("{} {}", f.addr, f.port)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_digest() -> DigestType {
    DigestType::Sha256
}
fn default_timeout() -> u32 {
    DEFAULT_FW_ACCESS_TIMEOUT
}
fn default_max_timeout() -> u32 {
    DEFAULT_MAX_FW_TIMEOUT
}

impl AccessStanza {
    pub fn new(source: AddrList) -> Self {
        AccessStanza {
            source,
            destination: None,
            open_ports: Vec::new(),
            restrict_ports: Vec::new(),
            key: None,
            key_base64: None,
            hmac_key: None,
            hmac_key_base64: None,
            hmac_digest_type: DigestType::Sha256,
            hmac_keyed: std::sync::OnceLock::new(),
            encryption_mode: EncryptionMode::Cbc,
            require_username: None,
            require_source_address: false,
            fw_access_timeout: DEFAULT_FW_ACCESS_TIMEOUT,
            max_fw_timeout: DEFAULT_MAX_FW_TIMEOUT,
            access_expire_epoch: None,
            enable_cmd_exec: false,
            cmd_exec_user: None,
            cmd_exec_group: None,
            cmd_cycle_open: None,
            cmd_cycle_close: None,
            cmd_cycle_timer: None,
            cmd_capabilities: CapSet::EMPTY,
            enable_cmd_sudo_exec: false,
            cmd_sudo_exec_user: None,
            cmd_sudo_exec_group: None,
            force_nat: None,
            force_snat: None,
            force_masquerade: false,
            disable_dnat: false,
            forward_all: false,
            nat_allow: Vec::new(),
            gpg_home_dir: None,
            gpg_exe: None,
            sudo_exe: None,
            gpg_decrypt_id: None,
            gpg_decrypt_pw: None,
            gpg_allow_no_pw: false,
            gpg_require_sig: None,
            gpg_disable_sig: false,
            gpg_ignore_sig_verify_error: false,
            gpg_remote_id: Vec::new(),
            gpg_fingerprint_id: Vec::new(),
            protocol: StanzaProtocol::Fwknop,
            native_clients: Vec::new(),
            require_totp: false,
            require_hybrid: false,
            origin: None,
            cmd_capabilities_origin: None,
        }
    }

    /// The Rijndael key (KEY_BASE64 wins over KEY, as in fwknopd).
    pub fn rijndael_key(&self) -> Option<&Secret> {
        self.key_base64.as_ref().or(self.key.as_ref())
    }

    pub fn hmac_secret(&self) -> Option<&Secret> {
        self.hmac_key_base64.as_ref().or(self.hmac_key.as_ref())
    }

    /// The HMAC key with its pads absorbed, for screening: `None` without HMAC,
    /// an error for a key of a length HMAC here refuses.
    pub fn hmac_keyed(&self) -> Option<spa_core::Result<&spa_core::digest::KeyedHmac>> {
        let secret = self.hmac_secret()?;
        let key = spa_core::packet::HmacKey {
            digest: self.hmac_digest_type,
            key: secret.bytes(),
        };
        Some(key.check().map(|()| {
            self.hmac_keyed
                .get_or_init(|| spa_core::digest::KeyedHmac::new(key.digest, key.key))
        }))
    }

    /// Can a Rijndael packet for this stanza, its HMAC included, be `len` wire
    /// bytes long? Most lengths cannot, which lets garbage be refused unhashed.
    pub fn takes_rijndael_len(&self, len: usize) -> bool {
        let hmac_len = self
            .hmac_secret()
            .map_or(0, |_| self.hmac_digest_type.b64_len());
        self.rijndael_key().is_some()
            && len > hmac_len
            && spa_core::packet::plausible_rijndael_body(len - hmac_len)
    }

    /// Does this stanza take GPG packets? As in fwknopd: only with GPG_DECRYPT_PW or
    /// GPG_ALLOW_NO_PW.
    /// Setups that work but are weaker than they look, to warn about at start.
    pub fn weaknesses(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let hmac = self.hmac_secret().is_some();
        if self.rijndael_key().is_some() {
            if !hmac {
                out.push(
                    "no HMAC key: packets are not authenticated before decryption and a \
                     flipped bit is only caught after it (set HMAC_KEY_BASE64; `postern --key-gen`)",
                );
            }
            if self.key_base64.is_none() {
                out.push(
                    "KEY is a passphrase: its key is derived with one MD5 round, cheap to \
                     guess offline from one captured packet (use KEY_BASE64 from `postern --key-gen`)",
                );
            }
            match self.encryption_mode {
                EncryptionMode::Ecb => {
                    out.push("ENCRYPTION_MODE ecb shows repeated blocks of the message (use cbc)")
                }
                EncryptionMode::Legacy => out.push(
                    "ENCRYPTION_MODE legacy (fwknop < 2.5): the key is the passphrase cut to \
                     16 bytes and no HMAC can be used",
                ),
                _ => {}
            }
        }
        if self.uses_gpg() && !self.gpg_verify_sigs() && !hmac {
            out.push(
                "GPG signatures are not checked (GPG_DISABLE_SIG) and there is no HMAC: anyone \
                 holding the server's public key can knock",
            );
        }
        out
    }

    pub fn uses_gpg(&self) -> bool {
        self.gpg_decrypt_pw.is_some() || self.gpg_allow_no_pw
    }

    /// fwknopd's rule: signatures are checked unless GPG_DISABLE_SIG is set (and
    /// GPG_REQUIRE_SIG Y wins over GPG_DISABLE_SIG).
    pub fn gpg_verify_sigs(&self) -> bool {
        self.gpg_require_sig == Some(true) || !self.gpg_disable_sig
    }

    /// How this stanza judges the signatures of GPG packets.
    pub fn gpg_signature_policy(&self) -> spa_core::gpg::SignaturePolicy {
        spa_core::gpg::SignaturePolicy {
            verify: self.gpg_verify_sigs(),
            ignore_verify_error: self.gpg_ignore_sig_verify_error,
            remote_ids: self.gpg_remote_id.clone(),
            fingerprints: self.gpg_fingerprint_id.clone(),
        }
    }

    /// Some GPG variable is set (whether or not GPG is on for the stanza).
    fn has_gpg_settings(&self) -> bool {
        self.gpg_home_dir.is_some()
            || self.gpg_exe.is_some()
            || self.gpg_decrypt_id.is_some()
            || self.gpg_require_sig.is_some()
            || self.gpg_disable_sig
            || self.gpg_ignore_sig_verify_error
            || !self.gpg_remote_id.is_empty()
            || !self.gpg_fingerprint_id.is_empty()
    }

    /// GPG variables that do nothing: a Rijndael stanza without GPG_DECRYPT_PW
    /// or GPG_ALLOW_NO_PW (as in fwknopd) — worth a warning, it is easy to miss.
    pub fn ignores_its_gpg_settings(&self) -> bool {
        !self.uses_gpg() && self.has_gpg_settings() && self.rijndael_key().is_some()
    }

    fn validate_gpg(&self) -> Result<(), String> {
        if !self.uses_gpg() {
            if self.has_gpg_settings() && self.rijndael_key().is_none() {
                return Err("GPG settings without GPG_DECRYPT_PW or GPG_ALLOW_NO_PW Y (one of them turns GPG on)".into());
            }
            return Ok(());
        }
        if let Some(dir) = &self.gpg_home_dir {
            if !dir.is_dir() {
                return Err(format!("GPG_HOME_DIR {} is not a directory", dir.display()));
            }
        }
        if self.gpg_verify_sigs()
            && self.gpg_remote_id.is_empty()
            && self.gpg_fingerprint_id.is_empty()
        {
            return Err("GPG signatures are checked (the default) but neither GPG_REMOTE_ID nor GPG_FINGERPRINT_ID says whose to accept (or set GPG_DISABLE_SIG Y)".into());
        }
        if let (Some(pw), Some(h)) = (&self.gpg_decrypt_pw, self.hmac_secret()) {
            if pw == h {
                return Err("the HMAC key must differ from GPG_DECRYPT_PW".into());
            }
        }
        Ok(())
    }

    /// ENABLE_CMD_SUDO_EXEC's sudo invocation, when on.
    pub fn sudo_exec(&self) -> Option<SudoExec> {
        self.enable_cmd_sudo_exec.then(|| SudoExec {
            exe: self
                .sudo_exe
                .clone()
                .unwrap_or_else(|| postern_backend_common::command::DEFAULT_SUDO_EXE.into()),
            user: self.cmd_sudo_exec_user.clone(),
            group: self.cmd_sudo_exec_group.clone(),
        })
    }

    /// Every capability a child this stanza starts may hold: CMD_CAPABILITIES
    /// for its commands and CMD_CYCLE scripts, plus what sudo needs.
    pub fn child_capabilities(&self) -> CapSet {
        let mut set = CapSet::EMPTY;
        if self.cmd_cycle_open.is_some() || self.enable_cmd_exec {
            set = set.union(self.cmd_capabilities);
        }
        if self.enable_cmd_exec && self.enable_cmd_sudo_exec {
            set = set.union(postern_backend_common::sudo_capabilities());
        }
        set
    }

    pub fn describe(&self) -> String {
        match &self.origin {
            Some(o) => format!("stanza at {o}"),
            None => "stanza".into(),
        }
    }

    /// Minimum data a stanza needs, checked once the stanza is complete.
    pub fn validate(&self) -> Result<(), String> {
        if self.protocol == StanzaProtocol::Native {
            return self.validate_native();
        }
        if !self.native_clients.is_empty() || self.require_totp || self.require_hybrid {
            return Err(
                "NATIVE_CLIENTS, REQUIRE_TOTP and REQUIRE_HYBRID need PROTOCOL native".into(),
            );
        }
        let key = self.rijndael_key();
        if key.is_none() && !self.uses_gpg() {
            if self.gpg_home_dir.is_some()
                || !self.gpg_remote_id.is_empty()
                || !self.gpg_fingerprint_id.is_empty()
            {
                return Err("no KEY or KEY_BASE64, and GPG is off: GPG stanzas need GPG_DECRYPT_PW or GPG_ALLOW_NO_PW Y".into());
            }
            return Err("no KEY, KEY_BASE64, GPG_DECRYPT_PW or GPG_ALLOW_NO_PW".into());
        }
        // access.conf lines are refused where they are read; this catches TOML.
        if [&self.key, &self.hmac_key, &self.gpg_decrypt_pw]
            .into_iter()
            .flatten()
            .any(|k| k.bytes().eq_ignore_ascii_case(PLACEHOLDER.as_bytes()))
        {
            return Err(format!("a key is still the placeholder {PLACEHOLDER}"));
        }
        self.validate_gpg()?;
        self.validate_cmd_cycle()?;
        if let Some(k) = key {
            if k.bytes().len() > spa_core::cipher::MAX_KEY_LEN {
                return Err(format!(
                    "the Rijndael key is longer than {} bytes",
                    spa_core::cipher::MAX_KEY_LEN
                ));
            }
        }
        if let (Some(k), Some(h)) = (key, self.hmac_secret()) {
            if k == h {
                return Err("the HMAC key must differ from the encryption key".into());
            }
            if h.bytes().len() > spa_core::packet::MAX_HMAC_KEY_LEN {
                return Err(format!(
                    "the HMAC key is longer than {} bytes",
                    spa_core::packet::MAX_HMAC_KEY_LEN
                ));
            }
        }
        if self.encryption_mode == EncryptionMode::Legacy && self.hmac_secret().is_some() {
            return Err("HMAC cannot be combined with ENCRYPTION_MODE legacy".into());
        }
        if self.fw_access_timeout == 0 {
            return Err("FW_ACCESS_TIMEOUT must be at least 1".into());
        }
        // 0 would let a client ask for a grant without expiry in some firewalls.
        if self.max_fw_timeout == 0 {
            return Err("MAX_FW_TIMEOUT must be at least 1".into());
        }
        self.validate_child_capabilities()
    }

    /// fwknopd's CMD_CYCLE rules: an open needs a close (`NONE` to leave access
    /// open on purpose), a close needs an open, and the timer is at least 1 s.
    /// Without the first, what CMD_CYCLE_OPEN opens would never be closed.
    fn validate_cmd_cycle(&self) -> Result<(), String> {
        match (&self.cmd_cycle_open, &self.cmd_cycle_close) {
            (Some(_), None) => Err(
                "CMD_CYCLE_OPEN without CMD_CYCLE_CLOSE: nothing would close \
                 what it opens (write CMD_CYCLE_CLOSE NONE to leave access open)"
                    .into(),
            ),
            (None, Some(_)) => Err("CMD_CYCLE_CLOSE without CMD_CYCLE_OPEN".into()),
            _ if self.cmd_cycle_timer == Some(0) => {
                Err("CMD_CYCLE_TIMER must be at least 1".into())
            }
            _ => Ok(()),
        }
    }

    /// A native stanza names its clients and holds no fwknop keys.
    fn validate_native(&self) -> Result<(), String> {
        if self.key.is_some()
            || self.key_base64.is_some()
            || self.hmac_key.is_some()
            || self.hmac_key_base64.is_some()
            || self.uses_gpg()
        {
            return Err("a PROTOCOL native stanza takes no KEY, HMAC_KEY or GPG settings (clients have their own keys: posternd client add)".into());
        }
        if self.native_clients.is_empty() {
            return Err("PROTOCOL native needs NATIVE_CLIENTS (client names, or * for every registered client)".into());
        }
        if let Some(bad) = self
            .native_clients
            .iter()
            .find(|n| *n != "*" && !spa_native::valid_client_name(n))
        {
            return Err(format!(
                "NATIVE_CLIENTS: `{bad}` is not a valid client name"
            ));
        }
        self.validate_cmd_cycle()
    }

    /// A child cannot be given a capability posternd does not hold itself.
    fn validate_child_capabilities(&self) -> Result<(), String> {
        let wanted = self.child_capabilities();
        // Without capabilities, config/platform.rs refuses any set, in its own words.
        if wanted.is_empty() || !postern_backend_common::Platform::CURRENT.has_capabilities() {
            return Ok(());
        }
        let have = CapSet::permitted_now().map_err(|e| format!("cannot read capabilities: {e}"))?;
        let missing = wanted.minus(have);
        if !missing.is_empty() {
            return Err(format!(
                "CMD_CAPABILITIES / ENABLE_CMD_SUDO_EXEC need {missing}, which posternd does not hold"
            ));
        }
        Ok(())
    }

    /// Apply one access.conf variable to this stanza.
    fn set(&mut self, e: &Entry) -> Result<Known, ConfError> {
        let bad = |what: &str| {
            ConfError::new(
                &e.origin,
                format!("{} expects {what}, got `{}`", e.var, e.value),
            )
        };
        let ports = || {
            parse_proto_ports(&e.value)
                .map_err(|err| ConfError::new(&e.origin, format!("{}: {err}", e.var)))
        };
        match e.var.as_str() {
            "DESTINATION" => {
                self.destination =
                    Some(AddrList::parse(&e.value).map_err(|m| ConfError::new(&e.origin, m))?)
            }
            "OPEN_PORTS" => self.open_ports = ports()?,
            "RESTRICT_PORTS" => self.restrict_ports = ports()?,
            "KEY" => self.key = Some(Secret::from_passphrase(not_placeholder(e)?)),
            "KEY_BASE64" => self.key_base64 = Some(b64_secret(e)?),
            "HMAC_KEY" => self.hmac_key = Some(Secret::from_passphrase(not_placeholder(e)?)),
            "HMAC_KEY_BASE64" => self.hmac_key_base64 = Some(b64_secret(e)?),
            "HMAC_DIGEST_TYPE" => {
                self.hmac_digest_type = e
                    .value
                    .parse()
                    .map_err(|err| ConfError::new(&e.origin, format!("{err}")))?
            }
            "ENCRYPTION_MODE" => {
                self.encryption_mode = e
                    .value
                    .parse()
                    .map_err(|err| ConfError::new(&e.origin, format!("{err}")))?
            }
            "REQUIRE_USERNAME" => self.require_username = Some(e.value.clone()),
            "REQUIRE_SOURCE_ADDRESS" | "REQUIRE_SOURCE" => {
                self.require_source_address = parse_bool(e)?
            }
            "FW_ACCESS_TIMEOUT" => self.fw_access_timeout = parse_num(e)?,
            "MAX_FW_TIMEOUT" => self.max_fw_timeout = parse_num(e)?,
            "ACCESS_EXPIRE" => {
                self.access_expire_epoch =
                    Some(parse_expire_date(&e.value).ok_or_else(|| bad("a date MM/DD/YYYY"))?)
            }
            "ACCESS_EXPIRE_EPOCH" => self.access_expire_epoch = Some(parse_num(e)?),
            "ENABLE_CMD_EXEC" => self.enable_cmd_exec = parse_bool(e)?,
            "CMD_EXEC_USER" => self.cmd_exec_user = Some(known_user(e)?),
            "CMD_EXEC_GROUP" => self.cmd_exec_group = Some(group_name(e)?),
            "CMD_CYCLE_OPEN" => self.cmd_cycle_open = Some(e.value.clone()),
            "CMD_CYCLE_CLOSE" => self.cmd_cycle_close = Some(e.value.clone()),
            "CMD_CYCLE_TIMER" => self.cmd_cycle_timer = Some(parse_num(e)?),
            "CMD_CAPABILITIES" => {
                self.cmd_capabilities = CapSet::parse(&e.value)
                    .map_err(|m| ConfError::new(&e.origin, format!("CMD_CAPABILITIES: {m}")))?;
                self.cmd_capabilities_origin = Some(e.origin.clone());
            }
            "ENABLE_CMD_SUDO_EXEC" => self.enable_cmd_sudo_exec = parse_bool(e)?,
            "CMD_SUDO_EXEC_USER" => self.cmd_sudo_exec_user = Some(known_user(e)?),
            "CMD_SUDO_EXEC_GROUP" => self.cmd_sudo_exec_group = Some(group_name(e)?),
            "FORCE_NAT" => {
                self.force_nat =
                    Some(e.value.parse().map_err(|m: String| {
                        ConfError::new(&e.origin, format!("FORCE_NAT: {m}"))
                    })?)
            }
            "FORCE_SNAT" => {
                self.force_snat = Some(e.value.parse().map_err(|_| bad("an IP address"))?)
            }
            "FORCE_MASQUERADE" => self.force_masquerade = parse_bool(e)?,
            "DISABLE_DNAT" => self.disable_dnat = parse_bool(e)?,
            "FORWARD_ALL" => self.forward_all = parse_bool(e)?,
            "NAT_ALLOW" => {
                self.nat_allow = parse_nat_allow(&e.value)
                    .map_err(|m| ConfError::new(&e.origin, format!("NAT_ALLOW: {m}")))?
            }
            "GPG_HOME_DIR" => self.gpg_home_dir = Some(PathBuf::from(&e.value)),
            "GPG_EXE" => self.gpg_exe = Some(PathBuf::from(&e.value)),
            "GPG_DECRYPT_ID" => self.gpg_decrypt_id = Some(e.value.clone()),
            "GPG_DECRYPT_PW" => {
                if e.value.eq_ignore_ascii_case(PLACEHOLDER) {
                    return Err(ConfError::new(
                        &e.origin,
                        format!("GPG_DECRYPT_PW is still the placeholder {PLACEHOLDER}"),
                    ));
                }
                self.gpg_decrypt_pw = Some(Secret::from_passphrase(&e.value));
            }
            "GPG_ALLOW_NO_PW" => self.gpg_allow_no_pw = parse_bool(e)?,
            "GPG_REQUIRE_SIG" => self.gpg_require_sig = Some(parse_bool(e)?),
            "GPG_DISABLE_SIG" => self.gpg_disable_sig = parse_bool(e)?,
            "GPG_IGNORE_SIG_VERIFY_ERROR" => self.gpg_ignore_sig_verify_error = parse_bool(e)?,
            "GPG_REMOTE_ID" => self.gpg_remote_id = split_list(&e.value),
            "GPG_FINGERPRINT_ID" => self.gpg_fingerprint_id = split_list(&e.value),
            "PROTOCOL" => {
                self.protocol = match e.value.to_ascii_lowercase().as_str() {
                    "fwknop" => StanzaProtocol::Fwknop,
                    "native" => StanzaProtocol::Native,
                    _ => return Err(bad("`fwknop` or `native`")),
                }
            }
            "NATIVE_CLIENTS" => self.native_clients = split_list(&e.value),
            "REQUIRE_TOTP" => self.require_totp = parse_bool(e)?,
            "REQUIRE_HYBRID" => self.require_hybrid = parse_bool(e)?,
            _ => return Ok(Known::Unknown),
        }
        Ok(Known::Used)
    }
}

/// fwknopd's comma lists: items trimmed, empty ones dropped.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

enum Known {
    Used,
    Unknown,
}

/// A key's text, unless it is the stock placeholder (in any case, as fwknopd).
fn not_placeholder(e: &Entry) -> Result<&str, ConfError> {
    if e.value.eq_ignore_ascii_case(PLACEHOLDER) {
        return Err(ConfError::new(
            &e.origin,
            format!(
                "{} is still the placeholder {PLACEHOLDER} (generate keys with `postern --key-gen`)",
                e.var
            ),
        ));
    }
    Ok(&e.value)
}

fn b64_secret(e: &Entry) -> Result<Secret, ConfError> {
    Secret::from_base64(&e.var, not_placeholder(e)?)
        .map_err(|err| ConfError::new(&e.origin, err.to_string()))
}

/// `MM/DD/YYYY` at 00:00 local time, as fwknopd's mktime() of a zeroed
/// `struct tm` (so TZ is respected, and tm_isdst 0: standard time).
fn parse_expire_date(text: &str) -> Option<i64> {
    use chrono::Datelike;
    let d = chrono::NaiveDate::parse_from_str(text.trim(), "%m/%d/%Y").ok()?;
    // SAFETY: a zeroed tm is a valid value; mktime only reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_mday = d.day() as i32;
    tm.tm_mon = d.month0() as i32;
    tm.tm_year = d.year() - 1900;
    tm.tm_isdst = 0;
    // SAFETY: tm is a live, initialised struct; mktime reads TZ itself.
    let at = unsafe { libc::mktime(&mut tm) };
    (at != -1).then_some(at)
}

/// Read an access.conf (with `%include` / `%include_folder` / `%include_keys`).
pub fn load_access_file(
    path: &Path,
    findings: &mut Findings,
) -> Result<Vec<AccessStanza>, ConfError> {
    let mut stanzas = Vec::new();
    read_into(path, 0, &mut stanzas, findings)?;
    at_least_one(path, stanzas)
}

/// Parse access.conf `text` as if it had been read from `file` (the name is only
/// used in messages). `%include…` lines still read the files they name; this is
/// [`load_access_file`] without its own read, for fuzzing and tests.
pub fn parse_access_text(
    file: &Path,
    text: &str,
    findings: &mut Findings,
) -> Result<Vec<AccessStanza>, ConfError> {
    let mut stanzas = Vec::new();
    read_text_into(file, text, 0, &mut stanzas, findings)?;
    at_least_one(file, stanzas)
}

fn at_least_one(path: &Path, stanzas: Vec<AccessStanza>) -> Result<Vec<AccessStanza>, ConfError> {
    if stanzas.is_empty() {
        return Err(ConfError::file(
            path,
            "no access stanza (each starts with `SOURCE <addresses>|ANY`)",
        ));
    }
    Ok(stanzas)
}

/// Read every `*.conf` of a folder, in name order (fwknopd's ACCESS_FOLDER,
/// `--access-folder`).
pub fn load_access_folder(
    dir: &Path,
    findings: &mut Findings,
) -> Result<Vec<AccessStanza>, ConfError> {
    let mut stanzas = Vec::new();
    for f in conf_files_in(dir)? {
        read_into(&f, 0, &mut stanzas, findings)?;
    }
    if stanzas.is_empty() {
        return Err(ConfError::file(
            dir,
            "no access stanza in the folder's *.conf files",
        ));
    }
    Ok(stanzas)
}

/// The `*.conf` files of `dir`, sorted by name.
fn conf_files_in(dir: &Path) -> Result<Vec<PathBuf>, ConfError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|err| {
            ConfError::file(dir, format!("cannot read folder {}: {err}", dir.display()))
        })?
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    Ok(files)
}

fn finish(stanza: Option<AccessStanza>, out: &mut Vec<AccessStanza>) -> Result<(), ConfError> {
    if let Some(s) = stanza {
        s.validate().map_err(|m| {
            let origin = s.origin.clone().unwrap_or(Origin {
                file: PathBuf::new(),
                line: 0,
            });
            ConfError::new(&origin, format!("access stanza: {m}"))
        })?;
        out.push(s);
    }
    Ok(())
}

fn read_into(
    path: &Path,
    depth: usize,
    out: &mut Vec<AccessStanza>,
    findings: &mut Findings,
) -> Result<(), ConfError> {
    let text = secure_read(path)?;
    read_text_into(path, &text, depth, out, findings)
}

fn read_text_into(
    path: &Path,
    text: &str,
    depth: usize,
    out: &mut Vec<AccessStanza>,
    findings: &mut Findings,
) -> Result<(), ConfError> {
    let mut current: Option<AccessStanza> = None;
    for e in parse_lines(path, text)? {
        match e.var.as_str() {
            "%include" | "%include_folder" => {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(ConfError::new(
                        &e.origin,
                        "includes nested deeper than 3 levels",
                    ));
                }
                finish(current.take(), out)?;
                let target = PathBuf::from(&e.value);
                if e.var == "%include" {
                    read_into(&target, depth + 1, out, findings)?;
                } else {
                    let files = conf_files_in(&target)
                        .map_err(|err| ConfError::new(&e.origin, err.message))?;
                    for f in files {
                        read_into(&f, depth + 1, out, findings)?;
                    }
                }
            }
            "SOURCE" => {
                finish(current.take(), out)?;
                let src = AddrList::parse(&e.value)
                    .map_err(|m| ConfError::new(&e.origin, format!("SOURCE: {m}")))?;
                let mut s = AccessStanza::new(src);
                s.origin = Some(e.origin.clone());
                current = Some(s);
            }
            _ => {
                let Some(stanza) = current.as_mut() else {
                    return Err(ConfError::new(
                        &e.origin,
                        format!(
                            "`{}` before the first SOURCE line (every stanza starts with SOURCE)",
                            e.var
                        ),
                    ));
                };
                if e.var == "%include_keys" {
                    let keys_path = PathBuf::from(&e.value);
                    let keys_text = secure_read(&keys_path)?;
                    for ke in parse_lines(&keys_path, &keys_text)? {
                        if !INCLUDE_KEYS_VARS.contains(&ke.var.as_str()) {
                            return Err(ConfError::new(&ke.origin, format!("only key variables (KEY…, HMAC_…, the GPG key settings) are allowed in an %include_keys file, not `{}`", ke.var)));
                        }
                        stanza.set(&ke)?;
                    }
                    continue;
                }
                match stanza.set(&e)? {
                    Known::Used => {}
                    Known::Unknown => findings.unknown.push(ConfError::new(
                        &e.origin,
                        format!("unknown access.conf variable `{}`", e.var),
                    )),
                }
            }
        }
    }
    finish(current, out)
}

mod proto_port_list {
    use serde::{Deserializer, Serializer};
    use spa_core::request::{format_proto_ports, parse_proto_ports};
    use spa_core::ProtoPort;

    pub fn serialize<S: Serializer>(v: &[ProtoPort], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_proto_ports(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ProtoPort>, D::Error> {
        let joined = crate::config::conf_file::comma_joined(d)?;
        if joined.trim().is_empty() {
            return Ok(Vec::new());
        }
        parse_proto_ports(&joined).map_err(serde::de::Error::custom)
    }
}

mod nat_allow_list {
    use super::NatAllow;
    use serde::{Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[NatAllow], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    /// A TOML array of entries, or one comma-separated string as in access.conf.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NatAllow>, D::Error> {
        let joined = crate::config::conf_file::comma_joined(d)?;
        super::parse_nat_allow(&joined).map_err(serde::de::Error::custom)
    }
}

mod string_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    /// A TOML array of strings, or one comma-separated string as in access.conf.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Text::deserialize(d)? {
            Text::One(s) => super::split_list(&s),
            Text::Many(v) => v.iter().flat_map(|s| super::split_list(s)).collect(),
        })
    }
}

mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use spa_core::Secret;
    pub fn serialize<S: Serializer>(_: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|s| Secret::from_passphrase(&s)))
    }
}

mod secret_b64 {
    use serde::{Deserialize, Deserializer, Serializer};
    use spa_core::Secret;
    pub fn serialize<S: Serializer>(_: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| Secret::from_base64("key", &s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(crate) mod display_fromstr {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;
    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error>
    where
        T::Err: Display,
    {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A user name that exists on this host: fwknopd refuses an unknown one at
/// start, and a command must not first fail at knock time.
fn known_user(e: &Entry) -> Result<String, ConfError> {
    match nix::unistd::User::from_name(&e.value) {
        Ok(Some(_)) => Ok(e.value.clone()),
        Ok(None) => Err(ConfError::new(
            &e.origin,
            format!("{}: no user `{}` on this system", e.var, e.value),
        )),
        Err(err) => Err(ConfError::new(
            &e.origin,
            format!("{}: cannot look up `{}`: {err}", e.var, e.value),
        )),
    }
}

/// The group a `*_GROUP` value names: a group of that name, or else, as fwknopd
/// reads it (getpwnam), the primary group of the user of that name.
fn group_name(e: &Entry) -> Result<String, ConfError> {
    use nix::unistd::{Group, User};
    let lookup = |err: nix::Error| {
        ConfError::new(
            &e.origin,
            format!("{}: cannot look up `{}`: {err}", e.var, e.value),
        )
    };
    if Group::from_name(&e.value).map_err(lookup)?.is_some() {
        return Ok(e.value.clone());
    }
    let primary = match User::from_name(&e.value).map_err(lookup)? {
        Some(user) => Group::from_gid(user.gid).map_err(lookup)?,
        None => None,
    };
    primary.map(|g| g.name).ok_or_else(|| {
        ConfError::new(
            &e.origin,
            format!("{}: no group or user `{}` on this system", e.var, e.value),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    const KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
    const HMAC: &str =
        "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

    #[test]
    fn reads_several_stanzas_with_their_settings() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# two stanzas\nSOURCE 10.0.0.0/8, 192.168.1.5\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC}\nHMAC_DIGEST_TYPE sha512\nOPEN_PORTS tcp/22, udp/53\nFW_ACCESS_TIMEOUT 5\nREQUIRE_USERNAME alice\n\nSOURCE ANY\nKEY fwknoptest\nENCRYPTION_MODE legacy\nACCESS_EXPIRE 01/02/2030\nSOMETHING_ELSE x\n"
        );
        let p = write(dir.path(), "access.conf", &text, 0o600);
        let mut found = Findings::default();
        let s = load_access_file(&p, &mut found).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].source.contains("10.1.2.3".parse().unwrap()));
        assert!(s[0].source.contains("::ffff:192.168.1.5".parse().unwrap()));
        assert!(!s[0].source.contains("192.168.1.6".parse().unwrap()));
        assert_eq!(s[0].hmac_digest_type, DigestType::Sha512);
        assert_eq!(s[0].open_ports.len(), 2);
        assert_eq!(s[0].fw_access_timeout, 5);
        assert_eq!(s[1].encryption_mode, EncryptionMode::Legacy);
        assert_eq!(s[1].access_expire_epoch, Some(1_893_542_400));
        assert!(found.warnings.is_empty(), "{found:?}");
        assert_eq!(found.unknown.len(), 1);
        assert!(
            found.unknown[0]
                .to_string()
                .contains(":14: unknown access.conf variable `SOMETHING_ELSE`"),
            "{found:?}"
        );
    }

    #[test]
    fn child_capabilities_and_sudo_are_read_and_bad_names_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "SOURCE ANY\nKEY k\nENABLE_CMD_EXEC Y\nCMD_CAPABILITIES net_raw\nENABLE_CMD_SUDO_EXEC Y\nCMD_SUDO_EXEC_USER nobody\nCMD_SUDO_EXEC_GROUP nogroup\n";
        let p = write(dir.path(), "access.conf", text, 0o600);
        let mut found = Findings::default();
        let s = &load_access_file(&p, &mut found).unwrap()[0];
        assert!(
            found.warnings.is_empty() && found.unknown.is_empty(),
            "{found:?}"
        );
        assert_eq!(s.cmd_capabilities, CapSet::parse("net_raw").unwrap());
        let sudo = s.sudo_exec().unwrap();
        assert_eq!(
            sudo.prefix(),
            ["/usr/bin/sudo", "-u", "nobody", "-g", "nogroup"]
        );
        assert_eq!(
            s.child_capabilities(),
            CapSet::parse("net_raw,setuid,setgid,audit_write").unwrap()
        );

        let p = write(
            dir.path(),
            "bad.conf",
            "SOURCE ANY\nKEY k\nCMD_CAPABILITIES net_admin, net_magic\n",
            0o600,
        );
        let err = load_access_file(&p, &mut Findings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.conf:3") && err.contains("`net_magic`"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("KEY x\n", ":1: `KEY` before the first SOURCE"),
            (
                "SOURCE ANY\nKEY_BASE64 !!!\n",
                ":2: invalid key: KEY_BASE64 is not valid base64",
            ),
            (
                "SOURCE ANY\nKEY x\nOPEN_PORTS tcp/99999\n",
                ":3: OPEN_PORTS",
            ),
            ("SOURCE 10.0.0.300\nKEY x\n", ":1: SOURCE: `10.0.0.300`"),
            ("SOURCE ANY\nHMAC_KEY_BASE64 __CHANGEME__\n", "placeholder"),
            (
                "SOURCE ANY\nOPEN_PORTS tcp/22\n",
                ":1: access stanza: no KEY",
            ),
            (
                "SOURCE ANY\nKEY x\nFW_ACCESS_TIMEOUT soon\n",
                ":3: FW_ACCESS_TIMEOUT expects a number",
            ),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), "a.conf", text, 0o600);
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn weak_setups_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC}\n\n\
             SOURCE 10.0.0.1\nKEY fwknoptest\nENCRYPTION_MODE ecb\n\n\
             SOURCE 10.0.0.2\nGPG_ALLOW_NO_PW Y\nGPG_DISABLE_SIG Y\n"
        );
        let p = write(dir.path(), "access.conf", &text, 0o600);
        let s = load_access_file(&p, &mut Findings::default()).unwrap();
        assert!(s[0].weaknesses().is_empty(), "{:?}", s[0].weaknesses());
        let w = s[1].weaknesses().join("\n");
        assert!(w.contains("no HMAC key"), "{w}");
        assert!(w.contains("KEY is a passphrase"), "{w}");
        assert!(w.contains("ENCRYPTION_MODE ecb"), "{w}");
        let w = s[2].weaknesses().join("\n");
        assert!(w.contains("GPG signatures are not checked"), "{w}");
    }

    #[test]
    fn nat_allow_from_access_conf_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let text = "SOURCE ANY\nKEY k\nNAT_ALLOW 10.0.0.0/24:22, 10.0.0.5:5432,[fd00::/64]:*\n";
        let p = write(dir.path(), "access.conf", text, 0o600);
        let s = load_access_file(&p, &mut Findings::default()).unwrap();
        let a = &s[0].nat_allow;
        assert_eq!(a.len(), 3);
        assert!(a[0].matches("10.0.0.200".parse().unwrap(), 22));
        assert!(!a[0].matches("10.0.0.200".parse().unwrap(), 23));
        assert!(!a[0].matches("10.0.1.1".parse().unwrap(), 22));
        assert!(a[1].matches("::ffff:10.0.0.5".parse().unwrap(), 5432));
        assert!(a[2].matches("fd00::9".parse().unwrap(), 1));
        assert_eq!(String::from(a[2]), "[fd00::/64]:*");
        let t: AccessStanza = toml::from_str(
            "source = \"ANY\"\nkey = \"k\"\nnat_allow = [\"10.0.0.5:5432\", \"127.0.0.1:22\"]\n",
        )
        .unwrap();
        assert_eq!(t.nat_allow.len(), 2);
        let round: AccessStanza = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(round.nat_allow, t.nat_allow);
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:http",
            "fd00::1:22",
            "10.0.0.300:22",
            "",
        ] {
            let p = write(
                dir.path(),
                "bad.conf",
                &format!("SOURCE ANY\nKEY k\nNAT_ALLOW {bad},\n"),
                0o600,
            );
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("bad.conf:3: NAT_ALLOW"), "{bad:?}: {err}");
        }
        assert!(
            toml::from_str::<AccessStanza>("source = \"ANY\"\nnat_allow = \"10.0.0.5\"\n").is_err()
        );
    }

    #[test]
    fn refuses_a_world_readable_access_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "access.conf", "SOURCE ANY\nKEY secret\n", 0o644);
        let err = load_access_file(&p, &mut Findings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by group or others"), "{err}");
    }

    #[test]
    fn gpg_stanzas_from_access_conf_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let text = format!(
            "SOURCE ANY\nGPG_HOME_DIR {home}\nGPG_DECRYPT_ID 361BBAD4\nGPG_ALLOW_NO_PW Y\n\
             GPG_REMOTE_ID 6A3FAD56, 1234AAAA,5678BBBB\nGPG_FINGERPRINT_ID 00CC95F05BC146B6AC4038C9E36F443C6A3FAD56\n\
             GPG_IGNORE_SIG_VERIFY_ERROR N\nGPG_EXE /usr/bin/gpg\n\n\
             SOURCE 10.0.0.0/8\nKEY fwknoptest\nGPG_DECRYPT_PW s3cret\nGPG_DISABLE_SIG Y\nGPG_SOMETHING x\n"
        );
        let p = write(dir.path(), "access.conf", &text, 0o600);
        let mut found = Findings::default();
        let s = load_access_file(&p, &mut found).unwrap();
        assert!(s[0].uses_gpg() && s[0].rijndael_key().is_none());
        assert_eq!(s[0].gpg_remote_id, ["6A3FAD56", "1234AAAA", "5678BBBB"]);
        assert_eq!(s[0].gpg_fingerprint_id.len(), 1);
        assert_eq!(s[0].gpg_decrypt_id.as_deref(), Some("361BBAD4"));
        assert!(s[0].gpg_verify_sigs() && s[0].gpg_decrypt_pw.is_none());
        assert!(s[1].uses_gpg() && !s[1].gpg_verify_sigs() && s[1].rijndael_key().is_some());
        assert!(
            found
                .unknown
                .iter()
                .any(|e| e.to_string().contains("GPG_SOMETHING")),
            "{found:?}"
        );
        // GPG_REQUIRE_SIG Y wins over GPG_DISABLE_SIG (fwknopd checks signatures then).
        let mut both = s[1].clone();
        both.gpg_require_sig = Some(true);
        assert!(both.gpg_verify_sigs());
        // The passphrase never shows in a dump.
        let shown = toml::to_string(&s[1]).unwrap();
        assert!(
            !shown.contains("s3cret") && shown.contains("gpg_disable_sig = true"),
            "{shown}"
        );

        let toml_text = format!(
            "source = \"ANY\"\ngpg_home_dir = \"{home}\"\ngpg_decrypt_pw = \"pw\"\ngpg_remote_id = [\"6A3FAD56\", \"1234AAAA\"]\n\
             gpg_fingerprint_id = \"AAAA, BBBB\"\n"
        );
        let t: AccessStanza = toml::from_str(&toml_text).unwrap();
        t.validate().unwrap();
        assert_eq!(t.gpg_remote_id, ["6A3FAD56", "1234AAAA"]);
        assert_eq!(t.gpg_fingerprint_id, ["AAAA", "BBBB"]);
    }

    #[test]
    fn gpg_settings_without_gpg_on_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.conf",
            "SOURCE ANY\nKEY_BASE64 7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=\nGPG_REMOTE_ID 6A3FAD56\n",
            0o600,
        );
        let s = load_access_file(&p, &mut Findings::default()).unwrap();
        assert!(s[0].ignores_its_gpg_settings());
    }

    #[test]
    fn gpg_stanza_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "SOURCE ANY\nGPG_ALLOW_NO_PW Y\n",
                "GPG_REMOTE_ID nor GPG_FINGERPRINT_ID",
            ),
            (
                "SOURCE ANY\nGPG_REMOTE_ID 6A3FAD56\n",
                "GPG_DECRYPT_PW or GPG_ALLOW_NO_PW",
            ),
            (
                "SOURCE ANY\nGPG_DECRYPT_PW __CHANGEME__\n",
                ":2: GPG_DECRYPT_PW is still the placeholder",
            ),
            (
                "SOURCE ANY\nGPG_ALLOW_NO_PW Y\nGPG_DISABLE_SIG Y\nGPG_HOME_DIR /nonexistent/gpg\n",
                "GPG_HOME_DIR /nonexistent/gpg is not a directory",
            ),
            ("SOURCE ANY\nGPG_ALLOW_NO_PW maybe\n", "expects Y or N"),
            (
                "SOURCE ANY\nGPG_DECRYPT_PW samekey\nHMAC_KEY samekey\nGPG_DISABLE_SIG Y\n",
                "HMAC key must differ",
            ),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), "a.conf", text, 0o600);
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn includes_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = write(
            dir.path(),
            "keys",
            &format!("KEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC}\n"),
            0o600,
        );
        let inner = write(dir.path(), "inner.conf", "SOURCE 10.0.0.1\nKEY k2\n", 0o600);
        let main = write(
            dir.path(),
            "access.conf",
            &format!(
                "SOURCE ANY\n%include_keys {}\n%include {}\n",
                keys.display(),
                inner.display()
            ),
            0o600,
        );
        let s = load_access_file(&main, &mut Findings::default()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].hmac_secret().is_some());
    }

    /// fwknop's stock access.conf ships `__CHANGEME__` for every key; fwknopd
    /// refuses it in any case, so it must never work as a passphrase here.
    #[test]
    fn placeholder_keys_are_refused_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "SOURCE ANY\nKEY __CHANGEME__\n".to_string(),
                ":2: KEY is still the placeholder",
            ),
            (
                format!("SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY __changeme__\n"),
                ":3: HMAC_KEY is still the placeholder",
            ),
            (
                "SOURCE ANY\nKEY_BASE64 __ChangeMe__\n".to_string(),
                ":2: KEY_BASE64 is still the placeholder",
            ),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), "a.conf", &text, 0o600);
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let t: AccessStanza = toml::from_str("source = \"ANY\"\nkey = \"__changeme__\"\n").unwrap();
        let err = t.validate().unwrap_err();
        assert!(err.contains("placeholder"), "{err}");
    }

    /// Without a close, what CMD_CYCLE_OPEN opens would stay open for ever;
    /// fwknopd refuses these stanzas, and so does postern.
    #[test]
    fn cmd_cycle_needs_an_open_a_close_and_a_timer() {
        let dir = tempfile::tempdir().unwrap();
        let base = format!("SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC}\n");
        for (extra, want) in [
            (
                "CMD_CYCLE_OPEN /bin/true $IP\n",
                "CMD_CYCLE_OPEN without CMD_CYCLE_CLOSE",
            ),
            (
                "CMD_CYCLE_CLOSE /bin/true $IP\n",
                "CMD_CYCLE_CLOSE without CMD_CYCLE_OPEN",
            ),
            (
                "CMD_CYCLE_OPEN /bin/true\nCMD_CYCLE_CLOSE NONE\nCMD_CYCLE_TIMER 0\n",
                "CMD_CYCLE_TIMER must be at least 1",
            ),
        ] {
            let p = write(dir.path(), "a.conf", &format!("{base}{extra}"), 0o600);
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(":1: access stanza: ") && err.contains(want),
                "{extra:?}: {err}"
            );
        }
        for fine in [
            "CMD_CYCLE_OPEN /bin/true $IP\nCMD_CYCLE_CLOSE NONE\n",
            "CMD_CYCLE_OPEN /bin/true $IP\nCMD_CYCLE_CLOSE /bin/true $IP\nCMD_CYCLE_TIMER 5\n",
        ] {
            let p = write(dir.path(), "a.conf", &format!("{base}{fine}"), 0o600);
            let s = load_access_file(&p, &mut Findings::default())
                .unwrap_or_else(|e| panic!("{fine:?}: {e}"));
            assert!(s[0].cmd_cycle_open.is_some() && s[0].cmd_cycle_close.is_some());
        }
    }

    #[test]
    fn include_keys_takes_fwknopds_gpg_key_settings() {
        let dir = tempfile::tempdir().unwrap();
        let keys = write(
            dir.path(),
            "gpg.keys",
            "GPG_DECRYPT_ID 361BBAD4\nGPG_ALLOW_NO_PW Y\nGPG_REMOTE_ID 6A3FAD56\n\
             GPG_FINGERPRINT_ID 00CC95F05BC146B6AC4038C9E36F443C6A3FAD56\n\
             GPG_REQUIRE_SIG Y\nGPG_IGNORE_SIG_VERIFY_ERROR N\n",
            0o600,
        );
        let main = write(
            dir.path(),
            "access.conf",
            &format!("SOURCE ANY\n%include_keys {}\n", keys.display()),
            0o600,
        );
        let s = load_access_file(&main, &mut Findings::default()).unwrap();
        assert!(s[0].uses_gpg() && s[0].gpg_verify_sigs());
        assert_eq!(s[0].gpg_remote_id, ["6A3FAD56"]);
        assert_eq!(s[0].gpg_decrypt_id.as_deref(), Some("361BBAD4"));
        // What is not a key stays out of key files.
        let bad = write(dir.path(), "bad.keys", "KEY k\nOPEN_PORTS tcp/22\n", 0o600);
        let main = write(
            dir.path(),
            "access2.conf",
            &format!("SOURCE ANY\n%include_keys {}\n", bad.display()),
            0o600,
        );
        let err = load_access_file(&main, &mut Findings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.keys:2: only key variables") && err.contains("`OPEN_PORTS`"),
            "{err}"
        );
    }

    /// fwknopd takes `a.b.c.d/255.255.255.0` in SOURCE and DESTINATION.
    #[test]
    fn dotted_netmasks_are_read_as_fwknopd_reads_them() {
        let list = AddrList::parse("10.0.0.0/255.0.0.0, 192.168.1.7/255.255.255.0").unwrap();
        assert!(list.contains("10.200.1.1".parse().unwrap()));
        assert!(list.contains("192.168.1.200".parse().unwrap()));
        assert!(!list.contains("192.168.2.1".parse().unwrap()));
        assert_eq!(list, AddrList::parse("10.0.0.0/8, 192.168.1.7/24").unwrap());
        let err = AddrList::parse("10.0.0.0/255.0.255.0").unwrap_err();
        assert!(err.contains("not contiguous"), "{err}");
        assert!(AddrList::parse("10.0.0.0/255.0.0.300").is_err());
    }

    #[test]
    fn command_users_and_groups_are_looked_up_at_load() {
        let entry = |var: &str, value: &str| Entry {
            var: var.into(),
            value: value.into(),
            origin: Origin {
                file: PathBuf::from("access.conf"),
                line: 7,
            },
        };
        assert_eq!(
            known_user(&entry("CMD_EXEC_USER", "nobody")).unwrap(),
            "nobody"
        );
        let err = known_user(&entry("CMD_EXEC_USER", "no-such-user-x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "access.conf:7: CMD_EXEC_USER: no user `no-such-user-x` on this system"
        );
        // A group name, or fwknopd's reading: a user name stands for its group.
        assert_eq!(
            group_name(&entry("CMD_EXEC_GROUP", "root")).unwrap(),
            "root"
        );
        let nobody_gid = nix::unistd::User::from_name("nobody").unwrap().unwrap().gid;
        let nobody_group = nix::unistd::Group::from_gid(nobody_gid)
            .unwrap()
            .unwrap()
            .name;
        if nix::unistd::Group::from_name("nobody").unwrap().is_none() {
            assert_eq!(
                group_name(&entry("CMD_EXEC_GROUP", "nobody")).unwrap(),
                nobody_group
            );
        }
        assert!(group_name(&entry("CMD_SUDO_EXEC_GROUP", "no-such-x")).is_err());
    }

    /// postern's native stanzas: parsed and checked, errors with file:line.
    #[test]
    fn native_stanzas_parse_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.conf",
            "SOURCE ANY\nPROTOCOL native\nNATIVE_CLIENTS alice, bob\nREQUIRE_TOTP Y\nREQUIRE_HYBRID Y\nOPEN_PORTS tcp/22\n",
            0o600,
        );
        let s = &load_access_file(&p, &mut Findings::default()).unwrap()[0];
        assert_eq!(s.protocol, StanzaProtocol::Native);
        assert_eq!(s.native_clients, ["alice", "bob"]);
        assert!(s.require_totp && s.require_hybrid);
        let cases = [
            ("SOURCE ANY\nPROTOCOL native\n", ":1: access stanza: PROTOCOL native needs NATIVE_CLIENTS"),
            ("SOURCE ANY\nPROTOCOL native\nNATIVE_CLIENTS ../x\n", "`../x` is not a valid client name"),
            (
                "SOURCE ANY\nPROTOCOL native\nNATIVE_CLIENTS *\nKEY_BASE64 wzNP62oPPgEc+kXDPQLHPOayQBuNbYUTPP+QrErNDmg=\n",
                "takes no KEY",
            ),
            ("SOURCE ANY\nPROTOCOL other\n", ":2: PROTOCOL expects `fwknop` or `native`"),
            (
                "SOURCE ANY\nKEY_BASE64 wzNP62oPPgEc+kXDPQLHPOayQBuNbYUTPP+QrErNDmg=\nREQUIRE_TOTP Y\n",
                "need PROTOCOL native",
            ),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), "b.conf", text, 0o600);
            let err = load_access_file(&p, &mut Findings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let t: AccessStanza = toml::from_str(
            "source = \"ANY\"\nprotocol = \"native\"\nnative_clients = \"alice\"\nrequire_totp = true\n",
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.protocol, StanzaProtocol::Native);
    }
}
