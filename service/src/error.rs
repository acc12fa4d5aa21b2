//! The service's one error type: a message that says what went wrong and where, and a [`Kind`]
//! that decides the exit status. Every layer returns it (typed outcomes that are not failures,
//! such as a record the service dead-letters, have types of their own); only the command line
//! turns it into text and an exit status.

use std::fmt::Display;

/// Exit status: everything valid.
pub const EXIT_OK: u8 = 0;
/// Exit status: the input has problems (diagnostics were printed), or the work failed.
pub const EXIT_INVALID: u8 = 1;
/// Exit status: the command could not run (bad arguments, missing config, unreadable paths).
pub const EXIT_USAGE: u8 = 2;

/// What kind of failure, as the exit status tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The command cannot run as asked: arguments, configuration, inputs that are missing or
    /// unusable, a broker or registry that cannot be reached before any work. Exit status 2.
    Usage,
    /// The input was read and has problems: pattern diagnostics, rejected records, failing
    /// cases. Exit status 1.
    Invalid,
    /// The work failed while running: Kafka, the state store, a file being written. Exit status 1.
    Failed,
}

impl Kind {
    /// The process exit status of a command that ends with this kind of error.
    pub const fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => EXIT_USAGE,
            Kind::Invalid | Kind::Failed => EXIT_INVALID,
        }
    }
}

/// A failure: its kind and a message with its context (`what: why`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: Kind,
    message: String,
}

/// The service's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Display) -> Self {
        Error { kind, message: message.to_string() }
    }

    /// The command cannot run as asked (exit status 2).
    pub fn usage(message: impl Display) -> Self {
        Error::new(Kind::Usage, message)
    }

    /// The input has problems (exit status 1).
    pub fn invalid(message: impl Display) -> Self {
        Error::new(Kind::Invalid, message)
    }

    /// The work failed (exit status 1).
    pub fn failed(message: impl Display) -> Self {
        Error::new(Kind::Failed, message)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, said to happen while doing `what`: `what: message`.
    pub fn context(self, what: impl Display) -> Self {
        Error { kind: self.kind, message: format!("{what}: {}", self.message) }
    }

    /// The same message with another kind.
    pub fn with_kind(self, kind: Kind) -> Self {
        Error { kind, ..self }
    }
}

/// Turns any displayable error into an [`Error`] of a kind, with context: the typed
/// counterpart of anyhow's `Context`.
pub trait ResultExt<T> {
    /// Fails with kind `kind` and the message `what: cause`.
    fn or_fail(self, kind: Kind, what: impl Display) -> Result<T>;
    /// Fails with kind `kind` and the message `what(): cause` (computed only on failure).
    fn or_fail_with<D: Display>(self, kind: Kind, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> ResultExt<T> for std::result::Result<T, E> {
    fn or_fail(self, kind: Kind, what: impl Display) -> Result<T> {
        self.map_err(|e| Error::new(kind, format!("{what}: {e}")))
    }

    fn or_fail_with<D: Display>(self, kind: Kind, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::new(kind, format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_exit_codes() {
        assert_eq!(Kind::Usage.exit_code(), 2);
        assert_eq!(Kind::Invalid.exit_code(), 1);
        assert_eq!(Kind::Failed.exit_code(), 1);
    }

    #[test]
    fn context_keeps_the_kind_and_reads_outside_in() {
        let e = Error::usage("no such file").context("cannot read x.toml");
        assert_eq!((e.kind(), e.to_string()), (Kind::Usage, "cannot read x.toml: no such file".to_owned()));
        let r: std::result::Result<(), std::fmt::Error> = Err(std::fmt::Error);
        let e = r.or_fail(Kind::Failed, "writing").expect_err("an error");
        assert_eq!((e.kind(), e.message()), (Kind::Failed, "writing: an error occurred when formatting an argument"));
    }
}
