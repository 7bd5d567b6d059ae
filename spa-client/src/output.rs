//! Text in the layout fwknop prints: the `SPA Field Values` block of -v / -T,
//! the transmit summary, the key-generation lines and the QR block; and
//! postern's `[+]` lines of -v saying what was resolved, sent, and where.

use crate::build::{GpgDetails, SealedPacket};
use crate::send::{Sent, Source};
use crate::settings::mode_display_name;
use spa_core::gpg::SignatureInfo;
use spa_core::{DigestType, EncryptionMode, GeneratedKeys, MessageType, SpaMessage};
use std::fmt::Write;
use std::net::IpAddr;

const NULL: &str = "<NULL>";

/// fwknop's number for a digest (also used for HMAC types).
pub fn digest_number(d: DigestType) -> u8 {
    match d {
        DigestType::Md5 => 1,
        DigestType::Sha1 => 2,
        DigestType::Sha256 => 3,
        DigestType::Sha384 => 4,
        DigestType::Sha512 => 5,
        DigestType::Sha3_256 => 6,
        DigestType::Sha3_512 => 7,
    }
}

/// fwknop's number for an encryption mode.
pub fn mode_number(m: EncryptionMode) -> u8 {
    match m {
        EncryptionMode::Ecb => 1,
        EncryptionMode::Cbc => 2,
        EncryptionMode::Cfb => 3,
        EncryptionMode::Ofb => 5,
        EncryptionMode::Ctr => 6,
        EncryptionMode::Legacy => 8,
    }
}

pub fn msg_type_text(t: MessageType) -> &'static str {
    match t {
        MessageType::Command => "Command msg",
        MessageType::Access => "Access msg",
        MessageType::NatAccess => "NAT access msg",
        MessageType::ClientTimeoutAccess => "Client timeout access msg",
        MessageType::ClientTimeoutNatAccess => "Client timeout NAT access msg",
        MessageType::LocalNatAccess => "Local NAT access msg",
        MessageType::ClientTimeoutLocalNatAccess => "Client timeout local NAT access msg",
    }
}

/// The values shown in one `SPA Field Values` block.
pub struct FieldView<'a> {
    pub message: &'a SpaMessage,
    pub digest_type: DigestType,
    pub hmac_type: Option<DigestType>,
    pub mode: EncryptionMode,
    pub encoded: &'a str,
    pub digest: &'a str,
    pub hmac: Option<&'a str>,
    pub final_data: &'a str,
    /// GPG packets: how they were sealed and, once decrypted, their signature.
    pub gpg: Option<GpgView<'a>>,
}

/// The GPG lines of a `SPA Field Values` block.
#[derive(Clone, Copy)]
pub struct GpgView<'a> {
    pub details: &'a GpgDetails,
    pub signature: Option<&'a SignatureInfo>,
}

impl<'a> FieldView<'a> {
    /// The block for a packet as built (final data includes the HMAC).
    pub fn built(p: &'a SealedPacket) -> Self {
        FieldView {
            message: &p.message,
            digest_type: p.digest_type,
            hmac_type: p.hmac_type,
            mode: p.mode,
            encoded: &p.encoded,
            digest: &p.digest,
            hmac: p.hmac.as_deref(),
            final_data: &p.wire,
            gpg: p.gpg.as_ref().map(|details| GpgView {
                details,
                signature: None,
            }),
        }
    }

    /// The block for the packet decoded again (the HMAC is split off the data).
    pub fn decoded(p: &'a SealedPacket, decoded: &'a spa_core::DecodedMessage) -> Self {
        FieldView {
            message: &decoded.message,
            digest_type: decoded.digest_type,
            hmac_type: p.hmac_type,
            mode: p.mode,
            encoded: &decoded.encoded_data,
            digest: &decoded.digest,
            hmac: p.hmac.as_deref(),
            final_data: p.body(),
            gpg: p.gpg.as_ref().map(|details| GpgView {
                details,
                signature: None,
            }),
        }
    }

    /// The decoded block of a GPG packet, with the signature found on it.
    pub fn decoded_gpg(
        p: &'a SealedPacket,
        decoded: &'a spa_core::DecodedMessage,
        signature: Option<&'a SignatureInfo>,
    ) -> Self {
        let mut v = FieldView::decoded(p, decoded);
        v.gpg = p.gpg.as_ref().map(|details| GpgView { details, signature });
        v
    }
}

