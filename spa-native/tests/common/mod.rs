//! Fixed keys and requests shared by the vector, property and registry tests.
#![allow(dead_code)]
use std::net::IpAddr;

use spa_native::{ClientEntry, ClientKey, Payload, PortSpec, Proto, Registry, ServerKey};

pub fn server_key(tag: u8) -> ServerKey {
    ServerKey::from_secrets([tag; 32], [tag.wrapping_add(1); 64])
}

pub fn client_key(tag: u8) -> ClientKey {
    ClientKey::from_secret([tag; 32])
}

pub fn registry_with(clients: &[(&str, &ClientKey)]) -> Registry {
    let mut r = Registry::default();
    for (name, key) in clients {
        r.insert(ClientEntry {
            name: name.to_string(),
            key: key.public(),
            totp: None,
            path: format!("/test/{name}.pub").into(),
        })
        .unwrap();
    }
    r
}

pub fn minimal_payload() -> Payload {
    Payload {
        timestamp: 1_700_000_000,
        nonce: [0x11; 16],
        allow: "192.0.2.10".parse().unwrap(),
        ports: vec![PortSpec {
            proto: Proto::Tcp,
            port: 22,
        }],
        nat: None,
        timeout: None,
        source_port: None,
        totp: None,
    }
}

pub fn full_payload() -> Payload {
    Payload {
        timestamp: 1_700_000_123,
        nonce: [0x22; 16],
        allow: "2001:db8::10".parse::<IpAddr>().unwrap(),
        ports: vec![
            PortSpec {
                proto: Proto::Tcp,
                port: 22,
            },
            PortSpec {
                proto: Proto::Udp,
                port: 51820,
            },
        ],
        nat: Some(("2001:db8::20".parse().unwrap(), 2222)),
        timeout: Some(300),
        source_port: Some(40022),
        totp: Some(123_456),
    }
}
