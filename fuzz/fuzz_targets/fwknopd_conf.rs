//! fwknopd.conf text through the server's mapping onto its own configuration
//! (`apply_fwknopd_text`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::conf::{check_error, warning_line, FILE};
use spa_server::config::conf_file::Findings;
use spa_server::config::fwknopd::apply_fwknopd_text;
use spa_server::config::ServerConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the file reader refuses non-UTF-8 before parsing
    };
    let mut cfg = ServerConfig::default();
    let mut found = Findings::default();
    match apply_fwknopd_text(Path::new(FILE), text, &mut cfg, &mut found) {
        Ok(()) => {
            assert!(
                !cfg.capture.is_empty(),
                "fwknopd.conf always yields a capture"
            );
            assert!(
                !cfg.action.is_empty(),
                "fwknopd.conf always yields an action"
            );
        }
        Err(e) => check_error(text, &e, false),
    }
    for unknown in &found.unknown {
        assert!(
            (1..=text.lines().count()).contains(&unknown.origin.line),
            "{unknown}"
        );
    }
    for w in &found.warnings {
        let line = warning_line(w);
        assert!((1..=text.lines().count()).contains(&line), "{w}");
    }
});
