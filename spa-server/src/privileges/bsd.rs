//! FreeBSD and macOS: no capabilities. posternd keeps every power of the user
//! it runs as (root, normally); nothing is dropped, and nothing claims so.

use postern_backend_common::Platform;

/// Log once, at start, what posternd runs with (the Linux build logs the
/// capabilities it reduced to instead).
pub fn report_kept() {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        tracing::info!(
            "running as root with all of root's powers ({} has no capabilities to drop)",
            Platform::CURRENT
        );
    } else {
        tracing::info!(
            "running as uid {uid}, not root ({} has no capabilities to drop)",
            Platform::CURRENT
        );
    }
}
