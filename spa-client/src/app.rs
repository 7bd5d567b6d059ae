//! One run of the `postern` command: options → rc file → keys → packet → send.

use crate::build::{self, GpgDetails, MessageSpec, SealedPacket};
use crate::cli::{Cli, CliExit};
use crate::error::{ClientError, Result};
use crate::keys::{self, GpgKeyMaterial, KeyInput, KeyMaterial};
use crate::output::{self, FieldView};
use crate::rcfile::{self, PermCheck, RcFile};
use crate::resolve;
use crate::saved_args;
use crate::send::{self, Target};
use crate::settings::{
    AllowIp, KeySpec, SecretText, ServerProto, Settings, Var, DEFAULT_SERVER_PORT,
};
use crate::user;
use spa_core::{DigestType, GeneratedKeys};
use spa_gpg::{GpgOptions, Gpgme};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, BufReader, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The client version printed by -V.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a run writes: normal output (stdout) and warnings/errors (stderr).
pub struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl Console<'_> {
    fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").map_err(|e| ClientError::io("cannot write output", &e))
    }
    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.err, "{text}");
    }
}

/// Run with `args` (program name first). Returns the process exit code.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::parse_args(&args) {
        Ok(cli) => cli,
        Err(CliExit::Help(text)) => {
            let _ = write!(out, "{text}");
            return 0;
        }
        Err(CliExit::Error(msg)) => {
            let _ = writeln!(err, "postern: {msg}");
            return 1;
        }
    };
    if let Some(crate::cli::Command::Ssh(ssh)) = &cli.command {
        // Returns only if ssh could not be run.
        let Err(e) = crate::ssh::run(&cli, ssh, &args, err);
        let _ = writeln!(err, "postern: {e}");
        return 1;
    }
    if let Some(target) = &cli.connect {
        return match run_connect(&cli, target, out, err) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "postern: {e}");
                1
            }
        };
    }
    let mut console = Console { out, err };
    match with_saved_args(&cli, &args, &mut console) {
        Ok(()) => {
            let _ = console.out.flush();
            0
        }
        Err(ClientError::OutputClosed) => 1,
        Err(e) => {
            let _ = console.out.flush();
            let _ = writeln!(console.err, "postern: {e}");
            1
        }
    }
}

/// `--connect HOST:PORT` (see [`crate::connect`]): knock, wait for the port,
/// knock again if it stays closed, then bridge stdin/stdout to it. The command
/// line is not saved for `-l` (fwknop could not run it).
fn run_connect(cli: &Cli, target: &str, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let (host, port) = crate::connect::parse_target(target)?;
    let mut knock = cli.clone();
    knock.wait = None;
    let per_knock = cli
        .wait
        .map(std::time::Duration::from_secs_f32)
        .unwrap_or(crate::connect::DEFAULT_WAIT);
    // stdout carries the connection: whatever the knock prints goes to stderr.
    let mut knock_out = io::stderr();
    let mut console = Console {
        out: &mut knock_out,
        err,
    };
    let family = crate::send::Family::from_flags(cli.server_resolve_ipv4, cli.server_resolve_ipv6);
    let addr = crate::send::addresses("host", &host, port, family)?[0];
    // A native knock pins its grant to this port (--pin-source-port's, else
    // one the system picks), and the connection comes from it.
    let wanted = match cli.pin_source_port.as_deref() {
        Some(p) => crate::settings::parse_port(p)
            .map_err(|e| ClientError::Usage(format!("--pin-source-port `{p}`: {e}")))?,
        None => 0,
    };
    let mut local = crate::connect::LocalPort::reserve(&addr, wanted)?;
    let offer = crate::connect::PinOffer::new(local.port());
    knock.connect_pin = Some(offer.clone());
    let mut last_error = None;
    for attempt in 1..=crate::connect::KNOCKS {
        execute(&knock, &mut console, None)?;
        let mut probes = Vec::new();
        let mut progress = |l: &str| probes.push(l.to_string());
        let opened = if offer.taken() {
            if attempt == 1 && cli.verbose > 0 {
                console.warn(&format!(
                    "postern: the grant is pinned to source port {}, the connection's",
                    offer.port
                ));
            }
            crate::wait::connect_addr_when_open(
                addr,
                per_knock,
                per_knock,
                &mut progress,
                &mut |a, t| local.connect(a, t),
            )
        } else {
            crate::wait::connect_addr_when_open(
                addr,
                per_knock,
                per_knock,
                &mut progress,
                &mut |a, t| std::net::TcpStream::connect_timeout(a, t),
            )
        };
        if cli.verbose > 0 {
            probes.iter().for_each(|l| console.warn(l));
        }
        match opened {
            Ok(stream) => return crate::connect::bridge(stream, io::stdin(), out),
            Err(e) => {
                console.warn(&format!(
                    "postern: knock {attempt} of {}: {e}",
                    crate::connect::KNOCKS
                ));
                last_error = Some(e);
            }
        }
    }
    Err(last_error.expect("at least one knock"))
}

