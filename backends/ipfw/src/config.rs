//! Configuration of the ipfw backend, with fwknopd.conf's names noted.

use serde::{Deserialize, Serialize};

/// Highest rule number a grant may use: 65535 is ipfw's default rule.
pub const MAX_RULE_NUM: u32 = 65534;
/// Highest set number postern may use: set 31 holds the default rule and cannot
/// be disabled.
pub const MAX_SET: u8 = 30;

/// `[action] type = "ipfw"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpfwConfig {
    /// The ipfw program (fwknopd's FIREWALL_EXE).
    pub ipfw: String,
    /// IPFW_START_RULE_NUM: first rule number postern uses.
    pub start_rule_num: u32,
    /// IPFW_MAX_RULES: size of postern's rule number range
    /// (`start_rule_num ..= start_rule_num + max_rules - 1`), hence the most
    /// grants open at once.
    pub max_rules: u32,
    /// IPFW_ACTIVE_SET_NUM: the set holding live grants.
    pub active_set: u8,
    /// IPFW_EXPIRE_SET_NUM: a disabled set where expired grants wait until their
    /// established sessions (dynamic rules) are gone. 0: delete at expiry.
    pub expire_set: u8,
    /// IPFW_EXPIRE_PURGE_INTERVAL: how often expired rules without dynamic
    /// rules are deleted from the expire set (seconds).
    pub expire_purge_interval_secs: u32,
    /// IPFW_ADD_CHECK_STATE: put a `check-state` rule at `start_rule_num`
    /// (only needed when the ruleset has none).
    pub add_check_state: bool,
    /// FLUSH_IPFW_AT_INIT. fwknopd defaults to Y; postern defaults to
    /// reconciling: expired leftovers are retired, live grants survive a restart.
    pub flush_at_init: bool,
    /// FLUSH_IPFW_AT_EXIT: at shutdown delete postern's rules in the active set
    /// (the expire set is kept so established sessions live on, as fwknopd does).
    pub flush_at_exit: bool,
    /// Accept IPv6 clients (`from ADDR to me6`).
    pub ipv6: bool,
    /// Time limit for each ipfw command.
    pub command_timeout_secs: u64,
}

impl Default for IpfwConfig {
    fn default() -> Self {
        IpfwConfig {
            ipfw: "ipfw".into(),
            start_rule_num: 10_000,
            max_rules: 1000,
            active_set: 1,
            expire_set: 2,
            expire_purge_interval_secs: 30,
            add_check_state: false,
            flush_at_init: false,
            flush_at_exit: true,
            ipv6: true,
            command_timeout_secs: 30,
        }
    }
}

impl IpfwConfig {
    /// The rule numbers postern owns.
    pub fn range(&self) -> std::ops::RangeInclusive<u32> {
        self.start_rule_num
            ..=self
                .start_rule_num
                .saturating_add(self.max_rules)
                .saturating_sub(1)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ipfw.is_empty() {
            return Err("`ipfw` must name the ipfw program".into());
        }
        if self.start_rule_num == 0 {
            return Err("start_rule_num (IPFW_START_RULE_NUM) must be at least 1".into());
        }
        let needed = 1 + u32::from(self.add_check_state);
        if self.max_rules < needed {
            return Err(format!(
                "max_rules (IPFW_MAX_RULES) must be at least {needed}{}",
                if self.add_check_state {
                    " with add_check_state"
                } else {
                    ""
                }
            ));
        }
        let last = u64::from(self.start_rule_num) + u64::from(self.max_rules) - 1;
        if last > u64::from(MAX_RULE_NUM) {
            return Err(format!(
                "rule numbers {}..{last} (IPFW_START_RULE_NUM + IPFW_MAX_RULES - 1) go past {MAX_RULE_NUM}; 65535 is ipfw's default rule",
                self.start_rule_num
            ));
        }
        for (what, set) in [
            ("active_set (IPFW_ACTIVE_SET_NUM)", self.active_set),
            ("expire_set (IPFW_EXPIRE_SET_NUM)", self.expire_set),
        ] {
            if set > MAX_SET {
                return Err(format!(
                    "{what} {set} must be 0-{MAX_SET} (set 31 holds the default rule)"
                ));
            }
        }
        if self.expire_set != 0 && self.expire_set == self.active_set {
            return Err(format!(
                "active_set and expire_set are both {}; the expire set is disabled, so it must differ",
                self.active_set
            ));
        }
        if self.expire_purge_interval_secs == 0 {
            return Err(
                "expire_purge_interval_secs (IPFW_EXPIRE_PURGE_INTERVAL) must be at least 1".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: IpfwConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, IpfwConfig::default());
        assert_eq!(c.range(), 10_000..=10_999);
        c.validate().unwrap();
        assert!(serde_json::from_str::<IpfwConfig>(r#"{"start_rule": 1}"#).is_err());
    }

    #[test]
    fn validation() {
        let ok = IpfwConfig::default();
        let bad = [
            IpfwConfig {
                start_rule_num: 0,
                ..ok.clone()
            },
            IpfwConfig {
                max_rules: 0,
                ..ok.clone()
            },
            IpfwConfig {
                max_rules: 1,
                add_check_state: true,
                ..ok.clone()
            },
            IpfwConfig {
                start_rule_num: 65_000,
                max_rules: 1000,
                ..ok.clone()
            },
            IpfwConfig {
                active_set: 31,
                ..ok.clone()
            },
            IpfwConfig {
                expire_set: 1,
                ..ok.clone()
            },
            IpfwConfig {
                expire_purge_interval_secs: 0,
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = IpfwConfig {
            start_rule_num: 10_000,
            max_rules: 65_535,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("65534"), "{e}");
        IpfwConfig {
            expire_set: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap();
        IpfwConfig {
            start_rule_num: 65_534,
            max_rules: 1,
            ..ok
        }
        .validate()
        .unwrap();
    }
}
