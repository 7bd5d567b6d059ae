//! What one packet costs the server at each stage: garbage rejected by the
//! precheck, garbage rejected by the HMAC, and a valid packet fully opened.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use spa_core::packet::{self, HmacKey, PacketKeys, RIJNDAEL_PREFIX};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};

fn keys() -> (Secret, Secret) {
    (
        Secret::from_base64("k", "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=").unwrap(),
        Secret::from_base64("h", "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==").unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let (key, hmac) = keys();
    let pk = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: hmac.bytes(),
        }),
    };
    let msg = SpaMessage {
        rand_val: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: 1_800_000_000,
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: "10.0.0.5,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let wire = packet::seal(&msg, DigestType::Sha256, &pk, &[7; 8]).unwrap();
    let short_garbage = vec![b'A'; 60];
    let binary_garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut forged = wire.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };

    c.bench_function("precheck: short garbage", |b| {
        b.iter(|| packet::precheck(black_box(&short_garbage)).is_err())
    });
    c.bench_function("precheck: binary garbage", |b| {
        b.iter(|| packet::precheck(black_box(&binary_garbage)).is_err())
    });
    let hk = HmacKey {
        digest: DigestType::Sha256,
        key: hmac.bytes(),
    };
    c.bench_function("hmac sha256: forged packet rejected", |b| {
        b.iter(|| {
            let w = packet::precheck(black_box(&forged)).unwrap();
            packet::verify_hmac(w, &hk, RIJNDAEL_PREFIX).is_err()
        })
    });
    c.bench_function("charset: a knock's length of base64", |b| {
        b.iter(|| packet::check_charset(black_box(wire.as_bytes())).is_ok())
    });
    let keyed = spa_core::digest::KeyedHmac::new(DigestType::Sha256, hmac.bytes());
    c.bench_function("keyed hmac sha256: forged packet rejected", |b| {
        b.iter(|| packet::verify_keyed_hmac(black_box(&forged), &keyed, RIJNDAEL_PREFIX).is_err())
    });
    c.bench_function("open: valid packet (hmac + aes-cbc + fields)", |b| {
        b.iter(|| packet::open(black_box(wire.as_bytes()), &pk).unwrap())
    });
    c.bench_function("seal: build a packet", |b| {
        b.iter(|| packet::seal(black_box(&msg), DigestType::Sha256, &pk, &[7; 8]).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
