//! A received UDP payload, as is: the server's screening (length, charset, HMAC)
//! and decryption for every receiver of `postern_fuzz::access_conf`, checked
//! against the oracle HMAC and spa-core's `packet::open`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern_fuzz::check_receive_path(data);
});
