//! Base64 as fwknop writes it: standard alphabet, `=` padding stripped on output,
//! padding optional on input (keys, fields). The wire ciphertext is read with
//! [`decode_canonical`]: one spelling per packet, so the replay cache cannot be
//! dodged by respelling it.

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

const PADDED: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Only the spelling [`encode_nopad`] writes: no `=`, and the unused low bits of the
/// last character zero (a lenient decoder maps 4 or 16 spellings to the same bytes).
const CANONICAL: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Encode without `=` padding (fwknop's form for every field and the ciphertext).
pub fn encode_nopad(data: &[u8]) -> String {
    LENIENT.encode(data)
}

/// [`encode_nopad`] into `out` (no allocation); returns the length written.
/// `out` must hold the encoding (4 characters per 3 bytes, rounded up).
pub fn encode_nopad_into(data: &[u8], out: &mut [u8]) -> usize {
    LENIENT
        .encode_slice(data, out)
        .expect("the output buffer holds the encoding")
}

/// Encode with `=` padding (the form of keys in access.conf and ~/.fwknoprc).
pub fn encode_padded(data: &[u8]) -> String {
    PADDED.encode(data)
}

/// Decode with or without padding.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

/// Decode the canonical unpadded form only (what fwknop sends): `None` for any
/// other spelling, e.g. padding or non-zero trailing bits in the last character.
pub fn decode_canonical(text: &str) -> Option<Vec<u8>> {
    CANONICAL.decode(text).ok()
}

/// Is every byte in the base64 alphabet (including `=`)? The server runs this
/// over every packet it screens: the common answer (all of them, or garbage
/// found) comes from a branch-free pass the compiler vectorizes, the position
/// only from a second pass over a packet that has a stray byte.
pub fn first_non_base64(data: &[u8]) -> Option<usize> {
    let clean = data
        .chunks(64)
        .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_base64(b)));
    if clean {
        None
    } else {
        data.iter().position(|&b| !is_base64(b))
    }
}

#[inline(always)]
fn is_base64(b: u8) -> bool {
    // Branch-free range checks (wrapping subtraction), not a table lookup.
    (b | 0x20).wrapping_sub(b'a') < 26
        || b.wrapping_sub(b'0') < 10
        || b == b'+'
        || b == b'/'
        || b == b'='
}

#[cfg(test)]
mod charset_tests {
    use super::*;

    #[test]
    fn the_alphabet_is_exactly_base64_and_the_first_stray_byte_is_found() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
            assert_eq!(is_base64(b), want, "byte {b}");
        }
        let mut text = b"QUJD".repeat(100);
        assert_eq!(first_non_base64(&text), None);
        assert_eq!(first_non_base64(b""), None);
        for at in [0, 63, 64, 65, 200, 399] {
            let saved = text[at];
            text[at] = b'-';
            assert_eq!(first_non_base64(&text), Some(at));
            text[at] = saved;
        }
    }
}
