//! postern's native protocol (docs/protocol.md) on arbitrary bytes: `open` as
//! received (mac1 refuses almost everything), then with mac1 recomputed for the
//! server's public key so the ML-KEM, Noise and payload layers see the input.
//! The keys are those of spa-native's vectors, whose datagrams seed the corpus:
//! nothing may panic; the only packets that open are the vectors' own (same
//! client, same ephemeral key: the fuzzer cannot make a new one without the
//! client's key); a payload that decodes must encode back to the same bytes.
#![no_main]

use std::sync::OnceLock;

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use libfuzzer_sys::fuzz_target;
use spa_native::{open, ClientEntry, ClientKey, Payload, Registry, ServerKey, MAC1_LEN};

fn fixture() -> &'static (ServerKey, Registry) {
    static F: OnceLock<(ServerKey, Registry)> = OnceLock::new();
    F.get_or_init(|| {
        let server = ServerKey::from_secrets([0x51; 32], [0x52; 64]);
        let mut reg = Registry::default();
        reg.insert(ClientEntry {
            name: "fuzz".into(),
            key: ClientKey::from_secret([0xC1; 32]).public(),
            totp: None,
            path: "fuzz.pub".into(),
        })
        .unwrap();
        (server, reg)
    })
}

fn remac(d: &mut [u8], server: &ServerKey) {
    let key: [u8; 32] = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(server.public().x25519())
        .finalize()
        .into();
    let n = d.len() - MAC1_LEN;
    let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(&key).unwrap();
    m.update(&d[..n]);
    let tag: [u8; 16] = m.finalize_fixed().into();
    d[n..].copy_from_slice(&tag);
}

fuzz_target!(|data: &[u8]| {
    let (server, reg) = fixture();
    assert!(open(data, server, reg).is_err() || spa_native::looks_native(data));
    if data.len() > MAC1_LEN {
        let mut d = data.to_vec();
        remac(&mut d, server);
        // Without the client's key no new packet authenticates: whatever opens is
        // a vector (ephemeral secret e0…e0), perhaps with a mac1 the fuzzer broke.
        if let Ok(o) = open(&d, server, reg) {
            assert_eq!(o.client, "fuzz");
            assert_eq!(o.replay_key, ClientKey::from_secret([0xE0; 32]).public().0);
            assert_eq!(Payload::decode(&o.payload.encode().unwrap()).unwrap(), o.payload);
        }
    }
    if let Ok(p) = Payload::decode(data) {
        assert_eq!(p.encode().unwrap(), data);
    }
});
