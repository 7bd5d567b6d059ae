//! Files posternd trusts: whoever can write its configuration, its plugins or
//! its run directory can open the firewall, and whoever can read its keys can
//! knock. So each such file must belong to root or to the user posternd runs as,
//! and must not be writable (or, holding keys, readable) by anyone else; nor may
//! anyone else be able to swap it for another (its directory).

use super::ConfError;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a file is to posternd, and so what it must be protected from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Holds keys: neither readable nor writable by group or others.
    Secret,
    /// Decides what posternd does (fwknopd.conf, a plugin library, the run
    /// directory): not writable by group or others.
    Trusted,
}

fn owner_ok(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Refuse `path` unless it is protected as `trust` asks; `what` names it in errors.
pub fn check(path: &Path, what: &str, trust: Trust) -> Result<(), ConfError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfError::file(path, format!("cannot read {what}: {e}")))?;
    if !owner_ok(meta.uid()) {
        return Err(ConfError::file(
            path,
            format!(
                "{what} belongs to uid {}, not to root or the user posternd runs as; \
                 run `chown root {}`",
                meta.uid(),
                path.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    let problem = match trust {
        Trust::Secret if mode & 0o044 != 0 => Some(format!(
            "{what} holds keys but is readable by group or others"
        )),
        Trust::Secret if mode & 0o033 != 0 => Some(format!(
            "{what} holds keys but is writable by group or others"
        )),
        Trust::Trusted if mode & 0o022 != 0 => {
            Some(format!("{what} is writable by group or others"))
        }
        _ => None,
    };
    if let Some(problem) = problem {
        let fix = match trust {
            Trust::Secret => "600",
            Trust::Trusted => "go-w",
        };
        return Err(ConfError::file(
            path,
            format!(
                "{problem} (mode {mode:o}); run `chmod {fix} {}`",
                path.display()
            ),
        ));
    }
    check_directory_of(path, what)
}

/// Someone who may write a file's directory may replace the file: refuse a
/// directory writable by group or others, unless it is sticky (like /tmp, where
/// only a file's owner may rename or delete it) and owned by root or us.
fn check_directory_of(path: &Path, what: &str) -> Result<(), ConfError> {
    let Some(dir) = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return Ok(());
    };
    let meta = std::fs::metadata(&dir)
        .map_err(|e| ConfError::file(&dir, format!("cannot read the directory of {what}: {e}")))?;
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if !owner_ok(meta.uid()) || (mode & 0o022 != 0 && !sticky) {
        return Err(ConfError::file(
            path,
            format!(
                "{what} is in {}, which another user could change (uid {}, mode {mode:o}); \
                 keep it in a directory only root can write",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn modes_are_checked_for_what_the_file_is() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(&file(dir.path(), "a", 0o600), "keys", Trust::Secret).is_ok());
        let e = check(&file(dir.path(), "b", 0o640), "keys", Trust::Secret).unwrap_err();
        assert!(e.to_string().contains("holds keys but is readable"), "{e}");
        assert!(check(&file(dir.path(), "c", 0o644), "conf", Trust::Trusted).is_ok());
        let e = check(&file(dir.path(), "d", 0o664), "conf", Trust::Trusted).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
    }

    #[test]
    fn a_file_in_a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "conf", 0o644);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&p, "conf", Trust::Trusted).unwrap_err();
        assert!(e.to_string().contains("another user could change"), "{e}");
        // Sticky, as /tmp: only the file's owner may replace it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check(&p, "conf", Trust::Trusted).is_ok());
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "keys", 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = check(&p, "keys", Trust::Secret).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
    }
}
