//! `postern [OPTIONS] ssh [USER@]HOST [-- SSH_ARGUMENTS]`: run the real ssh so
//! that its connection goes through `postern --connect` (see
//! [`crate::connect`]), which knocks, waits until the port opens and carries
//! the connection:
//!
//! ```text
//! ssh -o 'ProxyCommand=/usr/bin/postern --connect %h:%p OPTIONS [-n HOST]' [USER@]HOST SSH_ARGUMENTS
//! ```
//!
//! ssh works out the host and port (`%h:%p`) from its own configuration, so
//! `Host` aliases, `HostName` and `Port` apply. OPTIONS are the knock options
//! exactly as given before `ssh`; `-n HOST` is added when no `-n` is given and
//! the rc file has a stanza named HOST. ssh is run as an argv (exec, so its
//! exit status is postern's); ssh itself runs the ProxyCommand with `$SHELL -c`,
//! so every word in it is quoted for a POSIX shell and ssh is given
//! `SHELL=/bin/sh`.

use crate::app;
use crate::cli::{Cli, SshArgs};
use crate::error::{ClientError, Result};
use crate::rcfile::{self, RcFile};
use std::convert::Infallible;
use std::ffi::OsString;
use std::process::Command;

/// The shell ssh runs the ProxyCommand with (it uses `$SHELL`).
const PROXY_SHELL: &str = "/bin/sh";

/// Options that make no sense with `ssh` (they do something else than knock).
fn refused_option(cli: &Cli) -> Option<&'static str> {
    [
        (cli.connect.is_some(), "--connect"),
        (cli.test, "-T/--test"),
        (cli.last_cmd, "-l/--last-cmd"),
        (cli.show_last, "--show-last"),
        (cli.key_gen || cli.key_gen_file.is_some(), "--key-gen/-K"),
        (cli.save_rc_stanza, "--save-rc-stanza"),
        (cli.stanza_list, "--stanza-list"),
        (cli.version, "-V/--version"),
    ]
    .into_iter()
    .find_map(|(used, name)| used.then_some(name))
}

/// The knock options: the arguments before `ssh HOST [-- SSH_ARGUMENTS]`.
/// `args` is the whole command line, program name first.
pub fn knock_options(args: &[OsString], ssh: &SshArgs) -> Result<Vec<String>> {
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| ClientError::usage(format!("ssh: an argument is not UTF-8: {a:?}")))
        })
        .collect::<Result<_>>()?;
    let mut tail = vec!["ssh".to_string(), ssh.host.clone()];
    // `--` comes before ssh's arguments, and may stand alone at the end.
    if !ssh.ssh_args.is_empty() || args.last().is_some_and(|a| a == "--") {
        tail.push("--".into());
        tail.extend(ssh.ssh_args.iter().cloned());
    }
    if !args.ends_with(&tail) {
        return Err(ClientError::usage(
            "ssh: give the knock options before `ssh`, and ssh's own after `--`",
        ));
    }
    Ok(args[..args.len() - tail.len()].to_vec())
}

/// The stanza named like the destination's host, if the rc file has one and
/// no `-n` was given.
fn stanza_for_host(cli: &Cli, host: &str) -> Result<Option<String>> {
    if cli.named_config.is_some() || cli.no_rc_file {
        return Ok(None);
    }
    let name = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if name.eq_ignore_ascii_case(rcfile::DEFAULT_STANZA) {
        return Ok(None);
    }
    let rc = RcFile::load(&app::rc_path(cli)?)?;
    Ok(rc
        .filter(|rc| rc.has_stanza(name))
        .map(|_| name.to_string()))
}

/// One word of the ProxyCommand: `%` doubled for ssh's token expansion, then
/// quoted for the shell.
fn proxy_word(word: &str) -> Result<String> {
    if word.contains(['\n', '\r', '\0']) {
        return Err(ClientError::usage(format!(
            "ssh: an option holds a line break: {word:?}"
        )));
    }
    Ok(shell_words::quote(&word.replace('%', "%%")).into_owned())
}

/// `postern --connect %h:%p OPTIONS`, as ssh's ProxyCommand.
pub fn proxy_command(postern: &str, options: &[String]) -> Result<String> {
    let mut words = vec![proxy_word(postern)?, "--connect".into(), "%h:%p".into()];
    for o in options {
        words.push(proxy_word(o)?);
    }
    Ok(words.join(" "))
}