/// The rc file path: --rc-file, else $HOME/.fwknoprc (the passwd entry's home if HOME is unset).
pub fn rc_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.rc_file {
        return Ok(p.clone());
    }
    if cli.no_home_dir {
        return Err(ClientError::usage(
            "--no-home-dir needs --rc-file (or --no-rc-file)",
        ));
    }
    let home = home_dir().map_err(|_| {
        ClientError::RcFile("cannot determine the home directory for the rc file (set HOME, or use --rc-file / --no-rc-file)".into())
    })?;
    Ok(Path::new(&home).join(rcfile::RC_FILE_NAME))
}

/// $HOME, else the passwd entry's home.
fn home_dir() -> Result<String> {
    std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(user::passwd_home)
        .ok_or_else(|| ClientError::usage("cannot determine the home directory (set HOME)"))
}

/// fwknop's saved command line around [`execute`]: `--show-last` prints it, `-l`
/// runs it instead of `args` (which are then ignored, as fwknop ignores them).
fn with_saved_args(cli: &Cli, args: &[OsString], console: &mut Console) -> Result<()> {
    let saved_path = || saved_args::path(cli.save_args_file.as_deref(), home_dir);
    if cli.show_last || cli.last_cmd {
        let (line, warning) = saved_args::load(&saved_path()?)?;
        if let Some(w) = warning {
            console.warn(&w);
        }
        if cli.show_last {
            return console.say(&format!("Last fwknop client command line: {line}"));
        }
        let last = Cli::parse_args(saved_args::argv(&line)).map_err(|e| match e {
            CliExit::Help(_) => {
                ClientError::usage(format!("the saved command line asks for help: {line}"))
            }
            CliExit::Error(msg) => ClientError::usage(format!("the saved command line: {msg}")),
        })?;
        if last.last_cmd || last.show_last {
            return Err(ClientError::usage(format!(
                "the saved command line runs -l/--show-last itself: {line}"
            )));
        }
        if cli.verbose > 0 || last.verbose > 0 {
            console.say(&format!("Executing: {line}"))?;
        }
        return execute(&last, console, None);
    }
    // Without a home directory (or with --no-home-dir) and no -E there is nowhere to save.
    let home_allowed = !cli.no_home_dir || cli.save_args_file.is_some();
    let save_to = (!cli.no_save_args && home_allowed)
        .then(saved_path)
        .and_then(Result::ok);
    execute(cli, console, save_to.as_deref().map(|p| (p, args)))
}

fn check_rc_perms(rc: &RcFile, console: &mut Console) -> Result<()> {
    if let PermCheck::Warn(w) = rcfile::check_permissions(&rc.path, rc.holds_keys())? {
        console.warn(&w);
    }
    Ok(())
}

/// Read (creating it on first use, like fwknop) and check the rc file. When it can
/// be neither read nor created the run goes on without it, as fwknop's does.
fn load_rc(path: &Path, console: &mut Console) -> Result<Option<RcFile>> {
    let rc = match RcFile::load(path)? {
        Some(rc) => rc,
        None => {
            console.say(&format!(
                "[*] Creating initial rc file: {}.",
                path.display()
            ))?;
            if let Err(e) = rcfile::create_initial(path) {
                console.warn(&format!("[-] {e}; going on without an rc file"));
                return Ok(None);
            }
            match RcFile::load(path)? {
                Some(rc) => rc,
                None => return Ok(None),
            }
        }
    };
    check_rc_perms(&rc, console)?;
    Ok(Some(rc))
}

fn stanza_list(path: &Path, console: &mut Console) -> Result<()> {
    let rc = RcFile::load(path)?.ok_or_else(|| {
        ClientError::RcFile(format!("cannot open rc file {}: not found", path.display()))
    })?;
    check_rc_perms(&rc, console)?;
    console.say(&format!(
        "The following stanzas are configured in {} :",
        path.display()
    ))?;
    for name in rc
        .stanza_names()
        .iter()
        .filter(|n| !n.eq_ignore_ascii_case(rcfile::DEFAULT_STANZA))
    {
        console.say(&format!(" - {name}"))?;
    }
    Ok(())
}

