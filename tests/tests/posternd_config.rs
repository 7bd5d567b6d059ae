//! `posternd check-config` and configuration errors, through the real binary
//! (no namespace or root needed: nothing is started).
//!
//! - the merged configuration is printed with every key redacted: no key material
//!   (passphrase, base64, hex or byte list of a key) in stdout or stderr, for a
//!   native TOML (with `[[access]]` keys and an access.conf) and for fwknopd.conf +
//!   access.conf; environment overrides show up in the merged result;
//! - a key file readable by group or others (access.conf, an `%include_keys` file,
//!   a TOML holding keys) is refused with an error naming the file and `chmod 600`;
//! - a malformed line is an error naming `file:line` (access.conf, fwknopd.conf,
//!   `%include_keys`), a broken TOML names the file and the line.

use base64::Engine;
use postern_e2e::posternd::{posternd_bin, write_private, ConfDir};
use postern_e2e::scenario::{describe, Secret, SpaKeys};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn posternd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(posternd_bin());
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run posternd")
}

/// `posternd -c CONF -a ACCESS check-config`.
fn check_config(conf: &Path, access: &Path) -> Output {
    posternd(
        &[
            "-c",
            &conf.display().to_string(),
            "-a",
            &access.display().to_string(),
            "check-config",
        ],
        &[],
    )
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every way a secret could leak into output: as written, base64 with and without
/// padding, hex (both cases), and as a TOML/JSON byte list.
fn leak_forms(secret: &Secret) -> Vec<String> {
    let bytes = match secret {
        Secret::Base64(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        Secret::Passphrase(p) => p.as_bytes().to_vec(),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let list = |sep: &str| {
        bytes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    };
    let mut forms = vec![
        b64.clone(),
        b64.trim_end_matches('=').to_string(),
        hex.clone(),
        hex.to_uppercase(),
        list(", "),
        list(","),
    ];
    // A prefix is enough to count as a leak (wrapped or truncated output).
    forms.push(b64[..16.min(b64.len())].to_string());
    forms.push(hex[..16.min(hex.len())].to_string());
    if let Secret::Passphrase(p) = secret {
        forms.push(p.clone());
    }
    forms
}

fn assert_no_secrets(out: &Output, secrets: &[&Secret], what: &str) {
    let (stdout, stderr) = text(out);
    for s in secrets {
        for form in leak_forms(s) {
            assert!(
                !stdout.contains(&form) && !stderr.contains(&form),
                "{what}: key material `{form}` in the output\n{}",
                describe(out)
            );
        }
    }
}

#[test]
fn check_config_prints_merged_config_with_keys_redacted() {
    let dir = ConfDir::new();
    let file_keys = SpaKeys::generate("cbc", Some("sha256"));
    let toml_key = Secret::Passphrase("toml-passphrase-Zq81".into());
    let toml_hmac = Secret::Passphrase("toml-hmac-passphrase-Kx42".into());
    dir.write(
        "access.conf",
        &format!(
            "SOURCE ANY\n{}OPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT 17\n",
            file_keys.access_conf_lines()
        ),
    );
    dir.write(
        "postern.toml",
        &format!(
            "access_file = \"{access}\"\n\n[server]\nmax_packet_age = 60\nrun_dir = \"{run}\"\n\n\
             [[capture]]\ntype = \"udp\"\nlisten = \"0.0.0.0:62201\"\n\n\
             [[action]]\ntype = \"nftables\"\nprotected = [\"tcp/22\"]\n\n\
             [[access]]\nsource = \"10.1.2.0/24\"\nkey = \"toml-passphrase-Zq81\"\n\
             hmac_key = \"toml-hmac-passphrase-Kx42\"\nopen_ports = \"tcp/2222\"\n",
            access = dir.arg("access.conf"),
            run = dir.run_dir().display()
        ),
    );
    let out = posternd(
        &["-c", &dir.arg("postern.toml"), "check-config"],
        &[("POSTERN_SERVER__MAX_PACKET_AGE", "77")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let hmac = &file_keys.hmac.as_ref().unwrap().1;
    assert_no_secrets(
        &out,
        &[&file_keys.key, hmac, &toml_key, &toml_hmac],
        "check-config (TOML)",
    );
    for want in [
        "<redacted>",
        "max_packet_age = 77",
        "nftables",
        "10.1.2.0/24",
        "tcp/2222",
    ] {
        assert!(
            stdout.contains(want),
            "check-config output lacks `{want}`:\n{stdout}"
        );
    }
    // Both stanzas are there: the one from access.conf too.
    assert!(
        stdout.contains("17") && stdout.matches("<redacted>").count() >= 4,
        "the access.conf stanza is missing from the merged config:\n{stdout}"
    );

    // fwknopd's own files, passphrase keys.
    let fw_keys = SpaKeys {
        key: Secret::Passphrase("fwknopd-style-pass-Qr7".into()),
        hmac: Some((
            "sha512".into(),
            Secret::Passphrase("fwknopd-hmac-pass-Lm3".into()),
        )),
        mode: "cbc".into(),
    };
    dir.write(
        "access2.conf",
        &format!(
            "SOURCE ANY\n{}FW_ACCESS_TIMEOUT 30\n",
            fw_keys.access_conf_lines()
        ),
    );
    dir.write(
        "fwknopd.conf",
        &format!(
            "PCAP_INTF eth9;\nFWKNOP_RUN_DIR {};\n",
            dir.run_dir().display()
        ),
    );
    let out = posternd(
        &[
            "-c",
            &dir.arg("fwknopd.conf"),
            "-a",
            &dir.arg("access2.conf"),
            "check-config",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let hmac = &fw_keys.hmac.as_ref().unwrap().1;
    assert_no_secrets(&out, &[&fw_keys.key, hmac], "check-config (fwknopd.conf)");
    let (stdout, _) = text(&out);
    for want in ["<redacted>", "eth9", "iptables", "FWKNOP_INPUT"] {
        assert!(
            stdout.contains(want),
            "check-config output lacks `{want}`:\n{stdout}"
        );
    }
}

/// The error must name the file and tell the `chmod 600` to run.
fn assert_refused(out: &Output, file: &Path, what: &str) {
    let (_, stderr) = text(out);
    assert!(!out.status.success(), "{what}: accepted\n{}", describe(out));
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("chmod 600"),
        "{what}: the error should name {} and `chmod 600`\n{}",
        file.display(),
        describe(out)
    );
}

#[test]
fn key_files_readable_by_others_are_refused() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let access = dir.write(
        "access.conf",
        &format!("SOURCE ANY\n{}", keys.access_conf_lines()),
    );
    let conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let conf_s = conf.display().to_string();
    let access_s = access.display().to_string();
    let check = |args: &[&str]| posternd(args, &[]);

    // The baseline is accepted.
    let out = check(&["-c", &conf_s, "-a", &access_s, "check-config"]);
    assert!(out.status.success(), "{}", describe(&out));

    for mode in [0o640, 0o604, 0o644] {
        chmod(&access, mode);
        let out = check(&["-c", &conf_s, "-a", &access_s, "check-config"]);
        assert_refused(&out, &access, &format!("access.conf mode {mode:o}"));
    }
    chmod(&access, 0o600);

    // %include_keys file readable by the group.
    let keys_file = dir.write("keys.conf", &keys.access_conf_lines());
    chmod(&keys_file, 0o640);
    let with_include = dir.write(
        "access-inc.conf",
        &format!(
            "SOURCE ANY\n%include_keys {}\nFW_ACCESS_TIMEOUT 5\n",
            keys_file.display()
        ),
    );
    let out = check(&[
        "-c",
        &conf_s,
        "-a",
        &with_include.display().to_string(),
        "check-config",
    ]);
    assert_refused(&out, &keys_file, "%include_keys file mode 640");

    // A native TOML (it may hold keys) readable by the group.
    let toml = dir.write(
        "postern.toml",
        &format!(
            "access_file = \"{access_s}\"\n[server]\nrun_dir = \"{}\"\n[[action]]\ntype = \"log\"\n",
            dir.run_dir().display()
        ),
    );
    chmod(&toml, 0o640);
    let out = check(&["-c", &toml.display().to_string(), "check-config"]);
    assert_refused(&out, &toml, "postern.toml mode 640");
}

/// Write `text` as `name` and expect check-config to fail naming `name:line`.
fn assert_line_error(dir: &ConfDir, args: &[String], file: &Path, line: usize, what: &str) {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = posternd(&argv, &[]);
    let (_, stderr) = text(&out);
    let want = format!("{}:{line}", file.display());
    assert!(
        !out.status.success(),
        "{what}: accepted\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains(&want),
        "{what}: the error should name `{want}`\n{}",
        describe(&out)
    );
    let _ = dir;
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let good_conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let conf_s = good_conf.display().to_string();
    let good_access = format!(
        "SOURCE ANY\n{}FW_ACCESS_TIMEOUT 5\n",
        keys.access_conf_lines()
    );
    let a = |name: &str| {
        vec![
            "-c".to_string(),
            conf_s.clone(),
            "-a".into(),
            dir.arg(name),
            "check-config".into(),
        ]
    };

    // access.conf: a value that is not a number (line 3 after SOURCE + comment).
    let p = dir.path("bad-number.conf");
    write_private(
        &p,
        &format!(
            "# comment\nSOURCE ANY\nFW_ACCESS_TIMEOUT soon\n{}",
            keys.access_conf_lines()
        ),
    );
    assert_line_error(&dir, &a("bad-number.conf"), &p, 3, "FW_ACCESS_TIMEOUT soon");

    // access.conf: a variable with no value.
    let p = dir.path("no-value.conf");
    write_private(&p, &format!("{good_access}\n\nKEY_BASE64\n"));
    let line = good_access.lines().count() + 3;
    assert_line_error(
        &dir,
        &a("no-value.conf"),
        &p,
        line,
        "KEY_BASE64 without value",
    );

    // access.conf: a bad SOURCE.
    let p = dir.path("bad-source.conf");
    write_private(
        &p,
        &format!(
            "{good_access}SOURCE 10.0.0.300/40\n{}",
            keys.access_conf_lines()
        ),
    );
    let line = good_access.lines().count() + 1;
    assert_line_error(&dir, &a("bad-source.conf"), &p, line, "bad SOURCE");

    // access.conf: a key that is not base64.
    let p = dir.path("bad-key.conf");
    write_private(
        &p,
        "SOURCE ANY\nKEY_BASE64 not*base64!\nFW_ACCESS_TIMEOUT 5\n",
    );
    assert_line_error(&dir, &a("bad-key.conf"), &p, 2, "KEY_BASE64 not base64");

    // %include_keys file with a malformed line.
    let keys_file = dir.path("inc-keys.conf");
    write_private(&keys_file, "KEY_BASE64 QUJD\nHMAC_DIGEST_TYPE SHA7\n");
    let p = dir.path("inc.conf");
    write_private(
        &p,
        &format!("SOURCE ANY\n%include_keys {}\n", keys_file.display()),
    );
    assert_line_error(
        &dir,
        &a("inc.conf"),
        &keys_file,
        2,
        "HMAC_DIGEST_TYPE SHA7 in %include_keys",
    );

    // fwknopd.conf: a bad value.
    dir.write("access.conf", &good_access);
    let bad_conf = dir.path("bad-fwknopd.conf");
    write_private(
        &bad_conf,
        &format!(
            "# fwknopd.conf\nFWKNOP_RUN_DIR {};\nENABLE_UDP_SERVER Y;\nMAX_SPA_PACKET_AGE two minutes;\n",
            dir.run_dir().display()
        ),
    );
    let args = vec![
        "-c".to_string(),
        bad_conf.display().to_string(),
        "-a".into(),
        dir.arg("access.conf"),
        "check-config".into(),
    ];
    assert_line_error(&dir, &args, &bad_conf, 4, "MAX_SPA_PACKET_AGE two minutes");

    // postern.toml: broken TOML names the file and the line.
    let toml = dir.path("broken.toml");
    write_private(
        &toml,
        &format!(
            "access_file = \"{}\"\n\n[server]\nmax_packet_age = = 3\n",
            dir.arg("access.conf")
        ),
    );
    let out = posternd(&["-c", &toml.display().to_string(), "check-config"], &[]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "broken TOML accepted\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains(&toml.display().to_string())
            && (stderr.contains("line 4") || stderr.contains(&format!("{}:4", toml.display()))),
        "a TOML syntax error should name the file and line 4\n{}",
        describe(&out)
    );
}

/// Settings that would silently open more (or crash later) are refused, naming
/// the file and line; `--lenient-config` only relaxes unknown variable names.
#[test]
fn settings_that_would_open_more_are_refused() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let conf_s = conf.display().to_string();
    let access_with = |name: &str, extra: &str| {
        dir.write(
            name,
            &format!("SOURCE ANY\n{}{extra}", keys.access_conf_lines()),
        );
        dir.arg(name)
    };
    let lines = keys.access_conf_lines().lines().count();

    // A misspelt restriction: refused; with --lenient-config, warned about.
    let typo = access_with("typo.conf", "REQUIRE_SOURCE_ADRESS Y\n");
    let args = ["-c".to_string(), conf_s.clone(), "-a".into(), typo.clone()];
    let mut check = args.to_vec();
    check.push("check-config".into());
    assert_line_error(
        &dir,
        &check,
        &dir.path("typo.conf"),
        lines + 2,
        "unknown access.conf variable",
    );
    let out = posternd(
        &[
            "-c",
            &conf_s,
            "-a",
            &typo,
            "--lenient-config",
            "check-config",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out).1.contains("REQUIRE_SOURCE_ADRESS"),
        "the lenient run should warn about the variable\n{}",
        describe(&out)
    );

    // An unknown fwknopd.conf variable, too.
    let bogus = dir.write(
        "bogus-fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nENABLE_SPA_PAKCET_AGING N;\n",
            dir.run_dir().display()
        ),
    );
    let good = access_with("good.conf", "");
    assert_line_error(
        &dir,
        &[
            "-c".into(),
            bogus.display().to_string(),
            "-a".into(),
            good.clone(),
            "check-config".into(),
        ],
        &bogus,
        2,
        "unknown fwknopd.conf variable",
    );

    // MAX_FW_TIMEOUT 0 (no upper bound on a client's timeout).
    let zero = access_with("zero.conf", "MAX_FW_TIMEOUT 0\n");
    let out = posternd(&["-c", &conf_s, "-a", &zero, "check-config"], &[]);
    assert!(
        !out.status.success() && text(&out).1.contains("MAX_FW_TIMEOUT must be at least 1"),
        "{}",
        describe(&out)
    );

    // A yes/no fwknopd reads as no and most readers as yes.
    let yes_no = dir.write(
        "yn-fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nENABLE_IPT_FORWARDING 1;\n",
            dir.run_dir().display()
        ),
    );
    assert_line_error(
        &dir,
        &[
            "-c".into(),
            yes_no.display().to_string(),
            "-a".into(),
            good.clone(),
            "check-config".into(),
        ],
        &yes_no,
        2,
        "ENABLE_IPT_FORWARDING 1",
    );

    // ENABLE_DESTINATION_RULE is honoured now (an action that cannot bind a
    // grant to an address is refused at start: spa-server daemon tests).
    let dest_rule = dir.write(
        "dest-fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nENABLE_DESTINATION_RULE Y;\n",
            dir.run_dir().display()
        ),
    );
    let out = posternd(
        &[
            "-c",
            &dest_rule.display().to_string(),
            "-a",
            &good,
            "check-config",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));

    // queue_depth = 0 used to panic at start.
    let toml = dir.write(
        "zero-queue.toml",
        &format!(
            "access_file = \"{}\"\n[server]\nrun_dir = \"{}\"\nqueue_depth = 0\n[[action]]\ntype = \"log\"\n",
            dir.path("good.conf").display(),
            dir.run_dir().display()
        ),
    );
    let out = posternd(&["-c", &toml.display().to_string(), "check-config"], &[]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("queue_depth must be at least 1"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("panicked"), "{}", describe(&out));
}

/// Files others could change are not trusted: a fwknopd.conf writable by the
/// group, key files that belong to another user. A pid file holding a pid <= 1
/// never reaches kill(2) (kill(-1) would signal every process).
#[test]
fn files_others_could_change_are_refused() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let access = dir.write(
        "access.conf",
        &format!("SOURCE ANY\n{}", keys.access_conf_lines()),
    );
    let (conf_s, access_s) = (conf.display().to_string(), access.display().to_string());
    let check = || posternd(&["-c", &conf_s, "-a", &access_s, "check-config"], &[]);
    assert!(check().status.success(), "{}", describe(&check()));

    chmod(&conf, 0o664);
    let out = check();
    assert!(
        !out.status.success() && text(&out).1.contains("writable by group or others"),
        "fwknopd.conf mode 664 accepted\n{}",
        describe(&out)
    );
    chmod(&conf, 0o600);

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&access, Some(65534), None).unwrap();
        let out = check();
        assert!(
            !out.status.success() && text(&out).1.contains("belongs to uid 65534"),
            "access.conf owned by nobody accepted\n{}",
            describe(&out)
        );
        std::os::unix::fs::chown(&access, Some(0), None).unwrap();
    }

    for pid in ["-1", "0", "1"] {
        let pid_file = dir.write("bad.pid", &format!("{pid}\n"));
        let out = posternd(
            &[
                "-c",
                &conf_s,
                "-a",
                &access_s,
                "-p",
                &pid_file.display().to_string(),
                "-S",
            ],
            &[],
        );
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success()
                && stderr.contains("cannot be posternd")
                && !stdout.contains("is running"),
            "pid file holding {pid}\n{}",
            describe(&out)
        );
    }
}

