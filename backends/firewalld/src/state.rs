//! Which rich rules postern added, in which zone, until when.
//!
//! Rich rules carry no comment, so a rule of postern's shape may just as well be
//! the administrator's. postern therefore only ever treats as its own the rules it
//! recorded here when it added them: in memory, and in `state_file` if configured
//! (so a restarted posternd can still list and flush them). An entry is the exact
//! rule text plus zone and expiry; the text must parse as postern's shape.

use crate::rich::{self, Part, SourceForm};
use serde::{Deserialize, Serialize};
use spa_core::firewall::{NatRule, Opening, Rule};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One rich rule postern added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub zone: String,
    /// Exact text as passed to `addRichRule` (and as firewalld lists it).
    pub text: String,
    /// What the text does for which grant (canonical addresses).
    pub part: Part,
    pub form: SourceForm,
    /// Unix seconds at which firewalld drops it.
    pub expires_at: u64,
}

impl Entry {
    /// The entry for a grant's own rule.
    pub fn new(zone: &str, rule: &Rule, form: SourceForm, expires_at: u64) -> Entry {
        Entry::of_part(
            zone,
            Part::Grant(rich::canonical_rule(rule)),
            form,
            expires_at,
        )
    }

    pub fn of_part(zone: &str, part: Part, form: SourceForm, expires_at: u64) -> Entry {
        Entry {
            zone: zone.to_string(),
            text: rich::render_part(&part, form),
            part,
            form,
            expires_at,
        }
    }

    /// The grant, for an entry of a grant's own rule.
    pub fn rule(&self) -> Option<&Rule> {
        self.part.rule()
    }

    /// The NAT of the grant, as recorded next to the text in the state file.
    fn nat(&self) -> Option<&NatRule> {
        self.rule().and_then(|r| r.nat.as_ref())
    }

    /// Rebuilds an entry from its text and what was recorded with it (see
    /// [`rich::Recorded`]); `None` if they are not postern's shape.
    pub fn from_text(
        zone: &str,
        text: &str,
        nat_tag: Option<&str>,
        proto: Option<&str>,
        expires_at: u64,
    ) -> Option<Entry> {
        let recorded = match nat_tag {
            Some(tag) => {
                let (port, nat) = NatRule::parse_tag(tag)?;
                let proto = match proto {
                    Some(p) => Some(rich::protocol(p)?),
                    None => None,
                };
                Some(rich::Recorded { port, nat, proto })
            }
            None => None,
        };
        let (part, form) = rich::parse_part(text, recorded.as_ref())?;
        Some(Entry {
            zone: zone.to_string(),
            text: text.to_string(),
            part,
            form,
            expires_at,
        })
    }
}

/// postern's rules, keyed by (zone, text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    entries: Vec<Entry>,
}

