//! The SPA plaintext: colon-separated fields, inner text base64 without padding,
//! then `:` and the base64 digest of everything before it.

use crate::b64;
use crate::digest::{ct_eq, DigestType};
use crate::error::{Result, SpaError};
use crate::request::{validate_access_msg, validate_cmd_msg, validate_nat_access};
use std::fmt;

pub const RAND_VAL_LEN: usize = 16;
pub const MAX_USERNAME_LEN: usize = 64;
/// Limit on each encoded message-like field (message, NAT, server_auth, timeout).
pub const MAX_MESSAGE_FIELD: usize = 256;
pub const MAX_TIMESTAMP_LEN: usize = 12;
pub const MAX_VERSION_LEN: usize = 8;
pub const MAX_MSG_TYPE_LEN: usize = 2;
pub const MIN_PLAINTEXT: usize = 36;
pub const MAX_PLAINTEXT: usize = 1500;
pub const MIN_FIELDS: usize = 6;
pub const MAX_FIELDS: usize = 9;
/// Largest client timeout fwknop accepts.
pub const MAX_CLIENT_TIMEOUT: u32 = 2 << 15;
/// Protocol version written by fwknop 2.6.10 (and by postern).
pub const PROTOCOL_VERSION: &str = "3.0.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Command = 0,
    Access = 1,
    NatAccess = 2,
    ClientTimeoutAccess = 3,
    ClientTimeoutNatAccess = 4,
    LocalNatAccess = 5,
    ClientTimeoutLocalNatAccess = 6,
}

