//! Per-packet costs of the native protocol: seal, open, mac1 rejection of garbage,
//! a forged packet that passes mac1, with and without the hybrid.
//! `cargo bench -p spa-native --bench native`
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use spa_native::{
    open, seal, ClientEntry, ClientKey, Payload, PortSpec, Registry, SealOptions, ServerKey,
    MAC1_LEN,
};

fn setup() -> (ServerKey, ClientKey, Registry, Payload) {
    let server = ServerKey::from_secrets([1; 32], [2; 64]);
    let client = ClientKey::from_secret([3; 32]);
    let mut reg = Registry::default();
    reg.insert(ClientEntry {
        name: "bench".into(),
        key: client.public(),
        totp: None,
        path: "bench.pub".into(),
    })
    .unwrap();
    let payload = Payload::new(
        "192.0.2.1".parse().unwrap(),
        vec!["tcp/22".parse::<PortSpec>().unwrap()],
        1_700_000_000,
    )
    .unwrap();
    (server, client, reg, payload)
}

/// Recompute mac1 as an attacker who knows the server's public key can.
fn remac(d: &mut [u8], server: &ServerKey) {
    use blake2::digest::consts::U16;
    use blake2::digest::{FixedOutput, Mac};
    use blake2::{Blake2s256, Blake2sMac, Digest};
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

/// This thread's CPU time: unlike criterion's wall-clock times it does not count
/// time spent waiting for a core, so it holds on a busy machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time per call of `f`, averaged over `n` calls.
fn cpu_per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let start = thread_cpu();
    for _ in 0..n {
        f();
    }
    (thread_cpu() - start) / n
}

fn bench(c: &mut Criterion) {
    let (server, client, reg, payload) = setup();
    for (label, hybrid) in [("classic", false), ("hybrid", true)] {
        let opts = SealOptions { hybrid };
        let good = seal(&client, server.public(), &payload, opts).unwrap();
        println!("packet size {label}: {} bytes", good.len());
        c.bench_function(&format!("native/seal/{label}"), |b| {
            b.iter(|| seal(&client, server.public(), black_box(&payload), opts).unwrap())
        });
        c.bench_function(&format!("native/open/{label}"), |b| {
            b.iter(|| open(black_box(&good), &server, &reg).unwrap())
        });
        // Garbage of a real packet's length with the right first byte: refused at mac1.
        let mut garbage = good.clone();
        for (i, b) in garbage.iter_mut().enumerate().skip(1) {
            *b = (i as u8).wrapping_mul(31);
        }
        c.bench_function(&format!("native/reject-garbage-mac1/{label}"), |b| {
            b.iter(|| assert!(open(black_box(&garbage), &server, &reg).is_err()))
        });
        // A forgery that passes mac1: the Noise layer refuses it.
        let mut forged = garbage.clone();
        remac(&mut forged, &server);
        c.bench_function(&format!("native/reject-forged-past-mac1/{label}"), |b| {
            b.iter(|| assert!(open(black_box(&forged), &server, &reg).is_err()))
        });
        let n = 2000;
        println!(
            "cpu/{label}: seal {:?}, open {:?}, garbage at mac1 {:?}, forged past mac1 {:?}, other first byte {:?}",
            cpu_per_call(n, || drop(black_box(seal(&client, server.public(), &payload, opts)))),
            cpu_per_call(n, || drop(black_box(open(&good, &server, &reg)))),
            cpu_per_call(n * 100, || drop(black_box(open(black_box(&garbage), &server, &reg)))),
            cpu_per_call(n, || drop(black_box(open(&forged, &server, &reg)))),
            cpu_per_call(n * 100, || drop(black_box(open(black_box(&good[1..]), &server, &reg)))),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
