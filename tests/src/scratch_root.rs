//! A throw-away copy of this machine's root file system, for tests that install
//! packages with the real `dpkg` without changing the host.
//!
//! [`ScratchRoot::new`] starts a process in a private mount namespace
//! (`unshare --mount --propagation private`) that mounts a tmpfs, and on it an
//! overlayfs whose lower layer is `/` (read-only to the overlay) and whose upper
//! layer takes every write, then binds `/proc`, `/dev` and `/sys` into it. Commands
//! run in it with `nsenter --mount=/proc/PID/ns/mnt chroot ROOT …`: they see the
//! host's files and programs, and what they change (dpkg's database, `/etc`,
//! `/usr`) lands in the tmpfs. None of these mounts exist outside that
//! namespace, and they all go when its holder is killed (on drop, or with the
//! test process: the holder gets SIGKILL when its parent dies).

use crate::ChildGuard;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The mounts, made by the holder inside its own mount namespace. `$1` is the
/// (empty, host-side) directory to mount the tmpfs on.
const MOUNT_SCRIPT: &str = r#"set -e
dir=$1
mount -t tmpfs -o mode=0755 pn-scratch "$dir"
mkdir "$dir/upper" "$dir/work" "$dir/root"
mount -t overlay pn-scratch -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
for d in proc dev sys; do mount --rbind "/$d" "$dir/root/$d"; done
echo ready
exec sleep infinity
"#;

pub struct ScratchRoot {
    // Field order = drop order: the holder goes first, taking the mounts with it.
    holder: ChildGuard,
    /// The overlay's root, as a path inside the holder's mount namespace.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScratchRoot {
    /// Mount the scratch root; panics with the holder's stderr if it cannot.
    pub fn new() -> ScratchRoot {
        let dir = tempfile::Builder::new()
            .prefix("pn-scratch")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .args([MOUNT_SCRIPT, "sh"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn unshare");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut holder = ChildGuard::from_child(child);
        let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        if ready.trim() != "ready" {
            holder.kill9();
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut why);
            panic!("cannot mount a scratch root (overlayfs over /): {why}");
        }
        ScratchRoot {
            root: dir.path().join("root"),
            holder,
            _dir: dir,
        }
    }

    /// The argv that runs `program` inside the scratch root; prefix it with
    /// `ip netns exec NS` to run it in a network namespace too.
    pub fn argv(&self, program: &str) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.holder.pid()),
            "chroot".into(),
            self.root.display().to_string(),
            program.into(),
        ]
    }

    /// A command running `argv` inside the scratch root (stdin /dev/null).
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let prefix = self.argv(argv[0]);
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..])
            .args(&argv[1..])
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null());
        c
    }

    /// Run `argv` inside the scratch root to completion.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.cmd(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in the scratch root: {e}"))
    }

    /// Like [`ScratchRoot::run`]; panics with the output unless it exits 0.
    /// Returns stdout.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} in the scratch root failed: {}",
            crate::scenario::describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Default for ScratchRoot {
    fn default() -> Self {
        Self::new()
    }
}