impl MessageType {
    pub const ALL: [MessageType; 7] = [
        MessageType::Command,
        MessageType::Access,
        MessageType::NatAccess,
        MessageType::ClientTimeoutAccess,
        MessageType::ClientTimeoutNatAccess,
        MessageType::LocalNatAccess,
        MessageType::ClientTimeoutLocalNatAccess,
    ];

    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.get(n as usize).copied()
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn has_nat(self) -> bool {
        matches!(
            self,
            MessageType::NatAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::LocalNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    pub fn has_client_timeout(self) -> bool {
        matches!(
            self,
            MessageType::ClientTimeoutAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    pub fn is_local_nat(self) -> bool {
        matches!(
            self,
            MessageType::LocalNatAccess | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    /// The type a client sends for the given combination of options.
    pub fn for_request(command: bool, nat: bool, local_nat: bool, client_timeout: bool) -> Self {
        match (command, nat || local_nat, local_nat, client_timeout) {
            (true, ..) => MessageType::Command,
            (false, false, _, false) => MessageType::Access,
            (false, false, _, true) => MessageType::ClientTimeoutAccess,
            (false, true, false, false) => MessageType::NatAccess,
            (false, true, false, true) => MessageType::ClientTimeoutNatAccess,
            (false, true, true, false) => MessageType::LocalNatAccess,
            (false, true, true, true) => MessageType::ClientTimeoutLocalNatAccess,
        }
    }

    /// Most fields between the type field and the digest (message, nat, server_auth, timeout).
    fn max_remaining_fields(self) -> usize {
        2 + usize::from(self.has_nat()) + usize::from(self.has_client_timeout())
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            MessageType::Command => "command",
            MessageType::Access => "access",
            MessageType::NatAccess => "NAT access",
            MessageType::ClientTimeoutAccess => "access with client timeout",
            MessageType::ClientTimeoutNatAccess => "NAT access with client timeout",
            MessageType::LocalNatAccess => "local NAT access",
            MessageType::ClientTimeoutLocalNatAccess => "local NAT access with client timeout",
        };
        write!(f, "{} ({})", self.number(), name)
    }
}

/// The fields of one SPA message, decoded (plain text, not base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaMessage {
    pub rand_val: String,
    pub username: String,
    pub timestamp: u64,
    pub version: String,
    pub msg_type: MessageType,
    /// `ALLOW_IP,proto/port[,…]` or, for commands, `ALLOW_IP,command`.
    pub message: String,
    pub nat_access: Option<String>,
    pub server_auth: Option<String>,
    pub client_timeout: Option<u32>,
}

/// A message recovered from a packet, with what the decoder learned about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedMessage {
    pub message: SpaMessage,
    pub digest_type: DigestType,
    /// Base64 digest as carried in the packet.
    pub digest: String,
    /// The plaintext before `:digest`.
    pub encoded_data: String,
}

/// 16 decimal digits from 8 random bytes, as fwknop's rand_val.
pub fn rand_val_from(random: [u8; 8]) -> String {
    format!(
        "{:016}",
        u64::from_le_bytes(random) % 10_000_000_000_000_000
    )
}

pub fn validate_username(user: &str) -> Result<()> {
    const FORBIDDEN: &[u8] = b"\"/\\[]:;|=,+*?<>";
    if user.is_empty() {
        return Err(SpaError::field("username", "empty"));
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err(SpaError::field(
            "username",
            format!("longer than {MAX_USERNAME_LEN} bytes"),
        ));
    }
    if let Some(c) = user.bytes().find(|&c| {
        !c.is_ascii_alphanumeric() && (!(0x20..=0x7e).contains(&c) || FORBIDDEN.contains(&c))
    }) {
        return Err(SpaError::field(
            "username",
            format!("character {:?} not allowed", c as char),
        ));
    }
    Ok(())
}

impl SpaMessage {
    /// Check every field against fwknop's limits.
    pub fn validate(&self) -> Result<()> {
        if self.rand_val.len() != RAND_VAL_LEN || !self.rand_val.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(SpaError::field("rand_val", "must be 16 decimal digits"));
        }
        validate_username(&self.username)?;
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_LEN
            || self.version.contains(':')
        {
            return Err(SpaError::field("version", "1 to 8 characters, no ':'"));
        }
        if self.msg_type == MessageType::Command {
            validate_cmd_msg(&self.message)?;
        } else {
            validate_access_msg(&self.message)?;
        }
        match (&self.nat_access, self.msg_type.has_nat()) {
            (Some(nat), true) => validate_nat_access(nat)?,
            (None, true) => {
                return Err(SpaError::field(
                    "nat_access",
                    "required by the message type",
                ))
            }
            (Some(_), false) => {
                return Err(SpaError::field(
                    "nat_access",
                    "not allowed for the message type",
                ))
            }
            (None, false) => {}
        }
        match (self.client_timeout, self.msg_type.has_client_timeout()) {
            (Some(t), true) if t <= MAX_CLIENT_TIMEOUT => {}
            (Some(_), true) => {
                return Err(SpaError::field(
                    "client_timeout",
                    format!("at most {MAX_CLIENT_TIMEOUT}"),
                ))
            }
            (None, true) => {
                return Err(SpaError::field(
                    "client_timeout",
                    "required by the message type",
                ))
            }
            (Some(_), false) => {
                return Err(SpaError::field(
                    "client_timeout",
                    "not allowed for the message type",
                ))
            }
            (None, false) => {}
        }
        if let Some(auth) = &self.server_auth {
            if auth.is_empty() || auth.len() > 64 {
                return Err(SpaError::field("server_auth", "1 to 64 bytes"));
            }
        }
        Ok(())
    }

    /// The colon-joined fields without the digest.
    pub fn encode_fields(&self) -> Result<String> {
        self.validate()?;
        let mut out = format!(
            "{}:{}:{}:{}:{}:{}",
            self.rand_val,
            b64::encode_nopad(self.username.as_bytes()),
            self.timestamp,
            self.version,
            self.msg_type.number(),
            b64::encode_nopad(self.message.as_bytes())
        );
        for (field, text) in [
            ("nat_access", &self.nat_access),
            ("server_auth", &self.server_auth),
        ] {
            if let Some(text) = text {
                let enc = b64::encode_nopad(text.as_bytes());
                if enc.len() > MAX_MESSAGE_FIELD {
                    return Err(SpaError::field(field, "too long"));
                }
                out.push(':');
                out.push_str(&enc);
            }
        }
        if let Some(t) = self.client_timeout {
            out.push_str(&format!(":{t}"));
        }
        Ok(out)
    }

    /// The full plaintext: fields, `:`, base64 digest.
    pub fn to_plaintext(&self, digest: DigestType) -> Result<String> {
        let fields = self.encode_fields()?;
        let sum = digest.digest_b64(fields.as_bytes());
        let pt = format!("{fields}:{sum}");
        if !(MIN_PLAINTEXT..=MAX_PLAINTEXT).contains(&pt.len()) {
            return Err(SpaError::PlaintextLength(pt.len()));
        }
        Ok(pt)
    }
}

fn b64_text(field: &'static str, enc: &str, max: usize) -> Result<String> {
    if enc.is_empty() {
        return Err(SpaError::field(field, "missing"));
    }
    if enc.len() > max {
        return Err(SpaError::field(
            field,
            format!("longer than {max} characters"),
        ));
    }
    let raw = b64::decode(enc).ok_or(SpaError::Base64(field))?;
    String::from_utf8(raw).map_err(|_| SpaError::field(field, "not valid text"))
}

fn verify_digest(encoded: &str, carried: &str) -> Result<DigestType> {
    let candidates = DigestType::candidates_for_b64_len(carried.len());
    if candidates.is_empty() {
        return Err(SpaError::DigestLength(carried.len()));
    }
    candidates
        .iter()
        .copied()
        .find(|d| {
            ct_eq(
                d.digest_b64(encoded.as_bytes()).as_bytes(),
                carried.as_bytes(),
            )
        })
        .ok_or(SpaError::DigestMismatch)
}

/// Decode a decrypted plaintext: length and charset, digest, then every field.
pub fn decode_plaintext(pt: &[u8]) -> Result<DecodedMessage> {
    if !(MIN_PLAINTEXT..=MAX_PLAINTEXT).contains(&pt.len()) {
        return Err(SpaError::PlaintextLength(pt.len()));
    }
    if !pt.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        return Err(SpaError::NonPrintable);
    }
    let text = std::str::from_utf8(pt).map_err(|_| SpaError::NonPrintable)?;
    let (encoded, digest) = text.rsplit_once(':').ok_or(SpaError::FieldCount(1))?;
    let field_count = text.split(':').count();
    if !(MIN_FIELDS + 1..=MAX_FIELDS + 1).contains(&field_count) {
        return Err(SpaError::FieldCount(field_count));
    }
    let digest_type = verify_digest(encoded, digest)?;

    let mut fields = encoded.split(':');
    let mut next = |name: &'static str| {
        fields
            .next()
            .filter(|f| !f.is_empty())
            .ok_or(SpaError::field(name, "missing"))
    };

