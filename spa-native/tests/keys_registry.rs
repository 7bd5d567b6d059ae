//! Key files, key lines, the clients/ directory and TOTP, through the public API.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use spa_native::{ClientKey, ClientPublicKey, Registry, ServerKey, ServerPublicKey, TotpSecret};

#[test]
fn private_key_files_are_0600_and_refused_when_others_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.key");
    let key = ClientKey::generate().unwrap();
    key.write_new(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(ClientKey::load(&path).unwrap().public(), key.public());
    // Never overwritten.
    assert!(ClientKey::generate().unwrap().write_new(&path).is_err());
    for mode in [0o640, 0o604, 0o620] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = ClientKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
    }

    let spath = dir.path().join("server.key");
    let server = ServerKey::generate().unwrap();
    server.write_new(&spath).unwrap();
    assert_eq!(ServerKey::load(&spath).unwrap().public(), server.public());
    fs::set_permissions(&spath, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(ServerKey::load(&spath).is_err());
}

#[test]
fn public_key_lines_round_trip_and_bad_lines_are_refused() {
    let c = client_key(5).public();
    assert!(c.to_line().starts_with("postern-pub1:"));
    assert_eq!(ClientPublicKey::from_line(&c.to_line()).unwrap(), c);
    let s = server_key(5);
    let line = s.public().to_line();
    assert!(line.starts_with("postern-srv1:"));
    assert_eq!(&ServerPublicKey::from_line(&line).unwrap(), s.public());
    for bad in [
        "",
        "postern-pub1:",
        "postern-pub1:AAAA",
        "postern-srv1:QUJD",
        "nope:AAAA",
        "postern-pub1:!!!!",
    ] {
        assert!(ClientPublicKey::from_line(bad).is_err(), "{bad}");
        assert!(ServerPublicKey::from_line(bad).is_err(), "{bad}");
    }
}

#[test]
fn clients_directory_add_list_remove_one_without_touching_others() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let (a, b) = (client_key(1).public(), client_key(2).public());
    let totp = TotpSecret::generate("bob").unwrap();
    Registry::add_client(dir.path(), "alice", &a, None).unwrap();
    let bob_path = Registry::add_client(dir.path(), "bob", &b, Some(&totp)).unwrap();
    assert_eq!(
        fs::metadata(&bob_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let reg = Registry::load(dir.path()).unwrap();
    let names: Vec<_> = reg.clients().iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(reg.lookup(&b).unwrap().totp.as_ref(), Some(&totp));
    // Same name or same key again: refused.
    assert!(Registry::add_client(dir.path(), "alice", &client_key(3).public(), None).is_err());
    let err = Registry::add_client(dir.path(), "carol", &a, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("alice"), "{err}");
    assert!(Registry::add_client(dir.path(), "../evil", &client_key(4).public(), None).is_err());

    let bob_before = fs::read(&bob_path).unwrap();
    Registry::remove_client(dir.path(), "alice").unwrap();
    let reg = Registry::load(dir.path()).unwrap();
    assert!(reg.lookup(&a).is_none());
    assert_eq!(reg.lookup(&b).unwrap().name, "bob");
    assert_eq!(fs::read(&bob_path).unwrap(), bob_before);
    assert!(Registry::remove_client(dir.path(), "alice").is_err());
}

#[test]
fn registry_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("eve.pub");
    let write = |text: &str, mode: u32| {
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    let load_err = || Registry::load(dir.path()).unwrap_err().to_string();
    write("# eve\n\npublic-key postern-pub1:AAAA\n", 0o600);
    assert!(load_err().contains("eve.pub:3:"), "{}", load_err());
    write(
        &format!(
            "public-key {}\ncolour blue\n",
            client_key(1).public().to_line()
        ),
        0o600,
    );
    assert!(
        load_err().contains("eve.pub:2: unknown key `colour`"),
        "{}",
        load_err()
    );
    write("# nothing\n", 0o600);
    assert!(load_err().contains("no `public-key`"), "{}", load_err());
    write(
        &format!("public-key {}\n", client_key(1).public().to_line()),
        0o666,
    );
    assert!(
        load_err().contains("writable by group or others"),
        "{}",
        load_err()
    );
    let totp = TotpSecret::generate("eve").unwrap().to_uri().unwrap();
    write(
        &format!(
            "public-key {}\ntotp {totp}\n",
            client_key(1).public().to_line()
        ),
        0o644,
    );
    assert!(load_err().contains("readable by others"), "{}", load_err());
    write(
        &format!("public-key {}\n", client_key(1).public().to_line()),
        0o644,
    );
    fs::write(
        dir.path().join("twin.pub"),
        format!("public-key {}\n", client_key(1).public().to_line()),
    )
    .unwrap();
    assert!(load_err().contains("same public key"), "{}", load_err());
    fs::remove_file(dir.path().join("twin.pub")).unwrap();
    assert_eq!(Registry::load(dir.path()).unwrap().len(), 1);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        load_err().contains("directory is writable"),
        "{}",
        load_err()
    );
}

#[test]
fn totp_accepts_one_step_either_side_only() {
    let t = TotpSecret::generate("alice").unwrap();
    let t = TotpSecret::from_uri(&t.to_uri().unwrap()).unwrap();
    let now = 1_800_000_015;
    let code = t.code_at(now);
    assert!(t.verify(code, now));
    assert!(t.verify(code, now - 30));
    assert!(t.verify(code, now + 30));
    // Two steps away: refused (unless the code collides by chance, one in a million).
    if t.code_at(now - 60) != code && t.code_at(now - 90) != code {
        assert!(!t.verify(code, now + 60 + 15) || t.code_at(now + 60) == code);
        assert!(!t.verify(code, now - 60));
    }
    assert!(!t.verify(100_000_000, now));
}

#[test]
fn totp_matches_rfc_6238_appendix_b() {
    // RFC 6238 Appendix B: SHA-1 secret "12345678901234567890", 8 digits.
    let uri = "otpauth://totp/postern:rfc?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=8&issuer=postern";
    let t = TotpSecret::from_uri(uri).unwrap();
    for (time, code) in [
        (59u64, 94287082u32),
        (1111111109, 7081804),
        (1234567890, 89005924),
        (2000000000, 69279037),
    ] {
        assert_eq!(t.code_at(time), code);
        assert!(t.verify(code, time));
    }
}

/// Files someone else owns are refused (run as root: chown to nobody).
#[test]
fn files_owned_by_another_user_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let key = dir.path().join("client.key");
    ClientKey::generate().unwrap().write_new(&key).unwrap();
    nix::unistd::chown(&key, nobody, None).unwrap();
    let err = ClientKey::load(&key).unwrap_err().to_string();
    assert!(err.contains("owned by uid 65534"), "{err}");
    fs::remove_file(&key).unwrap();

    Registry::add_client(dir.path(), "alice", &client_key(1).public(), None).unwrap();
    nix::unistd::chown(&dir.path().join("alice.pub"), nobody, None).unwrap();
    let err = Registry::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("alice.pub: owned by uid 65534"), "{err}");
    nix::unistd::chown(
        &dir.path().join("alice.pub"),
        Some(nix::unistd::Uid::from_raw(0)),
        None,
    )
    .unwrap();
    nix::unistd::chown(dir.path(), nobody, None).unwrap();
    assert!(Registry::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("owned by uid 65534"));
}