/// Settings from [default], the named stanza and the command line.
fn gather_settings(cli: &Cli, rc: Option<&RcFile>, console: &mut Console) -> Result<Settings> {
    let mut settings = Settings::default();
    let mut warnings = Vec::new();
    if let Some(rc) = rc {
        let file = rc.path.display().to_string();
        warnings
            .extend(settings.apply_rc_entries(&rc.stanza_entries(rcfile::DEFAULT_STANZA)?, &file)?);
        if let Some(name) = &cli.named_config {
            if rc.has_stanza(name) {
                if !cli.save_rc_stanza {
                    warnings.extend(settings.apply_rc_entries(&rc.stanza_entries(name)?, &file)?);
                }
            } else if !cli.save_rc_stanza {
                return Err(ClientError::RcFile(format!(
                    "named configuration stanza [{name}] was not found in {file}"
                )));
            }
        }
    }
    warnings.extend(settings.apply_cli(cli)?);
    for w in warnings {
        console.warn(&w);
    }
    Ok(settings)
}

/// Ask whether an existing critical variable may be replaced; only on a terminal.
fn ask_overwrite(var: &str, stanza: &str, console: &mut Console) -> bool {
    if !io::stdin().is_terminal() {
        return false;
    }
    let _ = write!(
        console.err,
        "Variable '{var}' found in stanza '{stanza}'. Overwrite [N/y] ? "
    );
    let _ = console.err.flush();
    let mut answer = String::new();
    io::stdin().read_line(&mut answer).is_ok() && answer.trim_start().starts_with('y')
}

/// --save-rc-stanza: replace stanza `name` with the command-line variables.
/// Without --force-stanza, keys already in the stanza are kept unless the user agrees.
/// Returns the variables that were kept from the old stanza.
fn save_stanza(
    rc: &RcFile,
    name: &str,
    settings: &Settings,
    extra: &[Var],
    force: bool,
    console: &mut Console,
) -> Result<Vec<String>> {
    let mut vars = settings.stanza_vars(extra);
    let mut keep = Vec::new();
    if !force && rc.has_stanza(name) {
        let existing = rc.stanza_entries(name)?;
        for var in rcfile::CRITICAL_VARS {
            if existing.iter().any(|e| e.name == *var) && !ask_overwrite(var, name, console) {
                keep.push(var.to_string());
                vars.retain(|(n, _)| n != var);
                console.warn(&format!(
                    "[-] kept the existing {var} of stanza [{name}] (use --force-stanza to replace it)"
                ));
            }
        }
    }
    rc.with_stanza_replaced(name, &vars, &keep).save()?;
    Ok(keep)
}

fn stanza_name(cli: &Cli, settings: &Settings) -> Result<String> {
    cli.named_config
        .clone()
        .or_else(|| settings.spa_server.clone())
        .ok_or_else(|| {
            ClientError::usage("--save-rc-stanza needs a stanza name: -n NAME (or -D HOST)")
        })
}

fn write_key_file(path: &Path, text: &str) -> Result<()> {
    spa_core::keys::write_key_file(path, text).map_err(|e| {
        ClientError::io(
            format!("unable to write key gen file {}", path.display()),
            &e,
        )
    })
}

/// --key-gen / -K: make keys, print or store them, and stop.
fn key_gen(
    cli: &Cli,
    settings: &mut Settings,
    rc: Option<&RcFile>,
    console: &mut Console,
) -> Result<()> {
    let generated: GeneratedKeys = keys::generate(
        cli.key_len.as_deref(),
        cli.hmac_key_len.as_deref(),
        settings.hmac_digest.unwrap_or(DigestType::Sha256),
    )?;
    let text = output::keygen_text(&generated);
    let mut stored_in_rc = false;
    if cli.save_rc_stanza {
        let rc =
            rc.ok_or_else(|| ClientError::usage("cannot save an rc stanza without an rc file"))?;
        settings.key = Some(KeySpec::Base64(SecretText::new(&generated.key.to_base64())));
        settings.hmac_key = Some(KeySpec::Base64(SecretText::new(
            &generated.hmac_key.to_base64(),
        )));
        let name = stanza_name(cli, settings)?;
        let kept = save_stanza(
            rc,
            &name,
            settings,
            &[Var::KeyBase64, Var::HmacKeyBase64],
            cli.force_stanza,
            console,
        )?;
        stored_in_rc = !kept
            .iter()
            .any(|k| k == "KEY_BASE64" || k == "HMAC_KEY_BASE64");
    }
    if let Some(path) = &cli.key_gen_file {
        write_key_file(path, &text)?;
        console.say(&format!(
            "[+] Wrote Rijndael and HMAC keys to: {}",
            path.display()
        ))?;
    } else if let Some(rc) = rc.filter(|_| stored_in_rc) {
        console.say(&format!(
            "[+] Wrote Rijndael and HMAC keys to rc file: {}",
            rc.path.display()
        ))?;
    } else {
        write!(console.out, "{text}").map_err(|e| ClientError::io("cannot write output", &e))?;
    }
    if cli.qr {
        let block = output::qr_block(&output::qr_payload(&generated)).map_err(ClientError::Io)?;
        writeln!(console.out, "{block}").map_err(|e| ClientError::io("cannot write output", &e))?;
    }
    Ok(())
}