    let rand_val = next("rand_val")?;
    if rand_val.len() != RAND_VAL_LEN || !rand_val.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpaError::field("rand_val", "must be 16 decimal digits"));
    }
    let username = b64_text("username", next("username")?, MAX_USERNAME_LEN)?;
    validate_username(&username)?;
    let ts = next("timestamp")?;
    if ts.len() > MAX_TIMESTAMP_LEN || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpaError::field(
            "timestamp",
            "must be up to 12 decimal digits",
        ));
    }
    let timestamp: u64 = ts
        .parse()
        .map_err(|_| SpaError::field("timestamp", "not a number"))?;
    let version = next("version")?;
    if version.len() > MAX_VERSION_LEN {
        return Err(SpaError::field("version", "longer than 8 characters"));
    }
    let mt = next("msg_type")?;
    let msg_type = (mt.len() <= MAX_MSG_TYPE_LEN && mt.bytes().all(|b| b.is_ascii_digit()))
        .then(|| mt.parse::<u8>().ok().and_then(MessageType::from_number))
        .flatten()
        .ok_or_else(|| SpaError::field("msg_type", format!("`{mt}` is not 0..6")))?;

    let rest: Vec<&str> = fields.collect();
    // rest = message [nat] [server_auth] [timeout]; the digest was split off already.
    if rest.len() > msg_type.max_remaining_fields() {
        return Err(SpaError::FieldCount(field_count));
    }
    let mut rest = rest.into_iter();
    let message = b64_text("message", rest.next().unwrap_or(""), MAX_MESSAGE_FIELD)?;
    if msg_type == MessageType::Command {
        validate_cmd_msg(&message)?;
    } else {
        validate_access_msg(&message)?;
    }
    let nat_access = if msg_type.has_nat() {
        let nat = b64_text("nat_access", rest.next().unwrap_or(""), MAX_MESSAGE_FIELD)?;
        validate_nat_access(&nat)?;
        Some(nat)
    } else {
        None
    };
    let remaining: Vec<&str> = rest.collect();
    let (server_auth, timeout) = match (msg_type.has_client_timeout(), remaining.as_slice()) {
        (false, []) => (None, None),
        (false, [auth]) => (Some(*auth), None),
        (true, [t]) => (None, Some(*t)),
        (true, [auth, t]) => (Some(*auth), Some(*t)),
        (true, []) => return Err(SpaError::field("client_timeout", "missing")),
        _ => return Err(SpaError::FieldCount(field_count)),
    };
    let server_auth = server_auth
        .map(|a| b64_text("server_auth", a, MAX_MESSAGE_FIELD))
        .transpose()?;
    let client_timeout = timeout
        .map(|t| {
            if t.is_empty() || t.len() > MAX_MESSAGE_FIELD || !t.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(SpaError::field("client_timeout", "must be decimal digits"));
            }
            t.parse::<u32>()
                .ok()
                .filter(|&v| v <= MAX_CLIENT_TIMEOUT)
                .ok_or_else(|| {
                    SpaError::field("client_timeout", format!("at most {MAX_CLIENT_TIMEOUT}"))
                })
        })
        .transpose()?;

    Ok(DecodedMessage {
        message: SpaMessage {
            rand_val: rand_val.to_string(),
            username,
            timestamp,
            version: version.to_string(),
            msg_type,
            message,
            nat_access,
            server_auth,
            client_timeout,
        },
        digest_type,
        digest: digest.to_string(),
        encoded_data: encoded.to_string(),
    })
}