/// Weak but working setups are named at start, with the stanza's file:line.
#[test]
fn weak_stanzas_are_warned_about_with_their_line() {
    let dir = ConfDir::new();
    let conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let strong = SpaKeys::generate("cbc", Some("sha256"));
    let access = dir.write(
        "access.conf",
        &format!(
            "SOURCE ANY\n{}\nSOURCE 10.0.0.1\nKEY fwknoptest\nENCRYPTION_MODE ecb\n",
            strong.access_conf_lines()
        ),
    );
    let out = check_config(&conf, &access);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = text(&out).1;
    let line = strong.access_conf_lines().lines().count() + 3;
    let at = format!("{}:{line}: weak access stanza", access.display());
    for weakness in ["no HMAC key", "KEY is a passphrase", "ENCRYPTION_MODE ecb"] {
        assert!(
            stderr.contains(&format!("{at}: {weakness}")),
            "no `{at}: {weakness}` warning\n{}",
            describe(&out)
        );
    }
    assert!(
        !stderr.contains(":1: weak access stanza"),
        "the strong stanza was warned about\n{}",
        describe(&out)
    );
}

/// Stanzas are found as fwknopd finds them: `-c fwknopd.conf` alone reads
/// access.conf from FWKNOP_CONF_DIR; ACCESS_FOLDER and `--access-folder` read every
/// `*.conf` of a folder; `posternd` with no `-c` reads fwknopd's own file.
#[test]
fn access_files_are_found_like_fwknopd() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let run = dir.run_dir().display().to_string();
    let stanza = |src: &str| format!("SOURCE {src}\n{}", keys.access_conf_lines());
    let conf_dir = dir.path("etc");
    let folder = conf_dir.join("access.d");
    std::fs::create_dir_all(&folder).unwrap();
    chmod(&conf_dir, 0o700);
    write_private(&conf_dir.join("access.conf"), &stanza("10.1.1.1"));
    write_private(&folder.join("b.conf"), &stanza("10.2.2.2"));
    write_private(&folder.join("a.conf"), &stanza("10.3.3.3"));
    write_private(&folder.join("skipped.txt"), "not read");
    let conf = dir.write(
        "fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {run};\nFWKNOP_CONF_DIR {};\n",
            conf_dir.display()
        ),
    );
    let check = |args: &[&str]| {
        let out = posternd(args, &[]);
        assert!(out.status.success(), "{args:?}\n{}", describe(&out));
        text(&out).0
    };
    let c = conf.display().to_string();
    let out = check(&["-c", &c, "check-config"]);
    assert!(
        out.contains("10.1.1.1"),
        "FWKNOP_CONF_DIR/access.conf not read:\n{out}"
    );

    let f = folder.display().to_string();
    let out = check(&["-c", &c, "--access-folder", &f, "check-config"]);
    let (a, b) = (out.find("10.3.3.3"), out.find("10.2.2.2"));
    assert!(
        a.is_some() && b.is_some() && a < b,
        "--access-folder: a.conf then b.conf expected:\n{out}"
    );
    // -a and --access-folder: only the folder, as fwknopd, and a warning says so.
    let access = conf_dir.join("access.conf").display().to_string();
    let both = posternd(
        &[
            "-c",
            &c,
            "-a",
            &access,
            "--access-folder",
            &f,
            "check-config",
        ],
        &[],
    );
    let (out, err) = text(&both);
    assert!(
        both.status.success()
            && out.contains("10.3.3.3")
            && !out.contains("10.1.1.1")
            && err.contains(&format!("-a {access} is not read")),
        "-a with --access-folder:\n{}",
        describe(&both)
    );
    let with_folder = dir.write(
        "folder-fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {run};\nACCESS_FOLDER {f};\n"),
    );
    let out = check(&["-c", &with_folder.display().to_string(), "check-config"]);
    assert!(
        out.contains("10.3.3.3") && out.contains("10.2.2.2") && !out.contains("10.1.1.1"),
        "ACCESS_FOLDER:\n{out}"
    );

    // No -c: fwknopd's own file (installed with fwknop-server), as fwknopd.
    let fwknopd_conf = Path::new("/etc/fwknop/fwknopd.conf");
    if fwknopd_conf.exists() && !Path::new("/etc/postern/postern.toml").exists() {
        let out = posternd(&["check-config"], &[]);
        let (stdout, stderr) = text(&out);
        assert!(
            format!("{stdout}{stderr}").contains("/etc/fwknop/"),
            "posternd without -c did not read /etc/fwknop:\n{}",
            describe(&out)
        );
    }
}

