//! access.conf text through the server's parser (`parse_access_text`).
//! `%include…` lines are skipped: they would read whatever file the fuzzer names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::conf::{check_error, check_no_secret_in, warning_line, FILE};
use spa_server::config::access::parse_access_text;
use spa_server::config::conf_file::Findings;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the file reader refuses non-UTF-8 before parsing
    };
    if text.contains("%include") {
        return;
    }
    let mut found = Findings::default();
    match parse_access_text(Path::new(FILE), text, &mut found) {
        Ok(stanzas) => {
            assert!(!stanzas.is_empty());
            for s in &stanzas {
                if let Err(e) = s.validate() {
                    panic!("accepted a stanza that fails validation: {e}");
                }
                let origin = s.origin.as_ref().expect("a parsed stanza knows its line");
                assert_eq!(origin.file, Path::new(FILE));
                assert!((1..=text.lines().count()).contains(&origin.line));
            }
        }
        Err(e) => {
            let file_level = e.message.starts_with("no access stanza");
            check_error(text, &e, file_level);
            check_no_secret_in(text, e.origin.line, &e.to_string());
        }
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
        check_no_secret_in(text, line, w);
    }
});
