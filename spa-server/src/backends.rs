//! Build action backends from config by name.

use crate::config::ActionConfig;
use postern_backend_iptables::{IptablesBackend, IptablesConfig};
use postern_backend_nftables::{NftablesBackend, NftablesConfig};
use postern_backend_script::{find_program, ScriptBackend, ScriptConfig};
use serde::de::DeserializeOwned;
use spa_core::firewall::{Firewall, FwResult, Opening, Rule};

fn settings<T: DeserializeOwned>(cfg: &ActionConfig) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::Object(cfg.settings.clone()))
        .map_err(|e| anyhow::anyhow!("action `{}`: {e}", cfg.kind))
}

/// Backends that exist in postern but are not compiled into this build.
const FEATURE_GATED: &[&str] = &["firewalld", "pf", "ipfw"];

pub fn build(cfg: &ActionConfig) -> anyhow::Result<Box<dyn Firewall>> {
    let kind = if cfg.kind == "auto" {
        detect()?
    } else {
        cfg.kind.clone()
    };
    Ok(match kind.as_str() {
        "nftables" => {
            let mut b = NftablesBackend::new(settings::<NftablesConfig>(cfg)?)?;
            match b.shadowing_warnings() {
                Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
                Err(e) => tracing::debug!("could not check for rules shadowing nftables grants: {e}"),
            }
            Box::new(b)
        }
        "iptables" => Box::new(IptablesBackend::system(&settings::<IptablesConfig>(cfg)?)?),
        "script" => Box::new(ScriptBackend::system(&settings::<ScriptConfig>(cfg)?)?),
        "plugin" => Box::new(crate::plugin::PluginBackend::load(&settings::<crate::plugin::PluginConfig>(cfg)?)?),
        "log" => Box::new(LogOnly::default()),
        k if FEATURE_GATED.contains(&k) => anyhow::bail!("backend `{k}` requires the `{k}` feature, which this posternd was built without"),
        k => anyhow::bail!("unknown action backend `{k}` (expected nftables, iptables, firewalld, pf, ipfw, script, plugin, log or auto)"),
    })
}

/// `auto`: nftables, then firewalld if it runs, then iptables (Linux).
pub fn detect() -> anyhow::Result<String> {
    let choice = if find_program("nft").is_some() {
        "nftables"
    } else if std::path::Path::new("/run/firewalld/firewalld.pid").exists()
        || std::path::Path::new("/var/run/firewalld.pid").exists()
    {
        "firewalld"
    } else if find_program("iptables").is_some() {
        "iptables"
    } else {
        anyhow::bail!("action `auto`: none of nft, firewalld or iptables is installed");
    };
    tracing::info!("action `auto` chose `{choice}`");
    Ok(choice.to_string())
}

/// Test mode (fwknopd -t): records grants, touches no firewall.
#[derive(Default)]
pub struct LogOnly {
    open: Vec<Opening>,
}

impl Firewall for LogOnly {
    fn name(&self) -> &'static str {
        "log"
    }
    fn init(&mut self, _now: u64) -> FwResult<()> {
        Ok(())
    }
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            tracing::info!(
                "test mode, not applied: {} for {} s",
                o.rule,
                o.timeout_secs
            );
            self.open.retain(|x| x.rule != o.rule);
            self.open.push(o.clone());
        }
        Ok(())
    }
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        self.open.retain(|o| !rules.contains(&o.rule));
        Ok(())
    }
    fn list(&mut self) -> FwResult<Vec<Opening>> {
        Ok(self.open.clone())
    }
    fn flush(&mut self) -> FwResult<()> {
        self.open.clear();
        Ok(())
    }
    fn expires_in_kernel(&self) -> bool {
        false
    }
}
