//! FUSE over io_uring (Linux 6.14+; strata's addition to fuser, see STRATA.md).
//!
//! The kernel keeps one request queue per possible CPU and puts a request on the queue of the
//! CPU its caller runs on. This module runs two threads per queue, pinned to that CPU, each
//! with its own io_uring and one registered ring entry (a header buffer and a payload buffer).
//! A request is then served on the CPU that issued it: the caller sleeps, the queue thread
//! runs, the reply wakes the caller, all without waking another CPU. Through `/dev/fuse` each
//! request and each reply wakes a reader on whichever CPU it sleeps on.
//!
//! The `/dev/fuse` readers keep running: the kernel sends FORGET and INTERRUPT there, and
//! every request until all queues have registered. If io_uring or a queue cannot be set up,
//! the threads that could not start log why and the session keeps serving `/dev/fuse`.
//!
//! Protocol (`include/uapi/linux/fuse.h`, `fs/fuse/dev_uring.c`): an `IORING_OP_URING_CMD`
//! SQE128 on the `/dev/fuse` fd carries `struct fuse_uring_cmd_req` in its command area.
//! `REGISTER` hands the kernel the two buffers and waits for a request; its completion means
//! the header buffer holds `fuse_in_header`, the request's first argument (`op_in`) and the
//! payload size, and the payload buffer holds the other arguments. The reply goes back the
//! same way (`fuse_out_header` in the header buffer, the reply's arguments in the payload) with
//! `COMMIT_AND_FETCH`, which also waits for the next request.
//!
//! This module must never write to `/dev/fuse` (replies to ring requests go through the ring)
//! and never let a request's bytes alias the reply being written.

use std::alloc::Layout;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use log::warn;

use crate::Filesystem;
use crate::channel::Channel;
use crate::ll;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, then `fuse_uring_ent_in_out`
/// (`flags: u64`, `commit_id: u64`, `payload_sz: u32`, padding, `reserved: u64`).
const HDR_IN_OUT: usize = 0;
const HDR_OP_IN: usize = 128;
const HDR_COMMIT_ID: usize = 256 + 8;
const HDR_PAYLOAD_SZ: usize = 256 + 16;
const HDR_SIZE: usize = 288;
/// `sizeof(struct fuse_in_header)` and `sizeof(struct fuse_out_header)`.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

/// An entry's memory: the header buffer in the first page, then a page the request's header
/// and first argument are copied into (right before the payload, so a request is one
/// contiguous, 8-aligned byte string without copying its payload), then the payload buffer.
const PAGE: usize = 4096;
const PAYLOAD_AT: usize = 2 * PAGE;
/// A reply buffer grown beyond this (a large READ) is freed after use, not kept per thread.
const KEEP_REPLY: usize = 256 << 10;

/// Threads (each with one ring entry) per queue: while one waits on a slow request (an
/// fsync), the other serves the rest of that CPU's requests.
const THREADS_PER_QUEUE: usize = 2;

/// `user_data` of the two kinds of completions a queue thread waits for.
const UD_ENTRY: u64 = 1;
const UD_STOP: u64 = 2;

/// What the handshake negotiated, for [`start`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingParams {
    /// Size of each entry's payload buffer: at least the kernel's
    /// `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE)`.
    pub(crate) payload: usize,
}

