//! `postern-fake-pfctl`: a stand-in for pfctl(8), for tests on systems without pf.
//!
//! It keeps anchors, their pass rules and tables (with each entry's add time) in
//! `pf.json` inside its state directory, answers the subset of pfctl that
//! postern uses in pfctl's output formats, and fails the way pfctl does on bad
//! input (exit 1, `pfctl: …` on stderr, nothing changed). The main ruleset is
//! the file `pf.conf` in the same directory and is read-only: loading or
//! flushing it is refused, so a test fails if a backend ever touches it.
//!
//! State directory: `$POSTERN_FAKE_PF_DIR`, else the directory the program was
//! invoked from (tests symlink it as `<dir>/pfctl`, so parallel tests stay
//! apart). Every invocation is appended to `calls.log` there. The clock used by
//! `-T expire` is the number in `clock` there, else the system time.
//!
//! Test-only extra: `--probe SRC PROTO PORT` prints `pass` when a new connection
//! from SRC to PROTO/PORT would be let in by an anchor the main ruleset
//! references, else `block`.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default, Serialize, Deserialize)]
struct Pf {
    anchors: BTreeMap<String, Anchor>,
}

#[derive(Default, Serialize, Deserialize)]
struct Anchor {
    rules: Vec<PassRule>,
    tables: BTreeMap<String, Table>,
}

#[derive(Clone, Serialize, Deserialize)]
struct PassRule {
    /// `from <t> port N`: only this source port (a pinned grant).
    #[serde(default)]
    sport: Option<u16>,
    proto: String,
    table: String,
    /// `any` or an address.
    #[serde(default = "any")]
    to: String,
    port: u16,
}

fn any() -> String {
    "any".into()
}

#[derive(Default, Serialize, Deserialize)]
struct Table {
    /// Created by `-T add` (persistent) rather than only referenced by a rule.
    persist: bool,
    /// Address → time it was added.
    entries: BTreeMap<String, u64>,
}

fn die(msg: &str) -> ! {
    eprintln!("pfctl: {msg}");
    exit(1)
}

fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTERN_FAKE_PF_DIR") {
        return PathBuf::from(dir);
    }
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let parent = Path::new(&argv0).parent().map(Path::to_path_buf);
    match parent {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => PathBuf::from("."),
    }
}

