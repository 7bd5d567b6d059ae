//! The man pages and completions `postern-dist` writes are valid for the tools
//! that read them (groff without warnings, bash/zsh/fish parse them) and carry
//! the binaries' real flags.

use std::path::Path;
use std::process::Command;

fn generate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postern-dist"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 13);
    dir
}

/// In CI every tool the package targets must be there; elsewhere a missing
/// one skips its check.
fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var("CI").is_err(),
        "{program} is missing (scripts/setup.sh installs it)"
    );
    found
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn man_pages_render_without_warnings_and_list_the_flags() {
    let dir = generate();
    for (page, flags) in [
        (
            "man1/postern.1",
            ["--key-gen", "--spoof-source", "--save-rc-stanza"],
        ),
        (
            "man1/postern-ssh.1",
            ["USER@", "SSH_ARGUMENTS", "ProxyCommand"],
        ),
        (
            "man8/posternd.8",
            ["--fw-list", "--access-folder", "--key-gen"],
        ),
        (
            "man8/posternd-check-config.8",
            ["check-config", "--config-file", "--access-file"],
        ),
        ("man8/posternd-client.8", ["add", "remove", "list"]),
        ("man8/posternd-key.8", ["key", "generate", "public"]),
    ] {
        if !have("groff") {
            return;
        }
        let path = dir.path().join("man").join(page);
        let path_s = path.to_str().unwrap();
        let (ok, _, warnings) = run("groff", &["-Kutf8", "-man", "-ww", "-z", path_s]);
        assert!(ok && warnings.is_empty(), "{page}: {warnings}");
        let (ok, text, _) = run(
            "groff",
            &["-Kutf8", "-man", "-Tutf8", "-P", "-cbou", path_s],
        );
        assert!(ok);
        for flag in flags {
            // -Kutf8: run preconv on the UTF-8 input first, as man(1) does.
            // groff may print a hyphen as U+2010; compare on the letters.
            let plain = text.replace(['\u{2010}', '\u{2212}'], "-");
            assert!(plain.contains(flag), "{page} lacks {flag}");
        }
    }
}

#[test]
fn completions_parse_in_each_shell_and_offer_the_flags() {
    let dir = generate();
    let base = dir.path().join("completions");
    for name in ["postern", "posternd"] {
        let bash = base.join("bash").join(name);
        if have("bash") {
            let script = format!("source {}; complete -p {name}", bash.display());
            let (ok, out, err) = run("bash", &["-c", &script]);
            assert!(ok && out.contains(name), "bash {name}: {err}");
        }
        let flag = if name == "postern" {
            "--spoof-source"
        } else {
            "--fw-list"
        };
        for file in [
            bash.clone(),
            base.join("zsh").join(format!("_{name}")),
            base.join("fish").join(format!("{name}.fish")),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            let long = flag.trim_start_matches('-');
            assert!(text.contains(long), "{} lacks {flag}", file.display());
        }
        for (shell, file) in [
            ("zsh", base.join("zsh").join(format!("_{name}"))),
            ("fish", base.join("fish").join(format!("{name}.fish"))),
        ] {
            if have(shell) {
                let (ok, _, err) = run(shell, &["-n", file.to_str().unwrap()]);
                assert!(ok, "{shell} -n {}: {err}", file.display());
            }
        }
    }
    assert!(Path::new(&base.join("zsh")).is_dir());
}

/// The packaged unit is the tested example unit, only started from /usr/sbin.
#[test]
fn the_packaged_unit_is_the_example_with_the_package_path() {
    let dir = generate();
    let packaged = std::fs::read_to_string(dir.path().join("systemd/posternd.service")).unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/posternd.service"),
    )
    .unwrap();
    let differing: Vec<(&str, &str)> = example
        .lines()
        .zip(packaged.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(example.lines().count(), packaged.lines().count());
    assert_eq!(
        differing,
        [(
            "ExecStart=/usr/local/sbin/posternd -f -c /etc/postern/postern.toml",
            "ExecStart=/usr/sbin/posternd -f -c /etc/postern/postern.toml"
        )]
    );
}
