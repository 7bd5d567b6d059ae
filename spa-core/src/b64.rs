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

/// Is every byte in the base64 alphabet (including `=`)?
pub fn first_non_base64(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| !IS_BASE64[usize::from(b)])
}

/// One lookup per byte: the server runs this over every packet it screens.
static IS_BASE64: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
        b += 1;
    }
    table
};
