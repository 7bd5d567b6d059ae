//! The chains postern manages: which exist for a configuration, what each holds,
//! and which a granted rule needs.

use crate::config::{ChainSpec, IptablesConfig};
use spa_core::firewall::{Rule, Snat};
use std::fmt;

/// What a managed chain is for. Each grant becomes one rule in each chain its
/// kind needs ([`roles_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Plain grants, and the accept of local NAT (IPT_INPUT_ACCESS).
    Input,
    /// Plain grants again, for ports Docker publishes (DOCKER-USER).
    Docker,
    /// The reply direction of plain grants (IPT_OUTPUT_ACCESS, ENABLE_IPT_OUTPUT).
    Output,
    /// The FORWARD accept of forward NAT (IPT_FORWARD_ACCESS).
    Forward,
    /// The DNAT of forward and local NAT (IPT_DNAT_ACCESS).
    Dnat,
    /// SNAT to a fixed address (IPT_SNAT_ACCESS).
    Snat,
    /// MASQUERADE (IPT_MASQUERADE_ACCESS).
    Masquerade,
}

impl Role {
    /// Order of the chains: filter-table roles first, so a grant commits its
    /// filter transaction before its nat one.
    pub const ALL: [Role; 7] = [
        Role::Input,
        Role::Docker,
        Role::Output,
        Role::Forward,
        Role::Dnat,
        Role::Snat,
        Role::Masquerade,
    ];

