//! The datagram: `magic ‖ [ML-KEM ciphertext] ‖ Noise message ‖ mac1`
//! (byte by byte in `docs/protocol.md`).
use std::sync::LazyLock;

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use ml_kem::{Ciphertext, Decapsulate, MlKem768, B32};
use snow::params::NoiseParams;
use zeroize::Zeroizing;

use crate::error::random;
use crate::{ClientKey, ClientPublicKey, Error, Payload, Registry, ServerKey, ServerPublicKey};

/// First byte of a classic native packet (no byte of base64 text is >= 0x80).
pub const CLASSIC_MAGIC: u8 = 0xF1;
/// First byte of a hybrid (X25519 + ML-KEM-768) native packet.
pub const HYBRID_MAGIC: u8 = 0xF2;
/// The Noise protocol of the classic suite.
pub const NOISE_CLASSIC: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol of the hybrid suite: the ML-KEM-768 shared secret is the PSK.
pub const NOISE_HYBRID: &str = "Noise_Xpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bytes of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// Bytes of mac1 (BLAKE2s-128).
pub const MAC1_LEN: usize = 16;
/// Prologue label; the prologue also holds the magic byte and the KEM ciphertext.
const PROLOGUE_LABEL: &[u8] = b"postern native v1";
/// Noise `X` message overhead: e (32) + encrypted s (32 + 16) + payload tag (16).
const NOISE_OVERHEAD: usize = 32 + 48 + 16;
/// Smallest payload: IPv4, one port, no options.
const MIN_PAYLOAD: usize = 2 + 8 + 16 + 5 + 1 + 3;
/// Largest payload: IPv6, 16 ports, IPv6 NAT, every option.
const MAX_PAYLOAD: usize = 2 + 8 + 16 + 17 + 1 + 16 * 3 + 19 + 4 + 2 + 4;

static CLASSIC_PARAMS: LazyLock<NoiseParams> =
    LazyLock::new(|| NOISE_CLASSIC.parse().expect("valid Noise protocol name"));
static HYBRID_PARAMS: LazyLock<NoiseParams> =
    LazyLock::new(|| NOISE_HYBRID.parse().expect("valid Noise protocol name"));

/// Which key exchange a packet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// X25519 only (`Noise_X`).
    Classic,
    /// X25519 and ML-KEM-768 (`Noise_Xpsk0`, PSK = ML-KEM shared secret).
    Hybrid,
}

impl Suite {
    fn magic(self) -> u8 {
        match self {
            Suite::Classic => CLASSIC_MAGIC,
            Suite::Hybrid => HYBRID_MAGIC,
        }
    }

    fn kem_len(self) -> usize {
        match self {
            Suite::Classic => 0,
            Suite::Hybrid => KEM_CIPHERTEXT_LEN,
        }
    }

    /// Smallest and largest datagram of this suite.
    pub fn length_range(self) -> (usize, usize) {
        let fixed = 1 + self.kem_len() + NOISE_OVERHEAD + MAC1_LEN;
        (fixed + MIN_PAYLOAD, fixed + MAX_PAYLOAD)
    }
}

/// The suite a datagram claims, if its first byte and length fit one; cheap, no crypto.
pub fn suite_of(datagram: &[u8]) -> Option<Suite> {
    let suite = match *datagram.first()? {
        CLASSIC_MAGIC => Suite::Classic,
        HYBRID_MAGIC => Suite::Hybrid,
        _ => return None,
    };
    let (min, max) = suite.length_range();
    (min..=max).contains(&datagram.len()).then_some(suite)
}

/// Whether these bytes should go to [`open`] rather than the fwknop decoder: fwknop
/// packets are base64 text, whose bytes are all below 0x80.
pub fn looks_native(datagram: &[u8]) -> bool {
    suite_of(datagram).is_some()
}

