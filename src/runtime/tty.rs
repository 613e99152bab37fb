//! Pseudo-terminals for `-t`. The pty is allocated *inside* the container (from its own
//! devpts instance, so `tty` names a `/dev/pts/N` the container can see), becomes the
//! process's controlling terminal, and its master side is handed to the shim (`run -t`) or to
//! the `exec` caller over a unix socket (`SCM_RIGHTS`). The caller's terminal goes raw while
//! it is attached, and window-size changes follow it.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, Termios};

/// A connected pair of unix sockets for handing over a descriptor.
pub fn console_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends `fd` over the unix socket `sock`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(b"m")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`]; `None` if the peer closed without sending.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m
            && let Some(fd) = fds.next()
        {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

/// In the container (after `pivot_root`, before dropping privileges): opens a pty from the
/// container's `/dev/ptmx`, gives its slave to `uid`, makes it the controlling terminal and
/// the standard streams, and returns the master.
pub fn open_console(uid: u32) -> io::Result<OwnedFd> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)?;
    crate::sys::container::set_controlling_terminal(&slave)?;
    rustix::stdio::dup2_stdin(&slave)?;
    rustix::stdio::dup2_stdout(&slave)?;
    rustix::stdio::dup2_stderr(&slave)?;
    Ok(master)
}

/// Copies the window size of terminal `from` to `to` (ignored when `from` is no terminal or
/// has no size).
pub fn copy_winsize(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(from)
        && ws.ws_row > 0
        && ws.ws_col > 0
    {
        let _ = rustix::termios::tcsetwinsize(to, ws);
    }
}

/// Gives a new terminal the size of `client`, or 24×80 when that is unknown.
pub fn init_winsize(master: BorrowedFd<'_>, client: Option<BorrowedFd<'_>>) {
    let _ = rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    );
    if let Some(c) = client {
        copy_winsize(c, master);
    }
}

/// The caller's terminal in raw mode until dropped.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode; `None` when stdin is no terminal.
    pub fn stdin() -> Option<RawMode> {
        let fd = rustix::io::fcntl_dupfd_cloexec(io::stdin(), 3).ok()?;
        if !rustix::termios::isatty(&fd) {
            return None;
        }
        let saved = rustix::termios::tcgetattr(&fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

/// Copies `from` to `to` until end-of-file or an error (a pty master reports EIO once the
/// last slave is closed).
pub fn copy(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            break;
        }
    }
}

/// A duplicate of a descriptor as a `File`.
pub fn dup_file(fd: impl AsFd) -> io::Result<File> {
    Ok(File::from(rustix::io::fcntl_dupfd_cloexec(fd, 3)?))
}