/// fwknop's `SPA Field Values` block, ending with a newline.
pub fn field_dump(v: &FieldView) -> String {
    let m = v.message;
    let mut s = String::new();
    let hmac_type = match v.hmac_type {
        Some(d) => format!("{} ({})", digest_number(d), d.name().to_uppercase()),
        None => "0 (None)".to_string(),
    };
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "SPA Field Values:\n=================\n   Random Value: {}\n       Username: {}\n      Timestamp: {}\n    FKO Version: {}\n   Message Type: {} ({})\n Message String: {}\n     Nat Access: {}\n    Server Auth: {}\n Client Timeout: {}\n    Digest Type: {} ({})\n      HMAC Type: {}\n{}   Encoded Data: {}\nSPA Data Digest: {}\n           HMAC: {}\n Final SPA Data: {}\n",
        m.rand_val,
        m.username,
        m.timestamp,
        m.version,
        m.msg_type.number(),
        msg_type_text(m.msg_type),
        m.message,
        m.nat_access.as_deref().unwrap_or(NULL),
        m.server_auth.as_deref().unwrap_or(NULL),
        m.client_timeout.unwrap_or(0),
        digest_number(v.digest_type),
        v.digest_type.name().to_uppercase(),
        hmac_type,
        encryption_lines(v),
        v.encoded,
        v.digest,
        v.hmac.unwrap_or(NULL),
        v.final_data,
    );
    s
}

/// The encryption type and mode lines, plus fwknop's GPG block for GPG packets.
fn encryption_lines(v: &FieldView) -> String {
    let Some(g) = &v.gpg else {
        return format!(
            "Encryption Type: 1 (Rijndael)\nEncryption Mode: {} ({})\n",
            mode_number(v.mode),
            mode_display_name(v.mode)
        );
    };
    let sig = g.signature;
    format!(
        "Encryption Type: 2 (GPG)\nEncryption Mode: 7 (Asymmetric)\n     GPG signer: {}\n  GPG recipient: {}\n GPG sig verify: Yes\n GPG ignore sig: No\n     GPG sig ID: {}\n    GPG sig fpr: {}\nGPG sig summary: -1\n GPG sig status: {}\n   GPG home dir: {}\n        GPG exe: {}\n",
        g.details.signer.as_deref().unwrap_or(NULL),
        g.details.recipient,
        sig.map_or(NULL, |s| s.key_id.as_str()),
        sig.map_or(NULL, |s| s.fingerprint.as_str()),
        sig.map_or("-1", |s| s.status.as_str()),
        g.details.home_dir.as_deref().unwrap_or(NULL),
        g.details.exe,
    )
}

/// The `Generating SPA packet:` summary of -v.
pub fn transmit_summary(
    proto: &str,
    source_port: Option<u16>,
    dest_port: u16,
    host: &str,
) -> String {
    let src = source_port.map_or_else(|| "<OS assigned>".to_string(), |p| p.to_string());
    format!(
        "Generating SPA packet:\n            protocol: {proto}\n         source port: {src}\n    destination port: {dest_port}\n             IP/host: {host}\n"
    )
}

/// `-v`: the address the packet asks the server to open for, and where it
/// came from (`-a`, `-s`, `-R` with the URL that answered, the rc file).
pub fn allow_line(ip: IpAddr, origin: &str, resolved_via: Option<&str>) -> String {
    let how = match resolved_via {
        Some(url) => format!("{origin}, resolved via {url}"),
        None => origin.to_string(),
    };
    let meaning = if ip.is_unspecified() {
        ": the server opens for the packet's source address"
    } else {
        ""
    };
    format!("[+] Allow IP: {ip} (from {how}){meaning}")
}

/// `-v`: what the packet asks for.
pub fn request_line(m: &SpaMessage) -> String {
    let nat = m
        .nat_access
        .as_deref()
        .map_or(String::new(), |n| format!(", NAT access to {n}"));
    format!(
        "[+] Request: {} ({}{nat})",
        m.message,
        msg_type_text(m.msg_type)
    )
}

/// `-v`: the size of the packet (the base64 text on the wire).
pub fn packet_size_line(bytes: usize) -> String {
    format!("[+] SPA packet: {bytes} bytes")
}

/// `-v`: the name contacted and its addresses, in the order tried.
pub fn resolved_line(sent: &Sent) -> String {
    let what = if sent.via_proxy {
        "HTTP proxy"
    } else {
        "SPA server"
    };
    let addrs: Vec<String> = sent.resolved.iter().map(|a| a.ip().to_string()).collect();
    format!("[+] {what} {} resolves to {}", sent.host, addrs.join(", "))
}

