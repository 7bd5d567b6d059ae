//! Configuration of the iptables backend, with fwknopd.conf's names noted.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Where postern's rules live and how packets reach them: fwknopd's
/// `IPT_INPUT_ACCESS`-style value `target, table, from_chain, jump_position,
/// chain, rule_position`, e.g. `ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1`.
///
/// In config it is either that string or a table with these field names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// Target of each granted rule, normally `ACCEPT`.
    pub target: String,
    /// iptables table, normally `filter`.
    pub table: String,
    /// Built-in chain that jumps to ours (`INPUT`).
    pub from_chain: String,
    /// Position of the jump rule in `from_chain` (1 = first).
    pub jump_position: u32,
    /// postern's own chain, holding only its rules.
    pub chain: String,
    /// Where new rules are inserted in `chain` (1 = first).
    pub rule_position: u32,
}

impl ChainSpec {
    fn new(target: &str, table: &str, from_chain: &str, chain: &str) -> Self {
        ChainSpec {
            target: target.into(),
            table: table.into(),
            from_chain: from_chain.into(),
            jump_position: 1,
            chain: chain.into(),
            rule_position: 1,
        }
    }

    /// postern's default input chain: `ACCEPT, filter, INPUT, 1, POSTERN_INPUT, 1`.
    pub fn default_input() -> Self {
        Self::new("ACCEPT", "filter", "INPUT", "POSTERN_INPUT")
    }

    /// `ACCEPT, filter, FORWARD, 1, POSTERN_FORWARD, 1` (fwknopd: `FWKNOP_FORWARD`).
    pub fn default_forward() -> Self {
        Self::new("ACCEPT", "filter", "FORWARD", "POSTERN_FORWARD")
    }

    /// `DNAT, nat, PREROUTING, 1, POSTERN_PREROUTING, 1` (fwknopd: `FWKNOP_PREROUTING`).
    pub fn default_dnat() -> Self {
        Self::new("DNAT", "nat", "PREROUTING", "POSTERN_PREROUTING")
    }

    /// `SNAT, nat, POSTROUTING, 1, POSTERN_POSTROUTING, 1` (fwknopd: `FWKNOP_POSTROUTING`).
    pub fn default_snat() -> Self {
        Self::new("SNAT", "nat", "POSTROUTING", "POSTERN_POSTROUTING")
    }

    /// `MASQUERADE, nat, POSTROUTING, 1, POSTERN_MASQUERADE, 1` (fwknopd: `FWKNOP_MASQUERADE`).
    pub fn default_masquerade() -> Self {
        Self::new("MASQUERADE", "nat", "POSTROUTING", "POSTERN_MASQUERADE")
    }

    /// `ACCEPT, filter, OUTPUT, 1, POSTERN_OUTPUT, 1` (fwknopd: `FWKNOP_OUTPUT`).
    pub fn default_output() -> Self {
        Self::new("ACCEPT", "filter", "OUTPUT", "POSTERN_OUTPUT")
    }

    /// `ACCEPT, filter, DOCKER-USER, 1, POSTERN_DOCKER, 1`: grants for ports
    /// Docker publishes (see [`IptablesConfig::docker`]).
    pub fn default_docker() -> Self {
        Self::new("ACCEPT", "filter", "DOCKER-USER", "POSTERN_DOCKER")
    }

    /// Check names so they are safe tokens on an iptables command line.
    pub fn validate(&self) -> Result<(), String> {
        const TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];
        if !TABLES.contains(&self.table.as_str()) {
            return Err(format!(
                "table `{}` is not one of {}",
                self.table,
                TABLES.join(", ")
            ));
        }
        for (what, name) in [
            ("target", &self.target),
            ("from_chain", &self.from_chain),
            ("chain", &self.chain),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 28
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(format!(
                    "{what} `{name}` must be 1-28 letters, digits, `_` or `-`"
                ));
            }
        }
        if self.chain == self.from_chain {
            return Err(format!("chain `{}` cannot jump to itself", self.chain));
        }
        if self.jump_position == 0 || self.rule_position == 0 {
            return Err("positions start at 1".into());
        }
        Ok(())
    }
}

