//! Property tests: every option combination round-trips, no input panics, any bit
//! flip is refused, another server's packets fail at mac1.
mod common;

use common::*;
use proptest::prelude::*;
use spa_native::{
    looks_native, mac1_matches, open, seal, Error, Payload, PortSpec, Proto, SealOptions, MAC1_LEN,
};
use std::net::IpAddr;

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    1u16..=u16::MAX
}

fn payload() -> impl Strategy<Value = Payload> {
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        addr(),
        prop::collection::vec((any::<bool>(), port()), 1..=16),
        prop::option::of((addr(), port())),
        prop::option::of(1u32..),
        prop::option::of(port()),
        prop::option::of(0u32..=99_999_999),
    )
        .prop_map(
            |(timestamp, nonce, allow, ports, nat, timeout, source_port, totp)| Payload {
                timestamp,
                nonce,
                allow,
                ports: ports
                    .into_iter()
                    .map(|(tcp, port)| PortSpec {
                        proto: if tcp { Proto::Tcp } else { Proto::Udp },
                        port,
                    })
                    .collect(),
                nat,
                timeout,
                source_port,
                totp,
            },
        )
}

/// Recompute mac1 so a flipped packet reaches the Noise layer.
fn remac(dgram: &mut [u8], server: &spa_native::ServerPublicKey) {
    use blake2_mac::mac1;
    let n = dgram.len() - MAC1_LEN;
    let tag = mac1(server, &dgram[..n]);
    dgram[n..].copy_from_slice(&tag);
}

/// mac1 recomputed the documented way: BLAKE2s-128 keyed with
/// BLAKE2s-256("mac1----" ‖ server X25519 public key).
mod blake2_mac {
    use blake2::digest::consts::U16;
    use blake2::digest::{FixedOutput, Mac};
    use blake2::{Blake2s256, Blake2sMac, Digest};

    pub fn mac1(server: &spa_native::ServerPublicKey, body: &[u8]) -> [u8; 16] {
        let key: [u8; 32] = Blake2s256::new()
            .chain_update(b"mac1----")
            .chain_update(server.x25519())
            .finalize()
            .into();
        let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(&key).unwrap();
        m.update(body);
        m.finalize_fixed().into()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_then_open_round_trips(p in payload(), hybrid in any::<bool>()) {
        let server = server_key(1);
        let client = client_key(2);
        let other = client_key(3);
        let reg = registry_with(&[("other", &other), ("alice", &client)]);
        let d = seal(&client, server.public(), &p, SealOptions { hybrid }).unwrap();
        prop_assert!(looks_native(&d));
        let o = open(&d, &server, &reg).unwrap();
        prop_assert_eq!(o.client, "alice");
        prop_assert_eq!(o.client_key, client.public());
        prop_assert_eq!(&o.payload, &p);
        prop_assert_eq!(&o.replay_key[..], &d[d.len() - MAC1_LEN - o.payload.encode().unwrap().len() - 16 - 48 - 32..][..32]);
        // The server reads it before opening, for the replay hint.
        prop_assert_eq!(spa_native::replay_key_of(&d), Some(o.replay_key));
        if !hybrid {
            prop_assert!(d.len() <= 1232, "classic packet of {} bytes", d.len());
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500), first in prop::sample::select(vec![0xF1u8, 0xF2, 0x41])) {
        let server = server_key(1);
        let reg = registry_with(&[("alice", &client_key(2))]);
        let mut b = bytes;
        if let Some(x) = b.first_mut() { *x = first; }
        let _ = looks_native(&b);
        prop_assert!(open(&b, &server, &reg).is_err());
        // Past mac1 too: the Noise and payload layers get garbage of the right shape.
        if b.len() > MAC1_LEN {
            remac(&mut b, server.public());
            prop_assert!(open(&b, &server, &reg).is_err());
        }
        let _ = Payload::decode(&b);
    }

    #[test]
    fn any_single_bit_flip_is_refused(p in payload(), hybrid in any::<bool>(), bit in any::<prop::sample::Index>(), fix_mac in any::<bool>()) {
        let server = server_key(1);
        let client = client_key(2);
        let reg = registry_with(&[("alice", &client)]);
        let mut d = seal(&client, server.public(), &p, SealOptions { hybrid }).unwrap();
        let bit = bit.index(d.len() * 8);
        d[bit / 8] ^= 1 << (bit % 8);
        let in_mac = bit / 8 >= d.len() - MAC1_LEN;
        if fix_mac && !in_mac && looks_native(&d) {
            // An attacker who knows the server's public key can fix mac1; the AEAD still refuses.
            remac(&mut d, server.public());
            prop_assert!(matches!(open(&d, &server, &reg), Err(Error::Handshake) | Err(Error::NotNative)));
        } else {
            prop_assert!(open(&d, &server, &reg).is_err());
        }
    }

    #[test]
    fn another_servers_packet_fails_at_mac1(p in payload(), hybrid in any::<bool>()) {
        let ours = server_key(1);
        let theirs = server_key(9);
        let client = client_key(2);
        let reg = registry_with(&[("alice", &client)]);
        let d = seal(&client, theirs.public(), &p, SealOptions { hybrid }).unwrap();
        prop_assert!(!mac1_matches(&d, ours.public()));
        prop_assert!(matches!(open(&d, &ours, &reg), Err(Error::Mac1)));
    }

    #[test]
    fn payload_decode_accepts_only_what_encode_writes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = Payload::decode(&bytes) {
            prop_assert_eq!(p.encode().unwrap(), bytes);
        }
    }
}

