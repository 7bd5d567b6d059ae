//! Build action backends from config by name.

use crate::config::{ActionConfig, ServerSection};
use postern_backend_common::find_program;
use postern_backend_script::ScriptBackend;
use spa_core::firewall::{Block, Firewall, FwResult, MemoryFirewall, Opening, Rule, RuleFeature};
use spa_core::Clock;
use std::sync::Arc;

fn feature_missing(kind: &str) -> String {
    format!("backend `{kind}` requires the `{kind}` feature, which this posternd was built without")
}

/// Is the backend named `kind` part of this build (its cargo feature enabled)?
pub fn compiled_in(kind: &str) -> bool {
    match kind {
        "nftables" => cfg!(all(feature = "nftables", target_os = "linux")),
        "iptables" => cfg!(all(feature = "iptables", target_os = "linux")),
        "firewalld" => cfg!(all(feature = "firewalld", target_os = "linux")),
        "pf" => cfg!(feature = "pf"),
        "ipfw" => cfg!(feature = "ipfw"),
        "plugin" => cfg!(feature = "plugin"),
        _ => true,
    }
}

/// Build the backend for one `[[action]]`. Server settings fill in what the backend
/// needs to know: `run_dir` holds state files unless the config names one, and
/// NAT enabled on the server turns on the backend's NAT chains. Backends read
/// the time from `clock`.
pub fn build(
    cfg: &ActionConfig,
    server: &ServerSection,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Box<dyn Firewall>> {
    let run_dir = server.run_dir.as_path();
    let nat_enabled = server.nat.forwarding || server.nat.local;
    let detected;
    let cfg = match cfg {
        ActionConfig::Auto {} => {
            detected = ActionConfig::default_of(&detect()?).map_err(anyhow::Error::msg)?;
            &detected
        }
        other => other,
    };
    if !compiled_in(cfg.kind()) {
        anyhow::bail!(feature_missing(cfg.kind()));
    }
    // Silence "unused" where every backend feature is off.
    let _ = (run_dir, nat_enabled, clock);
    Ok(match cfg {
        #[cfg(all(feature = "nftables", target_os = "linux"))]
        ActionConfig::Nftables(c) => {
            use postern_backend_nftables::NftablesBackend;
            let mut c = c.clone();
            c.nat |= nat_enabled;
            let mut b = NftablesBackend::new(c)?.with_clock(clock.clone());
            match b.shadowing_warnings() {
                Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
                Err(e) => {
                    tracing::debug!("could not check for rules shadowing nftables grants: {e}")
                }
            }
            Box::new(b)
        }
        #[cfg(all(feature = "iptables", target_os = "linux"))]
        ActionConfig::Iptables(c) => {
            use postern_backend_iptables::IptablesBackend;
            let mut c = c.clone();
            c.nat |= nat_enabled;
            Box::new(IptablesBackend::system(&c)?.with_clock(clock.clone()))
        }
        #[cfg(all(feature = "firewalld", target_os = "linux"))]
        ActionConfig::Firewalld(c) => {
            use postern_backend_firewalld::FirewalldBackend;
            let mut c = c.clone();
            c.state_file
                .get_or_insert_with(|| run_dir.join("firewalld.json"));
            Box::new(FirewalldBackend::new(c)?.with_clock(clock.clone()))
        }
        #[cfg(feature = "pf")]
        ActionConfig::Pf(c) => {
            use postern_backend_pf::PfBackend;
            let mut c = c.clone();
            // The state file lives in the run directory unless the config names one.
            c.state_file.get_or_insert_with(|| run_dir.join("pf.json"));
            Box::new(PfBackend::system(&c)?.with_clock(clock.clone()))
        }
        #[cfg(feature = "ipfw")]
        ActionConfig::Ipfw(c) => {
            use postern_backend_ipfw::IpfwBackend;
            Box::new(IpfwBackend::system(c)?.with_clock(clock.clone()))
        }
        ActionConfig::Script(c) => {
            let mut c = c.clone();
            c.state_file
                .get_or_insert_with(|| run_dir.join("script.json"));
            Box::new(ScriptBackend::system(&c)?)
        }
        #[cfg(feature = "plugin")]
        ActionConfig::Plugin(c) => Box::new(crate::plugin::PluginBackend::load(c)?),
        ActionConfig::Log {} => Box::new(LogOnly::default()),
        #[allow(unreachable_patterns)] // every backend feature on
        other => anyhow::bail!(feature_missing(other.kind())),
    })
}

/// `auto` on BSD and macOS: pf, then ipfw.
#[cfg(any(
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly",
    target_os = "macos"
))]
pub fn detect() -> anyhow::Result<String> {
    let choice = if find_program("pfctl").is_some() {
        "pf"
    } else if find_program("ipfw").is_some() {
        "ipfw"
    } else {
        anyhow::bail!("action `auto`: neither pfctl nor ipfw is installed");
    };
    tracing::info!("action `auto` chose `{choice}`");
    Ok(choice.to_string())
}