/// Written back in fwknopd's string form (what `check-config` shows, and what
/// reads back to the same spec).
impl Serialize for ChainSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ChainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, {}, {}, {}, {}",
            self.target,
            self.table,
            self.from_chain,
            self.jump_position,
            self.chain,
            self.rule_position
        )
    }
}

impl FromStr for ChainSpec {
    type Err = String;

    /// Parse fwknopd's `ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;` form.
    fn from_str(s: &str) -> Result<Self, String> {
        let fields: Vec<&str> = s
            .trim()
            .trim_end_matches(';')
            .split(',')
            .map(str::trim)
            .collect();
        let [target, table, from_chain, jump_position, chain, rule_position] = fields[..] else {
            return Err(format!(
                "`{s}` must have 6 comma-separated fields: target, table, from_chain, jump_position, chain, rule_position (e.g. `ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1`)"
            ));
        };
        let position = |what: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{what} `{v}` in `{s}` is not a number"))
        };
        let spec = ChainSpec {
            target: target.into(),
            table: table.into(),
            from_chain: from_chain.into(),
            jump_position: position("jump_position", jump_position)?,
            chain: chain.into(),
            rule_position: position("rule_position", rule_position)?,
        };
        spec.validate().map_err(|e| format!("`{s}`: {e}"))?;
        Ok(spec)
    }
}

/// Deserialize a [`ChainSpec`] from fwknopd's string form or from a table.
fn chain_spec<'de, D: Deserializer<'de>>(d: D) -> Result<ChainSpec, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Table(ChainSpec),
    }
    match Form::deserialize(d)? {
        Form::Text(s) => s.parse().map_err(serde::de::Error::custom),
        Form::Table(spec) => spec
            .validate()
            .map(|()| spec)
            .map_err(serde::de::Error::custom),
    }
}

/// `docker`: `true`/`false`, fwknopd's string form, or a table.
fn docker_chain_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChainSpec>, D::Error> {
    flag_or_chain_spec(d, ChainSpec::default_docker)
}

/// `output = true` (postern's default chain), `false`, or a chain spec.
fn output_chain_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChainSpec>, D::Error> {
    flag_or_chain_spec(d, ChainSpec::default_output)
}

/// An optional chain given as `true` (`default()`), `false`, fwknopd's string
/// form, or a table.
fn flag_or_chain_spec<'de, D: Deserializer<'de>>(
    d: D,
    default: fn() -> ChainSpec,
) -> Result<Option<ChainSpec>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Flag(bool),
        Spec(#[serde(deserialize_with = "chain_spec")] ChainSpec),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None | Some(Form::Flag(false)) => None,
        Some(Form::Flag(true)) => Some(default()),
        Some(Form::Spec(spec)) => Some(spec),
    })
}

fn optional_chain_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChainSpec>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "chain_spec")] ChainSpec);
    Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(spec)| spec))
}