/// Build ssh's command line and exec it; returns only on failure.
pub fn run(
    cli: &Cli,
    ssh: &SshArgs,
    args: &[OsString],
    err: &mut dyn std::io::Write,
) -> Result<Infallible> {
    if let Some(flag) = refused_option(cli) {
        return Err(ClientError::usage(format!(
            "{flag} cannot be used with `ssh`"
        )));
    }
    let mut options = knock_options(args, ssh)?;
    let by_host = stanza_for_host(cli, &ssh.host)?;
    if let Some(stanza) = &by_host {
        options.extend(["-n".to_string(), stanza.clone()]);
    }
    let postern = std::env::current_exe()
        .map_err(|e| ClientError::io("ssh: cannot find the postern program", &e))?;
    let postern = postern.to_str().ok_or_else(|| {
        ClientError::usage(format!(
            "ssh: the path of postern is not UTF-8: {postern:?}"
        ))
    })?;
    let proxy = proxy_command(postern, &options)?;
    let mut command = Command::new("ssh");
    command
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(&ssh.host)
        .args(&ssh.ssh_args)
        .env("SHELL", PROXY_SHELL);
    if cli.verbose > 0 {
        // Not the whole ProxyCommand: the options may hold keys.
        let stanza = match (&cli.named_config, &by_host) {
            (Some(n), _) | (None, Some(n)) => format!("stanza [{n}]"),
            (None, None) => "no stanza".into(),
        };
        let _ = writeln!(
            err,
            "postern: running ssh {} with ProxyCommand `postern --connect %h:%p` ({stanza})",
            ssh.host
        );
    }
    let e = std::os::unix::process::CommandExt::exec(&mut command);
    Err(ClientError::io("ssh: cannot run ssh", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Cli, SshArgs, Vec<OsString>) {
        let argv: Vec<OsString> = std::iter::once("postern")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let cli = match Cli::parse_args(&argv) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?}: {e:?}"),
        };
        let Some(crate::cli::Command::Ssh(ssh)) = cli.command.clone() else {
            panic!("{args:?}: no ssh command")
        };
        (cli, ssh, argv)
    }

    #[test]
    fn the_options_before_ssh_are_the_knock_options() {
        let (_, ssh, argv) = parse(&["-v", "-n", "ssh", "ssh", "gw"]);
        assert_eq!(ssh.host, "gw");
        assert_eq!(knock_options(&argv, &ssh).unwrap(), ["-v", "-n", "ssh"]);
        let (_, ssh, argv) = parse(&[
            "-a", "10.0.0.1", "ssh", "root@gw", "--", "-p", "2222", "ssh", "gw",
        ]);
        assert_eq!(ssh.host, "root@gw");
        assert_eq!(ssh.ssh_args, ["-p", "2222", "ssh", "gw"]);
        assert_eq!(knock_options(&argv, &ssh).unwrap(), ["-a", "10.0.0.1"]);
        let (_, ssh, argv) = parse(&["ssh", "gw", "--"]);
        assert!(knock_options(&argv, &ssh).unwrap().is_empty());
    }

    #[test]
    fn the_proxy_command_survives_the_shell_and_ssh_tokens() {
        let pc = proxy_command(
            "/opt/my postern/postern",
            &["--rc-file".into(), "/tmp/a b/100%'s rc".into()],
        )
        .unwrap();
        assert_eq!(
            pc,
            r"'/opt/my postern/postern' --connect %h:%p --rc-file '/tmp/a b/100%%'\''s rc'"
        );
        assert!(proxy_command("postern", &["a\nb".into()]).is_err());
    }

    #[test]
    fn options_that_do_something_else_are_refused() {
        let (cli, _, _) = parse(&["-T", "ssh", "gw"]);
        assert_eq!(refused_option(&cli), Some("-T/--test"));
        let (cli, _, _) = parse(&["--connect", "gw:22", "ssh", "gw"]);
        assert_eq!(refused_option(&cli), Some("--connect"));
        let (cli, _, _) = parse(&["-n", "gw", "ssh", "gw"]);
        assert_eq!(refused_option(&cli), None);
    }
}
