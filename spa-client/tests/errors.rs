//! Bad input: non-zero exit, exactly one line on stderr naming the problem, no panic.

mod common;

use common::*;

const BASE: &[&str] = &["-T", "--no-rc-file", "-a", "10.0.0.5"];

fn with_base<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = BASE.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn unknown_stanza() {
    let env = Env::new();
    let line = env.fails(&[
        "-n",
        "nosuch",
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(
        line.contains("[nosuch]") && line.contains("not found"),
        "{line}"
    );
}

#[test]
fn malformed_access() {
    let env = Env::new();
    for bad in [
        "tcp",
        "tcp/0",
        "tcp/99999",
        "icmp/22",
        "tcp/22,",
        "",
        "tcp/abc",
    ] {
        let line = env.fails(&with_base(&["-A", bad, "--key-rijndael", "x"]));
        assert!(line.contains("access"), "{bad}: {line}");
    }
}

#[test]
fn bad_base64_keys() {
    let env = Env::new();
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-base64-rijndael",
        "not*base64!",
    ]));
    assert!(
        line.contains("--key-base64-rijndael") && !line.contains("not*base64!"),
        "{line}"
    );
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "x",
        "--key-base64-hmac",
        "%%%",
    ]));
    assert!(line.contains("--key-base64-hmac"), "{line}");
}

#[test]
fn missing_keys() {
    let env = Env::new();
    let line = env.fails(&with_base(&["-A", "tcp/22"]));
    assert!(line.contains("encryption key"), "{line}");
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "x",
        "--use-hmac",
    ]));
    assert!(line.contains("HMAC key"), "{line}");
    let out = env.run_with_stdin(&with_base(&["-A", "tcp/22", "--stdin"]), "");
    let line = one_line_failure(out, &["--stdin"]);
    assert!(line.contains("encryption key"), "{line}");
    let line = env.fails(&with_base(&["-A", "tcp/22", "-G", "/nonexistent/keyfile"]));
    assert!(line.contains("/nonexistent/keyfile"), "{line}");
}

#[test]
fn key_problems() {
    let env = Env::new();
    let long = "k".repeat(40);
    let line = env.fails(&with_base(&["-A", "tcp/22", "--key-rijndael", &long]));
    assert!(line.contains("32"), "{line}");
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "same",
        "--key-hmac",
        "same",
    ]));
    assert!(line.contains("identical"), "{line}");
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "k",
        "--use-hmac",
        "--key-hmac",
        "h",
        "-M",
        "legacy",
    ]));
    assert!(line.contains("legacy"), "{line}");
}