/// `[action] type = "iptables"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IptablesConfig {
    /// The iptables program (fwknopd's FIREWALL_EXE).
    pub iptables: String,
    /// Defaults to `iptables` with `iptables` in its file name replaced by `ip6tables`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6tables: Option<String>,
    /// Defaults to `<iptables>-restore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iptables_restore: Option<String>,
    /// Defaults to `<ip6tables>-restore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6tables_restore: Option<String>,
    /// Manage ip6tables too, for IPv6 clients.
    pub ipv6: bool,
    /// IPT_INPUT_ACCESS.
    #[serde(deserialize_with = "chain_spec")]
    pub input: ChainSpec,
    /// IPT_OUTPUT_ACCESS (ENABLE_IPT_OUTPUT): each plain grant also gets the
    /// matching OUTPUT accept, `-d SOURCE [-s DESTINATION] -p P --sport PORT`,
    /// for hosts whose OUTPUT policy drops. `true` means `ACCEPT, filter,
    /// OUTPUT, 1, POSTERN_OUTPUT, 1`; a chain spec sets it explicitly.
    #[serde(deserialize_with = "output_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<ChainSpec>,
    /// IPT_FORWARD_ACCESS (ENABLE_IPT_FORWARDING): the FORWARD accept of
    /// forward-NAT grants, e.g. `ACCEPT, filter, FORWARD, 1, FWKNOP_FORWARD, 1`.
    #[serde(deserialize_with = "optional_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ChainSpec>,
    /// IPT_DNAT_ACCESS: the DNAT of NAT grants (forward and local), e.g.
    /// `DNAT, nat, PREROUTING, 1, FWKNOP_PREROUTING, 1`.
    #[serde(deserialize_with = "optional_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnat: Option<ChainSpec>,
    /// IPT_SNAT_ACCESS (ENABLE_IPT_SNAT with SNAT_TRANSLATE_IP, FORCE_SNAT): SNAT
    /// of forward-NAT grants to a fixed address, e.g.
    /// `SNAT, nat, POSTROUTING, 1, FWKNOP_POSTROUTING, 1`.
    #[serde(deserialize_with = "optional_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<ChainSpec>,
    /// IPT_MASQUERADE_ACCESS (ENABLE_IPT_SNAT, FORCE_MASQUERADE): MASQUERADE of
    /// forward-NAT grants, e.g. `MASQUERADE, nat, POSTROUTING, 1, FWKNOP_MASQUERADE, 1`.
    #[serde(deserialize_with = "optional_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<ChainSpec>,
    /// Accept NAT grants with postern's default chains (`POSTERN_FORWARD`,
    /// `POSTERN_PREROUTING`, `POSTERN_POSTROUTING`, `POSTERN_MASQUERADE`) for
    /// each of `forward`, `dnat`, `snat`, `masquerade` that is not set.
    /// Without it only the chains that are set are used, and a NAT grant that
    /// needs a missing one is refused (`Unsupported`, naming the setting).
    pub nat: bool,
    /// Docker hosts: also put every plain grant into a chain jumped to from
    /// `DOCKER-USER`, matching the port the client connected to
    /// (`-m conntrack --ctorigdstport`, as DOCKER-USER sees packets after
    /// Docker's DNAT). `true` means `ACCEPT, filter, DOCKER-USER, 1,
    /// POSTERN_DOCKER, 1`; a chain spec sets it explicitly. No fwknopd equivalent.
    #[serde(deserialize_with = "docker_chain_spec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<ChainSpec>,
    /// ENABLE_RULE_PREPEND: `true` inserts each new rule at the top of its
    /// chain, `false` appends it (fwknopd's default). Unset: at the chain
    /// spec's `rule_position` (1, the top, by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepend: Option<bool>,
    /// FLUSH_IPT_AT_INIT. fwknopd defaults to Y; postern defaults to reconciling
    /// instead: expired leftovers are removed, live grants survive a restart.
    pub flush_at_init: bool,
    /// FLUSH_IPT_AT_EXIT: at shutdown remove the rules, the jump and the chain.
    pub flush_at_exit: bool,
    /// Seconds to wait for the xtables lock (`-w`); 0 leaves `-w` out.
    pub wait_secs: u32,
    /// Time limit for each iptables command.
    pub command_timeout_secs: u64,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig {
            iptables: "iptables".into(),
            ip6tables: None,
            iptables_restore: None,
            ip6tables_restore: None,
            ipv6: true,
            input: ChainSpec::default_input(),
            output: None,
            forward: None,
            dnat: None,
            snat: None,
            masquerade: None,
            nat: false,
            docker: None,
            prepend: None,
            flush_at_init: false,
            flush_at_exit: true,
            wait_secs: 5,
            command_timeout_secs: 30,
        }
    }
}

/// `/usr/sbin/iptables-nft` → `/usr/sbin/ip6tables-nft`.
fn v6_name(iptables: &str) -> String {
    let (dir, file) = iptables
        .rsplit_once('/')
        .map_or(("", iptables), |(d, f)| (d, f));
    let file = match file.rfind("iptables") {
        Some(at) => format!("{}ip6tables{}", &file[..at], &file[at + "iptables".len()..]),
        None => "ip6tables".to_string(),
    };
    if dir.is_empty() && !iptables.starts_with('/') {
        file
    } else {
        format!("{dir}/{file}")
    }
}

