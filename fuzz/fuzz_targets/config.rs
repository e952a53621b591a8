//! Config text: `causeway::config::parse` must never panic on any UTF-8 input, and every
//! error it reports must point inside the text (1-based line and column) and render.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(errors) = causeway::config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    assert!(!errors.0.is_empty(), "an error result with no error");
    // `str::lines` drops a trailing empty line; an error may point just past the last line.
    let lines = text.split('\n').count();
    for error in &errors.0 {
        assert!(
            error.line >= 1 && error.line <= lines,
            "line {} of a {lines}-line text: {}",
            error.line,
            error.message
        );
        assert!(error.col >= 1, "column 0: {}", error.message);
        let line_chars = text
            .split('\n')
            .nth(error.line - 1)
            .map_or(0, |l| l.chars().count());
        assert!(
            error.col <= line_chars + 1,
            "column {} of a {line_chars}-character line {}: {}",
            error.col,
            error.line,
            error.message
        );
    }
    let _ = errors.to_string();
});
