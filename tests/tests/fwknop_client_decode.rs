//! Interop: packets made by the real fwknop 2.6.10 client are opened by spa-core,
//! and every decoded field equals what `fwknop -v` printed.
//!
//! Matrix: every encryption mode (cbc, ecb, cfb, ofb, ctr) × every HMAC type (7 and
//! none) × every digest type (7); legacy mode × every digest (no HMAC: the 2.6.10
//! client refuses HMAC in legacy mode). Extras: NAT, local NAT, command messages,
//! client timeouts, spoofed user, passphrase keys, a passphrase HMAC key from an rc
//! file, a 128-byte HMAC key.

use base64::Engine;
use postern_e2e::{require_program, tempfile};
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const MODES: [&str; 5] = ["cbc", "ecb", "cfb", "ofb", "ctr"];
const DIGESTS: [&str; 7] = [
    "md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512",
];

#[derive(Clone)]
enum Key {
    Base64(String),
    Passphrase(String),
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Base64(s) => base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
            Key::Passphrase(p) => p.as_bytes().to_vec(),
        }
    }
}

#[derive(Clone)]
struct Case {
    name: String,
    mode: &'static str,
    digest: &'static str,
    key: Key,
    /// HMAC type and key.
    hmac: Option<(&'static str, Key)>,
    /// Extra client options (message shape).
    extra: Vec<String>,
    /// Matrix coordinates for the summary (mode, hmac) or None for extras.
    matrix: bool,
}

fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Fresh keys from the real client's --key-gen.
fn keygen(home: &Path) -> (String, String) {
    let out = Command::new("fwknop")
        .args(["--key-gen"])
        .env("HOME", home)
        .output()
        .expect("run fwknop --key-gen");
    assert!(
        out.status.success(),
        "fwknop --key-gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in --key-gen output: {text}"))
    };
    (get("KEY_BASE64:"), get("HMAC_KEY_BASE64:"))
}