#[test]
fn an_unregistered_client_is_refused_after_the_handshake() {
    let server = server_key(1);
    let reg = registry_with(&[("alice", &client_key(2))]);
    for hybrid in [false, true] {
        let d = seal(
            &client_key(7),
            server.public(),
            &minimal_payload(),
            SealOptions { hybrid },
        )
        .unwrap();
        assert!(matches!(open(&d, &server, &reg), Err(Error::UnknownClient)));
    }
}

#[test]
fn fwknop_packets_are_not_native() {
    // Real fwknop packets are base64 text (Rijndael with the `U2FsdGVkX1` prefix stripped,
    // GPG with `hQ` stripped); every byte of base64 is below 0x80.
    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for len in [0usize, 1, 148, 200, 1236, 1500] {
        for &first in b64 {
            let mut pkt = vec![b'A'; len];
            if let Some(x) = pkt.first_mut() {
                *x = first;
            }
            assert!(!looks_native(&pkt));
        }
    }
}

#[test]
fn packet_sizes_are_as_documented() {
    use spa_native::Suite;
    assert_eq!(Suite::Classic.length_range(), (148, 234));
    assert_eq!(Suite::Hybrid.length_range(), (1236, 1322));
    let server = server_key(1);
    let client = client_key(2);
    for (p, hybrid, len) in [
        (minimal_payload(), false, 148),
        (full_payload(), false, 192),
        (minimal_payload(), true, 1236),
        (full_payload(), true, 1280),
    ] {
        assert_eq!(
            seal(&client, server.public(), &p, SealOptions { hybrid })
                .unwrap()
                .len(),
            len
        );
    }
}

#[test]
fn freshness_is_max_age_either_way() {
    let p = minimal_payload(); // timestamp 1_700_000_000
    assert!(p.fresh(1_700_000_120, 120));
    assert!(p.fresh(1_699_999_880, 120));
    assert!(!p.fresh(1_700_000_121, 120));
    assert!(!p.fresh(1_699_999_879, 120));
    assert!(!p.fresh(0, 120) && !p.fresh(u64::MAX, 120));
}

#[test]
fn requests_the_encoding_cannot_carry_are_refused_when_sealing() {
    let server = server_key(1);
    let client = client_key(2);
    let mut too_many = minimal_payload();
    too_many.ports = vec![too_many.ports[0]; 17];
    let mut no_ports = minimal_payload();
    no_ports.ports.clear();
    let mut long_totp = minimal_payload();
    long_totp.totp = Some(100_000_000);
    let mut zero_source = minimal_payload();
    zero_source.source_port = Some(0);
    for p in [too_many, no_ports, long_totp, zero_source] {
        assert!(matches!(
            seal(&client, server.public(), &p, SealOptions::default()),
            Err(Error::Request(_))
        ));
    }
    for bad in ["tcp", "tcp/0", "icmp/1", "tcp/65536", "/22", "tcp/22/1"] {
        assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
    }
}
