//! `--wait[=SECONDS]`: after the knock, connect to each TCP port it asked for
//! until the connect succeeds or the time is up, so a script (or a person)
//! knows the door is open before going on. Only TCP can be probed: a UDP port
//! gives no answer to tell open from closed.

use crate::error::{ClientError, Result};
use crate::send::Family;
use spa_core::request::{parse_proto_ports, Proto};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one connect attempt may take, and the pause between attempts.
const ATTEMPT: Duration = Duration::from_millis(300);
const PAUSE: Duration = Duration::from_millis(100);

/// The TCP ports of an access list (`tcp/22,udp/53` → 22).
pub fn tcp_ports(access: &str) -> Result<Vec<u16>> {
    let ports: Vec<u16> = parse_proto_ports(access)
        .map_err(|e| ClientError::usage(format!("--wait: {e}")))?
        .into_iter()
        .filter(|p| p.proto == Proto::Tcp)
        .map(|p| p.port)
        .collect();
    if ports.is_empty() {
        return Err(ClientError::usage(format!(
            "--wait probes TCP ports, and `{access}` asks for none"
        )));
    }
    Ok(ports)
}

/// Probe `host:port` for each port until all accept a connection, or `within`
/// passes. `progress` hears each probe's outcome (for `-v`).
pub fn until_open(
    host: &str,
    family: Family,
    ports: &[u16],
    within: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Duration> {
    let start = Instant::now();
    for &port in ports {
        let left = within.saturating_sub(start.elapsed());
        connect_when_open(host, family, port, left, within, progress)?;
    }
    Ok(start.elapsed())
}

/// Connect to `host:port`, retrying until it accepts or `left` passes; the
/// connection is returned (`--connect` carries it on). `within` is the whole
/// wait, for the message.
pub fn connect_when_open(
    host: &str,
    family: Family,
    port: u16,
    left: Duration,
    within: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<TcpStream> {
    let addr = crate::send::addresses("host", host, port, family)?[0];
    connect_addr_when_open(addr, left, within, progress, &mut |a, t| {
        TcpStream::connect_timeout(a, t)
    })
}

/// [`connect_when_open`] to a resolved address, each attempt made by `connect`
/// (`--connect` connects from the port its knock pinned).
pub fn connect_addr_when_open(
    addr: SocketAddr,
    left: Duration,
    within: Duration,
    progress: &mut dyn FnMut(&str),
    connect: &mut dyn FnMut(&SocketAddr, Duration) -> std::io::Result<TcpStream>,
) -> Result<TcpStream> {
    let port = addr.port();
    let deadline = Instant::now() + left;
    loop {
        match connect(&addr, ATTEMPT) {
            Ok(stream) => {
                progress(&format!("tcp/{port} on {addr} is open"));
                return Ok(stream);
            }
            Err(e) => {
                progress(&format!("tcp/{port} on {addr}: {e}"));
                if Instant::now() + PAUSE >= deadline {
                    return Err(ClientError::Send(format!(
                        "tcp/{port} on {addr} did not open within {} s",
                        within.as_secs_f32()
                    )));
                }
                std::thread::sleep(PAUSE);
            }
        }
    }
}

/// `tcp/22, tcp/443` for messages.
pub fn describe(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("tcp/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn only_tcp_ports_are_probed() {
        assert_eq!(tcp_ports("tcp/22,udp/53,tcp/443").unwrap(), [22, 443]);
        assert!(tcp_ports("udp/53").is_err());
    }

    #[test]
    fn an_open_port_is_seen_and_a_closed_one_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let mut said = Vec::new();
        until_open(
            "127.0.0.1",
            Family::Any,
            &[open],
            Duration::from_secs(2),
            &mut |l| said.push(l.to_string()),
        )
        .unwrap();
        assert!(said[0].ends_with("is open"), "{said:?}");
        drop(listener);
        let err = until_open(
            "127.0.0.1",
            Family::Any,
            &[open],
            Duration::from_millis(300),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("did not open within 0.3 s"),
            "{err}"
        );
    }
}
