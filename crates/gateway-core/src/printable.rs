//! Text that came from a sender, a certificate or a log file, made safe to print on a terminal.
//!
//! A record id, an organisation name or a damaged log line can hold escape sequences: printed as
//! they are they retitle the terminal, clear the screen, draw a fake "OK" or start a new row. The
//! one function here shows every such character as an escape instead (`\u{1b}`, `\n`, ...), and
//! leaves letters of any script (Chinese names) readable.

use std::borrow::Cow;

/// `text` with every character that can move the cursor, end a line, change the terminal or
/// reorder what is shown written as an escape, Rust's way (`\u{1b}`, `\n`, `\r`, `\t`, `\0`):
/// C0 controls, DEL, C1 controls, the line and paragraph separators and the bidirectional
/// controls (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069). A backslash is doubled, so an
/// escape shown cannot be faked by writing its text. Borrowed when there is nothing to escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// One CSV cell of text. Separators, quotes and line breaks are quoted (RFC 4180). A cell that
/// begins with `=`, `+`, `-`, `@`, a tab or a carriage return would be read by a spreadsheet as a
/// formula (`=HYPERLINK(...)`, `@SUM(...)`, `+cmd|...`): it is prefixed with `'` and quoted, the
/// OWASP rule against CSV injection, so it shows as the text it is and runs nothing.
pub fn csv_field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_shown_not_sent() {
        let hostile =
            "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[H\u{1b}[32mOK: the log is intact\u{1b}[0m";
        let shown = escape_controls(hostile);
        assert_eq!(
            shown,
            "\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J\\u{1b}[H\\u{1b}[32mOK: the log is intact\\u{1b}[0m"
        );
        assert!(!shown.chars().any(char::is_control), "{shown}");
    }

    #[test]
    fn line_breaks_tabs_del_c1_and_bidi_controls_are_escaped() {
        assert_eq!(escape_controls("a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(
            escape_controls("\u{7f}\u{9b}\u{85}"),
            "\\u{7f}\\u{9b}\\u{85}"
        );
        assert_eq!(
            escape_controls("x\u{202e}y\u{2066}"),
            "x\\u{202e}y\\u{2066}"
        );
        assert_eq!(escape_controls("\0"), "\\0");
    }

    #[test]
    fn ordinary_text_in_any_script_is_left_as_it_is() {
        for text in [
            "rec-4",
            "深圳河套生物样本中心",
            "HKSTP Quantum Devices Ltd.",
            "é ü ß",
        ] {
            assert!(matches!(escape_controls(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn a_backslash_is_doubled_so_an_escape_cannot_be_faked() {
        assert_eq!(escape_controls("\\u{1b}"), "\\\\u{1b}");
    }
}
