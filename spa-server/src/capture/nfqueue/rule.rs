//! The rule that sends SPA packets to the queue, managed as fwknopd does: made
//! at start (after clearing what a killed posternd left), removed at exit.
//!
//! - iptables (fwknopd's form): the chain NFQ_CHAIN in NFQ_TABLE holding
//!   `[-i IF] -p udp -m udp --dport PORT -j NFQUEUE --queue-num N`, and a jump to
//!   it at position 1 of that table's INPUT chain. IPv4, as fwknopd.
//! - nftables: a small table of the capture's own, `inet postern_nfq_N`, whose
//!   input chain (mangle priority, as iptables' mangle INPUT) holds
//!   `[iifname IF] udp dport PORT queue num N`; made and cleared in one
//!   transaction each.

use super::{RuleTool, Settings};
use postern_backend_common::SystemRunner;
use spa_core::firewall::CommandRunner;

/// iptables waits this long for the xtables lock rather than failing at once.
const XTABLES_WAIT_SECS: &str = "10";
/// Bound on jumps removed at start: one per posternd killed without cleaning up.
const MAX_STALE_JUMPS: usize = 16;

/// The nftables table holding the rule for queue `queue`.
pub fn nft_table(queue: u16) -> String {
    format!("postern_nfq_{queue}")
}

/// How the rule is made: the tool, and the iptables program when it is iptables.
pub struct Maker {
    pub tool: RuleTool,
    pub iptables: String,
}

