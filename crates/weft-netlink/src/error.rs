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
    /// An rtnetlink error; the kernel's refusal (a negative errno in an NLMSG_ERROR) keeps it.
    pub fn netlink(what: impl Into<String>, e: rtnetlink::Error) -> Error {
        match e {
            rtnetlink::Error::NetlinkError(m) if m.raw_code() < 0 => {
                Error::Kernel { what: what.into(), errno: Errno::from_raw(-m.raw_code()) }
            }
            other => Error::Other(format!("{}: {other}", what.into())),
        }
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

/// Maps an rtnetlink error to [`Error::netlink`], naming what was being done.
pub(crate) fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::netlink(what.to_string(), e)
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e.errno_value() {
            Some(n) => std::io::Error::new(std::io::Error::from(n).kind(), e.to_string()),
            None => std::io::Error::other(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;

    fn refusal(code: i32) -> rtnetlink::Error {
        let mut m = ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(code);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn netlink_refusals_keep_their_errno() {
        let e = Error::netlink("adding a route", refusal(-17));
        assert!(e.is_exists() && !e.is_missing());
        assert_eq!(e.errno_value(), Some(Errno::EEXIST));
        assert!(e.to_string().starts_with("adding a route: EEXIST"), "{e}");
        for code in [-2, -19, -3, -99] {
            assert!(Error::netlink("deleting", refusal(code)).is_missing(), "{code}");
        }
        let busy = Error::netlink("x", refusal(-16));
        assert!(!busy.is_exists() && !busy.is_missing());
    }

    #[test]
    fn other_netlink_errors_have_no_errno() {
        let e = Error::netlink("listing links", rtnetlink::Error::RequestFailed);
        assert_eq!(e.errno_value(), None);
        assert!(!e.is_exists() && !e.is_missing());
    }

    #[test]
    fn io_errors_with_an_os_code_keep_it() {
        let e = Error::io("opening", std::io::Error::from_raw_os_error(2));
        assert!(e.is_missing());
        let io: std::io::Error = Error::errno("x", Errno::EEXIST).into();
        assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
    }
}
