//! `[[action]]`: which backend applies grants, with that backend's own typed
//! settings. The settings are read with the rest of the file, so a misspelt
//! or mistyped key fails at load (and in `posternd check-config`) naming the
//! key, not when the backend is built, and never silently.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Settings of a backend left out of this build (its cargo feature off): kept
/// as written, so the file still loads and `build` names the missing feature.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotBuilt(pub serde_json::Map<String, serde_json::Value>);

#[cfg(all(feature = "nftables", target_os = "linux"))]
pub type NftablesSettings = postern_backend_nftables::NftablesConfig;
#[cfg(not(all(feature = "nftables", target_os = "linux")))]
pub type NftablesSettings = NotBuilt;
#[cfg(all(feature = "iptables", target_os = "linux"))]
pub type IptablesSettings = postern_backend_iptables::IptablesConfig;
#[cfg(not(all(feature = "iptables", target_os = "linux")))]
pub type IptablesSettings = NotBuilt;
#[cfg(all(feature = "firewalld", target_os = "linux"))]
pub type FirewalldSettings = postern_backend_firewalld::FirewalldConfig;
#[cfg(not(all(feature = "firewalld", target_os = "linux")))]
pub type FirewalldSettings = NotBuilt;
#[cfg(feature = "pf")]
pub type PfSettings = postern_backend_pf::PfConfig;
#[cfg(not(feature = "pf"))]
pub type PfSettings = NotBuilt;
#[cfg(feature = "ipfw")]
pub type IpfwSettings = postern_backend_ipfw::IpfwConfig;
#[cfg(not(feature = "ipfw"))]
pub type IpfwSettings = NotBuilt;
#[cfg(feature = "plugin")]
pub type PluginSettings = crate::plugin::PluginConfig;
#[cfg(not(feature = "plugin"))]
pub type PluginSettings = NotBuilt;

/// One `[[action]]`, chosen by `type`; every other key is the backend's.
///
/// Read by hand (not serde's internally tagged enum, which buffers the
/// settings and so loses the name of a key whose value has the wrong type):
/// `type` picks the settings struct, which reads the rest with the path of
/// any error.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
// A few per process, read once: the size of the largest does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ActionConfig {
    Nftables(NftablesSettings),
    Iptables(IptablesSettings),
    Firewalld(FirewalldSettings),
    Pf(PfSettings),
    Ipfw(IpfwSettings),
    /// fwknopd's CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE as a firewall.
    Script(postern_backend_script::ScriptConfig),
    Plugin(PluginSettings),
    /// Test mode (`posternd -t`): logs grants, touches no firewall.
    Log {},
    /// The firewall found at start (nftables, firewalld or iptables on Linux;
    /// pf or ipfw on BSD), with its default settings.
    Auto {},
}

/// Every `type`, in the order the message lists them.
const KINDS: &[&str] = &[
    "nftables",
    "iptables",
    "firewalld",
    "pf",
    "ipfw",
    "script",
    "plugin",
    "log",
    "auto",
];

impl<'de> Deserialize<'de> for ActionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = Map::<String, Value>::deserialize(d)?;
        ActionConfig::from_table(table).map_err(serde::de::Error::custom)
    }
}

/// `settings` as the backend's `T`, an error naming the key that is wrong.
fn typed<T: DeserializeOwned>(kind: &str, settings: Map<String, Value>) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(settings)).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." | "" => format!("action `{kind}`: {}", e.inner()),
            _ => format!("action `{kind}`: `{path}`: {}", e.inner()),
        }
    })
}

