//! `postern-fake-ipfw`: a stand-in for ipfw(8), for tests on systems without it.
//!
//! It keeps numbered rules with their sets, the disabled sets and dynamic
//! rules in `ipfw.json` inside its state directory, answers the subset of ipfw
//! that postern and fwknopd use in ipfw's listing formats (`-S` set numbers,
//! `# DISABLED` rules, `## Dynamic rules`), and fails like ipfw on bad input
//! (`ipfw: …` on stderr, a sysexits status, nothing changed). It starts with
//! ipfw's default rule `65535 deny ip from any to any` in set 31.
//!
//! State directory: `$POSTERN_FAKE_IPFW_DIR`, else the directory the program was
//! invoked from (tests symlink it as `<dir>/ipfw`). Every invocation is
//! appended to `calls.log` there.
//!
//! Test-only extras, each printing `pass` or `block`:
//! - `--probe SRC PROTO PORT [SPORT]`: would a new connection be let in (first
//!   matching rule in an enabled set; disabled sets are skipped); without
//!   `SPORT` it comes from an ephemeral port no pinned rule (`from SRC SPORT`)
//!   matches;
//! - `--connect SRC PROTO PORT [SPORT]`: the same, and a pass by a `keep-state`
//!   rule creates a dynamic rule, as a real connection would;
//! - `--established SRC PROTO PORT`: does a dynamic rule for it still exist
//!   (it dies with its parent rule, not when the parent's set is disabled).

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::exit;

const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_NOHOST: i32 = 68;
const EX_UNAVAILABLE: i32 = 69;

#[derive(Clone, Serialize, Deserialize)]
struct FwRule {
    num: u32,
    set: u8,
    body: Body,
}

#[derive(Clone, Serialize, Deserialize)]
enum Body {
    CheckState,
    Pass {
        proto: String,
        src: String,
        /// `from SRC SPORT`: only connections from that source port.
        #[serde(default)]
        sport: Option<u16>,
        dst: String,
        port: Option<u16>,
        setup: bool,
        keep_state: bool,
        comment: Option<String>,
    },
    /// Any other action, kept as text (`deny ip from any to any`).
    Text(String),
}

#[derive(Clone, Serialize, Deserialize)]
struct Dyn {
    rule: u32,
    set: u8,
    src: String,
    #[serde(default = "ephemeral_port")]
    sport: u16,
    proto: String,
    port: u16,
}

/// The source port of a test connection that names none.
fn ephemeral_port() -> u16 {
    50000
}

#[derive(Serialize, Deserialize)]
struct Ipfw {
    rules: Vec<FwRule>,
    disabled: BTreeSet<u8>,
    dynamic: Vec<Dyn>,
}

impl Default for Ipfw {
    fn default() -> Self {
        Ipfw {
            rules: vec![FwRule {
                num: 65535,
                set: 31,
                body: Body::Text("deny ip from any to any".into()),
            }],
            disabled: BTreeSet::new(),
            dynamic: Vec::new(),
        }
    }
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("ipfw: {msg}");
    exit(code)
}

fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTERN_FAKE_IPFW_DIR") {
        return PathBuf::from(dir);
    }
    let argv0 = std::env::args_os().next().unwrap_or_default();
    match Path::new(&argv0).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn load(dir: &Path) -> Ipfw {
    match std::fs::read_to_string(dir.join("ipfw.json")) {
        Ok(text) => {
            serde_json::from_str(&text).unwrap_or_else(|e| fail(1, &format!("fake state: {e}")))
        }
        Err(_) => Ipfw::default(),
    }
}

fn save(dir: &Path, fw: &Ipfw) {
    let text = serde_json::to_string_pretty(fw).expect("serialize");
    std::fs::write(dir.join("ipfw.json"), text)
        .unwrap_or_else(|e| fail(1, &format!("fake state: {e}")));
}