/// `auto` on Linux: nftables, then firewalld if it runs, then iptables.
#[cfg(not(any(
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly",
    target_os = "macos"
)))]
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

/// Test mode (fwknopd -t): logs and remembers grants, touches no firewall.
#[derive(Default)]
pub struct LogOnly {
    memory: MemoryFirewall,
}

impl Firewall for LogOnly {
    fn name(&self) -> &'static str {
        "log"
    }
    fn init(&mut self, now: u64) -> FwResult<()> {
        self.memory.init(now)
    }
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            tracing::info!(
                "test mode, not applied: {} for {} s",
                o.rule,
                o.timeout_secs
            );
        }
        self.memory.grant(openings)
    }
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        self.memory.revoke(rules)
    }
    fn list(&mut self) -> FwResult<Vec<Opening>> {
        self.memory.list()
    }
    fn flush(&mut self) -> FwResult<()> {
        self.memory.flush()
    }
    fn expires_in_kernel(&self) -> bool {
        false
    }
    /// It opens nothing, so it can log any rule.
    fn supports(&self, _: RuleFeature) -> bool {
        true
    }
    /// It blocks nothing either, and logs each block.
    fn enable_blocking(&mut self) -> FwResult<()> {
        Ok(())
    }
    fn block(&mut self, blocks: &[Block]) -> FwResult<()> {
        for b in blocks {
            tracing::info!(
                "test mode, not applied: block {} for {} s",
                b.source,
                b.timeout_secs
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::SystemClock;

    fn server() -> ServerSection {
        ServerSection {
            run_dir: "/nonexistent".into(),
            ..ServerSection::default()
        }
    }

    fn build_err(kind: &str) -> String {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        build(&ActionConfig::default_of(kind).unwrap(), &server(), &clock)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_backend_left_out_of_the_build_names_its_feature() {
        assert_eq!(
            feature_missing("pf"),
            "backend `pf` requires the `pf` feature, which this posternd was built without"
        );
        if cfg!(all(
            all(feature = "nftables", target_os = "linux"),
            all(feature = "iptables", target_os = "linux"),
            all(feature = "firewalld", target_os = "linux"),
            feature = "pf",
            feature = "ipfw",
            feature = "plugin"
        )) {
            for kind in ["nftables", "iptables", "firewalld", "pf", "ipfw", "plugin"] {
                assert!(compiled_in(kind), "{kind}");
            }
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn bsd_backends_on_linux_say_their_tool_is_missing() {
        for (kind, tool) in [("pf", "pfctl"), ("ipfw", "ipfw")] {
            let err = build_err(kind);
            assert!(
                err.contains(tool) && err.contains("missing"),
                "{kind}: {err}"
            );
        }
    }

    /// An unknown `type` is refused when the file is read, listing the known ones.
    #[test]
    fn an_unknown_backend_lists_the_known_ones() {
        let err = ActionConfig::default_of("carrier-pigeon").unwrap_err();
        assert!(
            err.contains("unknown action type `carrier-pigeon`") && err.contains("nftables"),
            "{err}"
        );
    }

    /// ENABLE_IPT_OUTPUT's `output` is an iptables setting: asked of another
    /// action, it is an error when the file is read, not silently ignored.
    #[test]
    fn output_rules_on_an_action_that_cannot_make_them_are_an_error() {
        let err = serde_json::from_value::<ActionConfig>(
            serde_json::json!({"type": "nftables", "output": true}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `output`"), "{err}");
    }
}
