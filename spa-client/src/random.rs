//! Randomness from the operating system (spa-core takes it as input).

use rand::rngs::OsRng;
use rand::RngCore;

pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    OsRng.fill_bytes(&mut buf);
    buf
}

pub fn fill(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// A port in 10000..=65534, as fwknop's -r / --nat-rand-port choose them.
pub fn high_port() -> u16 {
    const MIN_HIGH_PORT: u32 = 10_000;
    (MIN_HIGH_PORT + OsRng.next_u32() % (65_535 - MIN_HIGH_PORT)) as u16
}

#[cfg(test)]
mod tests {
    #[test]
    fn high_ports_are_in_range() {
        for _ in 0..1000 {
            assert!((10_000..65_535).contains(&super::high_port()));
        }
        assert_ne!(super::bytes::<16>(), [0u8; 16]);
    }
}