/// `posternd --key-gen` as fwknopd's: keys access.conf takes, printed or written
/// to a 0600 file; lengths and digest as asked.
#[test]
fn key_gen_like_fwknopd() {
    use base64::Engine;
    let b64 = |line: &str, name: &str| {
        let v = line
            .strip_prefix(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{line:?}"));
        base64::engine::general_purpose::STANDARD.decode(v).unwrap()
    };
    let out = posternd(&["--key-gen"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out).0;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(b64(lines[0], "KEY_BASE64").len(), 32);
    assert_eq!(b64(lines[1], "HMAC_KEY_BASE64").len(), 64);
    let again = text(&posternd(&["--key-gen"], &[])).0;
    assert_ne!(again, stdout, "two runs gave the same keys");

    let out = posternd(
        &["-k", "--key-len", "16", "--hmac-digest-type", "sha512"],
        &[],
    );
    let stdout = text(&out).0;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(b64(lines[0], "KEY_BASE64").len(), 16, "{stdout}");
    assert_eq!(b64(lines[1], "HMAC_KEY_BASE64").len(), 128, "{stdout}");

    let dir = ConfDir::new();
    let file = dir.path("keys.txt");
    let out = posternd(&["--key-gen-file", &file.display().to_string()], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("KEY_BASE64: "), "{written}");
    assert!(!text(&out).0.contains(&written), "keys printed too");
    // The keys work as access.conf keys.
    let access = dir.write(
        "access.conf",
        &format!("SOURCE ANY\n{}", written.replace(": ", " ")),
    );
    let conf = dir.write(
        "fwknopd.conf",
        &format!("FWKNOP_RUN_DIR {};\n", dir.run_dir().display()),
    );
    let out = check_config(&conf, &access);
    assert!(out.status.success(), "{}", describe(&out));
}

/// `--pcap-any-direction` switches it on for every pcap capture.
#[test]
fn pcap_any_direction_flag() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let access = dir.write(
        "access.conf",
        &format!("SOURCE ANY\n{}", keys.access_conf_lines()),
    );
    let conf = dir.write(
        "fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nPCAP_INTF lo;\n",
            dir.run_dir().display()
        ),
    );
    let run = |extra: &[&str]| {
        let c = conf.display().to_string();
        let a = access.display().to_string();
        let mut args = vec!["-c", &c, "-a", &a];
        args.extend_from_slice(extra);
        args.push("check-config");
        let out = posternd(&args, &[]);
        assert!(out.status.success(), "{}", describe(&out));
        text(&out).0
    };
    assert!(run(&[]).contains("any_direction = false"), "{}", run(&[]));
    let with = run(&["--pcap-any-direction"]);
    assert!(with.contains("any_direction = true"), "{with}");
}

