//! Test vectors: fixed keys, fixed ephemeral key, fixed ML-KEM randomness and fixed
//! payloads give exactly the bytes in `tests/data/vectors.json`. Regenerate (after a
//! deliberate format change only) with
//! `POSTERN_WRITE_VECTORS=1 cargo test -p spa-native --test vectors`.
mod common;

use common::*;
use serde_json::{json, Value};
use spa_native::{open, seal_with, Payload, SealOptions, SealRandomness, Suite};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");

struct Case {
    name: &'static str,
    hybrid: bool,
    payload: Payload,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "classic-minimal-ipv4",
            hybrid: false,
            payload: minimal_payload(),
        },
        Case {
            name: "classic-every-option-ipv6",
            hybrid: false,
            payload: full_payload(),
        },
        Case {
            name: "hybrid-minimal-ipv4",
            hybrid: true,
            payload: minimal_payload(),
        },
        Case {
            name: "hybrid-every-option-ipv6",
            hybrid: true,
            payload: full_payload(),
        },
    ]
}

fn generate() -> Value {
    let server = server_key(0x51);
    let client = client_key(0xC1);
    let rnd = SealRandomness {
        ephemeral: [0xE0; 32],
        kem_m: [0x4D; 32],
    };
    let vectors: Vec<Value> = cases()
        .iter()
        .map(|c| {
            let dgram = seal_with(
                &client,
                server.public(),
                &c.payload,
                SealOptions { hybrid: c.hybrid },
                &rnd,
            )
            .unwrap();
            json!({
                "name": c.name,
                "hybrid": c.hybrid,
                "payload": {
                    "timestamp": c.payload.timestamp,
                    "nonce": hex::encode(c.payload.nonce),
                    "allow": c.payload.allow.to_string(),
                    "ports": c.payload.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "nat": c.payload.nat.map(|(a, p)| format!("{a},{p}")),
                    "timeout": c.payload.timeout,
                    "source_port": c.payload.source_port,
                    "totp": c.payload.totp,
                },
                "payload_hex": hex::encode(c.payload.encode().unwrap()),
                "datagram_len": dgram.len(),
                "datagram_hex": hex::encode(&dgram),
            })
        })
        .collect();
    json!({
        "comment": "postern native protocol v1 test vectors; see docs/protocol.md",
        "server_x25519_secret": hex::encode([0x51u8; 32]),
        "server_kem_seed": hex::encode([0x52u8; 64]),
        "server_public_line": server.public().to_line(),
        "client_x25519_secret": hex::encode([0xC1u8; 32]),
        "client_public_line": client.public().to_line(),
        "ephemeral_secret": hex::encode(rnd.ephemeral),
        "kem_m": hex::encode(rnd.kem_m),
        "vectors": vectors,
    })
}

#[test]
fn vectors_match_the_file() {
    let fresh = generate();
    if std::env::var_os("POSTERN_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        stored, fresh,
        "vectors changed; regenerate only for a deliberate format change"
    );
}

#[test]
fn stored_vectors_open_to_their_payloads() {
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let server = server_key(0x51);
    let client = client_key(0xC1);
    let reg = registry_with(&[("vector-client", &client)]);
    let cases = cases();
    let vectors = stored["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), cases.len());
    for (v, c) in vectors.iter().zip(&cases) {
        let dgram = hex::decode(v["datagram_hex"].as_str().unwrap()).unwrap();
        assert!(spa_native::looks_native(&dgram));
        let opened = open(&dgram, &server, &reg).unwrap();
        assert_eq!(opened.client, "vector-client");
        assert_eq!(opened.payload, c.payload);
        assert_eq!(
            opened.suite,
            if c.hybrid {
                Suite::Hybrid
            } else {
                Suite::Classic
            }
        );
        assert_eq!(
            hex::encode(opened.payload.encode().unwrap()),
            v["payload_hex"].as_str().unwrap()
        );
    }
}