/// fwknop's rules for the raw modes' options: a spoofed source needs a raw mode.
fn check_raw_options(settings: &Settings, proto: ServerProto) -> Result<()> {
    if settings.spoof_source_ip.is_some() && !proto.is_raw() {
        return Err(ClientError::usage(format!(
            "-Q/--spoof-source (SPOOF_SOURCE_IP) needs -P udpraw, tcpraw or icmp, not -P {}",
            proto.name()
        )));
    }
    Ok(())
}

fn key_input(cli: &Cli) -> Result<KeyInput> {
    if cli.stdin {
        return Ok(KeyInput::Lines(Box::new(BufReader::new(io::stdin()))));
    }
    if let Some(fd) = &cli.fd {
        let n: u32 = fd.parse().map_err(|_| {
            ClientError::usage(format!(
                "invalid --fd '{fd}': must be a file descriptor number"
            ))
        })?;
        let file = std::fs::File::open(format!("/dev/fd/{n}")).map_err(|e| {
            ClientError::io(format!("cannot read keys from file descriptor {n}"), &e)
        })?;
        return Ok(KeyInput::Lines(Box::new(BufReader::new(file))));
    }
    Ok(KeyInput::Terminal)
}

fn now_with_offset(settings: &Settings) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if settings.time_offset_minus > 0 {
        now.saturating_sub(settings.time_offset_minus)
    } else {
        now + settings.time_offset_plus
    }
}

/// Work out the address to allow, resolving it over HTTP(S) when asked to.
fn allow_ip(cli: &Cli, settings: &Settings, console: &mut Console) -> Result<IpAddr> {
    let allow =
        match settings.allow {
            Some(a) => a,
            None if settings.resolve_url.is_some() => AllowIp::Resolve,
            None => return Err(ClientError::usage(
                "no IP address to allow: use one of -a IP, -s or -R (or ALLOW_IP in the rc file)",
            )),
        };
    let verbose = cli.verbose.max(settings.verbose) > 0;
    match allow {
        AllowIp::Addr(ip) => {
            if ip.is_unspecified() && settings.verbose > 0 {
                console.warn(
                    "[-] WARNING: Should use -a or -R to harden SPA against potential MITM attacks",
                );
            }
            if verbose {
                console.say(&output::allow_line(ip, allow_origin(cli), None))?;
            }
            Ok(ip)
        }
        AllowIp::Resolve => {
            let urls =
                resolve::resolve_urls(settings.resolve_url.as_deref(), settings.resolve_http_only)?;
            if settings.verbose > 0
                && !settings.resolve_http_only
                && urls.iter().any(|u| !u.starts_with("https"))
            {
                console.warn(&format!(
                    "[-] Warning: IP resolution URL '{}' should begin with 'https://' in -R mode.",
                    urls[0]
                ));
            }
            let agent = settings
                .user_agent
                .clone()
                .unwrap_or_else(|| format!("postern/{VERSION}"));
            let (ip, url) =
                resolve::resolve_external_ip(&urls, &agent, knock_family(cli, settings))?;
            if verbose {
                console.say(&format!(
                    "\n[+] Resolved external IP (via '{url}') as: {ip}"
                ))?;
                console.say(&output::allow_line(ip, allow_origin(cli), Some(&url)))?;
            }
            Ok(ip)
        }
    }
}

/// Which option gave the address to allow, for `-v`.
fn allow_origin(cli: &Cli) -> &'static str {
    if cli.allow_ip.is_some() {
        "-a"
    } else if cli.source_ip {
        "-s"
    } else if cli.resolve_ip || cli.resolve_url.is_some() {
        "-R"
    } else {
        "the rc file"
    }
}

