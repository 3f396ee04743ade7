//! Walking an error's chain of causes: one line for logs and the command line, and the
//! `io::ErrorKind` underneath, so callers decide on kinds, never on message text.

/// An error and its causes on one line (`top: cause: cause`), for logs and the command line.
/// A cause whose text a message already quotes is not repeated: many errors here name their cause
/// in their own message, so that a log that prints only the top is complete.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let line = e.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = e.source();
    }
    text
}

/// The kind of the first `io::Error` in `err`'s chain of causes (itself included): how a caller
/// tells a full disk or a refused connection from other failures without reading messages.
pub fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Quoting {
        #[error("cannot write log.jsonl: {0}")]
        Quotes(#[source] std::io::Error),
        #[error("cannot write log.jsonl")]
        Names(#[source] std::io::Error),
    }

    #[test]
    fn chain_text_adds_causes_a_message_does_not_already_quote() {
        let denied =
            || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        assert_eq!(
            chain_text(&Quoting::Quotes(denied())),
            "cannot write log.jsonl: permission denied"
        );
        assert_eq!(
            chain_text(&Quoting::Names(denied())),
            "cannot write log.jsonl: permission denied"
        );
    }

    #[test]
    fn io_kind_is_found_under_the_top_error() {
        let err = Quoting::Names(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(io_kind(&err), Some(std::io::ErrorKind::PermissionDenied));
        assert_eq!(io_kind(&std::fmt::Error), None);
    }
}