fn body_text(b: &Body) -> String {
    match b {
        Body::CheckState => "check-state :default".into(),
        Body::Text(t) => t.clone(),
        Body::Pass {
            proto,
            src,
            sport,
            dst,
            port,
            setup,
            keep_state,
            comment,
        } => {
            let mut s = format!("allow {proto} from {src}");
            if let Some(p) = sport {
                s += &format!(" {p}");
            }
            s += &format!(" to {dst}");
            if let Some(p) = port {
                s += &format!(" {p}");
            }
            if *setup {
                s += " setup";
            }
            if *keep_state {
                s += " keep-state :default";
            }
            if let Some(c) = comment {
                s += &format!(" // {c}");
            }
            s
        }
    }
}

fn valid_addr(a: &str) -> bool {
    if ["any", "me", "me6"].contains(&a) {
        return true;
    }
    let (addr, len) = match a.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (a, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.map(|l| l.parse::<u32>().is_ok_and(|l| l <= max))
        .unwrap_or(true)
}

fn parse_num(s: &str, what: &str) -> u32 {
    s.parse()
        .unwrap_or_else(|_| fail(EX_USAGE, &format!("invalid {what} number: {s}")))
}

fn parse_set(s: &str) -> u8 {
    match s.parse::<u8>() {
        Ok(n) if n <= 31 => n,
        _ => fail(EX_USAGE, &format!("illegal set {s}")),
    }
}

/// `add [NUM] [set S] ACTION …`
fn add(fw: &mut Ipfw, args: &[String], quiet: bool) {
    let mut w: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut num = 0;
    if let Some(first) = w.first() {
        if first.bytes().all(|b| b.is_ascii_digit()) {
            num = parse_num(first, "rule");
            w.remove(0);
        }
    }
    let mut set = 0;
    if w.first() == Some(&"set") {
        set = parse_set(
            w.get(1)
                .unwrap_or_else(|| fail(EX_USAGE, "missing set number")),
        );
        w.drain(..2);
    }
    if num > 65535 {
        fail(EX_USAGE, &format!("rule number {num} is out of range"));
    }
    if num == 65535 {
        fail(EX_UNAVAILABLE, "getsockopt(IP_FW_XADD): Invalid argument");
    }
    if num == 0 {
        let last = fw
            .rules
            .iter()
            .map(|r| r.num)
            .filter(|n| *n < 65535)
            .max()
            .unwrap_or(0);
        num = (last / 100 + 1) * 100;
    }
    let Some((action, rest)) = w.split_first() else {
        fail(EX_USAGE, "missing action");
    };
    let (rule_words, comment) = match rest.iter().position(|x| *x == "//") {
        Some(i) => (&rest[..i], Some(rest[i + 1..].join(" "))),
        None => (rest, None),
    };
    let body = match *action {
        "check-state" => {
            if rule_words.iter().any(|x| !x.starts_with(':')) {
                fail(
                    EX_USAGE,
                    &format!("unrecognised option [-1] {}", rule_words[0]),
                );
            }
            Body::CheckState
        }
        "allow" | "accept" | "pass" | "permit" | "deny" | "drop" | "reject" | "count" => {
            let (proto, src, sport, dst, opts) = match rule_words {
                [proto, "from", src, "to", dst, opts @ ..] => (proto, src, None, dst, opts),
                [proto, "from", src, sport, "to", dst, opts @ ..] => {
                    let sport = sport
                        .parse::<u16>()
                        .unwrap_or_else(|_| fail(EX_DATAERR, &format!("invalid port ``{sport}''")));
                    (proto, src, Some(sport), dst, opts)
                }
                _ => fail(EX_USAGE, "missing ``from'' or ``to'' in rule"),
            };
            if !["ip", "all", "tcp", "udp", "icmp", "ipv6", "6", "17"].contains(proto) {
                fail(EX_DATAERR, &format!("invalid protocol ``{proto}''"));
            }
            for a in [src, dst] {
                if !valid_addr(a) {
                    fail(EX_NOHOST, &format!("hostname ``{a}'' unknown"));
                }
            }
            let proto = match *proto {
                "6" => "tcp",
                "17" => "udp",
                p => p,
            };
            if sport.is_some() && !["tcp", "udp"].contains(&proto) {
                fail(
                    EX_USAGE,
                    "only TCP and UDP protocols are valid with port specifications",
                );
            }
            let mut opts = opts.to_vec();
            let mut port = None;
            if opts.first() == Some(&"dst-port") {
                opts.remove(0);
                if opts.is_empty() {
                    fail(EX_USAGE, "missing dst-port");
                }
            }
            if let Some(p) = opts.first().and_then(|p| p.parse::<u16>().ok()) {
                if !["tcp", "udp"].contains(&proto) {
                    fail(
                        EX_USAGE,
                        "only TCP and UDP protocols are valid with port specifications",
                    );
                }
                port = Some(p);
                opts.remove(0);
            }
            let (mut setup, mut keep_state, mut extra) = (false, false, Vec::new());
            let mut it = opts.iter();
            while let Some(o) = it.next() {
                match *o {
                    "setup" => setup = true,
                    "keep-state" => keep_state = true,
                    "in" | "out" => extra.push(o.to_string()),
                    "via" | "recv" | "xmit" => {
                        let ifname = it
                            .next()
                            .unwrap_or_else(|| fail(EX_USAGE, "missing interface"));
                        extra.push(format!("{o} {ifname}"));
                    }
                    other => fail(EX_USAGE, &format!("unrecognised option [-1] {other}")),
                }
            }
            let is_pass = ["allow", "accept", "pass", "permit"].contains(action);
            if is_pass && extra.is_empty() {
                Body::Pass {
                    proto: proto.into(),
                    src: src.to_string(),
                    sport,
                    dst: dst.to_string(),
                    port,
                    setup,
                    keep_state,
                    comment,
                }
            } else {
                let action = if is_pass { "allow" } else { action };
                let mut text = format!("{action} {proto} from {src}");
                if let Some(p) = sport {
                    text += &format!(" {p}");
                }
                text += &format!(" to {dst}");
                if let Some(p) = port {
                    text += &format!(" {p}");
                }
                for e in &extra {
                    text += &format!(" {e}");
                }
                if setup {
                    text += " setup";
                }
                if keep_state {
                    text += " keep-state :default";
                }
                if let Some(c) = comment {
                    text += &format!(" // {c}");
                }
                Body::Text(text)
            }
        }
        other => fail(EX_DATAERR, &format!("invalid action {other}")),
    };
    let rule = FwRule { num, set, body };
    if !quiet {
        println!("{:05} {}", rule.num, body_text(&rule.body));
    }
    fw.rules.push(rule);
    fw.rules.sort_by_key(|r| r.num);
}

fn list(fw: &Ipfw, only_set: Option<u8>, show_sets: bool, dynamic: bool) {
    for r in fw
        .rules
        .iter()
        .filter(|r| only_set.unwrap_or(r.set) == r.set)
    {
        let disabled = fw.disabled.contains(&r.set);
        if disabled && !show_sets {
            continue;
        }
        let mut line = String::new();
        if disabled {
            line += "# DISABLED ";
        }
        line += &format!("{:05} ", r.num);
        if show_sets {
            line += &format!("set {} ", r.set);
        }
        line += &body_text(&r.body);
        println!("{line}");
    }
    if dynamic {
        let dyns: Vec<&Dyn> = fw
            .dynamic
            .iter()
            .filter(|d| only_set.unwrap_or(d.set) == d.set)
            .collect();
        if !fw.dynamic.is_empty() {
            println!(
                "## Dynamic rules ({} {}):",
                fw.dynamic.len(),
                160 * fw.dynamic.len()
            );
        }
        for d in dyns {
            println!(
                "{:05} 3 180 (287s) STATE {} {} {} <-> 198.51.100.1 {} :default",
                d.rule, d.proto, d.src, d.sport, d.port
            );
        }
    }
}

/// Delete rules with these numbers (in `only_set`, or in any set).
/// Returns the exit status: rules that exist are deleted even if others do not.
fn delete(fw: &mut Ipfw, nums: &[String], only_set: Option<u8>) -> i32 {
    if nums.is_empty() {
        fail(EX_USAGE, "missing rule specification");
    }
    let mut status = 0;
    for n in nums {
        let num = parse_num(n, "rule");
        let hit = |r: &FwRule| r.num == num && only_set.unwrap_or(r.set) == r.set;
        if num == 65535 || !fw.rules.iter().any(hit) {
            eprintln!("ipfw: rule {num}: setsockopt(IP_FW_XDEL): No such process");
            status = EX_UNAVAILABLE;
            continue;
        }
        let gone: Vec<(u32, u8)> = fw
            .rules
            .iter()
            .filter(|r| hit(r))
            .map(|r| (r.num, r.set))
            .collect();
        fw.rules.retain(|r| !hit(r));
        fw.dynamic.retain(|d| !gone.contains(&(d.rule, d.set)));
    }
    status
}

/// A test connection: from `src`:`sport` (`None`: an ephemeral port) to `proto/port`.
struct Conn {
    src: IpAddr,
    sport: Option<u16>,
    proto: String,
    port: u16,
}

fn matches(r: &FwRule, c: &Conn) -> Option<bool> {
    match &r.body {
        Body::CheckState => None,
        Body::Text(t) => t.starts_with("deny ip from any to any").then_some(false),
        Body::Pass {
            proto: p,
            src: s,
            sport,
            dst,
            port: rp,
            ..
        } => {
            let proto_ok = *p == c.proto || p == "ip" || p == "all";
            let src_ok = s == "any"
                || s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok()) == Some(c.src);
            let sport_ok = sport.is_none() || *sport == c.sport;
            let dst_ok = match dst.as_str() {
                "me" => c.src.is_ipv4(),
                "me6" => c.src.is_ipv6(),
                _ => true,
            };
            let port_ok = rp.unwrap_or(c.port) == c.port;
            (proto_ok && src_ok && sport_ok && dst_ok && port_ok).then_some(true)
        }
    }
}

