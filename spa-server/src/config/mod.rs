//! posternd's configuration: native TOML (with `POSTERN_…` environment overrides,
//! via figment) or fwknop's own fwknopd.conf + access.conf, read unchanged.

// fwknopd's ACCESS_EXPIRE dates are local time: mktime(3) through libc.
#[allow(unsafe_code)]
pub mod access;
pub mod action;
pub mod conf_file;
pub mod dump;
pub mod fwknopd;
pub mod fwknopd_firewall;
pub mod platform;
pub mod trust;

pub use access::{AccessStanza, AddrList};
pub use action::ActionConfig;
pub use conf_file::{ConfError, Findings, Origin};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Packets older (or newer) than this many seconds are rejected.
    pub max_packet_age: u64,
    pub packet_aging: bool,
    pub run_dir: PathBuf,
    /// Seconds a command-mode command may run.
    pub cmd_exec_timeout: u64,
    /// Packets waiting for decryption/policy; garbage never gets this far.
    pub queue_depth: usize,
    /// The native protocol's server key (`posternd key generate`), read when
    /// a PROTOCOL native stanza exists.
    #[serde(default = "default_native_key")]
    pub native_key: PathBuf,
    /// The registered native clients (`posternd client add`), one file each.
    #[serde(default = "default_native_clients")]
    pub native_clients: PathBuf,
    #[serde(default)]
    pub nat: NatSection,
    /// Keyring of GPG stanzas that set no GPG_HOME_DIR (fwknopd.conf `GPG_HOME_DIR`,
    /// `--gpg-home-dir`); gpgme's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_home_dir: Option<PathBuf>,
    /// gpg program of GPG stanzas that set no GPG_EXE (fwknopd.conf `GPG_EXE`, `--gpg-exe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_exe: Option<PathBuf>,
    /// sudo program of ENABLE_CMD_SUDO_EXEC stanzas (fwknopd.conf `SUDO_EXE`,
    /// `--sudo-exe`); `/usr/bin/sudo` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_exe: Option<PathBuf>,
    /// Also take SPA packets sent as HTTP GET requests (`fwknop -P http`) on the
    /// pcap and TCP captures (fwknopd.conf ENABLE_SPA_OVER_HTTP).
    #[serde(default)]
    pub spa_over_http: bool,
    /// …whatever their User-Agent; otherwise it must start with `Fwknop`
    /// (ALLOW_ANY_USER_AGENT).
    #[serde(default)]
    pub allow_any_user_agent: bool,
    /// …and an HTTP knock for 0.0.0.0 (`postern -s` behind a proxy) opens for the
    /// address in its X-Forwarded-For header (ENABLE_X_FORWARDED_FOR).
    #[serde(default)]
    pub x_forwarded_for: bool,
    /// Senders whose packets are dropped before any other work (fwknopd.conf
    /// BLACKLIST): addresses and CIDR networks.
    #[serde(
        default,
        with = "blacklist_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub blacklist: Vec<ipnet::IpNet>,
    /// syslog identity (fwknopd.conf SYSLOG_IDENTITY; `fwknopd` with fwknop's files).
    #[serde(default = "default_syslog_identity")]
    pub syslog_identity: String,
    /// syslog facility (SYSLOG_FACILITY), e.g. `LOG_DAEMON`, `LOG_LOCAL0`.
    #[serde(default = "default_syslog_facility")]
    pub syslog_facility: String,
    /// The pid file (FWKNOP_PID_FILE, `-p`); default `<run_dir>/<pid_file_name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// `posternd.pid`, or `fwknopd.pid` with fwknop's files (units written for
    /// fwknopd look for it).
    #[serde(skip, default = "default_pid_file_name")]
    pub pid_file_name: String,
    /// ENABLE_DESTINATION_RULE: each grant matches only packets to the address
    /// the knock was sent to. A knock whose destination the capture cannot
    /// tell is refused.
    #[serde(default)]
    pub destination_rule: bool,
    /// RULES_CHECK_THRESHOLD: backends without kernel expiry are swept when a
    /// grant is due; every this many sweeps (ticks of 0.5 s) the firewall is
    /// checked in full, so expired rules postern did not make this run go too.
    /// 0: never.
    #[serde(default = "default_rules_check_threshold")]
    pub rules_check_threshold: u32,
    /// fwknopd.conf UDPSERV_PORT, for `-U` when the file itself uses pcap.
    #[serde(skip)]
    pub udp_server_port: Option<u16>,
    /// `posternd -t`: run no client command and no CMD_CYCLE script, only log them.
    #[serde(skip)]
    pub test_mode: bool,
    /// Log verbosity as `-v` counts (fwknopd.conf VERBOSE); `-v` raises it.
    #[serde(default)]
    pub verbose: u8,
}

