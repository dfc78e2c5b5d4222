//! The nfnetlink socket: sends a request or a batch in this thread's network namespace and
//! reads the kernel's answers.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;

use super::wire::Msg;
use crate::error::{Error, Result};

const NETLINK_NETFILTER: isize = 12;

pub(crate) struct Socket(netlink_sys::Socket);

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: a plain int option on a socket this process owns.
    let r = unsafe {
        nix::libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const i32 as *const nix::libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Socket {
    pub fn open() -> Result<Socket> {
        let mut s = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(io("opening an nfnetlink socket"))?;
        s.bind_auto().map_err(io("binding the nfnetlink socket"))?;
        // Acknowledgements without a copy of the request (a refused message of a big batch
        // would be echoed whole), and with the kernel's error text when it has one.
        let _ = s.set_cap_ack(true);
        let _ = s.set_ext_ack(true);
        let timeout = nix::libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: a timeval option on a socket this process owns.
        unsafe {
            nix::libc::setsockopt(
                s.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVTIMEO,
                &timeout as *const _ as *const nix::libc::c_void,
                std::mem::size_of::<nix::libc::timeval>() as u32,
            );
        }
        Ok(Socket(s))
    }

    /// Sizes the buffers for a request of `send` bytes answered by about `answers` messages.
    /// Root may go past the system limits (`SO_*BUFFORCE`); otherwise the defaults stay.
    pub fn size_for(&self, send: usize, answers: usize) {
        let fd = self.0.as_raw_fd();
        let snd = (send + (1 << 20)).min(i32::MAX as usize) as i32;
        let rcv = (answers * 1024 + (1 << 20)).min(i32::MAX as usize) as i32;
        let _ = setsockopt_int(fd, nix::libc::SOL_SOCKET, nix::libc::SO_SNDBUFFORCE, snd);
        let _ = setsockopt_int(fd, nix::libc::SOL_SOCKET, nix::libc::SO_RCVBUFFORCE, rcv);
    }

    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        let n = self.0.send(bytes, 0).map_err(io("sending to nf_tables"))?;
        if n != bytes.len() {
            return Err(Error::other(format!("nf_tables took {n} of {} bytes", bytes.len())));
        }
        Ok(())
    }

    /// Receives one datagram (blocking up to the socket's timeout, or not at all with
    /// `wait == false`: `None` when nothing is queued).
    pub fn recv(&self, wait: bool) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(1 << 16);
        let flags = if wait { 0 } else { nix::libc::MSG_DONTWAIT };
        match self.0.recv(&mut buf, flags) {
            Ok(_) => Ok(Some(buf)),
            Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) && !wait => Ok(None),
            Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => {
                Err(Error::other(format!("nf_tables did not answer within {:?}", Duration::from_secs(10))))
            }
            Err(e) => Err(Error::io("reading nf_tables' answer", e)),
        }
    }

    /// Sets how long a waiting receive blocks ([`Socket::recv_within`]; 10 s when opened).
    pub fn set_recv_timeout(&self, t: Duration) {
        let timeout = nix::libc::timeval {
            tv_sec: t.as_secs().min(i32::MAX as u64) as nix::libc::time_t,
            tv_usec: t.subsec_micros() as nix::libc::suseconds_t,
        };
        // SAFETY: a timeval option on a socket this process owns.
        unsafe {
            nix::libc::setsockopt(
                self.0.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVTIMEO,
                &timeout as *const _ as *const nix::libc::c_void,
                std::mem::size_of::<nix::libc::timeval>() as u32,
            );
        }
    }

    /// Receives one datagram, waiting up to the receive timeout: `None` when nothing came (for
    /// a subscriber, where silence is normal).
    pub fn recv_within(&self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(1 << 16);
        match self.0.recv(&mut buf, 0) {
            Ok(_) => Ok(Some(buf)),
            Err(e) if matches!(e.raw_os_error(), Some(n) if n == Errno::EAGAIN as i32 || n == Errno::EINTR as i32) => {
                Ok(None)
            }
            Err(e) => Err(Error::io("reading from nfnetlink", e)),
        }
    }

    /// Sends a request and calls `each` with every message of the answer until its
    /// acknowledgement (or the end of a dump); an error answer becomes an `Error` with its errno.
    pub fn request(&self, req: &[u8], what: &str, mut each: impl FnMut(&Msg)) -> Result<()> {
        self.send(req)?;
        loop {
            let Some(buf) = self.recv(true)? else { continue };
            let mut any = false;
            for m in super::wire::messages(&buf) {
                any = true;
                match m.error_code() {
                    Some(0) => return Ok(()),
                    Some(code) => return Err(Error::errno(what.to_string(), Errno::from_raw(-code))),
                    None if m.ty == super::wire::NLMSG_DONE => return Ok(()),
                    None => each(&m),
                }
            }
            if !any {
                return Err(Error::other(format!("{what}: an unreadable answer from nf_tables")));
            }
        }
    }
}
