//! postern's native protocol from the outside, with the real binaries: keys made by
//! `postern --gen-client-key` and `posternd key generate`, clients registered,
//! listed and revoked with `posternd client ...`, and a packet written by
//! `postern --native -T -B` (flags and rc stanza) opened with the server's files.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use postern_e2e::workspace_bin;
use spa_native::{open, Error, Registry, ServerKey, Suite};

fn run(bin: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin(bin))
        .args(args)
        .env("HOME", home)
        .output()
        .unwrap()
}

fn ok(bin: &str, home: &Path, args: &[&str]) -> String {
    let out = run(bin, home, args);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn line_with(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
        .to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_clients_and_a_native_packet_with_the_real_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let clients = path("clients");

    // Server key: 0600, never overwritten, public line reproducible.
    let out = ok("posternd", d, &["key", "generate", &path("server.key")]);
    let server_line = line_with(&out, "postern-srv1:");
    assert_eq!(mode(&d.join("server.key")), 0o600);
    assert!(
        !run("posternd", d, &["key", "generate", &path("server.key")])
            .status
            .success()
    );
    let again = ok("posternd", d, &["key", "public", &path("server.key")]);
    assert_eq!(again.trim(), server_line);

    // Client keys: 0600, the public line and a QR code on stdout.
    let mut pubs = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let out = ok(
            "postern",
            d,
            &["--gen-client-key", &path(&format!("{name}.key"))],
        );
        assert_eq!(mode(&d.join(format!("{name}.key"))), 0o600);
        assert!(out.contains('█') || out.contains('▀'), "no QR code:\n{out}");
        pubs.push(line_with(&out, "postern-pub1:"));
    }
    let out = ok("postern", d, &["--totp-setup", &path("bob.totp")]);
    let uri = line_with(&out, "otpauth://totp/");
    assert_eq!(fs::read_to_string(d.join("bob.totp")).unwrap().trim(), uri);
    assert_eq!(mode(&d.join("bob.totp")), 0o600);

    ok(
        "posternd",
        d,
        &[
            "client",
            "add",
            "alice",
            &pubs[0],
            "--clients-dir",
            &clients,
        ],
    );
    ok(
        "posternd",
        d,
        &[
            "client",
            "add",
            "bob",
            &pubs[1],
            "--totp-secret",
            &path("bob.totp"),
            "--clients-dir",
            &clients,
        ],
    );
    ok(
        "posternd",
        d,
        &[
            "client",
            "add",
            "carol",
            &pubs[2],
            "--clients-dir",
            &clients,
        ],
    );
    assert_eq!(mode(&d.join("clients/bob.pub")), 0o600);
    // The same name or the same key twice: refused, nothing written.
    assert!(!run(
        "posternd",
        d,
        &[
            "client",
            "add",
            "alice",
            &pubs[2],
            "--clients-dir",
            &clients
        ]
    )
    .status
    .success());
    let dup = run(
        "posternd",
        d,
        &["client", "add", "dave", &pubs[0], "--clients-dir", &clients],
    );
    assert!(String::from_utf8_lossy(&dup.stderr).contains("alice"));
    assert!(!d.join("clients/dave.pub").exists());
    let list = ok(
        "posternd",
        d,
        &["client", "list", "--clients-dir", &clients],
    );
    assert_eq!(
        list,
        format!(
            "alice\t{}\t-\nbob\t{}\ttotp\ncarol\t{}\t-\n",
            pubs[0], pubs[1], pubs[2]
        )
    );

    // Revoke alice: bob's and carol's files are untouched.
    let bob_before = fs::read(d.join("clients/bob.pub")).unwrap();
    ok(
        "posternd",
        d,
        &["client", "remove", "alice", "--clients-dir", &clients],
    );
    let list = ok(
        "posternd",
        d,
        &["client", "list", "--clients-dir", &clients],
    );
    assert!(
        !list.contains("alice") && list.contains("bob") && list.contains("carol"),
        "{list}"
    );
    assert_eq!(fs::read(d.join("clients/bob.pub")).unwrap(), bob_before);
    assert!(!run(
        "posternd",
        d,
        &["client", "remove", "alice", "--clients-dir", &clients]
    )
    .status
    .success());

    let server = ServerKey::load(&d.join("server.key")).unwrap();
    let registry = Registry::load(Path::new(&clients)).unwrap();

    // A native packet from the flags: bob, hybrid, TOTP, pinned source port.
    let code = format!(
        "{:06}",
        registry.clients()[0]
            .totp
            .as_ref()
            .unwrap()
            .code_at(1_800_000_000)
    );
    ok(
        "postern",
        d,
        &[
            "--no-rc-file",
            "--native",
            "--server-key",
            &server_line,
            "--client-key",
            &path("bob.key"),
            "--hybrid",
            "--totp",
            &code,
            "--pin-source-port",
            "40022",
            "-A",
            "tcp/22,udp/53",
            "-a",
            "192.0.2.7",
            "-f",
            "120",
            "-D",
            "127.0.0.1",
            "-T",
            "-B",
            &path("bob.pkt"),
        ],
    );
    let pkt = fs::read(d.join("bob.pkt")).unwrap();
    assert!(spa_native::looks_native(&pkt));
    let opened = open(&pkt, &server, &registry).unwrap();
    assert_eq!(opened.client, "bob");
    assert_eq!(opened.suite, Suite::Hybrid);
    let p = &opened.payload;
    assert_eq!(p.allow.to_string(), "192.0.2.7");
    assert_eq!(
        p.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["tcp/22", "udp/53"]
    );
    assert_eq!((p.timeout, p.source_port), (Some(120), Some(40022)));
    assert_eq!(p.totp.map(|c| format!("{c:06}")), Some(code));

    // From an rc stanza (PROTOCOL native, SERVER_PUBLIC_KEY as a file, CLIENT_KEY_FILE).
    fs::write(d.join("server.pub"), format!("{server_line}\n")).unwrap();
    let rc = d.join("fwknoprc");
    fs::write(
        &rc,
        format!(
            "[carol]\nPROTOCOL native\nSERVER_PUBLIC_KEY {}\nCLIENT_KEY_FILE {}\nACCESS tcp/22\nALLOW_IP 198.51.100.9\nSPA_SERVER 127.0.0.1\n",
            path("server.pub"),
            path("carol.key")
        ),
    )
    .unwrap();
    fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
    ok(
        "postern",
        d,
        &[
            "--rc-file",
            rc.to_str().unwrap(),
            "-n",
            "carol",
            "-T",
            "-B",
            &path("carol.pkt"),
        ],
    );
    let pkt = fs::read(d.join("carol.pkt")).unwrap();
    let opened = open(&pkt, &server, &registry).unwrap();
    assert_eq!(
        (opened.client.as_str(), opened.suite),
        ("carol", Suite::Classic)
    );
    assert_eq!(opened.payload.allow.to_string(), "198.51.100.9");

    // Revoked alice's packet: authenticated, but not registered any more.
    ok(
        "postern",
        d,
        &[
            "--no-rc-file",
            "--native",
            "--server-key",
            &path("server.pub"),
            "--client-key",
            &path("alice.key"),
            "-A",
            "tcp/22",
            "-a",
            "192.0.2.8",
            "-D",
            "127.0.0.1",
            "-T",
            "-B",
            &path("alice.pkt"),
        ],
    );
    let pkt = fs::read(d.join("alice.pkt")).unwrap();
    assert!(matches!(
        open(&pkt, &server, &registry),
        Err(Error::UnknownClient)
    ));

    // A client key others may read is refused by the client.
    fs::set_permissions(d.join("carol.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        "postern",
        d,
        &["--rc-file", rc.to_str().unwrap(), "-n", "carol", "-T"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group or others"));
    // --totp without --native is refused rather than ignored.
    let out = run(
        "postern",
        d,
        &[
            "--no-rc-file",
            "--totp",
            "123456",
            "-A",
            "tcp/22",
            "-a",
            "192.0.2.8",
            "-D",
            "127.0.0.1",
            "-T",
            "--key-base64-rijndael",
            "wzNP62oPPgEc+kXDPQLHPOayQBuNbYUTPP+QrErNDmg=",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--native"));

    // Really sent, to loopback: over UDP from the -S source port, and over TCP (-P tcp).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port().to_string();
    let src_port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let native = [
        "--no-rc-file",
        "--native",
        "--server-key",
        &path("server.pub"),
        "--client-key",
        &path("bob.key"),
        "-A",
        "tcp/22",
        "-a",
        "192.0.2.9",
        "-D",
        "127.0.0.1",
    ];
    let src = src_port.to_string();
    ok(
        "postern",
        d,
        &[&native[..], &["-p", &udp_port, "-S", &src]].concat(),
    );
    let mut buf = [0u8; 2048];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(from.port(), src_port);
    assert_eq!(open(&buf[..n], &server, &registry).unwrap().client, "bob");

    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port().to_string();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut conn, _) = tcp.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    ok(
        "postern",
        d,
        &[&native[..], &["-P", "tcp", "-p", &tcp_port]].concat(),
    );
    let got = reader.join().unwrap();
    assert_eq!(
        open(&got, &server, &registry)
            .unwrap()
            .payload
            .allow
            .to_string(),
        "192.0.2.9"
    );
    // Transports that carry fwknop's text only are refused for native packets.
    let out = run("postern", d, &[&native[..], &["-P", "http"]].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("udp or tcp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // access.conf's native stanza: check-config shows it; serving it without
    // the server key is refused, naming the key file.
    fs::write(d.join("access.conf"), "SOURCE ANY\nPROTOCOL native\nNATIVE_CLIENTS bob, carol\nREQUIRE_TOTP Y\nOPEN_PORTS tcp/22\n").unwrap();
    fs::write(d.join("fwknopd.conf"), "PCAP_INTF lo\n").unwrap();
    for f in ["access.conf", "fwknopd.conf"] {
        fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let conf = ["-c", &path("fwknopd.conf"), "-a", &path("access.conf")];
    let shown = ok("posternd", d, &[&["check-config"][..], &conf].concat());
    assert!(
        shown.contains("protocol = \"native\"") && shown.contains("require_totp = true"),
        "{shown}"
    );
    let out = run("posternd", d, &[&["-f"][..], &conf].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("native server key /etc/postern/server.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
