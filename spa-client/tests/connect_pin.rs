//! `postern --native --connect HOST:PORT` pins its knock's grant to the
//! connection's own source port: the sealed packet (opened here with the
//! server's key) carries exactly the port the connection then comes from.
//! Loopback only: a UDP socket stands in for posternd's capture, a TCP
//! listener for the service.

use spa_native::{ClientEntry, ClientKey, Registry, ServerKey};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_knock_is_pinned_to_the_port_the_connection_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerKey::generate().unwrap();
    let client = ClientKey::generate().unwrap();
    let key_file = dir.path().join("client.key");
    client.write_new(&key_file).unwrap();
    let mut registry = Registry::default();
    registry
        .insert(ClientEntry {
            name: "erin".into(),
            key: client.public(),
            totp: None,
            path: dir.path().join("erin.pub"),
        })
        .unwrap();

    let capture = UdpSocket::bind("127.0.0.1:0").unwrap();
    capture
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let service_port = service.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        let (mut conn, peer) = service.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(b"served").unwrap();
        (peer, got)
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["--no-rc-file", "--native", "--server-key"])
        .arg(server.public().to_line())
        .arg("--client-key")
        .arg(&key_file)
        .args(["-a", "127.0.0.1", "-p"])
        .arg(capture.local_addr().unwrap().port().to_string())
        .arg("--connect")
        .arg(format!("127.0.0.1:{service_port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello").unwrap();

    let mut buf = [0u8; 4096];
    let (n, _) = capture.recv_from(&mut buf).expect("the knock");
    let opened = spa_native::open(&buf[..n], &server, &registry).expect("a valid knock");
    let (peer, got) = accepted.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(got, b"hello");
    assert_eq!(out.stdout, b"served");
    assert_eq!(
        opened.payload.source_port,
        Some(peer.port()),
        "the grant is pinned to the connection's source port"
    );
}

/// An explicit --pin-source-port is both what the knock pins and where the
/// connection comes from.
#[test]
fn an_explicit_pin_is_the_connections_source_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerKey::generate().unwrap();
    let client = ClientKey::generate().unwrap();
    let key_file = dir.path().join("client.key");
    client.write_new(&key_file).unwrap();
    let mut registry = Registry::default();
    registry
        .insert(ClientEntry {
            name: "erin".into(),
            key: client.public(),
            totp: None,
            path: dir.path().join("erin.pub"),
        })
        .unwrap();
    let capture = UdpSocket::bind("127.0.0.1:0").unwrap();
    capture
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let service_port = service.local_addr().unwrap().port();
    // A free port to pin: bound and released.
    let pin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let accepted = std::thread::spawn(move || service.accept().unwrap().1);
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["--no-rc-file", "--native", "--server-key"])
        .arg(server.public().to_line())
        .arg("--client-key")
        .arg(&key_file)
        .args(["-a", "127.0.0.1", "-p"])
        .arg(capture.local_addr().unwrap().port().to_string())
        .args(["--pin-source-port", &pin.to_string(), "--connect"])
        .arg(format!("127.0.0.1:{service_port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 4096];
    let (n, _) = capture.recv_from(&mut buf).expect("the knock");
    let opened = spa_native::open(&buf[..n], &server, &registry).expect("a valid knock");
    assert_eq!(opened.payload.source_port, Some(pin));
    assert_eq!(accepted.join().unwrap().port(), pin);
}
