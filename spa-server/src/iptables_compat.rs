//! Placeholder until the iptables backend lands.
use crate::config::ActionConfig;
pub fn build(_cfg: &ActionConfig) -> anyhow::Result<crate::backends::LogOnly> {
    anyhow::bail!("the iptables backend is not available in this build yet")
}