impl State {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds or replaces the entry with the same zone and text.
    pub fn insert(&mut self, entry: Entry) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.zone == entry.zone && e.text == entry.text)
        {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    pub fn remove(&mut self, zone: &str, text: &str) -> Option<Entry> {
        let i = self
            .entries
            .iter()
            .position(|e| e.zone == zone && e.text == text)?;
        Some(self.entries.remove(i))
    }

    /// Entries for `rule` (compared canonically) in `zone`, latest expiry first.
    pub fn for_rule(&self, zone: &str, rule: &Rule) -> Vec<Entry> {
        self.for_part(zone, &Part::Grant(rich::canonical_rule(rule)))
    }

    /// Entries for `part` in `zone`, latest expiry first.
    pub fn for_part(&self, zone: &str, part: &Part) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.zone == zone && &e.part == part)
            .cloned()
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.expires_at));
        v
    }

    /// Entries of the grant `rule` in any zone: its own rule, and the masquerade
    /// rules it needs that no other grant recorded here needs.
    pub fn for_rule_any_zone(&self, rule: &Rule) -> Vec<Entry> {
        let rule = rich::canonical_rule(rule);
        let parts = Part::of(&rule);
        let needed_by_others = |e: &Entry| {
            self.entries.iter().any(|other| match other.rule() {
                Some(r) => r != &rule && other.zone == e.zone && Part::of(r).contains(&e.part),
                None => false,
            })
        };
        self.entries
            .iter()
            .filter(|e| match e.rule() {
                Some(r) => r == &rule,
                None => parts.contains(&e.part) && !needed_by_others(e),
            })
            .cloned()
            .collect()
    }

    /// Zones that have entries, in first-seen order.
    pub fn zones(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(|e| seen.insert(e.zone.clone()))
            .map(|e| e.zone.clone())
            .collect()
    }

    /// Keeps only entries for which `keep` is true; returns the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let (kept, dropped) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| keep(e));
        self.entries = kept;
        dropped
    }

    /// Entries firewalld should long have dropped (`expires_at + slack < now`):
    /// bookkeeping that only keeps the state file from growing.
    pub fn forget_stale(&mut self, now: u64, slack: u64) -> Vec<Entry> {
        self.retain(|e| e.expires_at.saturating_add(slack) >= now)
    }

    /// Live openings at `now`, one per rule (if a refresh left two forms, the later
    /// expiry wins), in order of expiry.
    pub fn openings(&self, now: u64) -> Vec<Opening> {
        let mut out: Vec<Opening> = Vec::new();
        for e in self.entries.iter().filter(|e| e.expires_at > now) {
            let Some(rule) = e.rule() else { continue };
            let timeout_secs = u32::try_from(e.expires_at - now).unwrap_or(u32::MAX);
            match out.iter_mut().find(|o| &o.rule == rule) {
                Some(o) if o.expires_at >= e.expires_at => {}
                Some(o) => {
                    o.expires_at = e.expires_at;
                    o.timeout_secs = timeout_secs;
                }
                None => out.push(Opening {
                    rule: rule.clone(),
                    timeout_secs,
                    expires_at: e.expires_at,
                }),
            }
        }
        out.sort_by_key(|o| o.expires_at);
        out
    }

    /// Adds entries from another state (a loaded file) that this one lacks.
    pub fn merge(&mut self, other: State) {
        for e in other.entries {
            if !self
                .entries
                .iter()
                .any(|x| x.zone == e.zone && x.text == e.text)
            {
                self.entries.push(e);
            }
        }
    }

    pub fn to_json(&self) -> String {
        let file = StateFileJson {
            version: 1,
            grants: self
                .entries
                .iter()
                .map(|e| GrantJson {
                    zone: e.zone.clone(),
                    rule: e.text.clone(),
                    nat: e.nat().map(|n| n.tag(e.rule().map_or(0, |r| r.port))),
                    proto: match &e.part {
                        Part::ForwardAll { rule, .. } => Some(rule.proto.name().to_string()),
                        _ => None,
                    },
                    expires_at: e.expires_at,
                })
                .collect(),
        };
        let mut s = serde_json::to_string_pretty(&file).expect("state serialises");
        s.push('\n');
        s
    }

    /// Parses a state file. Entries whose text is not postern's shape are skipped
    /// and returned as warnings; a file that is not state JSON at all is an error.
    pub fn from_json(text: &str) -> Result<(State, Vec<String>), String> {
        let file: StateFileJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.version != 1 {
            return Err(format!(
                "unknown state version {} (expected 1)",
                file.version
            ));
        }
        let mut state = State::default();
        let mut warnings = Vec::new();
        for g in file.grants {
            match Entry::from_text(
                &g.zone,
                &g.rule,
                g.nat.as_deref(),
                g.proto.as_deref(),
                g.expires_at,
            ) {
                Some(e) => state.insert(e),
                None => warnings.push(format!(
                    "ignoring entry that is not a postern rule: zone `{}`: {}",
                    g.zone, g.rule
                )),
            }
        }
        Ok((state, warnings))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFileJson {
    version: u32,
    grants: Vec<GrantJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantJson {
    zone: String,
    rule: String,
    /// A NAT grant's [`NatRule::tag`]: what its forward-port text leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nat: Option<String>,
    /// A FORWARD_ALL grant's protocol (its forward-ports say every port of TCP
    /// and UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proto: Option<String>,
    expires_at: u64,
}

/// The state file on disk: written whole to a temporary file and renamed over the
/// old one, so a crash leaves either the old or the new state, never a torn one.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded state; empty if the file does not exist yet.
    pub fn load(&self) -> Result<(State, Vec<String>), String> {
        match fs::read_to_string(&self.path) {
            Ok(text) => State::from_json(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((State::default(), Vec::new())),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn save(&self, state: &State) -> io::Result<()> {
        postern_backend_common::state::write_private(&self.path, &state.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::request::Proto;

    fn rule(src: &str, port: u16) -> Rule {
        Rule::new(src.parse().unwrap(), Proto::Tcp, port)
    }

    #[test]
    fn insert_replaces_same_zone_and_text() {
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            200,
        ));
        s.insert(Entry::new(
            "work",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            300,
        ));
        assert_eq!(s.entries().len(), 2);
        assert_eq!(
            s.for_rule("public", &rule("10.0.0.1", 22))[0].expires_at,
            200
        );
        assert_eq!(s.zones(), vec!["public".to_string(), "work".to_string()]);
        assert!(s.remove("public", &s.entries()[0].text.clone()).is_some());
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn rules_are_matched_canonically() {
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("::ffff:10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        assert_eq!(s.entries()[0].rule(), Some(&rule("10.0.0.1", 22)));
        assert_eq!(s.for_rule("public", &rule("10.0.0.1", 22)).len(), 1);
        assert_eq!(s.for_rule("public", &rule("::ffff:10.0.0.1", 22)).len(), 1);
        assert_eq!(s.for_rule_any_zone(&rule("10.0.0.1", 22)).len(), 1);
        assert!(s.for_rule("work", &rule("10.0.0.1", 22)).is_empty());
    }

    #[test]
    fn openings_are_live_deduplicated_and_ordered() {
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            150,
        ));
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::HostPrefix,
            180,
        ));
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.2", 22),
            SourceForm::Plain,
            120,
        ));
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.3", 22),
            SourceForm::Plain,
            100,
        ));
        let o = s.openings(100);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(
            (
                o[0].rule.source.to_string(),
                o[0].expires_at,
                o[0].timeout_secs
            ),
            ("10.0.0.2".into(), 120, 20)
        );
        assert_eq!(
            (
                o[1].rule.source.to_string(),
                o[1].expires_at,
                o[1].timeout_secs
            ),
            ("10.0.0.1".into(), 180, 80)
        );
    }

    #[test]
    fn stale_entries_are_forgotten_after_the_slack() {
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.2", 22),
            SourceForm::Plain,
            200,
        ));
        assert!(s.forget_stale(150, 60).is_empty());
        let gone = s.forget_stale(161, 60);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].expires_at, 100);
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn json_round_trip_and_foreign_entries() {
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        s.insert(Entry::new(
            "work",
            &rule("fd00::5", 443),
            SourceForm::HostPrefix,
            200,
        ));
        let (back, warnings) = State::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(warnings.is_empty());

        let text = r#"{"version":1,"grants":[
            {"zone":"public","rule":"rule service name=\"ssh\" accept","expires_at":5},
            {"zone":"public","rule":"rule family=\"ipv4\" source address=\"10.0.0.9\" port port=\"22\" protocol=\"udp\" accept","expires_at":7}]}"#;
        let (st, warnings) = State::from_json(text).unwrap();
        assert_eq!(st.entries().len(), 1);
        assert_eq!(st.entries()[0].rule().unwrap().proto, Proto::Udp);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("service name"), "{warnings:?}");

        assert!(State::from_json("not json").is_err());
        assert!(State::from_json(r#"{"version":2,"grants":[]}"#)
            .unwrap_err()
            .contains("version 2"));
    }

    #[test]
    fn merge_keeps_existing_entries() {
        let mut a = State::default();
        a.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        let mut b = State::default();
        b.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            50,
        ));
        b.insert(Entry::new(
            "public",
            &rule("10.0.0.2", 22),
            SourceForm::Plain,
            60,
        ));
        a.merge(b);
        assert_eq!(a.entries().len(), 2);
        assert_eq!(
            a.for_rule("public", &rule("10.0.0.1", 22))[0].expires_at,
            100
        );
    }

    #[test]
    fn file_is_written_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("sub/dir/firewalld.json"));
        assert!(
            f.load().unwrap().0.is_empty(),
            "missing file is empty state"
        );
        let mut s = State::default();
        s.insert(Entry::new(
            "public",
            &rule("10.0.0.1", 22),
            SourceForm::Plain,
            100,
        ));
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap().0, s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(f.path().parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::write(f.path(), "{").unwrap();
        assert!(f.load().is_err());
    }
}