/// BLACKLIST's comma (or space) separated addresses and networks; `ANY` is
/// refused (it would drop every packet).
pub fn parse_blacklist(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let items = text.replace([' ', '\t'], ",");
    match AddrList::parse(&items)? {
        AddrList::Any => Err("ANY would refuse every packet; list addresses or networks".into()),
        AddrList::Nets(nets) => Ok(nets),
    }
}

mod blacklist_list {
    use serde::{Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    /// A TOML array of addresses/networks, or one comma-separated string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        let joined = crate::config::conf_file::comma_joined(d)?;
        super::parse_blacklist(&joined)
            .map_err(|m| serde::de::Error::custom(format!("blacklist: {m}")))
    }
}

/// NAT requests the server honours (fwknopd's ENABLE_IPT_FORWARDING,
/// ENABLE_IPT_LOCAL_NAT, ENABLE_IPT_SNAT + SNAT_TRANSLATE_IP).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatSection {
    /// Forward granted traffic to inner hosts (client -N).
    #[serde(default)]
    pub forwarding: bool,
    /// Redirect to another port of this host (client --nat-local).
    #[serde(default)]
    pub local: bool,
    /// Rewrite the source of forwarded traffic: `"masquerade"` or an address.
    #[serde(default)]
    pub snat: Option<SnatSetting>,
    /// Resolve NAT targets that clients give as host names (ENABLE_NAT_DNS).
    #[serde(default)]
    pub dns: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnatSetting(pub spa_core::firewall::Snat);

impl TryFrom<String> for SnatSetting {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        use spa_core::firewall::Snat;
        if s.eq_ignore_ascii_case("masquerade") {
            return Ok(SnatSetting(Snat::Masquerade));
        }
        s.parse()
            .map(|ip| SnatSetting(Snat::To(ip)))
            .map_err(|_| format!("snat: `{s}` is neither `masquerade` nor an address"))
    }
}

impl From<SnatSetting> for String {
    fn from(s: SnatSetting) -> String {
        match s.0 {
            spa_core::firewall::Snat::Masquerade => "masquerade".into(),
            spa_core::firewall::Snat::To(ip) => ip.to_string(),
        }
    }
}

/// fwknopd's RULES_CHECK_THRESHOLD default.
fn default_rules_check_threshold() -> u32 {
    20
}

fn default_pid_file_name() -> String {
    "posternd.pid".into()
}

fn default_syslog_identity() -> String {
    "posternd".into()
}

fn default_syslog_facility() -> String {
    "LOG_DAEMON".into()
}

impl ServerSection {
    /// Settings that would panic or misbehave later are refused at load.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_depth == 0 {
            return Err("[server] queue_depth must be at least 1".into());
        }
        crate::service::parse_facility(&self.syslog_facility)
            .map_err(|e| format!("[server] syslog_facility: {e}"))?;
        if self.cmd_exec_timeout == 0 {
            return Err("[server] cmd_exec_timeout (CMD_EXEC_TIMEOUT) must be at least 1".into());
        }
        Ok(())
    }
}

fn default_native_key() -> PathBuf {
    PathBuf::from(crate::cli::DEFAULT_SERVER_KEY)
}

fn default_native_clients() -> PathBuf {
    PathBuf::from(crate::cli::DEFAULT_CLIENTS_DIR)
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            native_key: default_native_key(),
            native_clients: default_native_clients(),
            max_packet_age: 120,
            packet_aging: true,
            run_dir: PathBuf::from("/var/run/postern"),
            cmd_exec_timeout: 30,
            queue_depth: 4096,
            nat: NatSection::default(),
            gpg_home_dir: None,
            gpg_exe: None,
            sudo_exe: None,
            spa_over_http: false,
            allow_any_user_agent: false,
            x_forwarded_for: false,
            blacklist: Vec::new(),
            test_mode: false,
            verbose: 0,
            syslog_identity: default_syslog_identity(),
            syslog_facility: default_syslog_facility(),
            pid_file: None,
            pid_file_name: default_pid_file_name(),
            udp_server_port: None,
            destination_rule: false,
            rules_check_threshold: default_rules_check_threshold(),
        }
    }
}