/// The family the knock goes out over, which -R asks its resolver over: the
/// one `-4`/`-6` name, else that of the server's first address. Either family
/// when that is not known here: no server (`-T`), a name that does not resolve
/// (sending will say so), or a knock through an HTTP proxy (the proxy, not
/// this host, looks the server up).
fn knock_family(cli: &Cli, settings: &Settings) -> crate::send::Family {
    use crate::send::Family;
    match settings.family() {
        Family::Any => {
            let Some(server) = settings
                .spa_server
                .as_deref()
                .filter(|_| cli.http_proxy.is_none())
            else {
                return Family::Any;
            };
            let port = settings.server_port.unwrap_or(DEFAULT_SERVER_PORT);
            crate::send::addresses("SPA server", server, port, Family::Any)
                .map_or(Family::Any, |addrs| Family::of(&addrs[0]))
        }
        family => family,
    }
}

/// Build the message fields from the settings.
fn message_spec(cli: &Cli, settings: &Settings, console: &mut Console) -> Result<MessageSpec> {
    let server = settings.spa_server.clone().unwrap_or_default();
    let command = cli
        .server_cmd
        .clone()
        .or_else(|| settings.server_command.clone());
    let ip = allow_ip(cli, settings, console)?;
    let (message, nat_access) = match &command {
        Some(cmd) => (build::command_message(ip, cmd)?, None),
        None => {
            let access = settings.access.as_deref().ok_or_else(|| {
                ClientError::usage("no access request: use -A proto/port (or ACCESS in the rc file), or -C for a server command")
            })?;
            let nat_wanted = settings.nat_local || settings.nat_access.is_some();
            let nat_port = if settings.nat_rand_port {
                Some(crate::random::high_port())
            } else {
                settings.nat_port
            };
            let message = build::access_message(ip, access, nat_port)?;
            let access_port = build::parse_access(access)?[0].port;
            let nat = if nat_wanted {
                build::nat_access_field(
                    settings.nat_access.as_deref(),
                    settings.nat_local,
                    &server,
                    access_port,
                )?
            } else {
                None
            };
            if let (Some(port), Some(nat)) = (nat_port.filter(|_| settings.nat_rand_port), &nat) {
                console.say(&format!("[+] Randomly assigned port '{port}' on: '{message}' will grant access to: '{nat}'"))?;
            }
            (message, nat)
        }
    };
    let username = user::truncate_username(
        &settings
            .spoof_user
            .clone()
            .unwrap_or_else(user::default_username),
    );
    spa_core::message::validate_username(&username).map_err(|e| {
        ClientError::usage(format!(
            "invalid user name '{username}' (-U/SPOOF_USER): {e}"
        ))
    })?;
    Ok(MessageSpec {
        username,
        timestamp: now_with_offset(settings),
        message,
        command: command.is_some(),
        nat_access,
        nat_local: settings.nat_local,
        fw_timeout: settings.fw_timeout,
    })
}

fn save_packet(cli: &Cli, wire: &str) -> Result<()> {
    let Some(path) = &cli.save_packet else {
        return Ok(());
    };
    let mut opts = OpenOptions::new();
    if cli.save_packet_append {
        opts.append(true).create(true);
    } else {
        let _ = std::fs::remove_file(path);
        opts.write(true).create_new(true);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| ClientError::io(format!("cannot write packet file {}", path.display()), &e))?;
    writeln!(f, "{wire}")
        .map_err(|e| ClientError::io(format!("cannot write packet file {}", path.display()), &e))
}

fn emit_dump(view: &FieldView, console: &mut Console) -> Result<()> {
    console.say(&output::field_dump(view))
}

/// What a packet was sealed with, kept for -T's check that it opens again.
enum Sealing {
    Rijndael(KeyMaterial),
    Gpg(Box<Gpgme>, Option<(DigestType, spa_core::Secret)>),
}