/// `-v`: how many bytes went where, from where.
pub fn sent_line(sent: &Sent, proto: &str) -> String {
    let from = match sent.from {
        Some(Source::Socket(a)) => a.to_string(),
        Some(Source::Address(ip)) => ip.to_string(),
        None => "the address the kernel chose".to_string(),
    };
    // ICMP has no ports.
    let to = if proto == "icmp" {
        sent.to.ip().to_string()
    } else {
        sent.to.to_string()
    };
    format!(
        "[+] Sent {} bytes over {proto} from {from} to {to}",
        sent.bytes
    )
}

/// The text printed (and written by -K) for generated keys.
pub fn keygen_text(keys: &GeneratedKeys) -> String {
    keys.to_keygen_output()
}

/// The string put into the QR code: the form fwknop's console-qr helper builds and
/// the Fwknop2 mobile client scans.
pub fn qr_payload(keys: &GeneratedKeys) -> String {
    format!(
        "KEY_BASE64:{} HMAC_KEY_BASE64:{}",
        keys.key.to_base64(),
        keys.hmac_key.to_base64()
    )
}

/// A QR code drawn with Unicode half blocks, dark modules on a light background.
pub fn qr_block(payload: &str) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(payload.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| format!("cannot make a QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_layout_matches_fwknop() {
        let msg = SpaMessage {
            rand_val: "1801596490116184".into(),
            username: "root".into(),
            timestamp: 1795637191,
            version: "3.0.0".into(),
            msg_type: MessageType::Access,
            message: "10.0.0.5,tcp/22".into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        };
        let view = FieldView {
            message: &msg,
            digest_type: DigestType::Sha256,
            hmac_type: Some(DigestType::Sha256),
            mode: EncryptionMode::Cbc,
            encoded: "1801596490116184:cm9vdA:1795637191:3.0.0:1:MTAuMC4wLjUsdGNwLzIy",
            digest: "P7sc5djc0MIwvo/xlzq950nQFW/oaMuSTH65WtnD5y0",
            hmac: Some("ME4q"),
            final_data: "9iWM",
            gpg: None,
        };
        let expected = "SPA Field Values:
=================
   Random Value: 1801596490116184
       Username: root
      Timestamp: 1795637191
    FKO Version: 3.0.0
   Message Type: 1 (Access msg)
 Message String: 10.0.0.5,tcp/22
     Nat Access: <NULL>
    Server Auth: <NULL>
 Client Timeout: 0
    Digest Type: 3 (SHA256)
      HMAC Type: 3 (SHA256)
Encryption Type: 1 (Rijndael)
Encryption Mode: 2 (CBC)
   Encoded Data: 1801596490116184:cm9vdA:1795637191:3.0.0:1:MTAuMC4wLjUsdGNwLzIy
SPA Data Digest: P7sc5djc0MIwvo/xlzq950nQFW/oaMuSTH65WtnD5y0
           HMAC: ME4q
 Final SPA Data: 9iWM
";
        assert_eq!(field_dump(&view), expected);

        // GPG: fwknop's block replaces the mode line.
        let details = GpgDetails {
            recipient: "82ADB1EE".into(),
            signer: Some("4F88624F".into()),
            home_dir: Some("/tmp/g1/c".into()),
            exe: "/usr/bin/gpg".into(),
        };
        let gpg_view = FieldView {
            gpg: Some(GpgView {
                details: &details,
                signature: None,
            }),
            hmac: None,
            hmac_type: None,
            ..view
        };
        let text = field_dump(&gpg_view);
        let gpg_block = "      HMAC Type: 0 (None)
Encryption Type: 2 (GPG)
Encryption Mode: 7 (Asymmetric)
     GPG signer: 4F88624F
  GPG recipient: 82ADB1EE
 GPG sig verify: Yes
 GPG ignore sig: No
     GPG sig ID: <NULL>
    GPG sig fpr: <NULL>
GPG sig summary: -1
 GPG sig status: -1
   GPG home dir: /tmp/g1/c
        GPG exe: /usr/bin/gpg
   Encoded Data: ";
        assert!(text.contains(gpg_block), "{text}");
    }

    #[test]
    fn qr_block_renders() {
        let block = qr_block("KEY_BASE64:abc HMAC_KEY_BASE64:def").unwrap();
        assert!(block.lines().count() > 10);
        assert!(block.contains('█') || block.contains('▀') || block.contains('▄'));
    }
}