impl IptablesConfig {
    pub fn ip6tables(&self) -> String {
        self.ip6tables
            .clone()
            .unwrap_or_else(|| v6_name(&self.iptables))
    }

    pub fn iptables_restore(&self) -> String {
        self.iptables_restore
            .clone()
            .unwrap_or_else(|| format!("{}-restore", self.iptables))
    }

    pub fn ip6tables_restore(&self) -> String {
        self.ip6tables_restore
            .clone()
            .unwrap_or_else(|| format!("{}-restore", self.ip6tables()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fwknopd_chain_strings() {
        let spec: ChainSpec = "ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1;"
            .parse()
            .unwrap();
        assert_eq!(spec.chain, "FWKNOP_INPUT");
        assert_eq!(
            spec.to_string(),
            "ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1"
        );
        assert!("ACCEPT, filter, INPUT, 1, FWKNOP_INPUT"
            .parse::<ChainSpec>()
            .unwrap_err()
            .contains("6 comma-separated"));
        assert!("ACCEPT, filter, INPUT, x, FWKNOP_INPUT, 1"
            .parse::<ChainSpec>()
            .unwrap_err()
            .contains("jump_position"));
        assert!("ACCEPT, filter, INPUT, 1, BAD;CHAIN, 1"
            .parse::<ChainSpec>()
            .is_err());
        assert!("ACCEPT, bogus, INPUT, 1, X, 1"
            .parse::<ChainSpec>()
            .is_err());
        assert!("ACCEPT, filter, INPUT, 0, X, 1"
            .parse::<ChainSpec>()
            .is_err());
    }

    #[test]
    fn deserializes_defaults_strings_and_tables() {
        let c: IptablesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, IptablesConfig::default());
        let c: IptablesConfig = serde_json::from_str(
            r#"{"input": "ACCEPT, filter, INPUT, 2, FWKNOP_INPUT, 1", "ipv6": false}"#,
        )
        .unwrap();
        assert_eq!(
            (c.input.chain.as_str(), c.input.jump_position, c.ipv6),
            ("FWKNOP_INPUT", 2, false)
        );
        let c: IptablesConfig = serde_json::from_str(
            r#"{"forward": {"target": "ACCEPT", "table": "filter", "from_chain": "FORWARD", "jump_position": 1, "chain": "P_FWD", "rule_position": 1}}"#,
        )
        .unwrap();
        assert_eq!(c.forward.as_ref().map(|f| f.chain.as_str()), Some("P_FWD"));
        let c: IptablesConfig =
            serde_json::from_str(r#"{"output": "ACCEPT, filter, OUTPUT, 1, FWKNOP_OUTPUT, 1"}"#)
                .unwrap();
        assert_eq!(c.output.map(|o| o.chain), Some("FWKNOP_OUTPUT".into()));
        let c: IptablesConfig = serde_json::from_str(r#"{"output": true}"#).unwrap();
        assert_eq!(c.output, Some(ChainSpec::default_output()));
        let e =
            serde_json::from_str::<IptablesConfig>(r#"{"input": "ACCEPT, filter"}"#).unwrap_err();
        assert!(e.to_string().contains("6 comma-separated"), "{e}");
        assert!(serde_json::from_str::<IptablesConfig>(r#"{"inptu": "x"}"#).is_err());
    }

    #[test]
    fn derives_tool_names() {
        let mut c = IptablesConfig::default();
        assert_eq!(
            (c.ip6tables(), c.iptables_restore(), c.ip6tables_restore()),
            (
                "ip6tables".into(),
                "iptables-restore".into(),
                "ip6tables-restore".into()
            )
        );
        c.iptables = "/usr/sbin/iptables-nft".into();
        assert_eq!(c.ip6tables(), "/usr/sbin/ip6tables-nft");
        assert_eq!(c.ip6tables_restore(), "/usr/sbin/ip6tables-nft-restore");
        assert_eq!(c.iptables_restore(), "/usr/sbin/iptables-nft-restore");
    }
}
