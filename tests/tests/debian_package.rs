//! The Debian packages (`scripts/build-deb.sh`, cargo-deb) installed with the
//! real `dpkg -i` into a scratch root (an overlay of `/` in a private mount
//! namespace, see `postern_e2e::scratch_root`), so the host's packages and files
//! stay as they are. What a new user of the packages meets:
//!
//! - `dpkg -L` lists the binaries, the unit, `/etc/postern`, man pages and
//!   completions; the files under /etc are conffiles, the keys' file 0600;
//! - the unit is installed, not enabled;
//! - `man` renders the installed pages, bash loads the installed completion;
//! - the installed `posternd check-config` refuses the example's placeholder
//!   keys, naming the line, and accepts the example once keys from the
//!   installed `postern --key-gen` are filled in;
//! - that configuration, unchanged otherwise, run by the installed `posternd`
//!   in a network namespace, keeps tcp/22 closed (garbage opens nothing and gets
//!   no answer) until the installed `postern` knocks;
//! - reinstalling keeps the edited keys; `dpkg -r` removes every file but the
//!   edited conffiles; `dpkg --purge` removes those too.
//!
//! The packages hold the debug binaries `cargo test` builds anyway
//! (`--profile dev --no-build --fast`): a release build would add minutes to
//! CI, and the packaging (assets, conffiles, maintainer scripts, dependencies)
//! is the same for both profiles.

use postern_e2e::posternd::{runnable, Posternd, Service, SPA_PORT};
use postern_e2e::scenario::{describe, random_b64, Secret, SpaClient, SpaKeys};
use postern_e2e::scratch_root::ScratchRoot;
use postern_e2e::{posternd, workspace_bin, workspace_root};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const SSH_PORT: u16 = 22;

