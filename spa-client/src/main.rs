//! `postern`: the fwknop-compatible SPA client.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = spa_client::run(std::env::args_os(), &mut stdout.lock(), &mut stderr.lock());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