/// Where packets come from. Several may run at once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CaptureConfig {
    /// A plain UDP socket: no pcap needed, the default.
    Udp { listen: SocketAddr },
    /// libpcap on one or more interfaces (`any` for all).
    Pcap {
        interfaces: Vec<String>,
        #[serde(default = "default_filter")]
        filter: String,
        #[serde(default)]
        promisc: bool,
        #[serde(default = "default_snaplen")]
        snaplen: i32,
        /// Also packets the host sends (ENABLE_PCAP_ANY_DIRECTION); by default only
        /// those it receives, as fwknopd.
        #[serde(default)]
        any_direction: bool,
        /// Read packets from a capture file instead (tests, forensics).
        #[serde(default)]
        file: Option<PathBuf>,
    },
    /// A TCP server that reads one SPA packet per connection (Tor-reachable knocking).
    ///
    /// The defaults, and why: a knock is one connection carrying ~1 KB, sent at
    /// once; over Tor its first byte arrives about one circuit round trip after
    /// the exit connected (well under 2 s), the rest right behind it. So a
    /// connection silent for `first_byte_timeout_ms` (2 s) is dropped, and no read
    /// lasts longer than `read_timeout_ms` (3 s) however slowly bytes trickle in.
    /// `max_connections` (256) bounds memory (a task, a socket and a 2 KB buffer
    /// each). One source (an IPv4 address or an IPv6 /64) holds at most
    /// `max_per_source` (8) slots: room for a NAT or a Tor exit shared by a few
    /// clients, and 32 sources must hold full shares before the slots run out;
    /// then a source holding none still gets in by closing the oldest connection
    /// of the source holding the most, so no set of sources can starve a new one.
    /// A source may open `burst_per_source` (16) connections back to back and
    /// `rate_per_source` (4) per second after that: plenty for knocking, and it
    /// bounds how fast one source can churn slots (its refused attempts count too).
    Tcp {
        listen: SocketAddr,
        #[serde(default = "default_first_byte_timeout_ms")]
        first_byte_timeout_ms: u64,
        #[serde(default = "default_read_timeout_ms")]
        read_timeout_ms: u64,
        #[serde(default = "default_max_bytes")]
        max_bytes: usize,
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        #[serde(default = "default_max_per_source")]
        max_per_source: usize,
        #[serde(default = "default_rate_per_source")]
        rate_per_source: u32,
        #[serde(default = "default_burst_per_source")]
        burst_per_source: u32,
    },
    /// Packets the kernel queues to posternd (fwknopd's ENABLE_NFQ_CAPTURE); posternd
    /// adds and removes the queue rule itself. See `capture::nfqueue`.
    Nfqueue(crate::capture::nfqueue::Settings),
}

fn default_filter() -> String {
    "udp port 62201".into()
}
fn default_snaplen() -> i32 {
    1500
}
fn default_first_byte_timeout_ms() -> u64 {
    2000
}
fn default_read_timeout_ms() -> u64 {
    3000
}
fn default_max_bytes() -> usize {
    spa_core::packet::MAX_WIRE_LEN + 2
}
fn default_max_connections() -> usize {
    256
}
fn default_max_per_source() -> usize {
    8
}
fn default_rate_per_source() -> u32 {
    4
}
fn default_burst_per_source() -> u32 {
    16
}