/// fwknopd's flags mean what they mean to fwknopd: `-U` listens on UDPSERV_PORT,
/// `-d` names fwknopd's digest cache (imported), and with fwknop's files the pid
/// file is `fwknopd.pid` in the run dir, also one moved by `-r`.
#[test]
fn fwknopd_flags_mean_what_they_mean_to_fwknopd() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let access = dir.write(
        "access.conf",
        &format!("SOURCE ANY\n{}", keys.access_conf_lines()),
    );
    let conf = dir.write(
        "fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nPCAP_INTF lo;\nUDPSERV_PORT 40123;\n",
            dir.run_dir().display()
        ),
    );
    let (c, a) = (conf.display().to_string(), access.display().to_string());
    let run = |extra: &[&str]| {
        let mut args = vec!["-c", &c, "-a", &a];
        args.extend_from_slice(extra);
        posternd(&args, &[])
    };
    let out = run(&["-U", "check-config"]);
    assert!(
        text(&out).0.contains("listen = \"0.0.0.0:40123\""),
        "{}",
        describe(&out)
    );
    let cache = dir.path("old-digest.cache");
    let out = run(&["-d", &cache.display().to_string(), "check-config"]);
    assert!(
        text(&out)
            .0
            .contains(&format!("import_fwknop = \"{}\"", cache.display())),
        "{}",
        describe(&out)
    );
    let out = run(&["-S"]);
    let want = dir.run_dir().join("fwknopd.pid");
    assert!(
        text(&out).0.contains(&want.display().to_string()),
        "{}",
        describe(&out)
    );
    let moved = dir.path("elsewhere");
    let out = run(&["-r", &moved.display().to_string(), "-S"]);
    assert!(
        text(&out)
            .0
            .contains(&moved.join("fwknopd.pid").display().to_string()),
        "{}",
        describe(&out)
    );
}