fn now(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("clock"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

fn load(dir: &Path) -> Pf {
    match std::fs::read_to_string(dir.join("pf.json")) {
        Ok(text) => {
            serde_json::from_str(&text).unwrap_or_else(|e| die(&format!("fake state: {e}")))
        }
        Err(_) => Pf::default(),
    }
}

fn save(dir: &Path, pf: &Pf) {
    let text = serde_json::to_string_pretty(pf).expect("serialize");
    std::fs::write(dir.join("pf.json"), text).unwrap_or_else(|e| die(&format!("fake state: {e}")));
}

/// Lines of the main ruleset.
fn main_rules(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("pf.conf"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Anchors the main ruleset evaluates (`anchor "NAME"` lines, no wildcards).
fn linked_anchors(dir: &Path) -> Vec<String> {
    main_rules(dir)
        .iter()
        .filter_map(|l| l.strip_prefix("anchor "))
        .map(|rest| {
            rest.trim()
                .trim_start_matches('"')
                .split(['"', ' '])
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn parse_addr(text: &str) -> Option<IpAddr> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let host = if addr.is_ipv4() { "32" } else { "128" };
    (len.is_none() || len == Some(host)).then_some(addr)
}

fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `pass in quick proto tcp from <t> [port [=] N] to any|ADDR port [=] 22 [flags S/SA] keep state`
fn parse_rule(line: &str) -> Option<PassRule> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    // A source port (a pinned grant).
    let mut sport = None;
    if words.get(7) == Some(&"port") {
        if words.get(8) == Some(&"=") {
            words.remove(8);
        }
        sport = Some(words.get(8)?.parse::<u16>().ok().filter(|p| *p != 0)?);
        words.drain(7..9);
    }
    if words.get(10) == Some(&"=") {
        words.remove(10);
    }
    let ["pass", "in", "quick", "proto", proto, "from", table, "to", to, "port", port, tail @ ..] =
        words.as_slice()
    else {
        return None;
    };
    if *to != "any" && parse_addr(to).is_none() {
        return None;
    }
    let table = table.strip_prefix('<')?.strip_suffix('>')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let tail_ok = match *proto {
        "tcp" => matches!(tail, ["keep", "state"] | ["flags", "S/SA", "keep", "state"]),
        "udp" => matches!(tail, ["keep", "state"]),
        _ => false,
    };
    (tail_ok && valid_table_name(table)).then(|| PassRule {
        sport,
        proto: proto.to_string(),
        table: table.to_string(),
        to: to.to_string(),
        port,
    })
}

fn print_rule(r: &PassRule) -> String {
    let flags = if r.proto == "tcp" { " flags S/SA" } else { "" };
    format!(
        "pass in quick proto {} from <{}>{} to {} port = {}{flags} keep state",
        r.proto,
        r.table,
        r.sport.map_or(String::new(), |s| format!(" port = {s}")),
        r.to,
        r.port
    )
}

fn sorted(entries: &BTreeMap<String, u64>) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = entries.keys().filter_map(|a| a.parse().ok()).collect();
    addrs.sort();
    addrs
}

fn probe(dir: &Path, args: &[String]) {
    let (src, proto, port, sport) = match args {
        [src, proto, port] => (src, proto, port, None),
        [src, proto, port, sport] => (
            src,
            proto,
            port,
            Some(
                sport
                    .parse::<u16>()
                    .unwrap_or_else(|_| die("bad probe source port")),
            ),
        ),
        _ => die("usage: --probe SRC PROTO PORT [SPORT]"),
    };
    let src: IpAddr = src.parse().unwrap_or_else(|_| die("bad probe address"));
    let port: u16 = port.parse().unwrap_or_else(|_| die("bad probe port"));
    let pf = load(dir);
    let pass = linked_anchors(dir)
        .iter()
        .filter_map(|a| pf.anchors.get(a))
        .any(|anchor| {
            anchor.rules.iter().any(|r| {
                r.proto == *proto
                    && r.port == port
                    && r.sport.is_none_or(|s| Some(s) == sport)
                    && anchor
                        .tables
                        .get(&r.table)
                        .is_some_and(|t| t.entries.contains_key(&src.to_string()))
            })
        });
    println!("{}", if pass { "pass" } else { "block" });
}

fn main() {
    let dir = state_dir();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdin_text = None;
    if args.windows(2).any(|w| w[0] == "-f" && w[1] == "-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .unwrap_or_else(|e| die(&e.to_string()));
        stdin_text = Some(s);
    }
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls.log"))
    {
        let _ = writeln!(log, "pfctl {}", args.join(" "));
        for line in stdin_text.iter().flat_map(|s| s.lines()) {
            let _ = writeln!(log, "| {line}");
        }
    }
    if args.first().map(String::as_str) == Some("--probe") {
        return probe(&dir, &args[1..]);
    }

    let (mut anchor, mut table, mut tcmd, mut show, mut file, mut flush) =
        (None, None, None, None, None, None);
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |what: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("option requires an argument -- {what}")))
        };
        match arg.as_str() {
            "-a" => anchor = Some(value("a")),
            "-t" => table = Some(value("t")),
            "-T" => tcmd = Some(value("T")),
            "-s" => show = Some(value("s")),
            "-f" => file = Some(value("f")),
            "-F" => flush = Some(value("F")),
            "-q" | "-v" => {}
            s if s.starts_with('-') && s.len() > 1 => {
                eprintln!("pfctl: illegal option -- {}", &s[1..]);
                eprintln!(
                    "usage: pfctl [-deghNnPqrvz] [-a anchor] [-D macro=value] [-F modifier] ..."
                );
                exit(1)
            }
            _ => positional.push(arg.clone()),
        }
    }
    if let Some(a) = &anchor {
        if a.is_empty()
            || a.starts_with('/')
            || a.split('/').any(|p| p.is_empty() || p.starts_with('_'))
        {
            die("anchor name is invalid");
        }
    }
    if !positional.is_empty() && tcmd.is_none() {
        die("unexpected arguments");
    }
    let mut pf = load(&dir);
    let anchor_exists = |pf: &Pf, name: &str| {
        pf.anchors.contains_key(name) || linked_anchors(&dir).iter().any(|a| a == name)
    };

    if let Some(cmd) = tcmd {
        let Some(tname) = table else {
            die("-T requires -t");
        };
        if !valid_table_name(&tname) {
            die("invalid table name");
        }
        let aname = anchor.unwrap_or_default();
        let now = now(&dir);
        match cmd.as_str() {
            "add" => {
                let addrs: Vec<IpAddr> = positional
                    .iter()
                    .map(|a| {
                        parse_addr(a)
                            .unwrap_or_else(|| die(&format!("no IP address found for {a}")))
                    })
                    .collect();
                let t = pf
                    .anchors
                    .entry(aname)
                    .or_default()
                    .tables
                    .entry(tname)
                    .or_default();
                t.persist = true;
                let mut added = 0;
                for a in &addrs {
                    if let std::collections::btree_map::Entry::Vacant(v) =
                        t.entries.entry(a.to_string())
                    {
                        v.insert(now);
                        added += 1;
                    }
                }
                save(&dir, &pf);
                eprintln!("{added}/{} addresses added.", addrs.len());
            }
            "delete" | "show" | "flush" | "expire" | "kill" => {
                let t = pf
                    .anchors
                    .get_mut(&aname)
                    .and_then(|a| a.tables.get_mut(&tname));
                let Some(t) = t else {
                    if cmd == "kill" {
                        eprintln!("0 tables deleted.");
                        return;
                    }
                    die("Table does not exist.");
                };
                match cmd.as_str() {
                    "delete" => {
                        let addrs: Vec<IpAddr> = positional
                            .iter()
                            .map(|a| {
                                parse_addr(a)
                                    .unwrap_or_else(|| die(&format!("no IP address found for {a}")))
                            })
                            .collect();
                        let n = addrs
                            .iter()
                            .filter(|a| t.entries.remove(&a.to_string()).is_some())
                            .count();
                        save(&dir, &pf);
                        eprintln!("{n}/{} addresses deleted.", addrs.len());
                    }
                    "show" => {
                        for a in sorted(&t.entries) {
                            println!("   {a}");
                        }
                    }
                    "flush" => {
                        let n = t.entries.len();
                        t.entries.clear();
                        save(&dir, &pf);
                        eprintln!("{n} addresses deleted.");
                    }
                    "expire" => {
                        let [secs] = positional.as_slice() else {
                            die("usage: -T expire number");
                        };
                        let secs: u64 = secs
                            .parse()
                            .unwrap_or_else(|_| die(&format!("{secs}: invalid expiry")));
                        let before = t.entries.len();
                        t.entries.retain(|_, added| *added + secs >= now);
                        let n = before - t.entries.len();
                        save(&dir, &pf);
                        eprintln!("{n}/{before} addresses expired.");
                    }
                    _ => {
                        // kill: a table still referenced by a rule stays, inactive and empty.
                        let a = pf.anchors.get_mut(&aname).expect("anchor");
                        if a.rules.iter().any(|r| r.table == tname) {
                            let t = a.tables.get_mut(&tname).expect("table");
                            t.entries.clear();
                            t.persist = false;
                        } else {
                            a.tables.remove(&tname);
                        }
                        save(&dir, &pf);
                        eprintln!("1 table deleted.");
                    }
                }
            }
            other => die(&format!("unknown command: {other}")),
        }
        return;
    }

    if let Some(what) = show {
        match (what.as_str(), anchor) {
            ("rules" | "r", None) => main_rules(&dir).iter().for_each(|l| println!("{l}")),
            ("rules" | "r", Some(a)) => {
                if let Some(a) = pf.anchors.get(&a) {
                    a.rules.iter().for_each(|r| println!("{}", print_rule(r)));
                }
            }
            ("Tables" | "T", a) => {
                let a = a.unwrap_or_default();
                if !a.is_empty() && !anchor_exists(&pf, &a) {
                    die("Anchor or Ruleset does not exist.");
                }
                if let Some(a) = pf.anchors.get(&a) {
                    a.tables.keys().for_each(|t| println!("{t}"));
                }
            }
            ("Anchors" | "A", None) => {
                let mut names: Vec<String> = linked_anchors(&dir);
                names.extend(pf.anchors.keys().filter(|a| !a.contains('/')).cloned());
                names.sort();
                names.dedup();
                names.iter().for_each(|n| println!("  {n}"));
            }
            (other, _) => die(&format!("Unknown show modifier '{other}'")),
        }
        return;
    }

    if let Some(path) = file {
        let Some(aname) = anchor else {
            die("fake pfctl: refusing to replace the main ruleset");
        };
        let (text, source) = match stdin_text {
            Some(t) => (t, "stdin".to_string()),
            None => (
                std::fs::read_to_string(&path).unwrap_or_else(|e| die(&format!("{path}: {e}"))),
                path.clone(),
            ),
        };
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_rule(line) {
                Some(r) => rules.push(r),
                None => {
                    eprintln!("{source}:{}: syntax error", n + 1);
                    die("Syntax error in config file: pf rules not loaded");
                }
            }
        }
        let a = pf.anchors.entry(aname).or_default();
        for r in &rules {
            a.tables.entry(r.table.clone()).or_default();
        }
        a.rules = rules;
        // Tables neither persistent nor referenced any more disappear.
        let referenced: Vec<String> = a.rules.iter().map(|r| r.table.clone()).collect();
        a.tables
            .retain(|name, t| t.persist || referenced.contains(name));
        save(&dir, &pf);
        return;
    }

    if let Some(what) = flush {
        let Some(aname) = anchor else {
            die("fake pfctl: refusing to flush the main ruleset");
        };
        let a = pf.anchors.entry(aname).or_default();
        match what.as_str() {
            "all" | "a" => {
                let n = a.tables.len();
                a.rules.clear();
                a.tables.clear();
                eprintln!("rules cleared\nnat cleared\n{n} tables deleted.");
            }
            "rules" | "r" => {
                a.rules.clear();
                a.tables.retain(|_, t| t.persist);
                eprintln!("rules cleared");
            }
            "Tables" | "T" => {
                let n = a.tables.len();
                let referenced: Vec<String> = a.rules.iter().map(|r| r.table.clone()).collect();
                a.tables.retain(|name, _| referenced.contains(name));
                a.tables.values_mut().for_each(|t| {
                    t.entries.clear();
                    t.persist = false;
                });
                eprintln!("{n} tables deleted.");
            }
            other => die(&format!("Unknown flush modifier '{other}'")),
        }
        save(&dir, &pf);
        return;
    }
    die("no command given");
}
