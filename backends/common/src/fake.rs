//! A recording [`CommandRunner`] for tests: every backend's logic is checked
//! against the exact argv (and stdin) it would run, without touching the system.

use spa_core::firewall::{CommandRunner, FwResult};
use std::sync::{Arc, Mutex};

/// One recorded invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
}

type Responder = Box<dyn FnMut(&[String], Option<&str>) -> FwResult<String> + Send>;

struct Inner {
    calls: Vec<Call>,
    respond: Responder,
}

/// Records calls and answers them with a closure. Clones share the record, so a
/// test keeps one clone after boxing the other into a backend.
#[derive(Clone)]
pub struct RecordingRunner {
    inner: Arc<Mutex<Inner>>,
}

impl RecordingRunner {
    /// Every command succeeds with empty output.
    pub fn succeeding() -> Self {
        Self::new(|_, _| Ok(String::new()))
    }

    pub fn new(
        respond: impl FnMut(&[String], Option<&str>) -> FwResult<String> + Send + 'static,
    ) -> Self {
        RecordingRunner {
            inner: Arc::new(Mutex::new(Inner {
                calls: Vec::new(),
                respond: Box::new(respond),
            })),
        }
    }

    /// Replace the responder (e.g. to make the next commands fail).
    pub fn respond_with(
        &self,
        respond: impl FnMut(&[String], Option<&str>) -> FwResult<String> + Send + 'static,
    ) {
        self.lock().respond = Box::new(respond);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls so far as text, and forget them: one `$ argv` line per call
    /// (shell-quoted for reading only), stdin lines below it prefixed with `| `.
    pub fn take_transcript(&self) -> String {
        let calls = std::mem::take(&mut self.lock().calls);
        transcript(&calls)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Render calls as text for exact comparison in snapshot tests.
pub fn transcript(calls: &[Call]) -> String {
    let mut out = String::new();
    for call in calls {
        out.push_str("$ ");
        out.push_str(&shell_words::join(&call.argv));
        out.push('\n');
        for line in call.stdin.iter().flat_map(|s| s.lines()) {
            out.push_str("| ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl CommandRunner for RecordingRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        let mut inner = self.lock();
        inner.calls.push(Call {
            argv: argv.to_vec(),
            stdin: stdin.map(Into::into),
        });
        (inner.respond)(argv, stdin)
    }
}