/// FORCE_NAT without NAT enabled in fwknopd.conf is refused at start, as
/// fwknopd refuses it (postern used to load it and refuse every knock).
#[test]
fn force_nat_needs_nat_enabled_as_in_fwknopd() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let run = dir.run_dir().display().to_string();
    let access = dir.write(
        "access.conf",
        &format!(
            "SOURCE ANY\n{}FORCE_NAT 192.0.2.10 22\n",
            keys.access_conf_lines()
        ),
    );
    let check = |conf_text: &str| {
        let conf = dir.write("fwknopd.conf", conf_text);
        check_config(&conf, &access)
    };
    let off = check(&format!("FWKNOP_RUN_DIR {run};\n"));
    let (_, err) = text(&off);
    assert!(
        !off.status.success()
            && err.contains(&format!("{}:1: FORCE_NAT requires", access.display())),
        "{}",
        describe(&off)
    );
    let on = check(&format!(
        "FWKNOP_RUN_DIR {run};\nENABLE_IPT_FORWARDING Y;\n"
    ));
    assert!(on.status.success(), "{}", describe(&on));
}

/// A firewalld build's fwknopd.conf with a stanza asking for NAT firewalld
/// rich rules cannot make: refused at start, naming the stanza, not at each knock.
#[test]
fn nat_firewalld_cannot_make_is_refused_at_start() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let conf = dir.write(
        "fwknopd.conf",
        &format!(
            "FWKNOP_RUN_DIR {};\nENABLE_FIREWD_FORWARDING Y;\n",
            dir.run_dir().display()
        ),
    );
    for (var, line) in [
        ("DISABLE_DNAT Y", "DISABLE_DNAT"),
        ("FORCE_SNAT 192.0.2.1", "FORCE_SNAT"),
    ] {
        let access = dir.write(
            "access.conf",
            &format!(
                "SOURCE ANY\n{}FORCE_NAT 192.0.2.10 22\n{var}\n",
                keys.access_conf_lines()
            ),
        );
        let out = check_config(&conf, &access);
        let (_, err) = text(&out);
        assert!(
            !out.status.success()
                && err.contains(&format!(
                    "{}:1: {line} cannot be done by the firewalld action",
                    access.display()
                )),
            "{var}: {}",
            describe(&out)
        );
    }
}