fn iptables(program: &str, table: &str, args: &[&str]) -> Vec<String> {
    [program, "-w", XTABLES_WAIT_SECS, "-t", table]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// The commands that make the chain, its queue rule and the jump to it (in that
/// order: the jump only ever points at a complete chain).
pub fn iptables_setup(program: &str, s: &Settings) -> Vec<Vec<String>> {
    let (table, chain) = (s.table.as_str(), s.chain.as_str());
    let (port, queue) = (s.port.to_string(), s.queue.to_string());
    let mut rule = vec!["-A", chain];
    if let Some(interface) = &s.interface {
        rule.extend(["-i", interface]);
    }
    rule.extend([
        "-p",
        "udp",
        "-m",
        "udp",
        "--dport",
        &port,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
    ]);
    vec![
        iptables(program, table, &["-N", chain]),
        iptables(program, table, &rule),
        iptables(program, table, &["-I", "INPUT", "1", "-j", chain]),
    ]
}

/// The IPv6 twin of an iptables program (`iptables-nft` → `ip6tables-nft`),
/// when this host has it: the queue rule is made for both families, so a
/// knock over IPv6 is queued too (the nftables form's `inet` table is).
pub fn ip6tables_twin(program: &str) -> Option<String> {
    let (dir, name) = program.rsplit_once('/').unwrap_or(("", program));
    let variant = name.strip_prefix("iptables")?;
    let twin = match dir {
        "" => format!("ip6tables{variant}"),
        dir => format!("{dir}/ip6tables{variant}"),
    };
    postern_backend_common::runner::find_program(&twin).map(|_| twin)
}

/// Removing one jump to the chain (repeated until none is left).
pub fn iptables_unjump(program: &str, s: &Settings) -> Vec<String> {
    iptables(program, &s.table, &["-D", "INPUT", "-j", &s.chain])
}

/// Emptying and deleting the chain (after its jumps are gone).
pub fn iptables_drop_chain(program: &str, s: &Settings) -> Vec<Vec<String>> {
    vec![
        iptables(program, &s.table, &["-F", &s.chain]),
        iptables(program, &s.table, &["-X", &s.chain]),
    ]
}

/// `nft -f -` input that clears the capture's table (present or not) and makes
/// it anew, in one transaction.
pub fn nft_setup(s: &Settings) -> String {
    let table = nft_table(s.queue);
    let interface = s
        .interface
        .as_deref()
        // iptables' `eth+` is nftables' `eth*`.
        .map(|i| format!("iifname \"{}\" ", i.replace('+', "*")))
        .unwrap_or_default();
    format!(
        "{clear}table inet {table} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority mangle; policy accept;\n\
         \t\t{interface}udp dport {port} queue num {queue}\n\
         \t}}\n\
         }}\n",
        clear = nft_teardown(s),
        port = s.port,
        queue = s.queue,
    )
}

/// `nft -f -` input that deletes the capture's table whether it exists or not.
pub fn nft_teardown(s: &Settings) -> String {
    let table = nft_table(s.queue);
    format!("table inet {table}\ndelete table inet {table}\n")
}

/// The installed rule, taken away when dropped: at shutdown, and also when
/// posternd fails to start after adding it or the task is dropped unstopped.
pub struct QueueRule {
    settings: Settings,
    maker: Maker,
    /// With the iptables tool: iptables, and its IPv6 twin when there is one.
    programs: Vec<String>,
    runner: SystemRunner,
    /// Complete: failing to take it away is worth a warning.
    installed: bool,
}

impl QueueRule {
    /// Clear what an earlier run left (a kill -9 skips the cleanup), then add the
    /// rule. Nothing is left half made: on error what was added is removed.
    pub fn install(settings: &Settings, maker: Maker) -> anyhow::Result<QueueRule> {
        let tool = maker.tool;
        let programs = match tool {
            RuleTool::Iptables => {
                let twin = ip6tables_twin(&maker.iptables);
                if twin.is_none() {
                    tracing::info!(
                        "nfqueue capture: no ip6tables next to {}; knocks over IPv6 are not queued",
                        maker.iptables
                    );
                }
                std::iter::once(maker.iptables.clone())
                    .chain(twin)
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut rule = QueueRule {
            settings: settings.clone(),
            maker,
            programs,
            runner: SystemRunner::default(),
            installed: false,
        };
        let result = match tool {
            RuleTool::Iptables => {
                rule.clear_iptables();
                rule.programs.iter().try_for_each(|program| {
                    iptables_setup(program, settings)
                        .iter()
                        .try_for_each(|argv| rule.runner.run(argv, None).map(drop))
                })
            }
            RuleTool::Nftables => rule
                .runner
                .run(&nft_argv(), Some(&nft_setup(settings)))
                .map(drop),
            RuleTool::Unmanaged => Ok(()),
        };
        if let Err(e) = result {
            drop(rule);
            anyhow::bail!("nfqueue capture: cannot add the queue rule: {e}");
        }
        rule.installed = true;
        Ok(rule)
    }

    /// Remove every jump to the chain, then the chain (each may be missing).
    fn clear_iptables(&mut self) {
        for program in &self.programs {
            let unjump = iptables_unjump(program, &self.settings);
            for _ in 0..MAX_STALE_JUMPS {
                if self.runner.run(&unjump, None).is_err() {
                    break;
                }
            }
            for argv in iptables_drop_chain(program, &self.settings) {
                if let Err(e) = self.runner.run(&argv, None) {
                    if self.installed {
                        tracing::warn!("nfqueue capture: cannot remove its chain: {e}");
                    }
                    break;
                }
            }
        }
    }
}

impl Drop for QueueRule {
    /// Failures are logged: posternd is stopping anyway.
    fn drop(&mut self) {
        match self.maker.tool {
            RuleTool::Iptables => self.clear_iptables(),
            RuleTool::Nftables => {
                let teardown = nft_teardown(&self.settings);
                if let Err(e) = self.runner.run(&nft_argv(), Some(&teardown)) {
                    tracing::warn!("nfqueue capture: cannot remove its nftables table: {e}");
                }
            }
            RuleTool::Unmanaged => {}
        }
    }
}

fn nft_argv() -> Vec<String> {
    vec!["nft".into(), "-f".into(), "-".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(interface: Option<&str>) -> Settings {
        Settings {
            interface: interface.map(String::from),
            ..Settings::default()
        }
    }

    fn line(argv: &[String]) -> String {
        argv.join(" ")
    }

    #[test]
    fn iptables_rule_is_fwknopds() {
        let s = settings(None);
        let setup: Vec<String> = iptables_setup("iptables", &s)
            .iter()
            .map(|a| line(a))
            .collect();
        assert_eq!(
            setup,
            [
                "iptables -w 10 -t mangle -N FWKNOP_NFQ",
                "iptables -w 10 -t mangle -A FWKNOP_NFQ -p udp -m udp --dport 62201 -j NFQUEUE --queue-num 1",
                "iptables -w 10 -t mangle -I INPUT 1 -j FWKNOP_NFQ",
            ]
        );
        assert_eq!(
            line(&iptables_unjump("iptables", &s)),
            "iptables -w 10 -t mangle -D INPUT -j FWKNOP_NFQ"
        );
        let drop: Vec<String> = iptables_drop_chain("iptables", &s)
            .iter()
            .map(|a| line(a))
            .collect();
        assert_eq!(
            drop,
            [
                "iptables -w 10 -t mangle -F FWKNOP_NFQ",
                "iptables -w 10 -t mangle -X FWKNOP_NFQ",
            ]
        );
    }

    #[test]
    fn the_ipv6_twin_of_each_iptables_variant() {
        // Only names this host has are returned (Debian ships all of these).
        if postern_backend_common::runner::find_program("ip6tables").is_none() {
            return;
        }
        assert_eq!(ip6tables_twin("iptables").as_deref(), Some("ip6tables"));
        assert_eq!(
            ip6tables_twin("iptables-nft").as_deref(),
            Some("ip6tables-nft")
        );
        assert_eq!(
            ip6tables_twin("iptables-legacy").as_deref(),
            Some("ip6tables-legacy")
        );
        assert_eq!(
            ip6tables_twin("/usr/sbin/iptables").as_deref(),
            Some("/usr/sbin/ip6tables")
        );
        assert_eq!(ip6tables_twin("firewall-cmd"), None);
        assert_eq!(ip6tables_twin("ipfw"), None);
    }

    #[test]
    fn iptables_rule_with_interface_and_own_names() {
        let s = Settings {
            queue: 7,
            port: 40001,
            interface: Some("eth1".into()),
            table: "filter".into(),
            chain: "SPA_Q".into(),
            rules: None,
        };
        assert_eq!(
            line(&iptables_setup("/usr/sbin/iptables-legacy", &s)[1]),
            "/usr/sbin/iptables-legacy -w 10 -t filter -A SPA_Q -i eth1 -p udp -m udp --dport 40001 -j NFQUEUE --queue-num 7"
        );
    }

    #[test]
    fn nft_table_is_cleared_and_made_in_one_script() {
        let s = Settings {
            queue: 3,
            port: 5000,
            interface: Some("veth+".into()),
            ..Settings::default()
        };
        assert_eq!(
            nft_setup(&s),
            "table inet postern_nfq_3\n\
             delete table inet postern_nfq_3\n\
             table inet postern_nfq_3 {\n\
             \tchain input {\n\
             \t\ttype filter hook input priority mangle; policy accept;\n\
             \t\tiifname \"veth*\" udp dport 5000 queue num 3\n\
             \t}\n\
             }\n"
        );
        assert_eq!(
            nft_teardown(&s),
            "table inet postern_nfq_3\ndelete table inet postern_nfq_3\n"
        );
        assert!(nft_setup(&settings(None)).contains("\t\tudp dport 62201 queue num 1\n"));
    }
}
