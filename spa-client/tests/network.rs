//! Sending over UDP and TCP, and -R address resolution against a tiny local
//! HTTP server. Everything stays on 127.0.0.1.

mod common;

use common::*;
use spa_core::{DigestType, EncryptionMode};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::thread;
use std::time::Duration;

/// Serve `body` to `count` HTTP requests; returns the URL.
fn http_server(body: &'static str, status: &'static str, count: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/cgi-bin/myip")
}

#[test]
fn resolve_ip_from_local_http_server() {
    let env = Env::new();
    let url = http_server("203.0.113.77\n", "200 OK", 2);
    let pkt = env.path("r.pkt");
    let out = env.run(&[
        "-T",
        "--no-rc-file",
        "-B",
        pkt.to_str().unwrap(),
        "-A",
        "tcp/22",
        "-R",
        "--resolve-url",
        &url,
        "--key-rijndael",
        "pw",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = open(&read_packet(&pkt), b"pw", EncryptionMode::Cbc, None).message;
    assert_eq!(m.message, "203.0.113.77,tcp/22");

    // --resolve-url alone implies -R; -v reports the address.
    let out = env.ok(&[
        "-T",
        "-v",
        "--no-rc-file",
        "-B",
        pkt.to_str().unwrap(),
        "-A",
        "tcp/22",
        "--resolve-url",
        &url,
        "--key-rijndael",
        "pw",
    ]);
    assert!(
        out.contains("[+] Resolved external IP (via '") && out.contains("as: 203.0.113.77"),
        "{out}"
    );
}

#[test]
fn resolve_from_rc_file_and_http_only() {
    let env = Env::new();
    let url = http_server("198.51.100.3", "200 OK", 1);
    std::fs::write(env.rc_path(), format!("[default]\nALLOW_IP resolve\nRESOLVE_URL {url}\nRESOLVE_HTTP_ONLY Y\nKEY pw\nACCESS udp/53\n")).unwrap();
    std::fs::set_permissions(
        env.rc_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pkt = env.path("r.pkt");
    env.ok(&["-T", "-B", pkt.to_str().unwrap()]);
    assert_eq!(
        open(&read_packet(&pkt), b"pw", EncryptionMode::Cbc, None)
            .message
            .message,
        "198.51.100.3,udp/53"
    );
}

#[test]
fn resolver_failures_are_one_line() {
    let env = Env::new();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{dead}/myip");
    let line = env.fails(&[
        "-T",
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-R",
        "--resolve-url",
        &url,
        "--key-rijndael",
        "pw",
    ]);
    assert!(line.contains("resolve") && line.contains(&url), "{line}");

    let garbage = http_server("<html>no ip here</html>", "200 OK", 1);
    let line = env.fails(&[
        "-T",
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-R",
        "--resolve-url",
        &garbage,
        "--key-rijndael",
        "pw",
    ]);
    assert!(line.contains("no IP address"), "{line}");

    let err = http_server("oops", "500 Internal Server Error", 1);
    let line = env.fails(&[
        "-T",
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-R",
        "--resolve-url",
        &err,
        "--key-rijndael",
        "pw",
    ]);
    assert!(line.contains("500"), "{line}");
}

#[test]
fn udp_packet_reaches_the_server() {
    let env = Env::new();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = rx.local_addr().unwrap().port().to_string();
    let pkt = env.path("u.pkt");
    let out = env.ok(&[
        "--no-rc-file",
        "-D",
        "127.0.0.1",
        "-p",
        &port,
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-B",
        pkt.to_str().unwrap(),
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        HMAC_B64,
        "-v",
    ]);
    assert!(
        out.contains(&format!("    destination port: {port}\n")),
        "{out}"
    );
    let mut buf = [0u8; 2048];
    let (n, _) = rx.recv_from(&mut buf).unwrap();
    let wire = std::str::from_utf8(&buf[..n]).unwrap();
    assert_eq!(wire, read_packet(&pkt));
    assert!(
        out.contains(&format!("send_spa_packet: bytes sent: {n}")),
        "{out}"
    );
    let d = open(
        wire,
        &b64(KEY_B64),
        EncryptionMode::Cbc,
        Some((DigestType::Sha256, &b64(HMAC_B64))),
    );
    assert_eq!(d.message.message, "10.0.0.5,tcp/22");
}

#[test]
fn tcp_packet_reaches_the_server() {
    let env = Env::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut v = String::new();
        s.read_to_string(&mut v).unwrap();
        v
    });
    env.ok(&[
        "--no-rc-file",
        "-D",
        "127.0.0.1",
        "-P",
        "tcp",
        "-p",
        &port,
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "pw",
    ]);
    let wire = h.join().unwrap();
    assert_eq!(
        open(&wire, b"pw", EncryptionMode::Cbc, None)
            .message
            .message,
        "10.0.0.5,tcp/22"
    );
}

#[test]
fn refused_tcp_connection_is_one_line() {
    let env = Env::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let line = env.fails(&[
        "--no-rc-file",
        "-D",
        "127.0.0.1",
        "-P",
        "tcp",
        "-p",
        &port,
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "pw",
    ]);
    assert!(line.contains("tcp"), "{line}");
}

/// The `[+]` line of `-v` output starting with `prefix`, if any.
fn line_with<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout.lines().find(|l| l.starts_with(prefix))
}