/// The ephemeral key `e` as the datagram carries it (what the replay store
/// records, see [`Opened::replay_key`]), read without any crypto so a replay
/// can be refused before opening; `None` when it is not a native datagram.
pub fn replay_key_of(datagram: &[u8]) -> Option<[u8; 32]> {
    let start = 1 + suite_of(datagram)?.kem_len();
    datagram.get(start..start + 32)?.try_into().ok()
}

/// BLAKE2s-256("mac1----" ‖ server X25519 public key), as WireGuard.
pub(crate) fn mac1_key(server_x25519: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"mac1----");
    h.update(server_x25519);
    h.finalize_fixed().into()
}

fn mac1_mac(key: &[u8; 32], body: &[u8]) -> Blake2sMac<U16> {
    let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(key).expect("32-byte BLAKE2s key");
    m.update(body);
    m
}

/// Whether the datagram's last 16 bytes are the keyed BLAKE2s of the rest under this
/// server's mac1 key, compared in constant time. No public-key work.
pub fn mac1_matches(datagram: &[u8], server: &ServerPublicKey) -> bool {
    if datagram.len() < MAC1_LEN {
        return false;
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC1_LEN);
    mac1_mac(&server.mac1_key, body).verify_slice(tag).is_ok()
}

fn prologue(suite: Suite, kem_ct: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + 1 + kem_ct.len());
    p.extend_from_slice(PROLOGUE_LABEL);
    p.push(suite.magic());
    p.extend_from_slice(kem_ct);
    p
}

/// How to seal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealOptions {
    /// Add ML-KEM-768 to the key exchange (1088 more bytes).
    pub hybrid: bool,
}

/// The per-packet random inputs of [`seal_with`]; [`seal`] takes them from the OS.
#[derive(Clone)]
pub struct SealRandomness {
    /// The Noise ephemeral X25519 secret.
    pub ephemeral: [u8; 32],
    /// ML-KEM-768 encapsulation randomness `m` (FIPS 203, Algorithm 17); unused when classic.
    pub kem_m: [u8; 32],
}

impl Drop for SealRandomness {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.ephemeral);
        zeroize::Zeroize::zeroize(&mut self.kem_m);
    }
}

impl SealRandomness {
    pub fn from_os() -> Result<Self, Error> {
        let mut r = SealRandomness {
            ephemeral: [0; 32],
            kem_m: [0; 32],
        };
        random(&mut r.ephemeral)?;
        random(&mut r.kem_m)?;
        Ok(r)
    }
}

/// Seal `payload` from `client` to `server` with fresh randomness.
pub fn seal(
    client: &ClientKey,
    server: &ServerPublicKey,
    payload: &Payload,
    options: SealOptions,
) -> Result<Vec<u8>, Error> {
    // snow draws the ephemeral key itself; only the ML-KEM randomness comes from here.
    let rnd = SealRandomness::from_os()?;
    seal_inner(client, server, payload, options, None, &rnd.kem_m)
}

/// [`seal`] with given randomness: deterministic, for the test vectors only. Reusing
/// randomness across packets breaks the protocol's security.
pub fn seal_with(
    client: &ClientKey,
    server: &ServerPublicKey,
    payload: &Payload,
    options: SealOptions,
    rnd: &SealRandomness,
) -> Result<Vec<u8>, Error> {
    seal_inner(
        client,
        server,
        payload,
        options,
        Some(&rnd.ephemeral),
        &rnd.kem_m,
    )
}