impl CaptureConfig {
    /// A TCP capture on `listen` with default limits.
    pub fn tcp(listen: SocketAddr) -> Self {
        CaptureConfig::Tcp {
            listen,
            first_byte_timeout_ms: default_first_byte_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
            max_bytes: default_max_bytes(),
            max_connections: default_max_connections(),
            max_per_source: default_max_per_source(),
            rate_per_source: default_rate_per_source(),
            burst_per_source: default_burst_per_source(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CaptureConfig::Udp { .. } => "udp",
            CaptureConfig::Pcap { .. } => "pcap",
            CaptureConfig::Tcp { .. } => "tcp",
            CaptureConfig::Nfqueue(_) => "nfqueue",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ReplayConfig {
    /// Forget seen packets at exit (ENABLE_DIGEST_PERSISTENCE N).
    Memory,
    /// Persist digests in an embedded store (default: `<run_dir>/replay.redb`).
    // Unset options are not serialized: the default is merged under the user's
    // TOML, and another `type` must not inherit this variant's keys.
    File {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// fwknopd's digest.cache to import at start (set when reading fwknopd.conf).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        import_fwknop: Option<PathBuf>,
    },
    /// Shared by several servers: a packet one accepted is refused by all
    /// (e.g. `redis://10.0.0.5:6379/0`, `unix:///run/redis/redis.sock`).
    Redis {
        #[serde(serialize_with = "redacted_url")]
        url: String,
        #[serde(default = "default_redis_prefix")]
        key_prefix: String,
    },
}

fn default_redis_prefix() -> String {
    "postern:replay:".into()
}

/// `check-config` shows the Redis URL without its password.
pub(crate) fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// The URL with any password replaced, for messages and `check-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig::File {
            path: None,
            import_fwknop: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default = "default_captures")]
    pub capture: Vec<CaptureConfig>,
    #[serde(default)]
    pub action: Vec<ActionConfig>,
    #[serde(default)]
    pub replay: ReplayConfig,
    /// An access.conf to read stanzas from (in addition to `[[access]]`).
    #[serde(default)]
    pub access_file: Option<PathBuf>,
    /// A folder whose `*.conf` files are read as access.conf files, in name order
    /// (fwknopd.conf ACCESS_FOLDER, `--access-folder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_folder: Option<PathBuf>,
    #[serde(default)]
    pub access: Vec<AccessStanza>,
    /// Prometheus metrics, off unless a listener is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// A group of gateways that apply each other's grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// Attack detection (and blocking), off unless `[attack]` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<crate::attack::AttackConfig>,
    /// The decision audit log, off unless a path is given (`--audit-log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditConfig>,
    /// fwknopd.conf's variables as read (after `-O` overrides and `$VAR`
    /// expansion), for `posternd -D`; empty with a native TOML file.
    #[serde(skip)]
    pub fwknopd_vars: std::collections::BTreeMap<String, String>,
}

/// `[metrics] listen = "127.0.0.1:9650"`: where the Prometheus text is served.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// `[audit] path = "/var/log/postern/audit.jsonl"`: one JSON line per decision
/// (docs/audit-log.md); `"-"` writes to stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
}

impl AuditConfig {
    /// `-`: the lines go to stdout.
    pub fn is_stdout(&self) -> bool {
        self.path == Path::new("-")
    }

    /// A relative path would move with the working directory (a daemon's is `/`).
    pub fn validate(&self) -> Result<(), String> {
        if self.is_stdout() || self.path.is_absolute() {
            Ok(())
        } else {
            Err(format!(
                "[audit] path `{}` must be an absolute path, or `-` for stdout",
                self.path.display()
            ))
        }
    }
}

/// With NAT on the server (`[server.nat]`), the nftables and iptables actions
/// get their NAT chains whatever their `nat` says; an explicit `nat = false`
/// there contradicts that, so it is refused rather than silently overridden.
fn refuse_nat_off_under_server_nat(figment: &Figment, cfg: &ServerConfig) -> Result<(), String> {
    if !(cfg.server.nat.forwarding || cfg.server.nat.local) {
        return Ok(());
    }
    let Ok(actions) = figment.find_value("action") else {
        return Ok(());
    };
    let Some(actions) = actions.into_array() else {
        return Ok(());
    };
    for (i, action) in actions.iter().enumerate() {
        let Some(table) = action.as_dict() else {
            continue;
        };
        let kind = table.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let nat_off = table.get("nat").and_then(|n| n.to_bool()) == Some(false);
        if nat_off && matches!(kind, "nftables" | "iptables") {
            return Err(format!(
                "[[action]] #{} (`{kind}`): `nat = false`, but [server.nat] turns NAT on \
                 (forwarding or local), which needs the action's NAT chains: remove \
                 `nat = false` (server NAT turns it on) or turn [server.nat] off",
                i + 1
            ));
        }
    }
    Ok(())
}