impl ActionConfig {
    fn from_table(mut table: Map<String, Value>) -> Result<ActionConfig, String> {
        let kind = match table.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(other) => return Err(format!("action `type` must be a string, not {other}")),
            None => {
                return Err(format!(
                    "action without `type` (one of {})",
                    KINDS.join(", ")
                ))
            }
        };
        let no_settings = |table: Map<String, Value>| match table.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "action `{kind}`: unknown field `{key}`: this action takes no settings"
            )),
        };
        Ok(match kind.as_str() {
            "nftables" => ActionConfig::Nftables(typed(&kind, table)?),
            "iptables" => ActionConfig::Iptables(typed(&kind, table)?),
            "firewalld" => ActionConfig::Firewalld(typed(&kind, table)?),
            "pf" => ActionConfig::Pf(typed(&kind, table)?),
            "ipfw" => ActionConfig::Ipfw(typed(&kind, table)?),
            "script" => ActionConfig::Script(typed(&kind, table)?),
            "plugin" => ActionConfig::Plugin(typed(&kind, table)?),
            "log" => no_settings(table).map(|()| ActionConfig::Log {})?,
            "auto" => no_settings(table).map(|()| ActionConfig::Auto {})?,
            other => {
                return Err(format!(
                    "unknown action type `{other}` (expected one of {})",
                    KINDS.join(", ")
                ))
            }
        })
    }

    /// Its `type`, as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionConfig::Nftables(_) => "nftables",
            ActionConfig::Iptables(_) => "iptables",
            ActionConfig::Firewalld(_) => "firewalld",
            ActionConfig::Pf(_) => "pf",
            ActionConfig::Ipfw(_) => "ipfw",
            ActionConfig::Script(_) => "script",
            ActionConfig::Plugin(_) => "plugin",
            ActionConfig::Log {} => "log",
            ActionConfig::Auto {} => "auto",
        }
    }

    /// The settings as a JSON table (tests look keys up in it).
    #[cfg(test)]
    pub(crate) fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.remove("type");
                map
            }
            other => panic!("{other:?}"),
        }
    }

    /// The iptables program of an iptables action (fwknopd's FIREWALL_EXE).
    pub fn iptables_program(&self) -> Option<&str> {
        match self {
            #[cfg(all(feature = "iptables", target_os = "linux"))]
            ActionConfig::Iptables(c) => Some(&c.iptables),
            #[cfg(not(all(feature = "iptables", target_os = "linux")))]
            ActionConfig::Iptables(c) => c.0.get("iptables")?.as_str(),
            _ => None,
        }
    }

    /// `type = "<kind>"` with the backend's default settings (`auto` picks
    /// the backend at start). Backends that need settings (script, plugin)
    /// have no default.
    pub fn default_of(kind: &str) -> Result<ActionConfig, String> {
        let mut table = Map::new();
        table.insert("type".into(), kind.into());
        ActionConfig::from_table(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Serialized, Toml};
    use figment::Figment;

    /// As `config::load` reads a TOML file: defaults merged under it.
    fn load(toml: &str) -> Result<crate::config::ServerConfig, String> {
        Figment::from(Serialized::defaults(crate::config::ServerConfig::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_backend_reads_its_own_settings() {
        let cfg = load(
            "[[action]]\ntype = \"nftables\"\ntable = \"spa\"\n\
             [[action]]\ntype = \"script\"\nopen = \"/bin/true $SRC\"\ncapabilities = \"NET_ADMIN\"\n\
             [[action]]\ntype = \"log\"\n",
        )
        .unwrap();
        assert_eq!(cfg.action.len(), 3);
        match &cfg.action[0] {
            #[cfg(all(feature = "nftables", target_os = "linux"))]
            ActionConfig::Nftables(c) => assert_eq!(c.table, "spa"),
            #[cfg(not(all(feature = "nftables", target_os = "linux")))]
            ActionConfig::Nftables(c) => assert_eq!(c.0["table"], "spa"),
            other => panic!("{other:?}"),
        }
        let ActionConfig::Script(s) = &cfg.action[1] else {
            panic!("{:?}", cfg.action[1])
        };
        assert_eq!(s.open, "/bin/true $SRC");
        assert_eq!(cfg.action[2], ActionConfig::Log {});
    }

    /// A misspelt key, a wrong type, a key of another backend: refused at
    /// load, naming the key (deny_unknown_fields holds inside the tagged enum).
    #[test]
    fn a_bad_backend_key_is_refused_naming_it() {
        for (toml, names) in [
            ("type = \"nftables\"\ntabel = \"x\"", "tabel"),
            ("type = \"nftables\"\npriority = \"high\"", "high"),
            ("type = \"nftables\"\noutput = true", "output"),
            ("type = \"iptables\"\ninptu = \"x\"", "inptu"),
            (
                "type = \"iptables\"\ninput = \"ACCEPT, filter\"",
                "ACCEPT, filter",
            ),
            ("type = \"firewalld\"\nzones = \"public\"", "zones"),
            ("type = \"pf\"\nanchr = \"x\"", "anchr"),
            ("type = \"ipfw\"\nstart_rule = 1", "start_rule"),
            (
                "type = \"script\"\nopen = \"/bin/true\"\nclsoe = \"x\"",
                "clsoe",
            ),
            ("type = \"script\"\nclose = \"/bin/true\"", "open"),
            (
                "type = \"script\"\nopen = \"/bin/true\"\ncommand_timeout_secs = \"30\"",
                "`command_timeout_secs`: invalid type",
            ),
            (
                "type = \"nftables\"\nprotected = [\"tcp/22\", 7]",
                "`protected[1]`",
            ),
            ("type = \"pf\"\nflush_at_init = \"yes\"", "`flush_at_init`"),
            ("type = \"log\"\ntable = \"x\"", "table"),
            ("type = \"auto\"\ntable = \"x\"", "table"),
            ("type = \"carrier-pigeon\"", "carrier-pigeon"),
        ] {
            if !cfg!(all(
                all(feature = "nftables", target_os = "linux"),
                all(feature = "iptables", target_os = "linux"),
                all(feature = "firewalld", target_os = "linux"),
                feature = "pf",
                feature = "ipfw"
            )) && !toml.contains("script")
            {
                continue;
            }
            let err = load(&format!("[[action]]\n{toml}\n")).unwrap_err();
            assert!(err.contains(names), "{toml}: {err}");
        }
    }

    /// What `check-config` prints reads back to the same actions.
    #[test]
    fn settings_round_trip_through_toml() {
        let text = "[[action]]\ntype = \"iptables\"\ninput = \"ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1\"\noutput = true\nprepend = false\n\
                    [[action]]\ntype = \"pf\"\nanchor = \"fwknop\"\n\
                    [[action]]\ntype = \"ipfw\"\nmax_rules = 10\n\
                    [[action]]\ntype = \"firewalld\"\nzone = \"public\"\n\
                    [[action]]\ntype = \"nftables\"\nprotected = [\"tcp/22\"]\n\
                    [[action]]\ntype = \"script\"\nopen = \"/bin/true $SRC\"\nclose = \"/bin/true\"\n\
                    [[action]]\ntype = \"plugin\"\npath = \"/usr/lib/p.so\"\n\
                    [[action]]\ntype = \"auto\"\n";
        let cfg = load(text).unwrap();
        let shown = crate::config::render_redacted(&cfg);
        let again = load(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        assert_eq!(again.action, cfg.action, "{shown}");
        assert!(
            shown.contains("input = \"ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1\""),
            "{shown}"
        );
    }

    #[test]
    fn default_of_names_what_is_missing() {
        assert_eq!(ActionConfig::default_of("log"), Ok(ActionConfig::Log {}));
        let err = ActionConfig::default_of("script").unwrap_err();
        assert!(err.contains("open"), "{err}");
    }
}
