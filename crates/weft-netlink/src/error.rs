//! One error type for the plumbing layer that keeps the kernel's errno, so callers ask
//! `e.is_exists()` instead of matching raw numbers.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or a system call) refused, with its errno.
    #[error("{what}: {errno}")]
    Kernel { what: String, errno: Errno },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn errno(what: impl Into<String>, errno: Errno) -> Error {
        Error::Kernel { what: what.into(), errno }
    }
    /// An I/O error; one that carries an OS error keeps it as an errno.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        match source.raw_os_error() {
            Some(n) => Error::Kernel { what: what.into(), errno: Errno::from_raw(n) },
            None => Error::Io { what: what.into(), source },
        }
    }
    pub fn other(msg: impl Into<String>) -> Error {
        Error::Other(msg.into())
    }
    /// The kernel's errno, if the kernel said no.
    pub fn errno_value(&self) -> Option<Errno> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
    /// The object is already there (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno_value() == Some(Errno::EEXIST)
    }
    /// The object is not there (ENOENT, or ENODEV/ESRCH/EADDRNOTAVAIL as netlink says it).
    pub fn is_missing(&self) -> bool {
        matches!(self.errno_value(), Some(Errno::ENOENT | Errno::ENODEV | Errno::ESRCH | Errno::EADDRNOTAVAIL))
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e.errno_value() {
            Some(n) => std::io::Error::new(std::io::ErrorKind::from(std::io::Error::from(n).kind()), e.to_string()),
            None => std::io::Error::other(e.to_string()),
        }
    }
}