/// `-v` says where the allow address came from, what the packet asks for and
/// its size, what the server name resolved to, and how many bytes went over
/// which protocol from where to where: each checked against what the
/// receiving socket saw.
#[test]
fn verbose_says_what_was_resolved_and_sent_and_where() {
    let env = Env::new();
    let keys = [
        "--key-base64-rijndael",
        KEY_B64,
        "--use-hmac",
        "--key-base64-hmac",
        HMAC_B64,
    ];

    // UDP to a name (localhost), -a.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port().to_string();
    let mut args = vec![
        "-v",
        "--no-rc-file",
        "--no-save-args",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
    ];
    args.extend(["-D", "localhost", "-p", &port]);
    args.extend(keys);
    let out = env.ok(&args);
    let mut buf = [0u8; 2048];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    for want in [
        "[+] Allow IP: 10.0.0.5 (from -a)".to_string(),
        "[+] Request: 10.0.0.5,tcp/22 (Access msg)".into(),
        format!("[+] SPA packet: {n} bytes"),
        format!("[+] Sent {n} bytes over udp from {from} to 127.0.0.1:{port}"),
    ] {
        assert!(out.lines().any(|l| l == want), "no `{want}` in\n{out}");
    }
    let resolved = line_with(&out, "[+] SPA server localhost resolves to ").unwrap_or_default();
    assert!(
        resolved.starts_with("[+] SPA server localhost resolves to 127.0.0.1"),
        "{out}"
    );

    // TCP to an address, -s.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let accepted = thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        (v.len(), peer)
    });
    let mut args = vec![
        "-v",
        "--no-rc-file",
        "--no-save-args",
        "-A",
        "tcp/22",
        "-s",
        "-P",
        "tcp",
    ];
    args.extend(["-D", "127.0.0.1", "-p", &port]);
    args.extend(keys);
    let out = env.ok(&args);
    let (n, peer) = accepted.join().unwrap();
    for want in [
        "[+] Allow IP: 0.0.0.0 (from -s): the server opens for the packet's source address"
            .to_string(),
        "[+] Request: 0.0.0.0,tcp/22 (Access msg)".into(),
        format!("[+] SPA packet: {n} bytes"),
        "[+] SPA server 127.0.0.1 resolves to 127.0.0.1".into(),
        format!("[+] Sent {n} bytes over tcp from {peer} to 127.0.0.1:{port}"),
    ] {
        assert!(out.lines().any(|l| l == want), "no `{want}` in\n{out}");
    }

    // HTTP through a proxy (the listener): the proxy is what is resolved and
    // reached, the server's name is not looked up; -R names its URL.
    let url = http_server("203.0.113.77\n", "200 OK", 1);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    let accepted = thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        (v.len(), peer)
    });
    let mut args = vec!["-v", "--no-rc-file", "--no-save-args", "-A", "tcp/22", "-R"];
    args.extend(["--resolve-url", &url, "-H", &proxy, "-D", "spa.invalid"]);
    args.extend(keys);
    let out = env.ok(&args);
    let (n, peer) = accepted.join().unwrap();
    for want in [
        format!("[+] Allow IP: 203.0.113.77 (from -R, resolved via {url})"),
        "[+] HTTP proxy 127.0.0.1 resolves to 127.0.0.1".into(),
        format!("[+] Sent {n} bytes over http from {peer} to {proxy}"),
    ] {
        assert!(out.lines().any(|l| l == want), "no `{want}` in\n{out}");
    }

    // ALLOW_IP from the rc file; -T sends nothing, so nothing is resolved.
    std::fs::write(env.rc_path(), "[default]\nALLOW_IP 10.0.0.9\n").unwrap();
    std::fs::set_permissions(
        env.rc_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut args = vec![
        "-v",
        "-T",
        "--no-save-args",
        "-A",
        "udp/53",
        "-D",
        "localhost",
    ];
    args.extend(keys);
    let out = env.ok(&args);
    assert!(
        out.lines()
            .any(|l| l == "[+] Allow IP: 10.0.0.9 (from the rc file)")
            && out
                .lines()
                .any(|l| l == "[+] Request: 10.0.0.9,udp/53 (Access msg)")
            && line_with(&out, "[+] SPA server").is_none()
            && line_with(&out, "[+] Sent").is_none(),
        "{out}"
    );
}
