//! `posternd`: the postern SPA server.

#![forbid(unsafe_code)]

use clap::Parser;
use spa_server::cli::{Cli, Command};
use spa_server::config::{
    self, ActionConfig, CaptureConfig, ConfigSources, ReplayConfig, ServerConfig,
};
use spa_server::daemon;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("posternd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--key-gen` as fwknopd: keys for access.conf, printed or written 0600.
fn key_gen(cli: &Cli) -> anyhow::Result<ExitCode> {
    let digest = match &cli.hmac_digest_type {
        Some(d) => d
            .parse()
            .map_err(|e| anyhow::anyhow!("--hmac-digest-type: {e}"))?,
        None => spa_core::DigestType::Sha256,
    };
    let sizes =
        spa_core::KeyGenSizes::parse(cli.key_len.as_deref(), cli.hmac_key_len.as_deref(), digest)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = sizes.generate(|buf| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, buf));
    let text = keys.to_keygen_output();
    match &cli.key_gen_file {
        Some(path) => {
            spa_core::keys::write_key_file(path, &text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("[+] Wrote Rijndael and HMAC keys to: {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether this run serves (rather than checking, listing or signalling).
fn serves(cli: &Cli) -> bool {
    !(cli.dump_config
        || cli.dump_config_toml
        || cli.exit_parse_config
        || cli.exit_parse_digest_cache
        || cli.fw_list_all
        || cli.kill
        || cli.restart
        || cli.status
        || cli.fw_list
        || cli.fw_flush
        || cli.command.is_some())
}

fn ensure_executable(flag: &str, path: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{flag} {path}: {e}"))?;
    anyhow::ensure!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "{flag} {path}: not an executable file"
    );
    Ok(())
}

/// Command-line overrides on top of the files.
fn apply_overrides(cli: &Cli, cfg: &mut ServerConfig) -> anyhow::Result<()> {
    if let Some(dir) = &cli.run_dir {
        cfg.server.run_dir = dir.clone();
        // As fwknopd, -r also moves fwknopd's digest cache unless the file names it
        // (and -D shows the run dir in effect).
        if let ReplayConfig::File {
            import_fwknop: Some(cache),
            ..
        } = &mut cfg.replay
        {
            if !cfg.fwknopd_vars.contains_key("DIGEST_FILE") {
                *cache = dir.join("digest.cache");
            }
        }
        if let Some(run_dir) = cfg.fwknopd_vars.get_mut("FWKNOP_RUN_DIR") {
            *run_dir = dir.display().to_string();
        } else if !cfg.fwknopd_vars.is_empty() {
            cfg.fwknopd_vars
                .insert("FWKNOP_RUN_DIR".into(), dir.display().to_string());
        }
    }
    // Checked now, as fwknopd does, rather than when a knock needs them.
    if let Some(dir) = &cli.gpg_home_dir {
        anyhow::ensure!(
            Path::new(dir).is_dir(),
            "--gpg-home-dir {dir}: not a directory"
        );
        cfg.server.gpg_home_dir = Some(dir.into());
    }
    if let Some(exe) = &cli.gpg_exe {
        ensure_executable("--gpg-exe", exe)?;
        cfg.server.gpg_exe = Some(exe.into());
    }
    if let Some(exe) = &cli.sudo_exe {
        ensure_executable("--sudo-exe", exe)?;
        cfg.server.sudo_exe = Some(exe.into());
    }
    if let Some(path) = &cli.audit_log {
        // Made absolute now: a daemon in the background works from `/`.
        let path = if path.as_os_str() == "-" {
            path.clone()
        } else {
            std::path::absolute(path)
                .map_err(|e| anyhow::anyhow!("--audit-log {}: {e}", path.display()))?
        };
        cfg.audit = Some(config::AuditConfig { path });
    }
    // fwknopd's digest cache: posternd imports it (its own store stays redb).
    if let Some(file) = &cli.digest_file {
        if let ReplayConfig::File { import_fwknop, .. } = &mut cfg.replay {
            *import_fwknop = Some(file.clone());
        }
    }
    // As fwknopd, NFQ capture wins over -U.
    let nfq = |c: &CaptureConfig| matches!(c, CaptureConfig::Nfqueue(_));
    if cli.udp_server && !cfg.capture.iter().any(nfq) {
        let port = cfg
            .capture
            .iter()
            .find_map(|c| match c {
                CaptureConfig::Udp { listen } => Some(listen.port()),
                _ => None,
            })
            .or(cfg.server.udp_server_port);
        cfg.capture
            .retain(|c| !matches!(c, CaptureConfig::Pcap { .. } | CaptureConfig::Udp { .. }));
        cfg.capture.insert(
            0,
            CaptureConfig::Udp {
                listen: ([0, 0, 0, 0], port.unwrap_or(62201)).into(),
            },
        );
    }
    let pcap_flags = [
        (cli.interface.is_some(), "-i"),
        (cli.pcap_filter.is_some(), "-P"),
        (cli.pcap_file.is_some(), "--pcap-file"),
        (cli.pcap_any_direction, "--pcap-any-direction"),
    ];
    let has_pcap = cfg
        .capture
        .iter()
        .any(|c| matches!(c, CaptureConfig::Pcap { .. }));
    for (_, flag) in pcap_flags.iter().filter(|(given, _)| *given && !has_pcap) {
        tracing::warn!("{flag} has no effect: no pcap capture is configured");
    }
    if cli.digest_file.is_some() && !matches!(cfg.replay, ReplayConfig::File { .. }) {
        tracing::warn!("-d has no effect: the replay store is not a file");
    }
    for c in cfg.capture.iter_mut() {
        if let CaptureConfig::Pcap {
            interfaces,
            filter,
            file,
            any_direction,
            ..
        } = c
        {
            if let Some(i) = &cli.interface {
                *interfaces = i.split(',').map(|s| s.trim().to_string()).collect();
            }
            if let Some(f) = &cli.pcap_filter {
                *filter = f.clone();
            }
            if let Some(f) = &cli.pcap_file {
                *file = Some(f.clone());
            }
            if cli.pcap_any_direction {
                *any_direction = true;
            }
        }
    }
    if cli.test {
        // Test mode changes nothing on the host: no firewall rule, no client
        // command, no CMD_CYCLE script (the executor logs what would have run).
        cfg.server.test_mode = true;
        cfg.action = vec![ActionConfig::Log {}];
        // No queue rule either (fwknopd -t sets up no chains at all).
        for c in cfg.capture.iter_mut() {
            if let CaptureConfig::Nfqueue(s) = c {
                s.rules = Some(spa_server::capture::nfqueue::RuleTool::Unmanaged);
            }
        }
    }
    Ok(())
}

/// Without `-c`: postern's own file when there is one, else fwknopd's (so
/// `posternd` alone starts where `fwknopd` alone would).
fn default_config_file() -> Option<PathBuf> {
    [
        PathBuf::from("/etc/postern/postern.toml"),
        std::path::Path::new(config::fwknopd::DEFAULT_CONF_DIR).join("fwknopd.conf"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// The digest caches this configuration uses: fwknopd's DIGEST_FILE (imported)
/// and posternd's own store.
fn digest_caches(cfg: &ServerConfig) -> (Option<PathBuf>, Option<PathBuf>) {
    match &cfg.replay {
        ReplayConfig::File {
            path,
            import_fwknop,
        } => (
            import_fwknop.clone(),
            Some(
                path.clone()
                    .unwrap_or_else(|| cfg.server.run_dir.join("replay.redb")),
            ),
        ),
        _ => (None, None),
    }
}

/// `--exit-parse-digest-cache`: every problem as `file:line: why`; non-zero
/// when a cache does not parse.
fn parse_digest_caches(cfg: &ServerConfig) -> ExitCode {
    let (fwknop, own) = digest_caches(cfg);
    let mut ok = true;
    if let Some(file) = fwknop {
        match spa_server::replay::check_fwknop_cache(&file) {
            Ok(n) => println!("{}: {n} digests", file.display()),
            Err(errors) => {
                ok = false;
                for e in errors {
                    eprintln!("posternd: invalid digest cache entry: {e}");
                }
            }
        }
    }
    if let Some(file) = own {
        match spa_server::replay::check_store(&file) {
            Ok(n) => println!("{}: {n} digests", file.display()),
            Err(e) => {
                ok = false;
                eprintln!("posternd: {e}");
            }
        }
    }
    if ok {
        tracing::info!("Digest cache parsed, exiting.");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--rotate-digest-cache`: both caches renamed to `<name>-old`, as fwknopd.
fn rotate_digest_caches(cfg: &ServerConfig) -> anyhow::Result<()> {
    let (fwknop, own) = digest_caches(cfg);
    tracing::info!("Rotating digest cache file.");
    for file in [fwknop, own].into_iter().flatten() {
        if let Some(old) = spa_server::replay::rotate(&file)? {
            tracing::info!("{} rotated to {}", file.display(), old.display());
        }
    }
    Ok(())
}

fn pid_file(cli: &Cli, cfg: &ServerConfig) -> PathBuf {
    cli.pid_file
        .clone()
        .or_else(|| cfg.server.pid_file.clone())
        .unwrap_or_else(|| cfg.server.run_dir.join(&cfg.server.pid_file_name))
}

/// `signal` `None`: only whether it runs (kill(2) with signal 0).
fn signal_running(
    pid_path: &PathBuf,
    signal: Option<nix::sys::signal::Signal>,
) -> anyhow::Result<Option<i32>> {
    let Ok(text) = std::fs::read_to_string(pid_path) else {
        return Ok(None);
    };
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: not a pid", pid_path.display()))?;
    // kill(0) signals our own process group, kill(-1) every process, kill(1) init.
    if pid <= 1 {
        anyhow::bail!(
            "{}: holds pid {pid}, which cannot be posternd; remove the file",
            pid_path.display()
        );
    }
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok();
    Ok(alive.then_some(pid))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(flag) = cli.unsupported_flag() {
        anyhow::bail!("fwknopd option {flag} is not supported by posternd yet");
    }
    if cli.key_gen || cli.key_gen_file.is_some() {
        return key_gen(&cli);
    }
    // The native protocol's key and clients: no configuration needed.
    match &cli.command {
        Some(Command::Key(cmd)) => {
            spa_server::native_admin::key(cmd, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Client(cmd)) => {
            spa_server::native_admin::client(cmd, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if cli.dump_serv_err_codes {
        print!("{}", spa_server::cli::server_error_codes_text());
        return Ok(ExitCode::SUCCESS);
    }
    let packet_limit = cli.packet_limit().map_err(anyhow::Error::msg)?;
    let sources = ConfigSources {
        config: cli.config.clone().or_else(default_config_file),
        access: cli.access.clone(),
        access_folder: cli.access_folder.clone(),
        lenient: cli.lenient_config,
        overrides: cli.override_files(),
    };
    let loaded = config::load(&sources)?;
    let background = serves(&cli) && !cli.foreground;
    spa_server::service::init_logging(
        cli.verbose.max(loaded.config.server.verbose),
        spa_server::service::LogTarget {
            stderr: !background,
            identity: loaded.config.server.syslog_identity.clone(),
            facility: loaded.config.server.syslog_facility.clone(),
            syslog: background || cli.syslog_enable,
        },
    )?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if cli.no_ipt_check_support || cli.no_firewd_check_support {
        tracing::info!(
            "--no-ipt/firewd-check-support has no effect: posternd never runs `iptables -C`"
        );
    }
    let mut cfg = loaded.config;
    apply_overrides(&cli, &mut cfg)?;
    let pid_path = pid_file(&cli, &cfg);

    if cli.dump_config {
        print!("{}", config::dump::fwknopd_dump(&cfg, &sources));
        return Ok(ExitCode::SUCCESS);
    }
    if cli.dump_config_toml || matches!(cli.command, Some(Command::CheckConfig)) {
        print!("{}", config::render_redacted(&cfg));
        return Ok(ExitCode::SUCCESS);
    }
    if cli.exit_parse_config {
        tracing::info!("Configs parsed, exiting.");
        return Ok(ExitCode::SUCCESS);
    }
    if cli.exit_parse_digest_cache {
        return Ok(parse_digest_caches(&cfg));
    }
    if cli.fw_list_all {
        print!("{}", daemon::list_all_rules(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    if cli.kill || cli.restart || cli.status {
        use nix::sys::signal::Signal;
        let sig = if cli.kill {
            Some(Signal::SIGTERM)
        } else if cli.restart {
            Some(Signal::SIGHUP)
        } else {
            None
        };
        return Ok(match signal_running(&pid_path, sig)? {
            Some(pid) => {
                println!(
                    "posternd (pid {pid}) is running{}",
                    if sig.is_some() { "; signal sent" } else { "" }
                );
                ExitCode::SUCCESS
            }
            None => {
                println!(
                    "posternd is not running (no live pid in {})",
                    pid_path.display()
                );
                ExitCode::FAILURE
            }
        });
    }
    if cli.fw_list || cli.fw_flush {
        // No init: a running daemon's grants must not be reset (FLUSH_IPT_AT_INIT).
        let clock: std::sync::Arc<dyn spa_core::Clock> = std::sync::Arc::new(spa_core::SystemClock);
        let mut backends = daemon::build_backends(&cfg, &clock)?;
        for b in backends.iter_mut() {
            if cli.fw_flush {
                b.flush()?;
                println!("{}: flushed", b.name());
            } else {
                // The firewall's own listing first, under fwknopd's heading, so
                // what parsed `fwknopd --fw-list` parses this too.
                if let Some(native) = b.native_listing()? {
                    println!(
                        "Listing rules in {} {} chains...\n",
                        cfg.server.syslog_identity,
                        b.name()
                    );
                    print!("{native}");
                }
                let list = b.list()?;
                println!("{}: {} active grant(s)", b.name(), list.len());
                let now = clock.now();
                for o in list {
                    println!(
                        "  {}  expires in {} s",
                        o.rule,
                        o.expires_at.saturating_sub(now)
                    );
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    if background && cfg.audit.as_ref().is_some_and(|a| a.is_stdout()) {
        anyhow::bail!(
            "the audit log goes to stdout (`-`), which posternd in the background does not \
             have: run it with -f, or give the audit log a file"
        );
    }
    if let Some(pid) = signal_running(&pid_path, None)? {
        anyhow::bail!(
            "posternd is already running (pid {pid}, {})",
            pid_path.display()
        );
    }
    if let Some(dir) = pid_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&cfg.server.run_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.server.run_dir.display()))?;
    // Replay digests, owed closes and the pid file live there.
    config::trust::check(
        &cfg.server.run_dir,
        "the run directory",
        config::trust::Trust::Trusted,
    )?;
    // Forked while there is one thread; the pid file names the daemon.
    let readiness = if background {
        spa_server::service::daemonize()?
    } else {
        spa_server::service::Readiness::default()
    };
    if cli.rotate_digest_cache {
        rotate_digest_caches(&cfg)?;
    }
    let stop_after = packet_limit.map(spa_server::capture::set_packet_limit);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", pid_path.display()))?;
    // Before the runtime: capabilities are per thread, and every thread started
    // from here on inherits the reduced sets.
    #[cfg(target_os = "linux")]
    {
        let held = spa_server::privileges::drop_to(&daemon::privilege_needs(&cfg))
            .map_err(|e| anyhow::anyhow!("capabilities: {e}"))?;
        tracing::info!("capabilities reduced on every thread: {held}");
    }
    // No capabilities there: nothing is reduced, and the log says so.
    #[cfg(not(target_os = "linux"))]
    spa_server::privileges::report_kept();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(daemon::serve(sources, cfg, readiness, stop_after));
    if let Err(e) = &result {
        // In the background stderr is /dev/null by now.
        tracing::error!("stopped: {e:#}");
    }
    let _ = std::fs::remove_file(&pid_path);
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_server::capture::nfqueue::{RuleTool, Settings};

    #[test]
    fn nfq_capture_wins_over_udp_server_and_test_mode_adds_no_queue_rule() {
        let mut cfg = ServerConfig {
            capture: vec![CaptureConfig::Nfqueue(Settings::default())],
            ..ServerConfig::default()
        };
        apply_overrides(&Cli::parse_from(["posternd", "-U"]), &mut cfg).unwrap();
        assert_eq!(cfg.capture, [CaptureConfig::Nfqueue(Settings::default())]);
        apply_overrides(&Cli::parse_from(["posternd", "-t"]), &mut cfg).unwrap();
        assert_eq!(
            cfg.capture,
            [CaptureConfig::Nfqueue(Settings {
                rules: Some(RuleTool::Unmanaged),
                ..Settings::default()
            })]
        );
    }
}