impl ServerConfig {
    /// Every capability a child posternd starts may be given (CMD_CAPABILITIES,
    /// sudo's needs, `capabilities` of script actions): the daemon must keep
    /// these itself, in addition to what it needs for its own work.
    pub fn child_capabilities(&self) -> postern_backend_common::CapSet {
        let stanzas = self.access.iter().map(AccessStanza::child_capabilities);
        let scripts = self.action.iter().filter_map(|a| match a {
            ActionConfig::Script(s) => Some(s.capabilities),
            _ => None,
        });
        stanzas
            .chain(scripts)
            .fold(postern_backend_common::CapSet::EMPTY, |all, c| all.union(c))
    }
}

/// Every address of both families (`[::]`, IPv4 taken too; `0.0.0.0` on a
/// host without IPv6): where fwknopd's UDP and TCP servers and postern's
/// default capture listen.
pub fn any_address(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port)
}

fn default_captures() -> Vec<CaptureConfig> {
    vec![CaptureConfig::Udp {
        listen: any_address(62201),
    }]
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server: ServerSection::default(),
            capture: default_captures(),
            action: Vec::new(),
            replay: ReplayConfig::default(),
            access_file: None,
            access_folder: None,
            access: Vec::new(),
            metrics: None,
            fleet: None,
            attack: None,
            audit: None,
            fwknopd_vars: Default::default(),
        }
    }
}

/// Which files to read.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    /// `*.toml`: native; anything else: fwknopd.conf format.
    pub config: Option<PathBuf>,
    /// access.conf (overrides ACCESS_FILE / access_file).
    pub access: Option<PathBuf>,
    /// A folder of access.conf files (overrides ACCESS_FOLDER / access_folder).
    pub access_folder: Option<PathBuf>,
    /// Unknown fwknopd.conf / access.conf variables are warned about and
    /// ignored instead of refused (`--lenient-config`).
    pub lenient: bool,
    /// fwknopd.conf-format files read after `config`, whose variables override
    /// its (`-O`); not for a TOML `config`.
    pub overrides: Vec<PathBuf>,
}

/// A loaded configuration plus the warnings met on the way.
pub struct Loaded {
    pub config: ServerConfig,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfError),
    #[error("{}\n(a misspelt variable would be ignored, and a misspelt restriction would open more \
             than the file says: fix the name, or start posternd with --lenient-config to ignore \
             unknown variables)", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unknown(Vec<ConfError>),
    #[error("{0}")]
    Toml(String),
}

/// Top-level keys of [`ServerConfig`] that `POSTERN_…` variables may override.
const CONFIG_SECTIONS: &[&str] = &[
    "server",
    "metrics",
    "attack",
    "audit",
    "replay",
    "access_file",
    "access_folder",
    "capture",
    "action",
    "access",
];

fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

/// Read a file holding secrets: refuse one readable by group or others, or one
/// someone other than root (or posternd's user) owns or could replace.
pub fn secure_read(path: &Path) -> Result<String, ConfError> {
    trust::check(path, "this file", trust::Trust::Secret)?;
    std::fs::read_to_string(path).map_err(|e| ConfError::file(path, format!("cannot read: {e}")))
}

