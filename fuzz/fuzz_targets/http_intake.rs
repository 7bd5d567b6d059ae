//! A TCP/pcap payload through `Intake::spa_packet` (which uses
//! `spa_core::http::receive` and `forwarded_for`) with every intake setting,
//! and the client's HTTP request form read back by the server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spa_core::http::{self, Received};
use spa_core::packet::MIN_WIRE_LEN;
use spa_server::capture::Intake;
use std::borrow::Cow;

fn starts_with_get(payload: &[u8]) -> bool {
    payload.len() >= 5 && payload[..5].eq_ignore_ascii_case(b"GET /")
}

/// Does `payload` carry `X-Forwarded-For: <ip>` (header name in any case)?
fn names_forwarded(payload: &[u8], ip: &str) -> bool {
    let needle = format!("x-forwarded-for: {ip}");
    payload
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fuzz_target!(|payload: &[u8]| {
    let peer = "127.0.0.1:62201".parse().unwrap();
    for bits in 0..8u8 {
        let intake = Intake {
            spa_over_http: bits & 1 != 0,
            any_user_agent: bits & 2 != 0,
            x_forwarded_for: bits & 4 != 0,
        };
        let carried = intake.spa_packet(payload, peer);
        if !intake.spa_over_http || !starts_with_get(payload) {
            let c = carried.expect("a payload that is not HTTP is judged as it is");
            assert!(matches!(c.packet, Cow::Borrowed(p) if p == payload));
            assert!(c.forwarded_for.is_none());
            continue;
        }
        let Some(c) = carried else {
            continue; // refused: a GET that cannot carry a knock
        };
        let packet = &c.packet[..];
        assert!(packet.len() >= MIN_WIRE_LEN, "short HTTP path taken");
        assert!(!packet.iter().any(|b| b.is_ascii_whitespace()));
        assert!(
            !packet.contains(&b'-') && !packet.contains(&b'_'),
            "URL form left in"
        );
        assert_eq!(
            packet.len(),
            payload[5..]
                .iter()
                .take_while(|b| !b.is_ascii_whitespace())
                .count()
        );
        if !intake.any_user_agent {
            assert!(payload.windows(18).any(|w| w == b"User-Agent: Fwknop"));
        }
        match c.forwarded_for {
            Some(ip) => {
                assert!(intake.x_forwarded_for);
                assert!(
                    names_forwarded(payload, &ip.to_string()),
                    "{ip} not in the request"
                );
            }
            None => assert!(!intake.x_forwarded_for || http::forwarded_for(payload).is_none()),
        }
    }

    // The client's request for any base64 packet comes back out unchanged.
    let wire: String = payload
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
        .map(|&b| char::from(b))
        .collect();
    let request = http::request(&wire, "192.0.2.1", "Fwknop/2.6.10");
    let expected = if wire.len() >= MIN_WIRE_LEN {
        Received::Spa(wire.clone().into_bytes())
    } else {
        Received::Refused("HTTP request path too short for an SPA packet")
    };
    assert_eq!(http::receive(request.as_bytes(), false), expected);
});
