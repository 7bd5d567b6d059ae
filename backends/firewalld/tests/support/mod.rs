//! The shared real-firewalld harness (`postern_e2e::firewalld`), plus what the
//! backend's tests need on top: a backend config and a raw D-Bus client for it.

#![allow(dead_code)]

use postern_backend_firewalld::{DbusApi, FirewalldConfig};
pub use postern_e2e::firewalld::can_run;
use postern_e2e::Netns;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

pub struct Firewalld(postern_e2e::firewalld::Firewalld);

impl Deref for Firewalld {
    type Target = postern_e2e::firewalld::Firewalld;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Firewalld {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Firewalld {
    pub fn start(ns: &Netns) -> Firewalld {
        Firewalld(postern_e2e::firewalld::Firewalld::start(ns))
    }

    pub fn bus_only(ns: &Netns) -> Firewalld {
        Firewalld(postern_e2e::firewalld::Firewalld::bus_only(ns))
    }

    /// Backend config pointing at this firewalld.
    pub fn config(&self) -> FirewalldConfig {
        FirewalldConfig {
            bus_address: Some(self.address.clone()),
            call_timeout_ms: 10_000,
            ..Default::default()
        }
    }

    /// A raw D-Bus client for checks independent of the backend.
    pub fn api(&self) -> DbusApi {
        DbusApi::new(Some(self.address.clone()), Duration::from_secs(10))
    }

    /// Adds a rule as an administrator would (`timeout` 0: until firewalld restarts).
    pub fn add_admin_rule(&self, zone: &str, rule: &str, timeout: i32) {
        let conn = zbus::blocking::connection::Builder::address(self.address.as_str())
            .expect("bus address")
            .method_timeout(Duration::from_secs(10))
            .build()
            .expect("connect to the private bus");
        conn.call_method(
            Some("org.fedoraproject.FirewallD1"),
            "/org/fedoraproject/FirewallD1",
            Some("org.fedoraproject.FirewallD1.zone"),
            "addRichRule",
            &(zone, rule, timeout),
        )
        .unwrap_or_else(|e| panic!("addRichRule {rule}: {e}"));
    }
}