pub fn load(sources: &ConfigSources) -> Result<Loaded, ConfigError> {
    let mut findings = Findings::default();
    if !sources.overrides.is_empty() && sources.config.as_deref().is_some_and(is_toml) {
        return Err(ConfigError::Toml(
            "-O/--override-config takes fwknopd.conf files; a postern.toml is overridden with POSTERN_* variables".into(),
        ));
    }
    // The TOML file's text, to name the lines of what config/platform.rs refuses.
    let mut toml_text = None;
    let mut config = match &sources.config {
        Some(path) if is_toml(path) => {
            // Secrets may live in the TOML: same permission rule as access.conf.
            toml_text = Some(secure_read(path)?);
            let figment = Figment::from(Serialized::defaults(ServerConfig::default()))
                .merge(Toml::file(path))
                .merge(Env::prefixed("POSTERN_").split("__").filter(|key| {
                    // Only configuration keys: POSTERN_LOG and friends are not config.
                    let key = key.as_str().to_ascii_lowercase();
                    CONFIG_SECTIONS.iter().any(|section| {
                        key == *section
                            || key.starts_with(&format!("{section}."))
                            || key.starts_with(&format!("{section}__"))
                    })
                }));
            let cfg = figment
                .extract::<ServerConfig>()
                .map_err(|e| ConfigError::Toml(format!("{}: {e}", path.display())))?;
            refuse_nat_off_under_server_nat(&figment, &cfg)
                .map_err(|e| ConfigError::Toml(format!("{}: {e}", path.display())))?;
            cfg
        }
        Some(path) => {
            let mut cfg = ServerConfig::default();
            let files: Vec<PathBuf> = std::iter::once(path.clone())
                .chain(sources.overrides.iter().cloned())
                .collect();
            fwknopd::apply_fwknopd_files(&files, &mut cfg, &mut findings)?;
            cfg
        }
        None => ServerConfig::default(),
    };
    if let Some(a) = &sources.access {
        config.access_file = Some(a.clone());
        // `-a FILE` names the stanzas to use: the file's folder default goes.
        config.access_folder = None;
    }
    if let Some(d) = &sources.access_folder {
        // As fwknopd: with a folder, -a is not read.
        if let Some(a) = sources
            .access
            .as_ref()
            .filter(|_| config.access_file.is_some())
        {
            findings.warn(format!(
                "-a {} is not read: --access-folder {} is given (as fwknopd)",
                a.display(),
                d.display()
            ));
            config.access_file = None;
        }
        config.access_folder = Some(d.clone());
    }
    if let Some(dir) = config.access_folder.clone() {
        let stanzas = access::load_access_folder(&dir, &mut findings)?;
        config.access.extend(stanzas);
    }
    for (i, s) in config.access.iter().enumerate() {
        s.validate()
            .map_err(|m| ConfigError::Toml(format!("[[access]] #{}: {m}", i + 1)))?;
    }
    if let Some(path) = config.access_file.clone() {
        let stanzas = access::load_access_file(&path, &mut findings)?;
        config.access.extend(stanzas);
    }
    if config.access.is_empty() {
        return Err(ConfigError::Toml(
            "no access stanzas: give an access.conf (-a) or [[access]] entries".into(),
        ));
    }
    for (i, s) in config.access.iter().enumerate() {
        let at = s
            .origin
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_else(|| format!("[[access]] #{}", i + 1));
        for weak in s.weaknesses() {
            findings.warn(format!("{at}: weak access stanza: {weak}"));
        }
        if s.force_nat.is_some() && !(config.server.nat.forwarding || config.server.nat.local) {
            return Err(ConfigError::Toml(format!(
                "{at}: FORCE_NAT requires NAT forwarding or local NAT (fwknopd.conf \
                 ENABLE_IPT_FORWARDING / ENABLE_IPT_LOCAL_NAT, or [server.nat])"
            )));
        }
        // firewalld rich rules can masquerade but not SNAT to an address, and
        // cannot forward without DNAT: refused now rather than at each knock.
        if config
            .action
            .iter()
            .any(|a| matches!(a, ActionConfig::Firewalld(_)))
        {
            let lacking = [
                (s.disable_dnat, "DISABLE_DNAT"),
                (s.force_snat.is_some(), "FORCE_SNAT"),
            ];
            if let Some((_, var)) = lacking.iter().find(|(set, _)| *set) {
                return Err(ConfigError::Toml(format!(
                    "{at}: {var} cannot be done by the firewalld action (its NAT grants are \
                     rich rules: forward-port and masquerade); use the iptables or nftables action"
                )));
            }
        }
        if s.force_nat.is_none() && (s.force_snat.is_some() || s.force_masquerade) {
            findings.warn(format!(
                "{at}: FORCE_SNAT / FORCE_MASQUERADE without FORCE_NAT only apply to NAT \
                 a client asks for (-N); fwknopd refuses such a stanza"
            ));
        }
        if s.ignores_its_gpg_settings() {
            findings.warn(format!(
                "{at}: GPG settings have no effect without GPG_DECRYPT_PW or GPG_ALLOW_NO_PW Y: \
                 this stanza takes Rijndael packets only"
            ));
        }
        if s.max_fw_timeout < s.fw_access_timeout {
            findings.warn(format!(
                "{at}: MAX_FW_TIMEOUT {} is below FW_ACCESS_TIMEOUT {}: grants last {} s",
                s.max_fw_timeout, s.fw_access_timeout, s.max_fw_timeout
            ));
        }
    }
    let source = match (&sources.config, &toml_text) {
        (Some(path), Some(text)) => platform::Source::Toml { path, text },
        (Some(path), None) => platform::Source::Fwknopd(path),
        (None, _) => platform::Source::Defaults,
    };
    let platform_warnings =
        platform::check(&config, &source, postern_backend_common::Platform::CURRENT)
            .map_err(ConfigError::Toml)?;
    findings.warnings.extend(platform_warnings);
    config
        .server
        .validate()
        .and_then(|()| config.audit.as_ref().map_or(Ok(()), AuditConfig::validate))
        .map_err(|m| ConfigError::Toml(format!("{}: {m}", describe(&sources.config))))?;
    if let Some(fleet) = &config.fleet {
        fleet.validate().map_err(|m| {
            ConfigError::Toml(format!("{}: [fleet] {m}", describe(&sources.config)))
        })?;
        crate::fleet::GroupKey::load(&fleet.key_file)?;
    }
    if let Some(attack) = &config.attack {
        attack.validate().map_err(|m| {
            ConfigError::Toml(format!("{}: [attack] {m}", describe(&sources.config)))
        })?;
    }
    let Findings {
        mut warnings,
        unknown,
    } = findings;
    if !unknown.is_empty() {
        if !sources.lenient {
            return Err(ConfigError::Unknown(unknown));
        }
        warnings.extend(
            unknown
                .iter()
                .map(|e| format!("{e} ignored (--lenient-config)")),
        );
    }
    Ok(Loaded { config, warnings })
}

