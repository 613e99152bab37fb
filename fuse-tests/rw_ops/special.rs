//! Special files, statfs, sync, locks, mmap.

use super::*;

pub(crate) fn special_files_and_statfs(b: &dyn Backend) {
    use rustix::fs::FileType as T;
    let mut m = b.mount();
    // A fifo: data flows through it.
    let fifo = m.p("www/fifo");
    rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
    let st = lstat(&fifo);
    assert!(st.file_type().is_fifo());
    assert_eq!(st.mode() & 0o7777, 0o644);
    let fd = open(&fifo, O::RDWR | O::NONBLOCK, 0).unwrap();
    rustix::io::write(&fd, b"ping").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&fd, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
    drop(fd);
    // A unix socket bound in the mount: connect by path.
    let sock = m.p("www/sock");
    let listener = UnixListener::bind(&sock).unwrap();
    assert!(lstat(&sock).file_type().is_socket());
    let mut client = UnixStream::connect(&sock).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    drop((client, server, listener));
    // Device nodes (strata keeps them as metadata).
    let null = m.p("www/null");
    let sda = m.p("www/sda");
    rustix::fs::mknodat(
        CWD,
        &null,
        T::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        &sda,
        T::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(8, 0),
    )
    .unwrap();
    let check_devices = |m: &Mounted| {
        let st = lstat(&m.p("www/null"));
        assert!(st.file_type().is_char_device());
        // mknod applies the umask (022): 0666 → 0644, 0660 → 0640.
        assert_eq!(
            (st.rdev(), st.mode() & 0o7777),
            (rustix::fs::makedev(1, 3), 0o644)
        );
        let st = lstat(&m.p("www/sda"));
        assert!(st.file_type().is_block_device());
        assert_eq!(
            (st.rdev(), st.mode() & 0o7777),
            (rustix::fs::makedev(8, 0), 0o640)
        );
        assert!(lstat(&m.p("www/fifo")).file_type().is_fifo());
        assert!(lstat(&m.p("www/sock")).file_type().is_socket());
        assert_eq!(
            lstat(&m.p("srv/special/zero")).rdev(),
            rustix::fs::makedev(1, 5),
            "lower device"
        );
    };
    check_devices(&m);
    expect_errno(
        rx(rustix::fs::mknodat(
            CWD,
            &null,
            T::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )),
        EEXIST,
        "mknod over an existing node",
    );
    // statfs, on the root and on a file.
    for p in [m.mnt.clone(), m.p("etc/passwd")] {
        let s = rustix::fs::statvfs(&p).unwrap();
        assert_eq!(s.f_namemax, 255, "f_namemax of {}", p.display());
        assert!(
            s.f_bsize > 0 && s.f_blocks > 0 && s.f_bavail <= s.f_blocks,
            "statvfs {}: bsize {} blocks {} bavail {}",
            p.display(),
            s.f_bsize,
            s.f_blocks,
            s.f_bavail
        );
    }
    m.remount();
    check_devices(&m);
}

pub(crate) fn fsync_and_fdatasync(b: &dyn Backend) {
    let m = b.mount();
    let p = m.p("www/synced");
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"durable", 0).unwrap();
    rustix::fs::fsync(&f).unwrap();
    f.write_all_at(b"!", 7).unwrap();
    rustix::fs::fdatasync(&f).unwrap();
    drop(f);
    assert_eq!(read(&p), b"durable!");
    // A lower file, written then synced; another only opened.
    let passwd = OpenOptions::new()
        .write(true)
        .open(m.p("etc/passwd"))
        .unwrap();
    passwd.write_all_at(b"R", 0).unwrap();
    rustix::fs::fdatasync(&passwd).unwrap();
    rustix::fs::fsync(&passwd).unwrap();
    let ro = File::open(m.p("etc/group")).unwrap();
    rustix::fs::fsync(&ro).unwrap();
    rustix::fs::fdatasync(&ro).unwrap();
    // Directories (lower and new).
    std::fs::create_dir(m.p("www/dir")).unwrap();
    for d in ["www", "www/dir", "srv"] {
        let fd = open(&m.p(d), O::RDONLY | O::DIRECTORY, 0).unwrap();
        rustix::fs::fsync(&fd).unwrap();
    }
    // syncfs of the whole mount.
    let root = open(&m.mnt, O::RDONLY | O::DIRECTORY, 0).unwrap();
    rustix::fs::syncfs(&root).unwrap();
}