/// GPG mode: the signing passphrase, the engine, and the sealed packet.
fn seal_gpg(
    cli: &Cli,
    settings: &Settings,
    server: &str,
    message: spa_core::SpaMessage,
    console: &mut Console,
) -> Result<(SealedPacket, Sealing)> {
    let recipient = settings.gpg_recipient.clone().ok_or_else(|| {
        ClientError::usage("GPG mode needs the server's key: use --gpg-recipient-key (or GPG_RECIPIENT in the rc file)")
    })?;
    let keys: GpgKeyMaterial = keys::acquire_gpg(settings, server, &mut key_input(cli)?)?;
    if keys.signing_passphrase.is_none() && settings.key.is_none() {
        if settings.use_gpg_agent {
            console.say("[+] GPG mode set, signing passphrase acquired via gpg-agent")?;
        } else if settings.gpg_no_signing_pw {
            console.say("[+] GPG mode set, signing passphrase not required")?;
        }
    }
    let options = GpgOptions {
        home_dir: settings.gpg_home_dir.as_ref().map(PathBuf::from),
        exe: settings.gpg_exe.as_ref().map(PathBuf::from),
        passphrase: keys.signing_passphrase,
        use_agent: settings.use_gpg_agent,
    };
    let mut engine = Gpgme::new(&options)?;
    let details = GpgDetails {
        recipient,
        signer: settings.gpg_signer.clone(),
        home_dir: settings.gpg_home_dir.clone(),
        exe: engine.engine_path().unwrap_or_else(|| "gpg".into()),
    };
    let digest = settings.digest.unwrap_or(DigestType::Sha256);
    let packet = build::seal_gpg(message, digest, &mut engine, details, keys.hmac.as_ref())?;
    Ok((packet, Sealing::Gpg(Box::new(engine), keys.hmac)))
}