fn describe(config: &Option<PathBuf>) -> String {
    config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into())
}

/// The merged configuration as TOML with every key replaced by `<redacted>`.
pub fn render_redacted(cfg: &ServerConfig) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn redis_passwords_never_show() {
        assert_eq!(
            redact_url("redis://user:s3cret@10.0.0.1:6379/2"),
            "redis://user:***@10.0.0.1:6379/2"
        );
        assert_eq!(redact_url("rediss://s3cret@h/"), "rediss://***@h/");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("unix:///run/redis.sock"),
            "unix:///run/redis.sock"
        );
        let cfg = ReplayConfig::Redis {
            url: "redis://:pw@h".into(),
            key_prefix: default_redis_prefix(),
        };
        let shown = toml::to_string(&cfg).unwrap();
        assert!(
            !shown.contains("pw") && shown.contains("redis://:***@h"),
            "{shown}"
        );
    }

    #[test]
    fn tcp_capture_limits_have_defaults_and_can_be_set() {
        let parse = |extra: &str| -> CaptureConfig {
            toml::from_str(&format!(
                "type = \"tcp\"\nlisten = \"0.0.0.0:62201\"\n{extra}"
            ))
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
        };
        let listen = "0.0.0.0:62201".parse().unwrap();
        assert_eq!(
            parse(""),
            CaptureConfig::tcp(listen),
            "an old config stays valid"
        );
        let set = parse(
            "first_byte_timeout_ms = 500\nread_timeout_ms = 900\nmax_bytes = 2000\n\
             max_connections = 32\nmax_per_source = 2\nrate_per_source = 1\nburst_per_source = 3\n",
        );
        assert_eq!(
            set,
            CaptureConfig::Tcp {
                listen,
                first_byte_timeout_ms: 500,
                read_timeout_ms: 900,
                max_bytes: 2000,
                max_connections: 32,
                max_per_source: 2,
                rate_per_source: 1,
                burst_per_source: 3,
            }
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postern.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let cfg: ServerConfig = Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::string(&text))
            .extract()
            .unwrap_or_else(|e| panic!("examples/postern.toml: {e}"));
        assert_eq!(cfg.action[0].kind(), "nftables");
    }

    #[test]
    fn every_replay_type_loads_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("postern.toml");
        let access = "[[access]]\nsource = \"ANY\"\nkey = \"k\"\nopen_ports = \"tcp/22\"\n";
        for (replay, want) in [
            ("", "file"),
            (
                "[replay]\ntype = \"file\"\npath = \"/tmp/r.redb\"\n",
                "file",
            ),
            ("[replay]\ntype = \"memory\"\n", "memory"),
            (
                "[replay]\ntype = \"redis\"\nurl = \"redis://:pw@h/0\"\n",
                "redis",
            ),
        ] {
            std::fs::write(&p, format!("{replay}{access}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            let loaded = load(&ConfigSources {
                config: Some(p.clone()),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{replay}: {e}"));
            let got = match loaded.config.replay {
                ReplayConfig::File { .. } => "file",
                ReplayConfig::Memory => "memory",
                ReplayConfig::Redis { .. } => "redis",
            };
            assert_eq!(got, want, "{replay}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn native_toml_with_env_override_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("postern.toml");
        std::fs::write(
            &p,
            r#"
[server]
max_packet_age = 30

[[capture]]
type = "udp"
listen = "127.0.0.1:40000"

[[capture]]
type = "tcp"
listen = "127.0.0.1:40000"
max_connections = 8

[[action]]
type = "nftables"
table = "postern"

[[access]]
source = "ANY"
key_base64 = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA="
hmac_key = "a passphrase hmac key"
open_ports = "tcp/22"
"#,
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("POSTERN_SERVER__MAX_PACKET_AGE", "45");
            jail.set_env("POSTERN_LOG", "debug");
            let loaded = load(&ConfigSources {
                config: Some(p.clone()),
                ..Default::default()
            })
            .unwrap();
            let c = &loaded.config;
            assert_eq!(c.server.max_packet_age, 45);
            assert_eq!(c.capture.len(), 2);
            assert_eq!(c.action[0].kind(), "nftables");
            assert_eq!(
                serde_json::to_value(&c.action[0]).unwrap()["table"],
                "postern"
            );
            assert_eq!(c.access[0].open_ports.len(), 1);
            let shown = render_redacted(c);
            assert!(
                !shown.contains("7GUhvz") && !shown.contains("passphrase"),
                "{shown}"
            );
            assert!(shown.contains("<redacted>"));
            Ok(())
        });
    }

    /// `nat = false` on a firewall action while [server.nat] is on is an
    /// error naming the file and the action; left out, it is turned on.
    #[test]
    fn explicit_nat_off_under_server_nat_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("postern.toml");
        let write = |action_nat: &str, server_nat: &str| {
            std::fs::write(
                &p,
                format!(
                    "[server.nat]\nforwarding = {server_nat}\n\n\
                     [[action]]\ntype = \"log\"\n\n\
                     [[action]]\ntype = \"nftables\"\n{action_nat}\n\n\
                     [[access]]\nsource = \"ANY\"\n\
                     key_base64 = \"7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=\"\n\
                     hmac_key = \"a passphrase hmac key\"\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            load(&ConfigSources {
                config: Some(p.clone()),
                ..Default::default()
            })
        };
        let Err(err) = write("nat = false", "true") else {
            panic!("nat = false under forwarding was taken")
        };
        let err = err.to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(
            err.contains("[[action]] #2 (`nftables`): `nat = false`"),
            "{err}"
        );
        for (action_nat, server_nat) in [
            ("", "true"),
            ("nat = true", "true"),
            ("nat = false", "false"),
        ] {
            write(action_nat, server_nat)
                .unwrap_or_else(|e| panic!("{action_nat:?} under forwarding = {server_nat}: {e}"));
        }
    }

    #[test]
    fn blacklist_from_toml() {
        let cfg: ServerConfig = toml::from_str(
            "[server]\nmax_packet_age = 1\npacket_aging = true\nrun_dir = \"/x\"\ncmd_exec_timeout = 1\nqueue_depth = 1\nblacklist = [\"192.0.2.0/24\", \"::1\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.server.blacklist.len(), 2);
        let err = toml::from_str::<ServerConfig>(
            "[server]\nmax_packet_age = 1\npacket_aging = true\nrun_dir = \"/x\"\ncmd_exec_timeout = 1\nqueue_depth = 1\nblacklist = [\"ANY\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("blacklist: ANY would refuse every packet"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_toml_value_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("postern.toml");
        std::fs::write(&p, "[[capture]]\ntype = \"carrier-pigeon\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&ConfigSources {
            config: Some(p),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("postern.toml") && err.contains("carrier-pigeon"),
            "{err}"
        );
    }
}
