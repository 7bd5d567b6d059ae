//! `postern --connect HOST:PORT`: knock, wait until HOST:PORT accepts a
//! connection (knocking again if it does not), then carry stdin to it and its
//! answers to stdout, which is what ssh's ProxyCommand expects:
//!
//! ```text
//! Host gw.example
//!     ProxyCommand postern --connect %h:%p -n gw
//! ```
//!
//! stdout is the connection, so everything the knock prints goes to stderr.
//!
//! In native mode the knock pins its grant to the connection's source port:
//! a TCP socket is bound first (port 0, or `--pin-source-port`), the knock
//! carries that port, and the connection is made from it. fwknop's format
//! cannot carry a port, so fwknop knocks connect as before.

use crate::error::{ClientError, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A local TCP port held for `--connect` from before the knock until the
/// connection: the knock may pin its grant to it.
pub struct LocalPort {
    /// Bound, not yet used for a connect attempt.
    socket: Option<socket2::Socket>,
    local: SocketAddr,
}

fn tcp_socket(bind: SocketAddr) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // A failed attempt's socket is closed before the next binds the same port.
    sock.set_reuse_address(true)?;
    sock.bind(&bind.into())?;
    Ok(sock)
}

impl LocalPort {
    /// Bind a TCP socket of `remote`'s family to `port` (0: one the system picks).
    pub fn reserve(remote: &SocketAddr, port: u16) -> Result<LocalPort> {
        let bind = crate::send::any_of_family(remote, port);
        let err = |e: std::io::Error| {
            ClientError::Send(format!(
                "--connect: cannot bind a TCP socket to {bind}: {e}"
            ))
        };
        let socket = tcp_socket(bind).map_err(err)?;
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| err(std::io::Error::other("no local address")))?;
        Ok(LocalPort {
            socket: Some(socket),
            local,
        })
    }

    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// Connect to `to` from this port: the reserved socket first, a new one
    /// bound to the same port for each later attempt.
    pub fn connect(&mut self, to: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let sock = match self.socket.take() {
            Some(s) => s,
            None => tcp_socket(self.local)?,
        };
        sock.connect_timeout(&(*to).into(), timeout)?;
        Ok(sock.into())
    }
}

/// The source port `--connect` offers a native knock to pin its grant to;
/// the knock marks it taken (a fwknop knock does not), so the connection is
/// then made from that port.
#[derive(Clone, Debug)]
pub struct PinOffer {
    pub port: u16,
    taken: Arc<AtomicBool>,
}

impl PinOffer {
    pub fn new(port: u16) -> PinOffer {
        PinOffer {
            port,
            taken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The knock pins its grant to [`PinOffer::port`].
    pub fn take(&self) -> u16 {
        self.taken.store(true, Ordering::SeqCst);
        self.port
    }

    pub fn taken(&self) -> bool {
        self.taken.load(Ordering::SeqCst)
    }
}

/// Knocks sent before giving up: one, and two more if the port stays closed
/// (a lost datagram, a server that was restarting).
pub const KNOCKS: u32 = 3;
/// How long to wait for the port after each knock unless `--wait` says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(3);

/// `HOST:PORT`, `[V6]:PORT`.
pub fn parse_target(text: &str) -> Result<(String, u16)> {
    let bad = || ClientError::usage(format!("--connect expects HOST:PORT, got `{text}`"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Copy `input` to the connection and the connection to `output` until both
/// directions end: stdin's end is passed on as a half-close, so the far side
/// sees EOF and can still answer.
pub fn bridge(
    stream: TcpStream,
    mut input: impl Read + Send,
    output: &mut dyn Write,
) -> Result<()> {
    let io_err =
        |what: &str, e: std::io::Error| ClientError::Send(format!("--connect: {what}: {e}"));
    let mut to_server = stream.try_clone().map_err(|e| io_err("socket", e))?;
    let mut from_server = stream;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // An error here (the server went away) ends this direction only.
            let _ = std::io::copy(&mut input, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
        });
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from_server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", e)),
            };
            output
                .write_all(&buf[..n])
                .and_then(|()| output.flush())
                .map_err(|e| io_err("write", e))?;
        }
        // The server closed: stop reading stdin too (the copy thread may be
        // blocked on it; the process ends with this function).
        let _ = from_server.shutdown(Shutdown::Both);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn targets_read_as_ssh_writes_them() {
        assert_eq!(
            parse_target("gw.example:22").unwrap(),
            ("gw.example".into(), 22)
        );
        assert_eq!(
            parse_target("[2001:db8::1]:2222").unwrap(),
            ("2001:db8::1".into(), 2222)
        );
        assert!(parse_target("gw.example").is_err());
        assert!(parse_target("gw:0").is_err());
    }

    #[test]
    fn both_directions_are_carried_and_eof_is_passed_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap(); // ends at the client's half-close
            s.write_all(b"echo:").unwrap();
            s.write_all(&got).unwrap();
        });
        let mut out = Vec::new();
        bridge(TcpStream::connect(addr).unwrap(), &b"hello"[..], &mut out).unwrap();
        server.join().unwrap();
        assert_eq!(out, b"echo:hello");
    }
}
