//! postern's own protocol on the client side (docs/protocol.md): the request
//! built from the usual settings, sealed with this client's key to the server's
//! public key; `--gen-client-key` and `--totp-setup`.
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use spa_native::{ClientKey, Payload, PortSpec, SealOptions, ServerPublicKey, TotpSecret};

use crate::settings::Settings;
use crate::{ClientError, Result};

fn native_err(e: spa_native::Error) -> ClientError {
    ClientError::Usage(e.to_string())
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<()> {
    writeln!(out, "{text}").map_err(|e| ClientError::io("cannot write output", &e))
}

/// `--gen-client-key FILE`: a new key in FILE (0600, never over an existing file), its
/// public line on stdout (what `posternd client add NAME LINE` takes) and as a QR code.
pub fn gen_client_key(path: &Path, out: &mut dyn Write) -> Result<()> {
    let key = ClientKey::generate().map_err(native_err)?;
    key.write_new(path).map_err(native_err)?;
    let line = key.public().to_line();
    write_out(
        out,
        &format!("[+] Wrote the native client key to: {}", path.display()),
    )?;
    write_out(
        out,
        "[+] Register this public key on the server (posternd client add NAME KEY):",
    )?;
    write_out(out, &line)?;
    let qr = crate::output::qr_block(&line).map_err(ClientError::Io)?;
    write_out(out, &qr)
}

/// `--totp-setup FILE`: a new TOTP secret; its otpauth:// URI on stdout and as a QR code
/// for an authenticator app, and in FILE (0600) for `posternd client add --totp-secret FILE`.
pub fn totp_setup(path: &Path, out: &mut dyn Write) -> Result<()> {
    let account = crate::user::default_username();
    let secret = TotpSecret::generate(&account).map_err(native_err)?;
    let uri = secret.to_uri().map_err(native_err)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| ClientError::io(format!("cannot create {}", path.display()), &e))?;
        f.write_all(format!("{uri}\n").as_bytes())
            .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), &e))?;
    }
    write_out(
        out,
        "[+] Add this to your authenticator app (scan the QR code or enter the URI):",
    )?;
    write_out(out, &uri)?;
    write_out(
        out,
        &crate::output::qr_block(&uri).map_err(ClientError::Io)?,
    )?;
    write_out(
        out,
        &format!(
            "[+] Wrote the secret to {}: give it to the server with `posternd client add NAME KEY --totp-secret FILE`, then delete it here",
            path.display()
        ),
    )
}

/// The payload for these settings: ports from -A, NAT from -N (an address and a
/// port), timeout from -f, and the extension flags --pin-source-port and --totp.
pub fn payload(
    settings: &Settings,
    allow: IpAddr,
    pin_source_port: Option<&str>,
    totp: Option<&str>,
    now: u64,
) -> Result<Payload> {
    let access = settings.access.as_deref().ok_or_else(|| {
        ClientError::usage("no access request: use -A proto/port (or ACCESS in the rc file)")
    })?;
    let ports = access
        .split(',')
        .map(|p| p.trim().parse::<PortSpec>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(native_err)?;
    let mut p = Payload::new(allow, ports, now).map_err(native_err)?;
    if let Some(nat) = &settings.nat_access {
        let bad = || {
            ClientError::Usage(format!(
                "--native takes -N as ADDRESS,PORT (an IP address, not a name), not `{nat}`"
            ))
        };
        let (addr, port) = nat.rsplit_once([',', ':']).ok_or_else(bad)?;
        let addr: IpAddr = addr.trim_matches(['[', ']']).parse().map_err(|_| bad())?;
        p.nat = Some((addr, crate::settings::parse_port(port).map_err(|_| bad())?));
    }
    p.timeout = settings.fw_timeout.filter(|&t| t > 0);
    if let Some(port) = pin_source_port {
        p.source_port = Some(
            crate::settings::parse_port(port)
                .map_err(|e| ClientError::Usage(format!("--pin-source-port `{port}`: {e}")))?,
        );
    }
    if let Some(code) = totp {
        let c = code
            .parse::<u32>()
            .ok()
            .filter(|_| (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                ClientError::Usage(format!("--totp `{code}`: a code is 6 to 8 digits"))
            })?;
        p.totp = Some(c);
    }
    p.validate().map_err(native_err)?;
    Ok(p)
}

/// Seal `payload` with the settings' client key to the settings' server key.
pub fn seal(settings: &Settings, payload: &Payload) -> Result<Vec<u8>> {
    let server = settings.server_public_key.as_deref().ok_or_else(|| {
        ClientError::usage("--native needs the server's public key: --server-key (or SERVER_PUBLIC_KEY in the rc file)")
    })?;
    let server = ServerPublicKey::from_line_or_file(server).map_err(native_err)?;
    let key_file = settings.client_key_file.as_deref().ok_or_else(|| {
        ClientError::usage("--native needs this client's key: --client-key FILE (or CLIENT_KEY_FILE in the rc file); make one with --gen-client-key FILE")
    })?;
    let key = ClientKey::load(Path::new(key_file)).map_err(native_err)?;
    spa_native::seal(
        &key,
        &server,
        payload,
        SealOptions {
            hybrid: settings.native_hybrid,
        },
    )
    .map_err(native_err)
}
