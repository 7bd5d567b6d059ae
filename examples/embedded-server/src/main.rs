//! Embedding postern: your own binary, your own action, postern's pipeline.
//!
//! Implement `spa_core::firewall::Firewall` for whatever should happen on a
//! grant (here: print it and remember it), then hand it to
//! `spa_server::daemon::start_with_backends` with a config. Run with
//!
//! ```sh
//! cargo run -p embedded-server -- /etc/postern/access.conf 127.0.0.1:62201
//! ```
//! and knock with `postern -A tcp/22 -a 127.0.0.1 -D 127.0.0.1 …`.

#![forbid(unsafe_code)]

use spa_core::firewall::{Firewall, FwResult, Opening, Rule};
use spa_server::config::{self, CaptureConfig, ConfigSources, ReplayConfig, ServerConfig};

/// An action that only prints; put your API call here.
#[derive(Default)]
struct PrintingAction {
    open: Vec<Opening>,
}

impl Firewall for PrintingAction {
    fn name(&self) -> &'static str {
        "printing"
    }
    fn init(&mut self, _now: u64) -> FwResult<()> {
        Ok(())
    }
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        for o in openings {
            println!("open  {} for {} s", o.rule, o.timeout_secs);
            self.open.push(o.clone());
        }
        Ok(())
    }
    fn revoke(&mut self, rules: &[Rule]) -> FwResult<()> {
        for r in rules {
            println!("close {r}");
        }
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
    /// postern's daemon calls `expire` on a timer and revokes what ran out.
    fn expires_in_kernel(&self) -> bool {
        false
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let access = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: embedded-server ACCESS_CONF [LISTEN_ADDR]"))?;
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:62201".into())
        .parse()?;
    let loaded = config::load(&ConfigSources {
        access: Some(access.into()),
        ..Default::default()
    })?;
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen }],
        replay: ReplayConfig::Memory,
        ..loaded.config
    };
    let running =
        spa_server::daemon::start_with_backends(cfg, vec![Box::new(PrintingAction::default())])
            .await?;
    println!("listening on {listen}; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    running.stop().await;
    Ok(())
}