pub(crate) fn ofd_lock(
    fd: &impl AsRawFd,
    cmd: i32,
    ty: i32,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: a zeroed `flock` is a valid value; fcntl reads and may write it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: a valid fd and a valid `flock` pointer.
    if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn flock_and_posix_locks(b: &dyn Backend) {
    use rustix::fs::FlockOperation as F;
    let m = b.mount();
    std::fs::write(m.p("www/up"), vec![b'x'; 1000]).unwrap();
    for rel in ["www/index.html", "www/up"] {
        let p = m.p(rel);
        // flock: two open file descriptions conflict.
        let f1 = File::open(&p).unwrap();
        let f2 = File::open(&p).unwrap();
        rustix::fs::flock(&f1, F::NonBlockingLockExclusive).unwrap();
        for op in [F::NonBlockingLockExclusive, F::NonBlockingLockShared] {
            expect_errno(
                rx(rustix::fs::flock(&f2, op)),
                libc::EWOULDBLOCK,
                &format!("{rel}: flock {op:?} against an exclusive lock"),
            );
        }
        rustix::fs::flock(&f1, F::Unlock).unwrap();
        rustix::fs::flock(&f2, F::NonBlockingLockShared).unwrap();
        rustix::fs::flock(&f1, F::NonBlockingLockShared).unwrap();
        drop((f1, f2));

        // Open-file-description locks (F_OFD_SETLK): two fds in one process conflict.
        let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p).unwrap();
        let (f1, f2) = (rw(&p), rw(&p));
        ofd_lock(&f1, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 100).unwrap();
        expect_errno(
            ofd_lock(&f2, libc::F_OFD_SETLK, libc::F_WRLCK, 50, 10),
            libc::EAGAIN,
            &format!("{rel}: conflicting F_OFD_SETLK"),
        );
        let q = ofd_lock(&f2, libc::F_OFD_GETLK, libc::F_RDLCK, 0, 10).unwrap();
        assert_eq!(q.l_type as i32, libc::F_WRLCK, "{rel}: F_OFD_GETLK");
        ofd_lock(&f2, libc::F_OFD_SETLK, libc::F_WRLCK, 200, 10).unwrap();
        drop((f1, f2));

        // Classic POSIX locks (F_SETLK): owned by the process, so the conflict is seen from a
        // second process.
        let f1 = rw(&p);
        ofd_lock(&f1, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
        let cp = cpath(&p);
        let parent = std::process::id() as i32;
        let probe = move || {
            // In the child: plain libc only.
            // SAFETY: a NUL-terminated path; fd and flock are valid.
            unsafe {
                let fd = libc::open(cp.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 {
                    return 101;
                }
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as _;
                fl.l_whence = libc::SEEK_SET as _;
                fl.l_start = 10;
                fl.l_len = 10;
                if libc::fcntl(fd, libc::F_SETLK, &mut fl) == 0 {
                    return 102;
                }
                let e = last_errno();
                if e != libc::EAGAIN && e != libc::EACCES {
                    return 103;
                }
                let mut q: libc::flock = std::mem::zeroed();
                q.l_type = libc::F_RDLCK as _;
                q.l_whence = libc::SEEK_SET as _;
                q.l_start = 0;
                q.l_len = 1;
                if libc::fcntl(fd, libc::F_GETLK, &mut q) != 0 {
                    return 104;
                }
                if q.l_type as i32 != libc::F_WRLCK || q.l_pid != parent {
                    return 105;
                }
                fl.l_start = 200;
                if libc::fcntl(fd, libc::F_SETLK, &mut fl) != 0 {
                    return 106;
                }
                0
            }
        };
        assert_eq!(in_child(probe), 0, "{rel}: POSIX lock probe");
        // Closing any fd of the file drops the process's POSIX locks (POSIX semantics).
        drop(rw(&p));
        let cp = cpath(&p);
        let free = move || {
            // SAFETY: as above.
            unsafe {
                let fd = libc::open(cp.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as _;
                fl.l_whence = libc::SEEK_SET as _;
                fl.l_start = 10;
                fl.l_len = 10;
                if fd < 0 || libc::fcntl(fd, libc::F_SETLK, &mut fl) != 0 {
                    return 110;
                }
                0
            }
        };
        assert_eq!(
            in_child(free),
            0,
            "{rel}: lock still held after closing another fd of the file"
        );
        drop(f1);
    }
}

pub(crate) fn mmap_shared_write(b: &dyn Backend) {
    let mut m = b.mount();
    let map_write = |p: &Path, edits: &[(usize, &[u8])]| {
        let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a fresh shared mapping of an open file, unmapped below; writes stay in bounds.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "mmap {}", p.display());
            let mem = std::slice::from_raw_parts_mut(addr as *mut u8, len);
            for (off, data) in edits {
                mem[*off..*off + data.len()].copy_from_slice(data);
            }
            assert_eq!(libc::munmap(addr, len), 0);
        }
        drop(f);
    };
    // An upper file.
    let up = m.p("www/mapped");
    std::fs::write(&up, vec![0u8; 8192]).unwrap();
    map_write(&up, &[(0, b"mapped!"), (5000, b"page two")]);
    let mut want = vec![0u8; 8192];
    want[..7].copy_from_slice(b"mapped!");
    want[5000..5008].copy_from_slice(b"page two");
    assert_bytes(&read(&up), &want, "upper file after mmap");
    // A lower file (copied up on the writable open).
    let passwd = m.p("etc/passwd");
    let mut pwant = read(&passwd);
    map_write(&passwd, &[(0, b"ROOT")]);
    pwant[..4].copy_from_slice(b"ROOT");
    assert_bytes(&read(&passwd), &pwant, "etc/passwd after mmap");
    // A read-only shared mapping of a lower file sees its content.
    let idx = File::open(m.p("www/index.html")).unwrap();
    // SAFETY: read-only mapping of an 18-byte file, unmapped below.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            INDEX.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            idx.as_fd().as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_eq!(
            std::slice::from_raw_parts(addr as *const u8, INDEX.len()),
            INDEX
        );
        libc::munmap(addr, INDEX.len());
    }
    drop(idx);
    m.remount();
    assert_bytes(&read(&m.p("www/mapped")), &want, "upper file after remount");
    assert_bytes(
        &read(&m.p("etc/passwd")),
        &pwant,
        "etc/passwd after remount",
    );
}