/// Parse the first "SPA Field Values" block of `fwknop -v` output.
fn parse_fields(out: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with("SPA Field Values"));
    lines.next();
    for l in lines {
        if l.starts_with("====") {
            continue;
        }
        if l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(": ") {
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    fields
}

/// "4 (Client timeout NAT access msg)" -> "4"; "7 (SHA3_512)" -> "SHA3_512" for paren=true.
fn leading_number(v: &str) -> &str {
    v.split_whitespace().next().unwrap_or("")
}
fn paren(v: &str) -> String {
    v.split_once('(')
        .map(|(_, r)| r.trim_end_matches(')').to_lowercase())
        .unwrap_or_default()
}
fn nullable(v: &str) -> Option<String> {
    (v != "<NULL>").then(|| v.to_string())
}

/// What fwknop 2.6.10 takes from an rc-file line `NAME value`: the value stops at the
/// first space, tab, ';' or '#'.
fn rc_value(v: &str) -> &str {
    v.split([' ', '\t', ';', '#']).next().unwrap_or("")
}

/// Run the client for one case; returns Err(description) on any mismatch.
fn run_case(c: &Case, dir: &Path) -> Result<(), String> {
    let pkt_path = dir.join(format!("{}.pkt", c.name.replace(['/', ' '], "_")));
    let mut cmd = Command::new("fwknop");
    cmd.env("HOME", dir)
        .env_remove("FWKNOP_HOME")
        .stdin(Stdio::null())
        .args(["-D", "127.0.0.1", "--no-save-args", "-T", "-v", "-B"])
        .arg(&pkt_path)
        .args(["-m", c.digest, "-M", c.mode]);
    if !c.extra.iter().any(|a| a == "-C") {
        cmd.args(["-A", "tcp/22"]);
    }
    cmd.args(["-a", "10.0.0.5"]);
    match &c.key {
        Key::Base64(k) => cmd.args(["--key-base64-rijndael", k]),
        Key::Passphrase(p) => cmd.args(["--key-rijndael", p]),
    };
    let mut rc_needed = None;
    if let Some((t, k)) = &c.hmac {
        cmd.args(["--use-hmac", "--hmac-digest-type", t]);
        match k {
            Key::Base64(k) => {
                cmd.args(["--key-base64-hmac", k]);
            }
            Key::Passphrase(p) => rc_needed = Some(p.clone()),
        }
    }
    match rc_needed {
        Some(p) => {
            // No command-line option exists for a passphrase HMAC key: use an rc file.
            let rc = dir.join(format!("{}.rc", c.name.replace(['/', ' '], "_")));
            std::fs::write(&rc, format!("[default]\nHMAC_KEY {p}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
            cmd.arg("--rc-file").arg(&rc);
        }
        None => {
            cmd.arg("--no-rc-file");
        }
    }
    cmd.args(&c.extra);
    let out = cmd.output().map_err(|e| format!("spawn fwknop: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "fwknop exited {}: {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let wire = std::fs::read_to_string(&pkt_path).map_err(|e| format!("read packet: {e}"))?;
    let wire = wire.trim_end_matches('\n');
    let f = parse_fields(&stdout);
    let field = |k: &str| -> Result<&str, String> {
        f.get(k)
            .map(|s| s.as_str())
            .ok_or_else(|| format!("`{k}` missing from fwknop -v output:\n{stdout}"))
    };

    let key = c.key.bytes();
    let hkey = c.hmac.as_ref().map(|(t, k)| {
        let bytes = match k {
            // fwknop reads an rc-file value only up to the first space, tab, ';' or '#'.
            Key::Passphrase(p) => rc_value(p).as_bytes().to_vec(),
            Key::Base64(_) => k.bytes(),
        };
        (t.parse::<DigestType>().unwrap(), bytes)
    });
    let mode: EncryptionMode = c.mode.parse().map_err(|e| format!("{e}"))?;
    let keys = PacketKeys {
        key: &key,
        mode,
        hmac: hkey.as_ref().map(|(d, k)| HmacKey { digest: *d, key: k }),
    };
    let d = packet::open(wire.as_bytes(), &keys)
        .map_err(|e| format!("spa-core refused packet: {e}"))?;
    let m = &d.message;

    let mut errs = Vec::new();
    let mut eq = |what: &str, got: String, want: String| {
        if got != want {
            errs.push(format!("{what}: spa-core {got:?} != fwknop {want:?}"));
        }
    };
    eq(
        "packet",
        wire.to_string(),
        field("Final SPA Data")?.to_string(),
    );
    eq(
        "rand_val",
        m.rand_val.clone(),
        field("Random Value")?.into(),
    );
    eq("username", m.username.clone(), field("Username")?.into());
    eq(
        "timestamp",
        m.timestamp.to_string(),
        field("Timestamp")?.into(),
    );
    eq("version", m.version.clone(), field("FKO Version")?.into());
    eq(
        "msg_type",
        m.msg_type.number().to_string(),
        leading_number(field("Message Type")?).into(),
    );
    eq(
        "message",
        m.message.clone(),
        field("Message String")?.into(),
    );
    eq(
        "nat_access",
        format!("{:?}", m.nat_access),
        format!("{:?}", nullable(field("Nat Access")?)),
    );
    eq(
        "server_auth",
        format!("{:?}", m.server_auth),
        format!("{:?}", nullable(field("Server Auth")?)),
    );
    eq(
        "client_timeout",
        m.client_timeout.unwrap_or(0).to_string(),
        field("Client Timeout")?.into(),
    );
    eq(
        "digest_type",
        d.digest_type.name().to_string(),
        paren(field("Digest Type")?),
    );
    eq(
        "digest_type(requested)",
        d.digest_type.name().to_string(),
        c.digest.to_string(),
    );
    eq("digest", d.digest.clone(), field("SPA Data Digest")?.into());
    eq(
        "encoded_data",
        d.encoded_data.clone(),
        field("Encoded Data")?.into(),
    );
    eq(
        "enc_mode",
        paren(field("Encryption Mode")?),
        c.mode.to_string(),
    );
    match &c.hmac {
        Some((t, _)) => {
            let h = field("HMAC")?;
            eq("hmac_type", paren(field("HMAC Type")?), t.to_string());
            eq(
                "hmac at end of packet",
                wire.ends_with(h).to_string(),
                "true".into(),
            );
        }
        None => eq("hmac", field("HMAC")?.into(), "<NULL>".into()),
    }
    // The same packet must not open with a wrong HMAC key or a wrong encryption key.
    if let Some((dt, hk)) = &hkey {
        let mut bad = hk.clone();
        bad[0] ^= 1;
        let k2 = PacketKeys {
            key: &key,
            mode,
            hmac: Some(HmacKey {
                digest: *dt,
                key: &bad,
            }),
        };
        if packet::open(wire.as_bytes(), &k2).is_ok() {
            errs.push("opened with a wrong HMAC key".into());
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

fn build_cases(k: &str, h: &str) -> Vec<Case> {
    let b = |s: &str| Key::Base64(s.to_string());
    let mut cases = Vec::new();
    for mode in MODES {
        for hmac in DIGESTS.iter().map(|h| Some(*h)).chain([None]) {
            for digest in DIGESTS {
                cases.push(Case {
                    name: format!("{mode}/{}/{digest}", hmac.unwrap_or("none")),
                    mode,
                    digest,
                    key: b(k),
                    hmac: hmac.map(|t| (t, b(h))),
                    extra: vec![],
                    matrix: true,
                });
            }
        }
    }
    // Legacy: passphrase keys (cut or '0'-padded to 16 bytes), no HMAC.
    let passes = [
        "a",
        "testtest",
        "0123456789abcdef",
        "twenty-chars-long!!!",
        "x y z",
        "fwknoptest",
        "p@ss:word",
    ];
    for (digest, pass) in DIGESTS.iter().zip(passes) {
        cases.push(Case {
            name: format!("legacy/none/{digest}"),
            mode: "legacy",
            digest,
            key: Key::Passphrase(pass.to_string()),
            hmac: None,
            extra: vec![],
            matrix: true,
        });
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let extra = |name: &str,
                 mode: &'static str,
                 digest: &'static str,
                 key: Key,
                 hmac: Option<(&'static str, Key)>,
                 extra: Vec<String>| Case {
        name: name.to_string(),
        mode,
        digest,
        key,
        hmac,
        extra,
        matrix: false,
    };
    let hm = |t: &'static str| Some((t, b(h)));
    cases.extend([
        extra(
            "nat",
            "cbc",
            "sha256",
            b(k),
            hm("sha256"),
            s(&["-N", "192.168.10.2,22"]),
        ),
        extra(
            "nat+timeout",
            "ctr",
            "sha512",
            b(k),
            hm("sha3_512"),
            s(&["-N", "192.168.10.2,2222", "-f", "500"]),
        ),
        extra(
            "nat-local",
            "cfb",
            "sha1",
            b(k),
            hm("md5"),
            s(&["--nat-local", "-N", "127.0.0.1,2222"]),
        ),
        extra(
            "nat-local+timeout",
            "ofb",
            "sha3_256",
            b(k),
            hm("sha384"),
            s(&["--nat-local", "--nat-port", "2222", "-f", "30"]),
        ),
        extra(
            "nat-local(nat-port)",
            "cbc",
            "md5",
            b(k),
            None,
            s(&["--nat-local", "--nat-port", "55000"]),
        ),
        extra(
            "command",
            "cbc",
            "sha256",
            b(k),
            hm("sha256"),
            s(&["-C", "echo hello; /bin/true --x=1"]),
        ),
        extra(
            "command/ecb",
            "ecb",
            "sha3_512",
            b(k),
            hm("sha1"),
            s(&["-C", "iptables -L -n"]),
        ),
        extra(
            "command/nohmac",
            "ofb",
            "md5",
            b(k),
            None,
            s(&["-C", "touch /tmp/x"]),
        ),
        extra(
            "timeout",
            "cbc",
            "sha256",
            b(k),
            hm("sha256"),
            s(&["-f", "3"]),
        ),
        extra(
            "timeout/max",
            "ecb",
            "sha384",
            b(k),
            hm("sha512"),
            s(&["-f", "65535"]),
        ),
        extra(
            "spoof-user",
            "cbc",
            "sha256",
            b(k),
            hm("sha256"),
            s(&["-U", "alice"]),
        ),
        extra(
            "spoof-user+timeout",
            "ctr",
            "sha1",
            b(k),
            hm("sha3_256"),
            s(&["-U", "bob.smith-99", "-f", "120"]),
        ),
        extra(
            "multi-port",
            "cbc",
            "sha256",
            b(k),
            hm("sha256"),
            s(&["-A", "tcp/22,udp/53,tcp/8443"]),
        ),
        extra(
            "passphrase",
            "cbc",
            "sha256",
            Key::Passphrase("my secret passphrase".into()),
            None,
            vec![],
        ),
        extra(
            "passphrase/ctr",
            "ctr",
            "sha512",
            Key::Passphrase("s3cr3t!".into()),
            hm("sha256"),
            vec![],
        ),
        extra(
            "passphrase-hmac(rc)",
            "cbc",
            "sha256",
            Key::Passphrase("enc pass".into()),
            Some(("sha256", Key::Passphrase("hmac-pass-phrase".into()))),
            vec![],
        ),
        // fwknop's rc parser cuts the value at the first space: the HMAC key is "hmac".
        extra(
            "passphrase-hmac(rc, value cut at space)",
            "cbc",
            "sha256",
            b(k),
            Some(("sha256", Key::Passphrase("hmac pass phrase".into()))),
            vec![],
        ),
        extra(
            "passphrase-hmac(rc)/sha1/cfb",
            "cfb",
            "sha3_256",
            b(k),
            Some(("sha1", Key::Passphrase("another-hmac-pw".into()))),
            s(&["-f", "45"]),
        ),
        extra(
            "passphrase-hmac(rc)/sha3_512/ofb",
            "ofb",
            "md5",
            Key::Passphrase("x".into()),
            Some(("sha3_512", Key::Passphrase("h".into()))),
            vec![],
        ),
        extra(
            "hmac-key-128-bytes",
            "cbc",
            "sha256",
            b(k),
            Some(("sha512", b(&random_b64(128)))),
            vec![],
        ),
        extra(
            "aes-key-16-bytes",
            "cbc",
            "sha256",
            b(&random_b64(16)),
            hm("sha256"),
            vec![],
        ),
    ]);
    cases
}

#[test]
fn fwknop_client_packets_decode_with_spa_core() {
    if !require_program("fwknop") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (k, h) = keygen(tmp.path());
    let cases = build_cases(&k, &h);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<(), String>)>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
        * 2;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let dir = tempfile::tempdir().unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(c) = cases.get(i) else { break };
                    let r = run_case(c, dir.path());
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(results.len(), cases.len());

    // Summary matrix: rows = mode, columns = HMAC type, cell = digests passed / tried.
    let hmac_cols: Vec<&str> = DIGESTS.iter().copied().chain(["none"]).collect();
    let mut cells: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut passed = 0;
    for (i, r) in &results {
        let c = &cases[*i];
        if r.is_ok() {
            passed += 1;
        }
        if c.matrix {
            let hm = c.hmac.as_ref().map(|(t, _)| *t).unwrap_or("none");
            let e = cells
                .entry((c.mode.to_string(), hm.to_string()))
                .or_default();
            e.1 += 1;
            if r.is_ok() {
                e.0 += 1;
            }
        }
        if let Err(e) = r {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    println!("fwknop 2.6.10 client -> spa-core: digests passed per (mode, HMAC type)");
    print!("{:>8}", "mode");
    for h in &hmac_cols {
        print!(" {h:>8}");
    }
    println!();
    for mode in MODES.iter().chain(&["legacy"]) {
        print!("{mode:>8}");
        for h in &hmac_cols {
            match cells.get(&(mode.to_string(), h.to_string())) {
                Some((ok, n)) => print!(" {:>8}", format!("{ok}/{n}")),
                None => print!(" {:>8}", "-"),
            }
        }
        println!();
    }
    for c in cases.iter().filter(|c| !c.matrix) {
        let ok = results
            .iter()
            .any(|(i, r)| cases[*i].name == c.name && r.is_ok());
        println!("extra {:<36} {}", c.name, if ok { "ok" } else { "FAILED" });
    }
    println!(
        "total: {passed}/{} fwknop packets decoded with matching fields",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