/// The first rule in an enabled set that decides: (pass, that rule).
fn evaluate(fw: &Ipfw, c: &Conn) -> Option<FwRule> {
    fw.rules
        .iter()
        .filter(|r| !fw.disabled.contains(&r.set))
        .find_map(|r| matches(r, c).map(|pass| (pass, r)))
        .and_then(|(pass, r)| pass.then(|| r.clone()))
}

fn test_command(dir: &Path, cmd: &str, args: &[String]) {
    let (src, proto, port, sport) = match args {
        [src, proto, port] => (src, proto, port, None),
        [src, proto, port, sport] if cmd != "--established" => (src, proto, port, Some(sport)),
        _ => fail(
            EX_USAGE,
            "usage: --probe|--connect SRC PROTO PORT [SPORT], --established SRC PROTO PORT",
        ),
    };
    let parse_port = |p: &str| -> u16 { p.parse().unwrap_or_else(|_| fail(EX_USAGE, "bad port")) };
    let conn = Conn {
        src: src
            .parse()
            .unwrap_or_else(|_| fail(EX_USAGE, "bad address")),
        sport: sport.map(|p| parse_port(p)),
        proto: proto.clone(),
        port: parse_port(port),
    };
    let port = conn.port;
    let mut fw = load(dir);
    let pass = match cmd {
        "--probe" => evaluate(&fw, &conn).is_some(),
        "--connect" => match evaluate(&fw, &conn) {
            Some(rule) => {
                if matches!(
                    rule.body,
                    Body::Pass {
                        keep_state: true,
                        ..
                    }
                ) {
                    fw.dynamic.push(Dyn {
                        rule: rule.num,
                        set: rule.set,
                        src: src.clone(),
                        sport: conn.sport.unwrap_or_else(ephemeral_port),
                        proto: proto.clone(),
                        port,
                    });
                    save(dir, &fw);
                }
                true
            }
            None => false,
        },
        _ => fw
            .dynamic
            .iter()
            .any(|d| d.src == *src && d.proto == *proto && d.port == port),
    };
    println!("{}", if pass { "pass" } else { "block" });
}