#[test]
fn missing_destination_and_allow_ip() {
    let env = Env::new();
    let line = env.fails(&[
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(line.contains("-D"), "{line}");
    let line = env.fails(&["--no-rc-file", "-T", "-A", "tcp/22", "--key-rijndael", "x"]);
    assert!(line.contains("-a") && line.contains("-R"), "{line}");
    let line = env.fails(&[
        "--no-rc-file",
        "-T",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(line.contains("-A"), "{line}");
}

#[test]
fn bad_option_values() {
    let env = Env::new();
    for (args, needle) in [
        (vec!["-A", "tcp/22", "-p", "70000"], "--server-port"),
        (vec!["-A", "tcp/22", "-m", "sha999"], "--digest-type"),
        (vec!["-A", "tcp/22", "-M", "pcbc"], "--encryption-mode"),
        (vec!["-A", "tcp/22", "-f", "-1"], "--fw-timeout"),
        (vec!["-A", "tcp/22", "-f", "99999"], "--fw-timeout"),
        (
            vec!["-A", "tcp/22", "--time-offset-plus", "soon"],
            "--time-offset-plus",
        ),
        (vec!["-A", "tcp/22", "-a", "300.1.1.1"], "--allow-ip"),
        (vec!["-A", "tcp/22", "-U", "bad:user"], "user"),
        (vec!["-A", "tcp/22", "-N", "bad host:80"], "NAT"),
        (
            vec!["-A", "tcp/22", "--hmac-digest-type", "sha7"],
            "--hmac-digest-type",
        ),
    ] {
        let mut a = with_base(&["--key-rijndael", "x"]);
        a.extend(args.iter().copied());
        let line = env.fails(&a);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}

#[test]
fn unknown_and_refused_flags() {
    let env = Env::new();
    let line = env.fails(&["--bogus-flag"]);
    assert!(line.contains("--bogus-flag"), "{line}");
    // fwknop's wget and fault-injection flags: refused, saying why and what to do.
    for (flag, name, why) in [
        (vec!["-w", "/usr/bin/wget"], "-w/--wget-cmd", "-a IP"),
        (
            vec!["--use-wget-user-agent"],
            "--use-wget-user-agent",
            "-u AGENT",
        ),
        (
            vec!["--fault-injection-tag", "tag"],
            "--fault-injection-tag",
            "test suite",
        ),
    ] {
        let mut a = with_base(&["-A", "tcp/22", "--key-rijndael", "x"]);
        a.extend(flag.iter().copied());
        let line = env.fails(&a);
        assert!(
            line.starts_with(&format!("postern: {name} is refused: ")) && line.contains(why),
            "{line}"
        );
    }
    // -H goes with -P http only.
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "x",
        "-P",
        "udp",
        "-H",
        "proxy:3128",
    ]));
    assert!(line.contains("-H/--http-proxy needs -P http"), "{line}");
    // -Q as fwknop: an IPv4 address, and only with a raw mode.
    for (extra, needle) in [
        (
            vec!["-Q", "10.0.0.9"],
            "needs -P udpraw, tcpraw or icmp, not -P udp",
        ),
        (vec!["-Q", "10.0.0.9", "-P", "tcp"], "not -P tcp"),
        (
            vec!["-Q", "2001:db8::1", "-P", "udpraw"],
            "-Q/--spoof-source",
        ),
        (vec!["-P", "icmp", "--icmp-type", "41"], "[0-40]"),
        (vec!["-P", "icmp", "--icmp-code", "16"], "[0-15]"),
        (vec!["-P", "icmp", "--icmp-code", "x"], "--icmp-code"),
    ] {
        let mut a = with_base(&["-A", "tcp/22", "--key-rijndael", "x"]);
        a.extend(extra.iter().copied());
        let line = env.fails(&a);
        assert!(line.contains(needle), "{extra:?}: {line}");
    }
    // The IPv4 datagrams are IPv4 only, as fwknop: an IPv6 server is named in
    // a clear error (`-P icmp` sends ICMPv6 instead, but not with -Q).
    for extra in [
        &["-P", "tcpraw"][..],
        &["-P", "udpraw"],
        &["-P", "icmp", "-Q", "10.0.0.9"],
    ] {
        let mut a = vec![
            "--no-rc-file",
            "-a",
            "10.0.0.5",
            "-A",
            "tcp/22",
            "--key-rijndael",
            "x",
            "-D",
            "::1",
        ];
        a.extend(extra);
        let line = env.fails(&a);
        assert!(
            line.contains("is IPv4 only") && line.contains("::1"),
            "{line}"
        );
    }
    let line = env.fails(&[
        "--no-rc-file",
        "-a",
        "10.0.0.5",
        "-A",
        "tcp/22",
        "--key-rijndael",
        "x",
        "-6",
        "-D",
        "127.0.0.1",
    ]);
    assert!(line.contains("127.0.0.1 has no IPv6 address"), "{line}");
    // The raw modes build (and, with -T, do not send) like the others.
    for proto in ["icmp", "tcpraw", "udpraw"] {
        env.ok(&with_base(&[
            "-A",
            "tcp/22",
            "--key-rijndael",
            "x",
            "-P",
            proto,
            "-Q",
            "10.0.0.9",
            "--icmp-type",
            "8",
        ]));
    }
    let line = env.fails(&with_base(&[
        "-A",
        "tcp/22",
        "--key-rijndael",
        "x",
        "-P",
        "carrier-pigeon",
    ]));
    assert!(line.contains("--server-proto"), "{line}");
}

#[test]
fn bad_rc_values_name_the_line() {
    let env = Env::new();
    std::fs::write(env.rc_path(), "[default]\nSPA_SERVER_PORT many\n").unwrap();
    std::fs::set_permissions(
        env.rc_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let line = env.fails(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(
        line.contains("line 2") && line.contains("SPA_SERVER_PORT"),
        "{line}"
    );
    // GPG mode without the server's key is a usage error, as in fwknop.
    std::fs::write(env.rc_path(), "[default]\nUSE_GPG Y\n").unwrap();
    let line = env.fails(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(line.contains("--gpg-recipient-key"), "{line}");
    let line = env.fails(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--no-rc-file",
        "-M",
        "asymmetric",
        "--key-rijndael",
        "x",
    ]);
    assert!(
        line.contains("asymmetric") && line.contains("--gpg-recipient-key"),
        "{line}"
    );
}

#[test]
fn unreachable_udp_destination_name() {
    let env = Env::new();
    let line = env.fails(&[
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-D",
        "no-such-host.invalid",
        "--key-rijndael",
        "x",
    ]);
    assert!(line.contains("no-such-host.invalid"), "{line}");
}

/// Options that do something else than knock are refused with `ssh`, before
/// ssh runs; so are knock options put after `ssh HOST`.
#[test]
fn ssh_refuses_options_that_do_not_knock() {
    let env = Env::new();
    for (args, flag) in [
        (&["-T", "ssh", "gw"][..], "-T/--test"),
        (&["-l", "ssh", "gw"][..], "-l/--last-cmd"),
        (&["--show-last", "ssh", "gw"][..], "--show-last"),
        (&["--key-gen", "ssh", "gw"][..], "--key-gen/-K"),
        (&["--save-rc-stanza", "ssh", "gw"][..], "--save-rc-stanza"),
        (&["--stanza-list", "ssh", "gw"][..], "--stanza-list"),
        (&["--connect", "gw:22", "ssh", "gw"][..], "--connect"),
    ] {
        let line = env.fails(args);
        assert!(
            line.contains(flag) && line.contains("cannot be used with `ssh`"),
            "{args:?}: {line}"
        );
    }
    let line = env.fails(&["ssh", "gw", "-v"]);
    assert!(line.contains("-v"), "{line}");
}
