//! fwknop's saved command line: every knock's arguments are written to
//! `~/.fwknop.run` (or `-E FILE`), `-l/--last-cmd` runs them again and
//! `--show-last` prints them. The format is fwknop's (the program name and its
//! arguments joined by spaces on one line), so fwknop and postern can read each
//! other's file.

use crate::error::{ClientError, Result};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const RUN_FILE_NAME: &str = ".fwknop.run";

/// fwknop reads the saved line into a buffer of this size.
const MAX_LINE_LEN: usize = 1024;

/// Where the command line is saved: `-E FILE`, else `$HOME/.fwknop.run`.
pub fn path(
    save_args_file: Option<&str>,
    home: impl FnOnce() -> Result<String>,
) -> Result<PathBuf> {
    match save_args_file {
        Some(f) => Ok(PathBuf::from(f)),
        None => Ok(Path::new(&home()?).join(RUN_FILE_NAME)),
    }
}

/// The line saved for `args` (program name first), or `None` when fwknop's
/// format cannot carry it: an argument holding whitespace would be split in two
/// when read back, and a longer line would be cut.
pub fn line_for(args: &[OsString]) -> Option<String> {
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        let a = a.to_str()?;
        let a = if i == 0 {
            Path::new(a).file_name()?.to_str()?
        } else {
            a
        };
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            return None;
        }
        words.push(a);
    }
    let line = words.join(" ");
    (line.len() < MAX_LINE_LEN).then_some(line)
}

/// Save `line`, mode 0600, never through a symlink (the line may hold a key
/// given with --key-rijndael, as fwknop's does).
pub fn save(path: &Path, line: &str) -> Result<()> {
    let io = |e: std::io::Error| {
        ClientError::io(
            format!("cannot save the arguments to {}", path.display()),
            &e,
        )
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    // An older file keeps its mode on open; make it private before writing.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    writeln!(f, "{line} ").map_err(io)
}

/// The saved line and, when the file is readable by others, a warning to print.
/// A file someone else owns or may write is refused: `-l` would send whatever
/// they wrote into it (another server, another key file).
pub fn load(path: &Path) -> Result<(String, Option<String>)> {
    let fail = |what: String| ClientError::Usage(format!("args file {}: {what}", path.display()));
    let meta = fs::symlink_metadata(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if meta.uid() != crate::user::effective_uid() {
        return Err(fail(format!("owned by uid {}, not by you", meta.uid())));
    }
    if mode & 0o022 != 0 {
        return Err(fail(format!(
            "others may write it (mode {mode:04o}); run: chmod 600 {}",
            path.display()
        )));
    }
    let warning = (mode & 0o044 != 0).then(|| {
        format!(
            "[-] file: {} permissions should only be user read/write (0600, -rw-------)",
            path.display()
        )
    });
    let text = fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(fail("holds no command line".into()));
    }
    Ok((line, warning))
}

/// The argv of a saved line (program name first), split as fwknop splits it.
pub fn argv(line: &str) -> Vec<OsString> {
    line.split_whitespace().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_line_round_trips_in_fwknops_format() {
        let args = os(&["/usr/bin/postern", "-A", "tcp/22", "-D", "10.0.0.1"]);
        let line = line_for(&args).unwrap();
        assert_eq!(line, "postern -A tcp/22 -D 10.0.0.1");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RUN_FILE_NAME);
        save(&p, &line).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "postern -A tcp/22 -D 10.0.0.1 \n"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (back, warning) = load(&p).unwrap();
        assert_eq!(
            argv(&back),
            os(&["postern", "-A", "tcp/22", "-D", "10.0.0.1"])
        );
        assert!(warning.is_none());
    }

    #[test]
    fn arguments_the_format_cannot_carry_are_not_saved() {
        assert_eq!(
            line_for(&os(&["postern", "--key-rijndael", "two words"])),
            None
        );
        assert_eq!(line_for(&os(&["postern", "-A", ""])), None);
        let long = "x".repeat(MAX_LINE_LEN);
        assert_eq!(line_for(&os(&["postern", &long])), None);
    }

    #[test]
    fn a_file_others_may_write_is_refused_and_one_they_may_read_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RUN_FILE_NAME);
        save(&p, "postern -A tcp/22").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap().1.unwrap().contains("0600"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains("others may write it"), "{err}");
        // Saving again makes it private.
        save(&p, "postern -A tcp/22").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        let p = dir.path().join(RUN_FILE_NAME);
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(save(&p, "postern -A tcp/22").is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(load(&p).is_err());
    }
}
