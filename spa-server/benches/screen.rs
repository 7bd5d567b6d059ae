//! What a packet of a flood costs posternd's capture thread in user space:
//! the screen (shape, charset, HMAC) and the replay hint, as a capture runs
//! them on the bytes in its buffer. The kernel's receive is not in it;
//! postern-bench measures the whole (README).
//!
//! `cargo bench -p spa-server --bench screen`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_server::capture::offer_blocking;
use spa_server::config::{AccessStanza, AddrList, ServerConfig};
use spa_server::pipeline::{self, Keyring, Received};
use spa_server::policy::PolicySettings;
use spa_server::replay::{packet_digest, MemoryStore, ReplayStore};
use std::net::SocketAddr;
use std::sync::Arc;

const KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
const HMAC: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

fn knock() -> String {
    let key = Secret::from_base64("k", KEY).unwrap();
    let hmac = Secret::from_base64("h", HMAC).unwrap();
    let msg = SpaMessage {
        rand_val: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: 1_800_000_000,
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: "127.0.0.1,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let keys = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: hmac.bytes(),
        }),
    };
    packet::seal(&msg, DigestType::Sha256, &keys, &[7; 8]).unwrap()
}

/// 4,096 strings of base64 of `len` bytes, from a fixed seed.
fn same_length_garbage(len: usize) -> Vec<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..4096)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ALPHABET[(state % 64) as usize]
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = runtime.enter();
    let mut stanza = AccessStanza::new(AddrList::Any);
    stanza.key_base64 = Some(Secret::from_base64("k", KEY).unwrap());
    stanza.hmac_key_base64 = Some(Secret::from_base64("h", HMAC).unwrap());
    let keyring = Arc::new(Keyring::new(vec![stanza]));
    let store = Arc::new(MemoryStore::default());
    let wire = knock();
    runtime
        .block_on(store.check_and_insert(packet_digest(wire.as_bytes()), 1_800_000_000))
        .unwrap();
    let (actions, _kept) = tokio::sync::mpsc::channel(1);
    let server = ServerConfig::default().server;
    let mut capture = pipeline::build_with_gpg(
        keyring,
        store,
        PolicySettings::of(&server),
        actions,
        64,
        None,
    );
    let received = |bytes| Received {
        bytes,
        peer: SocketAddr::new([198, 51, 100, 7].into(), 40000),
        forwarded_for: None,
        destination: None,
        received_at: 1_800_000_000,
        capture: "bench",
    };
    let garbage = same_length_garbage(wire.len());
    let mut next = garbage.iter().cycle();
    let handle = runtime.handle().clone();
    for (what, kind) in [
        ("garbage of a knock's length", None),
        ("a replay of a granted knock", Some(wire.as_bytes())),
    ] {
        let mut bytes = || kind.unwrap_or_else(|| next.next().unwrap());
        c.bench_function(&format!("screen: {what}"), |b| {
            b.iter(|| capture.screen(received(black_box(bytes()))).is_err())
        });
        // What the capture thread does per packet: the screen, the
        // refusal's metrics, attack watch, audit and log line.
        c.bench_function(&format!("offer: {what}"), |b| {
            b.iter(|| offer_blocking(&mut capture, received(black_box(bytes())), &handle))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
