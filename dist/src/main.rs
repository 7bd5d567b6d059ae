//! `postern-dist DIR`: the man pages and shell completions of `postern` and
//! `posternd`, written under DIR as a package installs them:
//!
//! ```text
//! DIR/man/man1/postern.1          DIR/man/man8/posternd.8
//! DIR/man/man1/postern-ssh.1      (a page per subcommand)
//! DIR/completions/bash/{postern,posternd}
//! DIR/completions/zsh/{_postern,_posternd}
//! DIR/completions/fish/{postern,posternd}.fish
//! DIR/systemd/posternd.service
//! ```
//!
//! Pages and completions are generated from the clap definitions the binaries
//! parse with, so they cannot drift from the flags the programs take. The unit
//! is examples/posternd.service (the one tests/tests/systemd_unit.rs runs
//! posternd under) with ExecStart pointing where the package installs the
//! daemon, /usr/sbin, instead of /usr/local/sbin.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// A binary, its clap definition and its man section (fwknop is in 8, the
/// daemon's section; its client in 1).
fn programs() -> [(clap::Command, &'static str); 2] {
    [
        (spa_client::cli::Cli::command(), "1"),
        (spa_server::cli::Cli::command(), "8"),
    ]
}

fn write(path: PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
}

fn man_page(cmd: &clap::Command, section: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("postern")
        .render(&mut out)?;
    Ok(out)
}

fn completion(cmd: &clap::Command, shell: Shell) -> Vec<u8> {
    let mut cmd = cmd.clone();
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

fn completion_path(dir: &Path, shell: Shell, name: &str) -> PathBuf {
    let base = dir.join("completions");
    match shell {
        Shell::Bash => base.join("bash").join(name),
        Shell::Zsh => base.join("zsh").join(format!("_{name}")),
        Shell::Fish => base.join("fish").join(format!("{name}.fish")),
        other => base.join(other.to_string()).join(name),
    }
}

/// The hardened unit, and where the example and the package run posternd from.
const EXAMPLE_UNIT: &str = include_str!("../../examples/posternd.service");
const EXAMPLE_EXEC: &str = "ExecStart=/usr/local/sbin/posternd ";
const PACKAGE_EXEC: &str = "ExecStart=/usr/sbin/posternd ";

/// The example unit with the package's ExecStart; an error if the example no
/// longer has exactly one ExecStart line of the expected form.
fn packaged_unit() -> anyhow::Result<String> {
    let starts = EXAMPLE_UNIT
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect::<Vec<_>>();
    anyhow::ensure!(
        starts.len() == 1 && starts[0].starts_with(EXAMPLE_EXEC),
        "examples/posternd.service must have one `{EXAMPLE_EXEC}…` line, has {starts:?}"
    );
    Ok(EXAMPLE_UNIT.replacen(EXAMPLE_EXEC, PACKAGE_EXEC, 1))
}

fn generate(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let unit = dir.join("systemd").join("posternd.service");
    write(unit.clone(), packaged_unit()?.as_bytes())?;
    written.push(unit);
    for (cmd, section) in programs() {
        let name = cmd.get_name().to_string();
        // Built, so that subcommands carry their display name (`postern-ssh`),
        // which is also the name of their page (the main page refers to it).
        let mut built = cmd.clone();
        built.build();
        let subcommands = built
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help");
        for page_cmd in std::iter::once(&built).chain(subcommands) {
            let page_name = page_cmd.get_display_name().unwrap_or(page_cmd.get_name());
            let page = dir
                .join("man")
                .join(format!("man{section}"))
                .join(format!("{page_name}.{section}"));
            write(page.clone(), &man_page(page_cmd, section)?)?;
            written.push(page);
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = completion_path(dir, shell, &name);
            write(path.clone(), &completion(&cmd, shell))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: postern-dist DIR (writes DIR/man, DIR/completions and DIR/systemd)");
    };
    for path in generate(Path::new(&dir))? {
        println!("{}", path.display());
    }
    Ok(())
}