/// The running queue threads; [`Rings::stop`] ends and joins them.
#[derive(Debug)]
pub(crate) struct Rings {
    stop: OwnedFd,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Rings {
    /// Wakes every queue thread out of its wait and joins it. Called once the `/dev/fuse`
    /// readers have ended (the connection is gone); a thread that already saw the kernel tear
    /// its entry down has ended by itself.
    pub(crate) fn stop(self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd this struct owns.
        let _ = unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Number of kernel queues: one per possible CPU (`num_possible_cpus()`), the highest id in
/// `/sys/devices/system/cpu/possible` plus one.
fn possible_cpus() -> usize {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
                .max()
        });
    match parsed {
        Some(max) => max + 1,
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Queue threads whose rings and buffers exist, waiting for [`Prepared::start`].
///
/// The kernel holds every request of a connection that negotiated io_uring until all queues
/// have registered (`fuse_block_alloc`), and it gives up on io_uring only when a REGISTER
/// fails. So a queue that cannot even create its ring (`kernel.io_uring_disabled`, a seccomp
/// filter, no memory) must be found out before the INIT reply asks for io_uring, or the
/// mount would hang: the handshake prepares every queue first, and asks only if all are ready.
pub(crate) struct Prepared<FS: Filesystem> {
    stop: OwnedFd,
    threads: Vec<(thread::JoinHandle<()>, mpsc::Sender<SessionEventLoop<FS>>)>,
}

impl<FS: Filesystem> std::fmt::Debug for Prepared<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prepared({} queue threads)", self.threads.len())
    }
}

/// Starts a queue thread per possible CPU (two per queue), each of which creates its ring and
/// buffers and reports; returns once all have, or the first error.
pub(crate) fn prepare<FS: Filesystem>(params: RingParams) -> io::Result<Prepared<FS>> {
    // SAFETY: eventfd(2) with valid flags; the result is checked before it is owned.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `efd` is a fresh descriptor nothing else owns.
    let stop = unsafe { OwnedFd::from_raw_fd(efd) };
    let queues = possible_cpus();
    let (ready_tx, ready) = mpsc::channel::<io::Result<()>>();
    let mut prepared = Prepared {
        stop,
        threads: Vec::with_capacity(queues * THREADS_PER_QUEUE),
    };
    for (qid, i) in (0..queues).flat_map(|q| (0..THREADS_PER_QUEUE).map(move |i| (q, i))) {
        let (go_tx, go) = mpsc::channel::<SessionEventLoop<FS>>();
        let stop_fd = prepared.stop.as_raw_fd();
        let ready_tx = ready_tx.clone();
        let t = thread::Builder::new()
            .name(format!("fuser-ring-{qid}.{i}"))
            .spawn(move || queue_thread(qid, stop_fd, params, &ready_tx, &go))?;
        prepared.threads.push((t, go_tx));
    }
    drop(ready_tx);
    for _ in 0..prepared.threads.len() {
        // A thread that died without a word dropped its sender: that is an error too.
        ready
            .recv()
            .map_err(|_| io::Error::other("a queue thread ended while setting up"))??;
    }
    info!(
        "FUSE over io_uring: {queues} queues, {} KiB payload buffers",
        params.payload >> 10
    );
    Ok(prepared)
}

impl<FS: Filesystem> Prepared<FS> {
    /// Hands every queue thread the file system: each registers its entry and serves.
    pub(crate) fn start(
        self,
        filesystem: &Arc<FilesystemHolder<FS>>,
        ch: &Channel,
        allowed: SessionACL,
        session_owner: nix::unistd::Uid,
    ) -> Rings {
        let mut threads = Vec::with_capacity(self.threads.len());
        for (t, go) in self.threads {
            let se = SessionEventLoop {
                thread_name: t.thread().name().unwrap_or("fuser-ring").to_string(),
                ch: ch.clone(),
                filesystem: filesystem.clone(),
                allowed,
                session_owner,
            };
            // A thread that has ended already dropped its receiver; it is joined all the same.
            let _ = go.send(se);
            threads.push(t);
        }
        Rings {
            stop: self.stop,
            threads,
        }
    }
}

/// One entry's buffers (see [`PAYLOAD_AT`]), page-aligned.
struct EntryMem {
    ptr: *mut u8,
    layout: Layout,
    payload: usize,
}

impl EntryMem {
    fn new(payload: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(PAYLOAD_AT + payload, PAGE)
            .map_err(|_| io::Error::other("ring entry size"))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Self {
            ptr,
            layout,
            payload,
        })
    }