fn main() {
    let dir = state_dir();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls.log"))
    {
        let _ = writeln!(log, "ipfw {}", args.join(" "));
    }
    if let Some(cmd @ ("--probe" | "--connect" | "--established")) =
        args.first().map(String::as_str)
    {
        return test_command(&dir, cmd, &args[1..]);
    }
    let (mut quiet, mut show_sets, mut dynamic) = (false, false, false);
    let mut i = 0;
    while let Some(flag) = args.get(i).filter(|a| a.starts_with('-')) {
        match flag.as_str() {
            "-q" => quiet = true,
            "-S" => show_sets = true,
            "-d" => dynamic = true,
            "-e" | "-T" | "-N" | "-f" | "-a" => {}
            other => fail(
                EX_USAGE,
                &format!("illegal option -- {}", other.trim_start_matches('-')),
            ),
        }
        i += 1;
    }
    let mut rest: &[String] = &args[i..];
    let mut only_set = None;
    // `set N list|show|delete …` restricts the command to set N.
    if rest.first().map(String::as_str) == Some("set")
        && rest
            .get(1)
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        && matches!(
            rest.get(2).map(String::as_str),
            Some("list" | "show" | "delete")
        )
    {
        only_set = Some(parse_set(&rest[1]));
        rest = &rest[2..];
    }
    let Some((cmd, cargs)) = rest.split_first() else {
        fail(EX_USAGE, "bad arguments");
    };
    let mut fw = load(&dir);
    match cmd.as_str() {
        "add" => {
            add(&mut fw, cargs, quiet);
            save(&dir, &fw);
        }
        "list" | "show" => list(&fw, only_set, show_sets, dynamic),
        "delete" => {
            if cargs.first().map(String::as_str) == Some("set") {
                let set = parse_set(
                    cargs
                        .get(1)
                        .unwrap_or_else(|| fail(EX_USAGE, "missing set number")),
                );
                let gone: Vec<(u32, u8)> = fw
                    .rules
                    .iter()
                    .filter(|r| r.set == set && r.num != 65535)
                    .map(|r| (r.num, r.set))
                    .collect();
                fw.rules.retain(|r| r.set != set || r.num == 65535);
                fw.dynamic.retain(|d| !gone.contains(&(d.rule, d.set)));
                save(&dir, &fw);
            } else {
                let status = delete(&mut fw, cargs, only_set);
                save(&dir, &fw);
                if status != 0 {
                    exit(status);
                }
            }
        }
        "set" => {
            let words: Vec<&str> = cargs.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["move", "rule", num, "to", set] => {
                    let (num, set) = (parse_num(num, "rule"), parse_set(set));
                    if num == 65535 {
                        fail(EX_USAGE, "cannot move rule 65535");
                    }
                    for r in fw.rules.iter_mut().filter(|r| r.num == num) {
                        r.set = set;
                    }
                    for d in fw.dynamic.iter_mut().filter(|d| d.rule == num) {
                        d.set = set;
                    }
                }
                ["move", from, "to", to] => {
                    let (from, to) = (parse_set(from), parse_set(to));
                    for r in fw
                        .rules
                        .iter_mut()
                        .filter(|r| r.set == from && r.num != 65535)
                    {
                        r.set = to;
                    }
                }
                ["show"] => {
                    let dis: Vec<String> = fw.disabled.iter().map(u8::to_string).collect();
                    let en: Vec<String> = (0..=31u8)
                        .filter(|s| !fw.disabled.contains(s))
                        .map(|s| s.to_string())
                        .collect();
                    println!("disable {} enable {}", dis.join(" "), en.join(" "));
                }
                [first, ..] if *first == "enable" || *first == "disable" => {
                    let mut disable = true;
                    for w in &words {
                        match *w {
                            "enable" => disable = false,
                            "disable" => disable = true,
                            n => {
                                let s = parse_set(n);
                                if s == 31 {
                                    fail(EX_USAGE, "set 31 cannot be disabled");
                                }
                                if disable {
                                    fw.disabled.insert(s);
                                } else {
                                    fw.disabled.remove(&s);
                                }
                            }
                        }
                    }
                }
                _ => fail(
                    EX_USAGE,
                    &format!("invalid set command {}", words.join(" ")),
                ),
            }
            save(&dir, &fw);
        }
        other => fail(EX_USAGE, &format!("bad command `{other}'")),
    }
}