/// The two .deb files, built from the workspace's debug binaries.
fn build_packages() -> (String, String) {
    for bin in ["postern", "posternd", "postern-dist"] {
        workspace_bin(bin);
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/build-deb.sh"))
        .args(["--profile", "dev", "--no-build", "--fast"])
        .output()
        .expect("run scripts/build-deb.sh");
    assert!(out.status.success(), "build-deb.sh: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let debs: Vec<&str> = stdout.lines().filter(|l| l.ends_with(".deb")).collect();
    let find = |name: &str| {
        debs.iter()
            .find(|p| {
                p.rsplit('/')
                    .next()
                    .unwrap()
                    .starts_with(&format!("{name}_"))
            })
            .unwrap_or_else(|| panic!("no {name}_*.deb in {stdout}"))
            .to_string()
    };
    (find("postern"), find("posternd"))
}

/// `dpkg -L PACKAGE` in the scratch root, as a list of paths.
fn listed(root: &ScratchRoot, package: &str) -> Vec<String> {
    root.run_ok(&["dpkg", "-L", package])
        .lines()
        .map(str::to_string)
        .collect()
}

fn exists(root: &ScratchRoot, path: &str) -> bool {
    root.run(&["test", "-e", path]).status.success()
}

/// `KEY_BASE64: …` and `HMAC_KEY_BASE64: …` from `postern --key-gen`.
fn generated_keys(keygen: &str) -> (String, String) {
    let value = |name: &str| {
        keygen
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {keygen}"))
            .trim()
            .to_string()
    };
    (value("KEY_BASE64"), value("HMAC_KEY_BASE64"))
}

#[test]
fn packages_install_run_and_remove_cleanly() {
    if !runnable(&[
        "cargo-deb",
        "dpkg",
        "unshare",
        "nsenter",
        "chroot",
        "nft",
        "man",
    ]) {
        return;
    }
    let host_status = std::fs::read("/var/lib/dpkg/status").expect("host dpkg status");
    let (client_deb, server_deb) = build_packages();
    let root = ScratchRoot::new();
    root.run_ok(&["dpkg", "-i", &client_deb, &server_deb]);

    // What the packages hold.
    let client_files = listed(&root, "postern");
    let server_files = listed(&root, "posternd");
    for (files, wanted) in [
        (
            &client_files,
            &[
                "/usr/bin/postern",
                "/usr/share/man/man1/postern.1.gz",
                "/usr/share/man/man1/postern-ssh.1.gz",
                "/usr/share/bash-completion/completions/postern",
                "/usr/share/zsh/vendor-completions/_postern",
                "/usr/share/fish/vendor_completions.d/postern.fish",
            ][..],
        ),
        (
            &server_files,
            &[
                "/usr/sbin/posternd",
                "/usr/lib/systemd/system/posternd.service",
                "/etc/postern/postern.toml",
                "/etc/postern/access.conf",
                "/usr/share/man/man8/posternd.8.gz",
                "/usr/share/man/man8/posternd-check-config.8.gz",
                "/usr/share/bash-completion/completions/posternd",
                "/usr/share/zsh/vendor-completions/_posternd",
                "/usr/share/fish/vendor_completions.d/posternd.fish",
            ][..],
        ),
    ] {
        for path in wanted {
            assert!(files.iter().any(|f| f == path), "{path} not in {files:?}");
            assert!(exists(&root, path), "{path} listed but not installed");
        }
    }
    let conffiles = root.run_ok(&["dpkg-query", "-W", "-f", "${Conffiles}", "posternd"]);
    for path in ["/etc/postern/postern.toml", "/etc/postern/access.conf"] {
        assert!(
            conffiles.contains(path),
            "{path} is no conffile: {conffiles}"
        );
        let mode = root.run_ok(&["stat", "-c", "%a %U", path]);
        assert_eq!(mode.trim(), "600 root", "{path}");
    }
    let unit = root.run_ok(&["cat", "/usr/lib/systemd/system/posternd.service"]);
    assert!(
        unit.contains("\nExecStart=/usr/sbin/posternd -f -c /etc/postern/postern.toml\n"),
        "{unit}"
    );
    assert!(
        !exists(
            &root,
            "/etc/systemd/system/multi-user.target.wants/posternd.service"
        ),
        "the unit was enabled on install"
    );

    // The man pages and a completion, read by the tools that use them.
    for (page, flag) in [("8 posternd", "--fw-list"), ("1 postern", "--spoof-source")] {
        let (section, name) = page.split_once(' ').unwrap();
        let out = root
            .cmd(&["man", "-P", "cat", section, name])
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace(['\u{2010}', '\u{2212}'], "-");
        assert!(
            out.status.success() && text.contains(flag),
            "man {page}: {}",
            describe(&out)
        );
    }
    let complete = root.run_ok(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/postern && complete -p postern",
    ]);
    assert!(complete.contains("postern"), "{complete}");

    // The example configuration: placeholder keys are refused, naming the line…
    let check = [
        "/usr/sbin/posternd",
        "-c",
        "/etc/postern/postern.toml",
        "check-config",
    ];
    let refused = root.run(&check);
    let err = String::from_utf8_lossy(&refused.stderr);
    let example = std::fs::read_to_string(workspace_root().join("examples/access.conf")).unwrap();
    let key_line = 1 + example
        .lines()
        .position(|l| l.starts_with("KEY_BASE64"))
        .expect("examples/access.conf has a KEY_BASE64 line");
    assert!(
        !refused.status.success()
            && err.contains(&format!("/etc/postern/access.conf:{key_line}:"))
            && err.contains("placeholder"),
        "{}",
        describe(&refused)
    );
    // …and accepted with the keys the installed client generates.
    let (key, hmac_key) = generated_keys(&root.run_ok(&["/usr/bin/postern", "--key-gen"]));
    root.run_ok(&[
        "sed",
        "-i",
        &format!(
            "s|^KEY_BASE64 .*|KEY_BASE64 {key}|; s|^HMAC_KEY_BASE64 .*|HMAC_KEY_BASE64 {hmac_key}|"
        ),
        "/etc/postern/access.conf",
    ]);
    let accepted = root.run(&check);
    let dump = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success() && dump.contains("tcp/22") && !dump.contains(&key),
        "{}",
        describe(&accepted)
    );

    // The installed daemon with that configuration guards tcp/22 in a namespace;
    // the installed client opens it.
    let svc = Service::open("deb", SSH_PORT);
    let logs = tempfile::tempdir().unwrap();
    let daemon = Posternd::try_start_program(
        svc.server(),
        &root.argv("/usr/sbin/posternd"),
        &["-c".into(), "/etc/postern/postern.toml".into(), "-v".into()],
        logs.path(),
    )
    .unwrap_or_else(|e| panic!("the installed posternd did not start: {e}"));
    assert!(
        !svc.reachable(Duration::from_millis(500)),
        "tcp/22 open before any knock:\n{}",
        svc.nft_ruleset()
    );
    let spa = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let garbage: Vec<Vec<u8>> = (0..50).map(|_| random_b64(150).into_bytes()).collect();
    let sent = posternd::udp_send_all(
        svc.client(),
        spa,
        garbage,
        10,
        Duration::from_millis(5),
        Duration::from_millis(300),
    );
    assert!(
        sent.answers.is_empty() && sent.errors.is_empty(),
        "{sent:?}"
    );
    assert!(
        svc.stays_closed(Duration::from_secs(1)),
        "garbage opened tcp/22"
    );
    let keys = SpaKeys {
        key: Secret::Base64(key.clone()),
        hmac: Some(("sha256".into(), Secret::Base64(hmac_key))),
        mode: "cbc".into(),
    };
    let client = SpaClient::PosternArgv(root.argv("/usr/bin/postern"));
    let knock = posternd::knock_with(&client, &svc, &keys, &["--no-save-args"]);
    assert!(knock.status.success(), "{}", describe(&knock));
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "the installed postern's knock did not open tcp/22:\n{}",
        daemon.log_text()
    );
    drop(daemon);

    // Reinstalling keeps the edited keys (an unchanged conffile in the package).
    root.run_ok(&["dpkg", "-i", &server_deb]);
    let conf = root.run_ok(&["cat", "/etc/postern/access.conf"]);
    assert!(conf.contains(&key), "reinstall replaced the keys:\n{conf}");

    // Removal: every file goes but the conffiles; purge takes those too.
    root.run_ok(&["dpkg", "-r", "postern", "posternd"]);
    for path in client_files.iter().chain(&server_files) {
        let kept = path.starts_with("/etc/postern");
        let is_dir = root.run(&["test", "-d", path]).status.success();
        if !is_dir {
            assert_eq!(exists(&root, path), kept, "{path} after dpkg -r");
        }
    }
    let status = root.run_ok(&["dpkg-query", "-W", "-f", "${Status}", "posternd"]);
    assert_eq!(status, "deinstall ok config-files");
    root.run_ok(&["dpkg", "--purge", "postern", "posternd"]);
    assert!(
        !exists(&root, "/etc/postern"),
        "/etc/postern left after purge"
    );
    drop(root);
    assert!(
        std::fs::read("/var/lib/dpkg/status").unwrap() == host_status,
        "the host's dpkg database changed"
    );
}
