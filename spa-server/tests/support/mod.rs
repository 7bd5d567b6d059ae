//! What /proc tells of this test process's threads, for the tests that check
//! a thread sleeps while idle.

/// (task id, voluntary context switches) of this process's threads whose
/// name `matches`, by task id.
pub fn threads_named(matches: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !matches(comm.trim()) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        found.push((task.file_name().to_string_lossy().into_owned(), switches));
    }
    found.sort();
    found
}

/// Voluntary context switches of the one thread named `name`.
#[allow(dead_code)] // each test binary compiles this module; not all call this
pub fn switches_of(name: &str) -> Option<u64> {
    threads_named(|n| n == name).first().map(|&(_, s)| s)
}
