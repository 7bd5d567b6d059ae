//! A plaintext, sealed here with each receiver's key (and its HMAC, computed by
//! the oracle) so the fuzzer reaches the message decoder behind the HMAC: the
//! server must decode it exactly as `decode_plaintext` decodes the plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{check_decoded, check_receive_path, hmac_key, oracle_hmac, receivers, Verdict};
use spa_core::message::decode_plaintext;
use spa_core::packet::{self, RIJNDAEL_PREFIX};
use spa_core::{b64, cipher, gpg};

fuzz_target!(|plaintext: &[u8]| {
    let expected = decode_plaintext(plaintext);
    if let Ok(d) = &expected {
        check_decoded(d);
        let rebuilt = format!("{}:{}", d.encoded_data, d.digest);
        assert_eq!(
            rebuilt.as_bytes(),
            plaintext,
            "encoded_data:digest is the plaintext"
        );
    }
    for (i, s) in receivers().stanzas.iter().enumerate() {
        let Some(key) = s.rijndael_key() else {
            continue;
        };
        if !s.source.contains(postern_fuzz::PEER) {
            continue;
        }
        let blob = cipher::encrypt(plaintext, key.bytes(), s.encryption_mode, b"fuzzsalt")
            .expect("the receivers' keys are valid");
        let full = b64::encode_nopad(&blob);
        let mut wire = full
            .strip_prefix(RIJNDAEL_PREFIX)
            .expect("Salted__ encodes to the prefix")
            .to_string();
        if let Some(h) = hmac_key(s) {
            let tag = oracle_hmac(h.digest, h.key, RIJNDAEL_PREFIX, &wire);
            wire.push_str(&tag);
        }
        let verdicts = check_receive_path(wire.as_bytes());
        if packet::precheck_shape(wire.as_bytes()).is_err() || gpg::carries_prefix(&wire) {
            continue; // refused for its shape alone (too short, too long, `hQ…`)
        }
        match (&verdicts[i], &expected) {
            (Verdict::Decrypted(Ok(got)), Ok(want)) => assert_eq!(got, want, "stanza {i}"),
            (Verdict::Decrypted(Err(_)), Err(_)) => {}
            (got, want) => panic!("stanza {i}: server {got:?}, decode_plaintext {want:?}"),
        }
    }
});
