//! spa-core's MemoryFirewall (the recording firewall of tests, posternd's `log`
//! action and embedding programs) keeps the same contract as the real backends.

use postern_e2e::conformance;
use spa_core::firewall::{Firewall, MemoryFirewall};

#[test]
fn memory_firewall_passes_the_conformance_battery() {
    let shared = MemoryFirewall::new(false);
    let probe_view = shared.clone();
    let mut make = move || -> Box<dyn Firewall> { Box::new(shared.clone()) };
    let mut probe =
        move |r: &spa_core::firewall::Rule| probe_view.open().iter().any(|o| &o.rule == r);
    conformance::run(&mut make, &mut probe, 1_700_000_000);
}