/// Build, show, save and send one packet.
fn send_packet(cli: &Cli, settings: &Settings, console: &mut Console) -> Result<()> {
    let test = cli.test;
    let verbose = cli.verbose.max(settings.verbose) > 0;
    if !test && settings.spa_server.is_none() {
        return Err(ClientError::usage(
            "no SPA server: use -D/--destination (or SPA_SERVER in the rc file) unless -T is given",
        ));
    }
    if settings.asymmetric && !settings.use_gpg {
        return Err(ClientError::usage(
            "-M asymmetric is GPG mode: give the GPG keys with --gpg-recipient-key (and --gpg-signer-key)",
        ));
    }
    let mode = settings.mode.unwrap_or_default();
    if !settings.use_gpg && mode == spa_core::EncryptionMode::Legacy && settings.use_hmac {
        return Err(ClientError::usage("legacy encryption mode is incompatible with HMAC (drop --use-hmac or use another -M mode)"));
    }
    if settings.use_gpg && settings.gpg_recipient.is_none() {
        return Err(ClientError::usage("GPG mode needs the server's key: use --gpg-recipient-key (or GPG_RECIPIENT in the rc file)"));
    }
    // -H sends over HTTP, through the proxy (fwknop refuses it with another -P).
    let proto = match (&cli.http_proxy, settings.server_proto) {
        (None, p) => p.unwrap_or(ServerProto::Udp),
        (Some(_), None | Some(ServerProto::Http)) => ServerProto::Http,
        (Some(_), Some(other)) => {
            return Err(ClientError::Usage(format!(
                "-H/--http-proxy needs -P http, not -P {}",
                other.name()
            )))
        }
    };
    check_raw_options(settings, proto)?;
    if settings.native {
        return send_native(cli, settings, proto, console);
    }
    if cli.totp.is_some() || cli.pin_source_port.is_some() {
        return Err(ClientError::usage(
            "--totp and --pin-source-port go with --native (PROTOCOL native)",
        ));
    }
    let spec = message_spec(cli, settings, console)?;
    let message = build::build_message(&spec)?;
    let server = settings.spa_server.clone().unwrap_or_default();
    let (packet, mut sealing) = if settings.use_gpg {
        seal_gpg(cli, settings, &server, message, console)?
    } else {
        let keys: KeyMaterial = keys::acquire(settings, &server, &mut key_input(cli)?)?;
        if mode == spa_core::EncryptionMode::Legacy
            && keys.key.bytes().len() > build::LEGACY_KEY_LEN
        {
            console.warn("WARNING: the encryption key in '-M legacy' mode must be <= 16 bytes long; truncating it");
        }
        let packet = build::seal(
            message,
            settings.digest.unwrap_or(DigestType::Sha256),
            mode,
            &keys,
        )?;
        (packet, Sealing::Rijndael(keys))
    };

    if verbose || test {
        emit_dump(&FieldView::built(&packet), console)?;
    }
    if verbose {
        console.say(&output::request_line(&packet.message))?;
        console.say(&output::packet_size_line(packet.wire.len()))?;
    }
    save_packet(cli, &packet.wire)?;

    let port = if settings.rand_port {
        crate::random::high_port()
    } else {
        settings.server_port.unwrap_or(DEFAULT_SERVER_PORT)
    };
    if verbose {
        write!(
            console.out,
            "{}",
            output::transmit_summary(proto.name(), settings.source_port, port, &server)
        )
        .map_err(|e| ClientError::io("cannot write output", &e))?;
    }
    let sent = if test {
        console.say("test mode enabled, SPA packet not actually sent.")?;
        None
    } else {
        let target = Target {
            proto,
            host: server,
            port,
            family: settings.family(),
            source_port: settings.source_port,
            http: send::HttpVia {
                user_agent: settings
                    .user_agent
                    .clone()
                    .unwrap_or_else(|| format!("Fwknop/postern-{VERSION}")),
                proxy: cli.http_proxy.clone(),
            },
            raw: send::RawOptions {
                spoof_source: settings.spoof_source_ip,
                icmp_type: settings.icmp_type.unwrap_or(crate::raw::DEFAULT_ICMP_TYPE),
                icmp_code: settings.icmp_code.unwrap_or(0),
            },
        };
        Some(send::send(&packet.wire, &target)?)
    };
    if verbose {
        let bytes = sent.as_ref().map_or(0, |s| s.bytes);
        console.say(&format!("send_spa_packet: bytes sent: {bytes}"))?;
        if let Some(sent) = &sent {
            console.say(&output::resolved_line(sent))?;
            console.say(&output::sent_line(sent, proto.name()))?;
        }
    }
    if let Some(seconds) = cli.wait.filter(|_| !test) {
        let host = settings.spa_server.as_deref().unwrap_or_default();
        wait_until_open(settings, host, seconds, verbose, console)?;
    }
    if test {
        match &mut sealing {
            Sealing::Rijndael(keys) => {
                let decoded = build::verify(&packet, keys)?;
                if verbose {
                    console.say("\nDump of the Decoded Data")?;
                    emit_dump(&FieldView::decoded(&packet, &decoded), console)?;
                }
            }
            Sealing::Gpg(engine, hmac) => {
                let (decoded, signature) =
                    build::verify_gpg(&packet, engine.as_mut(), hmac.as_ref())?;
                if verbose {
                    console.say("\nDump of the Decoded Data")?;
                    emit_dump(
                        &FieldView::decoded_gpg(&packet, &decoded, signature.as_ref()),
                        console,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `--native`: postern's own protocol (docs/protocol.md), over UDP or TCP.
fn send_native(
    cli: &Cli,
    settings: &Settings,
    proto: ServerProto,
    console: &mut Console,
) -> Result<()> {
    let test = cli.test;
    let verbose = cli.verbose.max(settings.verbose) > 0;
    if settings.use_gpg || cli.server_cmd.is_some() || settings.server_command.is_some() {
        return Err(ClientError::usage(
            "--native carries access requests only: no GPG (-g) and no server command (-C)",
        ));
    }
    let allow = allow_ip(cli, settings, console)?;
    // --connect holds its connection's source port (--pin-source-port's when
    // named): the grant is pinned to it, and the connection comes from it.
    let offered = cli.connect_pin.as_ref().map(|o| o.take().to_string());
    let payload = crate::native::payload(
        settings,
        allow,
        cli.pin_source_port.as_deref().or(offered.as_deref()),
        cli.totp.as_deref(),
        now_with_offset(settings),
    )?;
    let wire = crate::native::seal(settings, &payload)?;
    if verbose || test {
        console.say(&format!(
            "native packet ({}): {} bytes, access {}",
            if settings.native_hybrid {
                "X25519 + ML-KEM-768"
            } else {
                "X25519"
            },
            wire.len(),
            payload
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ))?;
    }
    if let Some(path) = &cli.save_packet {
        std::fs::write(path, &wire)
            .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), &e))?;
    }
    if test {
        return console.say("test mode enabled, SPA packet not actually sent.");
    }
    let server = settings.spa_server.clone().unwrap_or_default();
    let port = if settings.rand_port {
        crate::random::high_port()
    } else {
        settings.server_port.unwrap_or(DEFAULT_SERVER_PORT)
    };
    let target = Target {
        proto,
        host: server,
        port,
        family: settings.family(),
        source_port: settings.source_port,
        http: send::HttpVia {
            user_agent: String::new(),
            proxy: None,
        },
        raw: send::RawOptions::default(),
    };
    let sent = send::send_bytes(&wire, &target)?;
    if verbose {
        console.say(&format!("send_spa_packet: bytes sent: {}", sent.bytes))?;
        console.say(&output::sent_line(&sent, proto.name()))?;
    }
    if let Some(seconds) = cli.wait {
        let host = settings.spa_server.as_deref().unwrap_or_default();
        wait_until_open(settings, host, seconds, verbose, console)?;
    }
    Ok(())
}

/// `--wait`: probe the knock's TCP ports until they open (see [`crate::wait`]).
fn wait_until_open(
    settings: &Settings,
    host: &str,
    seconds: f32,
    verbose: bool,
    console: &mut Console,
) -> Result<()> {
    let access = settings.access.as_deref().unwrap_or_default();
    let ports = crate::wait::tcp_ports(access)?;
    let mut lines = Vec::new();
    let result = crate::wait::until_open(
        host,
        settings.family(),
        &ports,
        std::time::Duration::from_secs_f32(seconds),
        &mut |line| lines.push(line.to_string()),
    );
    if verbose {
        for line in &lines {
            console.say(line)?;
        }
    }
    let took = result?;
    console.say(&format!(
        "open: {} on {host} after {:.0} ms",
        crate::wait::describe(&ports),
        took.as_secs_f64() * 1000.0
    ))
}

/// Everything after argument parsing.
/// Run `cli`. With `save_args`, a command line that sends a knock (or shows one
/// with -T) is saved there first, as fwknop does, unless NO_SAVE_ARGS is set in
/// the rc file.
pub fn execute(
    cli: &Cli,
    console: &mut Console,
    save_args: Option<(&Path, &[OsString])>,
) -> Result<()> {
    if cli.version {
        return console.say(&format!(
            "postern client {VERSION}, FKO protocol version {}",
            spa_core::message::PROTOCOL_VERSION
        ));
    }
    if let Some((flag, why)) = cli.refused_flag() {
        return Err(ClientError::refused_flag(flag, why));
    }
    if cli.no_rc_file {
        let clash = [
            (
                cli.save_rc_stanza,
                "cannot save an rc stanza in --no-rc-file mode",
            ),
            (
                cli.named_config.is_some(),
                "cannot use a named stanza (-n) in --no-rc-file mode",
            ),
            (cli.stanza_list, "cannot list stanzas in --no-rc-file mode"),
        ];
        if let Some((_, msg)) = clash.iter().find(|(on, _)| *on) {
            return Err(ClientError::usage(*msg));
        }
    }
    // postern extensions that only make keys and stop.
    if let Some(path) = &cli.gen_client_key {
        return crate::native::gen_client_key(path, console.out);
    }
    if let Some(path) = &cli.totp_setup {
        return crate::native::totp_setup(path, console.out);
    }
    let wants_keys = cli.key_gen || cli.key_gen_file.is_some();
    if cli.qr && !wants_keys {
        return Err(ClientError::usage(
            "--qr only works together with --key-gen or -K",
        ));
    }
    let rc = if cli.no_rc_file {
        None
    } else {
        let path = rc_path(cli)?;
        if cli.stanza_list {
            return stanza_list(&path, console);
        }
        load_rc(&path, console)?
    };
    if rc.is_none() && !cli.no_rc_file && (cli.save_rc_stanza || cli.named_config.is_some()) {
        return Err(ClientError::RcFile(
            "no usable rc file for -n / --save-rc-stanza".into(),
        ));
    }
    let mut settings = gather_settings(cli, rc.as_ref(), console)?;
    // --connect HOST:PORT: knock HOST for tcp/PORT unless told otherwise.
    if let Some(target) = &cli.connect {
        let (host, port) = crate::connect::parse_target(target)?;
        settings.spa_server.get_or_insert(host);
        settings.access.get_or_insert(format!("tcp/{port}"));
    }
    if wants_keys {
        return key_gen(cli, &mut settings, rc.as_ref(), console);
    }
    if cli.save_rc_stanza {
        let rc = rc
            .as_ref()
            .ok_or_else(|| ClientError::usage("cannot save an rc stanza without an rc file"))?;
        let name = stanza_name(cli, &settings)?;
        let _kept = save_stanza(rc, &name, &settings, &[], cli.force_stanza, console)?;
    }
    if let Some((path, args)) = save_args.filter(|_| !settings.no_save_args) {
        match saved_args::line_for(args) {
            Some(line) => saved_args::save(path, &line)?,
            None if settings.verbose > 0 => console.warn(
                "[-] not saving the command line for -l: an argument holds whitespace or it is too long",
            ),
            None => {}
        }
    }
    send_packet(cli, &settings, console)
}