    /// The whole allocation. Only the queue thread uses it, and only between a completion
    /// (the kernel has finished writing) and the next commit (the kernel has not started).
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` bytes owned by `self`, and
        // `&mut self` makes this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn iovecs(&self) -> [libc::iovec; 2] {
        [
            libc::iovec {
                iov_base: self.ptr.cast(),
                iov_len: HDR_SIZE,
            },
            libc::iovec {
                // SAFETY: `PAYLOAD_AT` is within the allocation.
                iov_base: unsafe { self.ptr.add(PAYLOAD_AT) }.cast(),
                iov_len: self.payload,
            },
        ]
    }
}

impl Drop for EntryMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Where a ring request's reply is written by whichever thread sends it; the queue thread
/// copies it into the entry once the request's own bytes are no longer borrowed.
#[derive(Debug, Default)]
pub(crate) struct ReplySlot {
    state: Mutex<(Vec<u8>, bool)>,
    sent: Condvar,
}

impl ReplySlot {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| io::Error::other("reply slot"))?;
        st.0.clear();
        for d in data {
            st.0.extend_from_slice(d);
        }
        st.1 = true;
        self.sent.notify_one();
        Ok(())
    }

    /// Waits for the reply and moves it into `out`.
    fn take(&self, out: &mut Vec<u8>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        while !st.1 {
            st = match self.sent.wait(st) {
                Ok(st) => st,
                Err(_) => return,
            };
        }
        st.1 = false;
        std::mem::swap(&mut st.0, out);
    }
}

fn uring_cmd(fd: i32, op: u32, qid: usize, commit_id: u64) -> squeue::Entry128 {
    // `struct fuse_uring_cmd_req`: flags (u64), commit_id (u64), qid (u16), padding.
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
    opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        .build()
        .user_data(UD_ENTRY)
}

/// One queue thread: creates its ring and entry and says so on `ready`, waits for the file
/// system on `go` (none: the session ended before it started), then registers and serves.
fn queue_thread<FS: Filesystem>(
    qid: usize,
    stop_fd: i32,
    params: RingParams,
    ready: &mpsc::Sender<io::Result<()>>,
    go: &mpsc::Receiver<SessionEventLoop<FS>>,
) {
    pin_to_cpu(qid);
    // Single issuer, task work deferred to our own wait: the thread that owns the ring is the
    // only one that submits, and it always waits in io_uring_enter (untar of 10k files:
    // 1.15-1.25 s against 1.24-1.49 s without, 3 rounds each).
    let setup = IoUring::builder()
        .setup_cqsize(8)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)
        .and_then(|ring| Ok((ring, EntryMem::new(params.payload)?)));
    let (ring, mem) = match setup {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Ok(se) = go.recv() else {
        return;
    };
    if let Err(e) = serve_queue(&se, qid, stop_fd, ring, mem) {
        warn!("FUSE io_uring queue {qid}: {e}; its requests go through /dev/fuse");
    }
}

/// Registers the entry and serves requests until the connection ends or `stop_fd` fires.
fn serve_queue<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    qid: usize,
    stop_fd: i32,
    mut ring: IoUring<squeue::Entry128, cqueue::Entry>,
    mut mem: EntryMem,
) -> io::Result<()> {
    let fd = se.ch.as_fd().as_raw_fd();
    let iov = Box::new(mem.iovecs());
    let slot = Arc::new(ReplySlot::default());
    let mut reply = Vec::new();
    let mut scratch: Vec<u64> = Vec::new();
    // Completions of one wait, taken out of the ring (pushing the next command needs it).
    let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(4);

    let register = || {
        // The kernel reads the iovecs while the SQE is submitted; `iov` outlives the ring.
        let mut sqe = uring_cmd(fd, CMD_REGISTER, qid, 0);
        set_addr_len(&mut sqe, iov.as_ptr() as u64, 2);
        sqe
    };
    // The entry's outstanding command: REGISTER, then COMMIT_AND_FETCH after each request.
    let mut last = register();
    push(&mut ring, last.clone())?;
    let poll = opcode::PollAdd::new(types::Fd(stop_fd), libc::POLLIN as u32)
        .build()
        .user_data(UD_STOP);
    push(&mut ring, poll.into())?;
    let mut registered = false;
    // Consecutive failed commands; bounded, so a kernel that keeps refusing ends the thread.
    let mut failures = 0u32;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(ring.completion());
        for cqe in cqes.drain(..) {
            if cqe.user_data() == UD_STOP {
                return Ok(());
            }
            let res = cqe.result();
            if res < 0 {
                failures += 1;
                match -res {
                    // Unmounted or aborted: the kernel tore the entry down.
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                        debug!("FUSE io_uring queue {qid}: connection ended");
                        return Ok(());
                    }
                    // The connection is not initialised yet, or the command was interrupted
                    // before it ran: the same command again.
                    libc::EAGAIN | libc::EINTR if failures <= 100 => {
                        thread::sleep(std::time::Duration::from_millis(10));
                        push(&mut ring, last.clone())?;
                    }
                    // A refused commit (its request ended without us) leaves the entry out of
                    // the queue: a registered queue thread registers a new one.
                    e if registered && failures <= 100 => {
                        warn!(
                            "FUSE io_uring queue {qid}: {}; registering the entry again",
                            io::Error::from_raw_os_error(e)
                        );
                        last = register();
                        push(&mut ring, last.clone())?;
                    }
                    e => return Err(io::Error::from_raw_os_error(e)),
                }
                continue;
            }
            failures = 0;
            if !registered {
                registered = true;
                debug!("FUSE io_uring queue {qid}: registered");
            }
            let commit_id = serve(se, &mut mem, &slot, &mut reply, &mut scratch);
            last = uring_cmd(fd, CMD_COMMIT_AND_FETCH, qid, commit_id);
            push(&mut ring, last.clone())?;
        }
    }
}

/// Serves the request in `mem`, writes its reply into `mem`, and returns its commit id.
fn serve<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    mem: &mut EntryMem,
    slot: &Arc<ReplySlot>,
    reply: &mut Vec<u8>,
    scratch: &mut Vec<u64>,
) -> u64 {
    let payload_cap = mem.payload;
    let b = mem.bytes();
    let commit_id = read_u64(b, HDR_COMMIT_ID);
    let in_len = read_u32(b, HDR_IN_OUT) as usize;
    let unique = read_u64(b, HDR_IN_OUT + 8);
    let payload_sz = read_u32(b, HDR_PAYLOAD_SZ) as usize;
    // The request's first argument went to `op_in`; its size is what `len` leaves over.
    let first = in_len.checked_sub(IN_HEADER + payload_sz);
    let request: Option<&[u8]> = match first {
        Some(first) if first <= 128 && payload_sz <= payload_cap => {
            if first % 8 == 0 {
                // In place: header and first argument right before the payload.
                let start = PAYLOAD_AT - first - IN_HEADER;
                b.copy_within(HDR_IN_OUT..HDR_IN_OUT + IN_HEADER, start);
                b.copy_within(HDR_OP_IN..HDR_OP_IN + first, start + IN_HEADER);
                Some(&b[start..PAYLOAD_AT + payload_sz])
            } else {
                // A name as first argument (LOOKUP, UNLINK, ...): small, copy it whole into an
                // 8-aligned buffer.
                scratch.clear();
                scratch.resize(in_len.div_ceil(8), 0);
                let s = as_bytes_mut(scratch);
                s[..IN_HEADER].copy_from_slice(&b[HDR_IN_OUT..HDR_IN_OUT + IN_HEADER]);
                s[IN_HEADER..IN_HEADER + first].copy_from_slice(&b[HDR_OP_IN..HDR_OP_IN + first]);
                s[IN_HEADER + first..in_len]
                    .copy_from_slice(&b[PAYLOAD_AT..PAYLOAD_AT + payload_sz]);
                Some(&as_bytes_mut(scratch)[..in_len])
            }
        }
        _ => None,
    };
    let sender = ReplySender::Ring(slot.clone(), se.ch.sender());
    match request.and_then(|data| RequestWithSender::new(sender, data)) {
        Some(req) => {
            if let Ok(ll::Operation::Destroy(_)) = req.request.operation() {
                req.reply::<crate::ReplyEmpty>().ok();
            } else {
                req.dispatch(se);
            }
        }
        None => {
            error!("FUSE io_uring: malformed request (len {in_len}, payload {payload_sz})");
            let _ = slot.send(&[IoSlice::new(&eio_header(unique))]);
        }
    }
    slot.take(reply);
    let b = mem.bytes();
    let body = reply.len().saturating_sub(OUT_HEADER);
    if reply.len() < OUT_HEADER || body > payload_cap {
        error!("FUSE io_uring: reply of {} bytes does not fit", reply.len());
        b[HDR_IN_OUT..HDR_IN_OUT + OUT_HEADER].copy_from_slice(&eio_header(unique));
        b[HDR_PAYLOAD_SZ..HDR_PAYLOAD_SZ + 4].copy_from_slice(&0u32.to_ne_bytes());
    } else {
        b[HDR_IN_OUT..HDR_IN_OUT + OUT_HEADER].copy_from_slice(&reply[..OUT_HEADER]);
        b[PAYLOAD_AT..PAYLOAD_AT + body].copy_from_slice(&reply[OUT_HEADER..]);
        b[HDR_PAYLOAD_SZ..HDR_PAYLOAD_SZ + 4].copy_from_slice(&(body as u32).to_ne_bytes());
    }
    // Do not keep a large read reply's buffer around.
    if reply.capacity() > KEEP_REPLY {
        *reply = Vec::new();
    }
    commit_id
}

/// `struct fuse_out_header` of an `EIO` reply to request `unique`.
fn eio_header(unique: u64) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[0..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(v)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

fn as_bytes_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: any u64 storage is valid as bytes; length in bytes is 8 × the element count.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
}

/// Sets an SQE's `addr` (offset 16) and `len` (offset 24): the `REGISTER` command's iovec
/// array and its length. io-uring's `UringCmd80` sets `addr` but has no `len`.
fn set_addr_len(sqe: &mut squeue::Entry128, addr: u64, len: u32) {
    let p = (sqe as *mut squeue::Entry128).cast::<u8>();
    // SAFETY: `Entry128` is `repr(C)` over `struct io_uring_sqe` (`repr(C)`, 64 bytes) and 64
    // more bytes; `addr` is the u64 at byte 16 and `len` the u32 at byte 24 of that struct
    // (the kernel's ABI). Unaligned writes make no assumption about the entry's alignment.
    unsafe {
        p.add(16).cast::<u64>().write_unaligned(addr);
        p.add(24).cast::<u32>().write_unaligned(len);
    }
}

fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: the buffers an SQE points to (the entry's memory and its iovecs, the eventfd)
    // live as long as the ring: they are owned by the queue thread that owns the ring.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("io_uring SQ full"))
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET write within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: sched_setaffinity on the calling thread with a valid, sized set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        warn!(
            "FUSE io_uring: cannot pin queue thread to CPU {cpu}: {}",
            io::Error::last_os_error()
        );
    }
}