fn seal_inner(
    client: &ClientKey,
    server: &ServerPublicKey,
    payload: &Payload,
    options: SealOptions,
    ephemeral: Option<&[u8; 32]>,
    kem_m: &[u8; 32],
) -> Result<Vec<u8>, Error> {
    let body = Zeroizing::new(payload.encode()?);
    let suite = if options.hybrid {
        Suite::Hybrid
    } else {
        Suite::Classic
    };
    let mut out = vec![suite.magic()];
    let mut psk = Zeroizing::new([0u8; 32]);
    if suite == Suite::Hybrid {
        let (ct, shared) = server.kem.encapsulate_deterministic(&B32::from(*kem_m));
        psk.copy_from_slice(&shared);
        out.extend_from_slice(&ct);
    }
    let prologue = prologue(suite, &out[1..]);
    let handshake = |e: snow::Error| Error::Request(format!("Noise: {e}"));
    let mut builder = match suite {
        Suite::Classic => snow::Builder::new(CLASSIC_PARAMS.clone()),
        Suite::Hybrid => snow::Builder::new(HYBRID_PARAMS.clone())
            .psk(0, &psk)
            .map_err(handshake)?,
    };
    builder = builder
        .local_private_key(client.secret())
        .and_then(|b| b.remote_public_key(&server.x25519))
        .and_then(|b| b.prologue(&prologue))
        .map_err(handshake)?;
    if let Some(e) = ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder.build_initiator().map_err(handshake)?;
    let mut msg = [0u8; NOISE_OVERHEAD + MAX_PAYLOAD];
    let n = hs.write_message(&body, &mut msg).map_err(handshake)?;
    out.extend_from_slice(&msg[..n]);
    let tag = mac1_mac(&server.mac1_key, &out).finalize_fixed();
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A packet that authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The registered name of the client whose key sealed it.
    pub client: String,
    pub client_key: ClientPublicKey,
    pub payload: Payload,
    /// The Noise ephemeral public key: unique per packet, what the replay store records.
    pub replay_key: [u8; 32],
    pub suite: Suite,
}

/// Check and read a datagram: length and mac1 first (no public-key work for garbage),
/// then ML-KEM decapsulation (hybrid), the Noise message, the registry and the payload.
/// Freshness (timestamp), replay, TOTP and policy are the caller's.
pub fn open(datagram: &[u8], server: &ServerKey, registry: &Registry) -> Result<Opened, Error> {
    let suite = suite_of(datagram).ok_or(Error::NotNative)?;
    if !mac1_matches(datagram, server.public()) {
        return Err(Error::Mac1);
    }
    let body = &datagram[1..datagram.len() - MAC1_LEN];
    let (kem_ct, noise_msg) = body.split_at(suite.kem_len());
    let prologue = prologue(suite, kem_ct);
    let handshake = |_| Error::Handshake;
    let mut psk = Zeroizing::new([0u8; 32]);
    let builder = match suite {
        Suite::Classic => snow::Builder::new(CLASSIC_PARAMS.clone()),
        Suite::Hybrid => {
            let ct = Ciphertext::<MlKem768>::try_from(kem_ct).map_err(|_| Error::NotNative)?;
            let shared = Zeroizing::new(server.kem().decapsulate(&ct));
            psk.copy_from_slice(&shared[..]);
            snow::Builder::new(HYBRID_PARAMS.clone())
                .psk(0, &psk)
                .map_err(handshake)?
        }
    };
    let mut hs = builder
        .local_private_key(server.x25519_secret())
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_responder())
        .map_err(handshake)?;
    let mut plain = Zeroizing::new([0u8; NOISE_OVERHEAD + MAX_PAYLOAD]);
    let n = hs
        .read_message(noise_msg, &mut plain[..])
        .map_err(handshake)?;
    let mut client_key = [0u8; 32];
    client_key.copy_from_slice(hs.get_remote_static().ok_or(Error::Handshake)?);
    let client_key = ClientPublicKey(client_key);
    let client = registry
        .lookup(&client_key)
        .ok_or(Error::UnknownClient)?
        .name
        .clone();
    let payload = Payload::decode(&plain[..n])?;
    let mut replay_key = [0u8; 32];
    replay_key.copy_from_slice(&noise_msg[..32]);
    Ok(Opened {
        client,
        client_key,
        payload,
        replay_key,
        suite,
    })
}