/// Each `[[action]]`'s settings are the backend's own, checked when the file
/// is read: `check-config` refuses a misspelt key, a key of another backend
/// and a value of the wrong type, naming the key and the file, and prints
/// the typed settings of a good one (which read back the same).
#[test]
fn check_config_validates_backend_settings() {
    let dir = ConfDir::new();
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let access = dir.write(
        "access.conf",
        &format!(
            "SOURCE ANY\n{}OPEN_PORTS tcp/22\n",
            keys.access_conf_lines()
        ),
    );
    let run = dir.run_dir().display().to_string();
    let check = |action: &str| {
        let conf = dir.write(
            "postern.toml",
            &format!("[server]\nrun_dir = \"{run}\"\n\n[[action]]\n{action}\n"),
        );
        (check_config(&conf, &access), conf)
    };
    for (action, names) in [
        (
            "type = \"nftables\"\ntabel = \"postern\"",
            "unknown field `tabel`",
        ),
        (
            "type = \"nftables\"\noutput = true",
            "unknown field `output`",
        ),
        (
            "type = \"iptables\"\nflush_at_init = \"yes\"",
            "`flush_at_init`: invalid type",
        ),
        (
            "type = \"script\"\nopen = \"/bin/true $SRC\"\ncommand_timeout_secs = \"30\"",
            "`command_timeout_secs`: invalid type",
        ),
        (
            "type = \"script\"\nclose = \"/bin/true\"",
            "missing field `open`",
        ),
        ("type = \"log\"\ntable = \"x\"", "unknown field `table`"),
        (
            "type = \"carrier-pigeon\"",
            "unknown action type `carrier-pigeon`",
        ),
    ] {
        let (out, conf) = check(action);
        let (_, err) = text(&out);
        assert!(
            !out.status.success()
                && err.contains(names)
                && err.contains(&conf.display().to_string()),
            "{action}: expected an error naming {names:?} and the file\n{}",
            describe(&out)
        );
    }
    let (out, _) = check("type = \"nftables\"\ntable = \"spa\"\nprotected = [\"tcp/22\"]");
    let (shown, _) = text(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        shown.contains("type = \"nftables\"")
            && shown.contains("table = \"spa\"")
            && shown.contains("protected = [\"tcp/22\"]"),
        "{shown}"
    );
}