    /// The config field that sets this chain.
    pub fn field(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Docker => "docker",
            Role::Output => "output",
            Role::Forward => "forward",
            Role::Dnat => "dnat",
            Role::Snat => "snat",
            Role::Masquerade => "masquerade",
        }
    }

    /// The fwknopd.conf variable for this chain.
    pub fn fwknopd_name(self) -> &'static str {
        match self {
            Role::Input => "IPT_INPUT_ACCESS",
            Role::Docker => "none",
            Role::Output => "IPT_OUTPUT_ACCESS",
            Role::Forward => "IPT_FORWARD_ACCESS",
            Role::Dnat => "IPT_DNAT_ACCESS",
            Role::Snat => "IPT_SNAT_ACCESS",
            Role::Masquerade => "IPT_MASQUERADE_ACCESS",
        }
    }

    /// postern's default spec for this chain.
    pub fn default_spec(self) -> ChainSpec {
        match self {
            Role::Input => ChainSpec::default_input(),
            Role::Docker => ChainSpec::default_docker(),
            Role::Output => ChainSpec::default_output(),
            Role::Forward => ChainSpec::default_forward(),
            Role::Dnat => ChainSpec::default_dnat(),
            Role::Snat => ChainSpec::default_snat(),
            Role::Masquerade => ChainSpec::default_masquerade(),
        }
    }

    /// The target a NAT chain must have (`None`: any, normally ACCEPT).
    fn nat_target(self) -> Option<&'static str> {
        match self {
            Role::Dnat => Some("DNAT"),
            Role::Snat => Some("SNAT"),
            Role::Masquerade => Some("MASQUERADE"),
            Role::Input | Role::Docker | Role::Output | Role::Forward => None,
        }
    }

    /// A role's spec must fit it: NAT targets in the `nat` table, accepts outside it.
    fn check(self, spec: &ChainSpec) -> Result<(), String> {
        spec.validate()?;
        match self.nat_target() {
            Some(target) if spec.table != "nat" || spec.target != target => Err(format!(
                "must be `{target}, nat, …` (e.g. `{}`)",
                self.default_spec()
            )),
            None if spec.table == "nat" => Err(format!(
                "cannot be in the nat table (e.g. `{}`)",
                self.default_spec()
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// The chains this configuration manages, in [`Role::ALL`] order, validated.
pub fn configured_chains(config: &IptablesConfig) -> Result<Vec<(Role, ChainSpec)>, String> {
    let nat_default = |role: Role, spec: &Option<ChainSpec>| {
        spec.clone()
            .or_else(|| config.nat.then(|| role.default_spec()))
    };
    let mut chains = Vec::new();
    for role in Role::ALL {
        let spec = match role {
            Role::Input => Some(config.input.clone()),
            Role::Docker => config.docker.clone(),
            Role::Output => config.output.clone(),
            Role::Forward => nat_default(role, &config.forward),
            Role::Dnat => nat_default(role, &config.dnat),
            Role::Snat => nat_default(role, &config.snat),
            Role::Masquerade => nat_default(role, &config.masquerade),
        };
        let Some(spec) = spec else { continue };
        role.check(&spec)
            .map_err(|e| format!("{role} chain `{spec}`: {e}"))?;
        if let Some((other, _)) = chains
            .iter()
            .find(|(_, s): &&(Role, ChainSpec)| s.table == spec.table && s.chain == spec.chain)
        {
            return Err(format!(
                "{role} and {other} both use chain {} in table {}; each needs its own",
                spec.chain, spec.table
            ));
        }
        chains.push((role, spec));
    }
    Ok(chains)
}

/// The chains a granted rule puts a rule into, in [`Role::ALL`] order, given
/// the optional plain-grant chains configured (`Docker`, `Output`):
/// - plain: input, and docker and output when configured;
/// - local NAT: dnat (unless DISABLE_DNAT) and input for `to_port`; SNAT does
///   not apply to locally delivered traffic and is ignored;
/// - forward NAT: forward, dnat (unless DISABLE_DNAT), and snat or masquerade.
pub fn roles_for(rule: &Rule, configured: &[Role]) -> Vec<Role> {
    let Some(nat) = &rule.nat else {
        let extra = [Role::Docker, Role::Output].into_iter();
        return [Role::Input]
            .into_iter()
            .chain(extra.filter(|r| configured.contains(r)))
            .collect();
    };
    let mut roles = Vec::new();
    if nat.local {
        roles.push(Role::Input);
    } else {
        roles.push(Role::Forward);
    }
    if nat.dnat {
        roles.push(Role::Dnat);
    }
    if !nat.local {
        match nat.snat {
            Some(Snat::To(_)) => roles.push(Role::Snat),
            Some(Snat::Masquerade) => roles.push(Role::Masquerade),
            None => {}
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::firewall::NatRule;
    use spa_core::request::Proto;

    fn nat(local: bool, dnat: bool, snat: Option<Snat>) -> Rule {
        Rule {
            source: "192.0.2.7".parse().unwrap(),
            proto: Proto::Tcp,
            port: 55000,
            nat: Some(NatRule {
                to_addr: "10.0.0.2".parse().unwrap(),
                to_port: 22,
                local,
                snat,
                dnat,
                forward_all: false,
            }),
            destination: None,
            source_port: None,
        }
    }

    #[test]
    fn roles_follow_fwknopd() {
        use Role::{Dnat, Docker, Forward, Input, Masquerade};
        let plain = Rule {
            nat: None,
            ..nat(false, true, None)
        };
        assert_eq!(roles_for(&plain, &[]), [Input]);
        assert_eq!(roles_for(&plain, &[Docker]), [Input, Docker]);
        assert_eq!(
            roles_for(&plain, &[Role::Output, Docker]),
            [Input, Docker, Role::Output]
        );
        assert_eq!(roles_for(&nat(false, true, None), &[]), [Forward, Dnat]);
        assert_eq!(
            roles_for(&nat(false, false, Some(Snat::Masquerade)), &[Docker]),
            [Forward, Masquerade]
        );
        let to = Snat::To("203.0.113.1".parse().unwrap());
        assert_eq!(
            roles_for(&nat(false, true, Some(to.clone())), &[]),
            [Forward, Dnat, Role::Snat]
        );
        assert_eq!(roles_for(&nat(true, true, Some(to)), &[]), [Input, Dnat]);
        assert_eq!(roles_for(&nat(true, false, None), &[]), [Input]);
    }

    #[test]
    fn nat_true_fills_defaults_and_specs_are_checked() {
        let config = IptablesConfig {
            nat: true,
            docker: Some(ChainSpec::default_docker()),
            ..Default::default()
        };
        let chains = configured_chains(&config).unwrap();
        let names: Vec<&str> = chains.iter().map(|(_, s)| s.chain.as_str()).collect();
        assert_eq!(
            names,
            [
                "POSTERN_INPUT",
                "POSTERN_DOCKER",
                "POSTERN_FORWARD",
                "POSTERN_PREROUTING",
                "POSTERN_POSTROUTING",
                "POSTERN_MASQUERADE"
            ]
        );
        let only_dnat = IptablesConfig {
            dnat: Some(ChainSpec::default_dnat()),
            ..Default::default()
        };
        assert_eq!(configured_chains(&only_dnat).unwrap().len(), 2);

        let wrong_table = IptablesConfig {
            dnat: Some("DNAT, filter, INPUT, 1, X, 1".parse().unwrap()),
            ..Default::default()
        };
        let e = configured_chains(&wrong_table).unwrap_err();
        assert!(
            e.contains("dnat chain") && e.contains("DNAT, nat, PREROUTING"),
            "{e}"
        );
        let wrong_target = IptablesConfig {
            snat: Some("MASQUERADE, nat, POSTROUTING, 1, X, 1".parse().unwrap()),
            ..Default::default()
        };
        assert!(configured_chains(&wrong_target).is_err());
        let accept_in_nat = IptablesConfig {
            forward: Some("ACCEPT, nat, PREROUTING, 1, X, 1".parse().unwrap()),
            ..Default::default()
        };
        assert!(configured_chains(&accept_in_nat)
            .unwrap_err()
            .contains("nat table"));
        let shared = IptablesConfig {
            snat: Some("SNAT, nat, POSTROUTING, 1, P_POST, 1".parse().unwrap()),
            masquerade: Some(
                "MASQUERADE, nat, POSTROUTING, 1, P_POST, 1"
                    .parse()
                    .unwrap(),
            ),
            ..Default::default()
        };
        assert!(configured_chains(&shared)
            .unwrap_err()
            .contains("both use chain P_POST"));
    }
}
