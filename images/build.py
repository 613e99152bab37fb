#!/usr/bin/env python3
"""Build the bundled strata sample image, deterministically.

    python3 images/build.py OUTDIR

Needs only Python 3.11+ (stdlib), the `zstd` CLI and a static busybox
(/bin/busybox from Debian's busybox-static; override with $STRATA_BUSYBOX).
Running it twice gives byte-identical outputs: every tar member is built from an
explicit TarInfo (fixed owner, mode, mtime; no host files are added), entries are
sorted, gzip uses mtime=0 and no file name, zstd runs single-threaded at a fixed
level, and JSON is written with sorted keys and a fixed `created` time.

Outputs (see images/README.md for the content of each layer):
  OUTDIR/layers/N.tar        raw layer tars (their sha256 are the diff_ids)
  OUTDIR/oci/                OCI layout, gzip layers
  OUTDIR/oci-uncompressed/   OCI layout, uncompressed layers
  OUTDIR/oci-zstd/           OCI layout, zstd layers
  OUTDIR/sample.oci.tar      OCI archive (tar of oci/, like podman save --format oci-archive)
  OUTDIR/sample.docker.tar   docker-archive (legacy `docker save` format)
  OUTDIR/rootfs.tar          flattened rootfs of all layers (for `strata import`)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

MTIME = 1767225600  # 2026-01-01T00:00:00Z, used for every entry (except one)
CREATED = "2026-01-01T00:00:00Z"
NS_MTIME = "1700000000.123456789"  # the one file with a nanosecond mtime
REPO, TAG = "strata-sample", "latest"
IMAGE_REF = f"{REPO}:{TAG}"
BUSYBOX = os.environ.get("STRATA_BUSYBOX", "/bin/busybox")
ZSTD_CMD = ["zstd", "-19", "-T1", "-q", "--no-progress", "-c"]
GZIP_LEVEL = 9

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

UNAMES = {0: "root", 1000: "user", 65534: "nobody"}
GNAMES = {0: "root", 6: "disk", 1000: "user", 65534: "nogroup"}

# struct vfs_cap_data, VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted =
# 1 << CAP_NET_BIND_SERVICE (10), inheritable 0; second 32-bit half all zero.
CAP_NET_BIND_SERVICE_XATTR = (
    (0x02000001).to_bytes(4, "little")
    + (1 << 10).to_bytes(4, "little") + (0).to_bytes(4, "little")
    + (0).to_bytes(4, "little") + (0).to_bytes(4, "little")
)
assert len(CAP_NET_BIND_SERVICE_XATTR) == 20

NON_UTF8_NAME = b"latin1-\xe9t\xe9".decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------
# Layer model
# --------------------------------------------------------------------------

class Entry:
    """One tar member. `path` is a str (surrogateescape for non-UTF-8 bytes),
    relative, without "./" and without a trailing "/"; "" is the root dir."""

    def __init__(self, path, kind, mode, uid=0, gid=0, data=b"", target="",
                 major=0, minor=0, xattrs=None, pax_mtime=None):
        self.path = path
        self.kind = kind  # dir file symlink hardlink fifo chr blk
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.data = data
        self.target = target  # symlink target, or hard-link target path
        self.major, self.minor = major, minor
        self.xattrs = dict(xattrs or {})  # name -> bytes
        self.pax_mtime = pax_mtime
        self.link_to = None  # for hard links: the target Entry (set by model)


def pkey(path: str):
    """Sort key: path components as bytes, so parents come before children."""
    if path == "":
        return ()
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/"))


class Layer:
    def __init__(self, fmt, dot_prefix, created_by):
        self.fmt = fmt
        self.dot_prefix = dot_prefix
        self.created_by = created_by
        self.entries: list[Entry] = []

    def add(self, e: Entry):
        self.entries.append(e)
        return e

    def dir(self, path, mode=0o755, uid=0, gid=0, **kw):
        return self.add(Entry(path, "dir", mode, uid, gid, **kw))

    def dirs(self, path, mode=0o755, uid=0, gid=0):
        """A dir and all its not-yet-declared parents (in this layer)."""
        parts = path.split("/")
        have = {e.path for e in self.entries}
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in have:
                self.dir(p, mode, uid, gid)

    def file(self, path, data=b"", mode=0o644, uid=0, gid=0, **kw):
        if isinstance(data, str):
            data = data.encode()
        return self.add(Entry(path, "file", mode, uid, gid, data=data, **kw))

    def symlink(self, path, target, uid=0, gid=0):
        return self.add(Entry(path, "symlink", 0o777, uid, gid, target=target))

    def hardlink(self, path, target):
        return self.add(Entry(path, "hardlink", 0, target=target))

    def fifo(self, path, mode=0o644, uid=0, gid=0):
        return self.add(Entry(path, "fifo", mode, uid, gid))

    def chr(self, path, major, minor, mode=0o666, uid=0, gid=0):
        return self.add(Entry(path, "chr", mode, uid, gid, major=major, minor=minor))

    def blk(self, path, major, minor, mode=0o660, uid=0, gid=6):
        return self.add(Entry(path, "blk", mode, uid, gid, major=major, minor=minor))

    def whiteout(self, path):
        parent, _, base = path.rpartition("/")
        wh = (parent + "/" if parent else "") + ".wh." + base
        return self.add(Entry(wh, "file", 0o644))

    def opaque(self, dirpath):
        return self.add(Entry(dirpath + "/.wh..wh..opq", "file", 0o644))

    def sorted_entries(self):
        return sorted(self.entries, key=lambda e: pkey(e.path))


def is_under(p: str, d: str) -> bool:
    return d == "" and p != "" or p.startswith(d + "/")


def apply_layer(state: dict, layer: Layer, n: int):
    """Apply one layer onto `state` (path -> Entry) with Docker/OCI semantics,
    checking that the layer is well-formed (parents declared, hard-link targets
    earlier in the same layer, whiteouts hide something)."""
    added = set()
    for e in layer.sorted_entries():
        parent, _, base = e.path.rpartition("/")
        where = f"layer {n}: {e.path!r}"
        if e.path != "":
            assert parent in state and state[parent].kind == "dir", \
                f"{where}: parent dir not declared in this or a lower layer"
        if base == ".wh..wh..opq":
            for p in [p for p in state if is_under(p, parent) and p not in added]:
                del state[p]
            continue
        if base.startswith(".wh."):
            victim = (parent + "/" if parent else "") + base[4:]
            assert victim in state, f"{where}: whiteout hides nothing"
            for p in [p for p in state if p == victim or is_under(p, victim)]:
                del state[p]
            continue
        old = state.get(e.path)
        if old is not None and not (old.kind == "dir" and e.kind == "dir"):
            for p in [p for p in state if is_under(p, e.path)]:
                del state[p]
        if e.kind == "hardlink":
            assert e.target in added and state[e.target].kind in ("file", "hardlink"), \
                f"{where}: hard-link target must be an earlier file of the same layer"
            t = state[e.target]
            e.link_to = t.link_to or t
        state[e.path] = e
        added.add(e.path)


# --------------------------------------------------------------------------
# Image content
# --------------------------------------------------------------------------

BIN_APPLETS = sorted(set("""
    sh ls cat echo true false sleep wget httpd id hostname env pwd mkdir rm touch ps
    kill nc stat find sync
    [ ash awk basename chmod chown cp cut date dd df dirname du grep head ip ln md5sum
    mkfifo mknod mount mv printf readlink realpath rmdir sed seq sha256sum sort tail tar
    tee test tr truncate umount uname wc which whoami xargs yes
""".split()))

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:Strata User:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
disk:x:6:
user:x:1000:
nogroup:x:65534:
"""
OS_RELEASE = """\
NAME="strata sample"
ID=strata-sample
PRETTY_NAME="strata sample image (busybox)"
"""

LONG_DIR_A = "a-directory-with-a-fairly-long-name-0123456789abcdef"
LONG_DIR_B = "another-directory-with-a-long-name-fedcba9876543210"
NAME_255 = "name-255-" + "x" * (255 - 9 - 4) + ".txt"
assert len(NAME_255) == 255

GNU_LONG_DIR = "srv/gnu-longnames/" + "d" * 60 + "/" + "e" * 60
GNU_LONG_FILE = GNU_LONG_DIR + "/file-with-a-gnu-longname-record.txt"
assert len(GNU_LONG_DIR) > 100


def sparse_16m() -> bytes:
    size = 16 * 1024 * 1024
    b = bytearray(size)
    b[0:6] = b"start\n"
    b[size // 2:size // 2 + 7] = b"middle\n"
    b[size - 4:] = b"end\n"
    return bytes(b)


def layer1(busybox: bytes) -> Layer:
    L = Layer(tarfile.PAX_FORMAT, True,
              "layer 1 (base, PAX, ./-prefixed names): root dir, FHS dirs, "
              "/bin/busybox + applet symlinks, /etc/passwd, /etc/group, /www/index.html")
    L.dir("")
    for d in ["bin", "dev", "etc", "home", "usr", "usr/bin", "var", "www"]:
        L.dir(d)
    L.dir("proc", 0o555)
    L.dir("sys", 0o555)
    L.dir("root", 0o700)
    L.dir("tmp", 0o1777)
    L.dir("home/user", 0o755, 1000, 1000)
    L.file("bin/busybox", busybox, 0o755)
    for a in BIN_APPLETS:
        L.symlink("bin/" + a, "busybox")
    L.symlink("usr/bin/env", "../../bin/busybox")
    L.file("etc/passwd", PASSWD)
    L.file("etc/group", GROUP)
    L.file("etc/os-release", OS_RELEASE)
    L.file("www/index.html", "hello from strata\n")
    return L


def layer2() -> Layer:
    L = Layer(tarfile.PAX_FORMAT, False,
              "layer 2 (PAX, bare names): hard links, symlinks, setuid/setgid/sticky, "
              "foreign owners, fifo and device nodes, xattrs and a file capability, "
              "empty/sparse/long/non-UTF-8 names, nanosecond mtime, deep dirs, "
              "and the srv/changes tree that layers 3 and 4 modify")
    L.dir("srv")
    # home/user re-declared (same metadata as layer 1), as Docker's diff writer does;
    # home/ itself is not: it comes from layer 1 only
    L.dir("home/user", 0o755, 1000, 1000)
    L.file("home/user/.profile", "export PS1='strata$ '\n", 0o644, 1000, 1000)

    # hard links: one inode, three names in three dirs (layer 3 removes one)
    L.dirs("srv/hardlinks/a")
    L.dirs("srv/hardlinks/b")
    L.file("srv/hardlinks/a/original.txt", "one inode, three names\n", 0o640, 1000, 1000)
    L.hardlink("srv/hardlinks/b/second-name.txt", "srv/hardlinks/a/original.txt")
    L.hardlink("srv/hardlinks/third-name.txt", "srv/hardlinks/a/original.txt")

    # symlinks
    L.dir("srv/symlinks")
    L.symlink("srv/symlinks/relative", "../hardlinks/a/original.txt")
    L.symlink("srv/symlinks/absolute", "/etc/passwd")
    L.symlink("srv/symlinks/dangling", "does-not-exist")
    L.symlink("srv/symlinks/to-dir", "../hardlinks/a")
    L.symlink("srv/symlinks/absolute-to-dir", "/usr/bin")
    L.symlink("srv/symlinks/chain", "relative")
    L.symlink("srv/symlinks/owned-by-user", "relative", 1000, 1000)

    # permission bits
    L.dir("srv/perms")
    L.file("srv/perms/setuid", "#!/bin/sh\nid\n", 0o4755)
    L.file("srv/perms/setgid", "#!/bin/sh\nid\n", 0o2755)
    L.file("srv/perms/setuid-setgid-sticky", "all special bits\n", 0o7755)
    L.dir("srv/perms/setgid-dir", 0o2775, 0, 1000)
    L.file("srv/perms/setgid-dir/inherits-group", "in a setgid dir\n", 0o664, 0, 1000)
    L.dir("srv/perms/sticky-dir", 0o1777)
    L.file("srv/perms/sticky-dir/owned-by-user", "in a sticky dir\n", 0o644, 1000, 1000)
    L.file("srv/perms/read-only", "0444\n", 0o444)
    L.file("srv/perms/no-permissions", "mode 0000\n", 0o000)
    L.file("srv/perms/exec-only", "mode 0111\n", 0o111)
    L.dir("srv/perms/read-only-dir", 0o555)
    L.file("srv/perms/read-only-dir/inside", "in a 0555 dir\n")

    # ownership
    L.dir("srv/owners")
    L.file("srv/owners/uid-1000", "1000:1000\n", 0o644, 1000, 1000)
    L.file("srv/owners/uid-1234-gid-5678", "1234:5678\n", 0o640, 1234, 5678)
    L.file("srv/owners/nobody", "65534:65534\n", 0o644, 65534, 65534)
    L.file("srv/owners/root-group-user", "0:1000\n", 0o640, 0, 1000)
    L.dir("srv/owners/dir-1234-5678", 0o750, 1234, 5678)
    L.file("srv/owners/dir-1234-5678/inside", "1234:5678 in 1234:5678\n", 0o600, 1234, 5678)
    L.dir("srv/owners/dir-1000", 0o700, 1000, 1000)
    L.file("srv/owners/dir-1000/private.txt", "private\n", 0o600, 1000, 1000)
    L.file("home/user/notes.txt", "notes of user 1000\n", 0o600, 1000, 1000)

    # special files
    L.dir("srv/special")
    L.fifo("srv/special/fifo", 0o644)
    L.chr("srv/special/null", 1, 3)
    L.chr("srv/special/zero", 1, 5)
    L.blk("srv/special/sda", 8, 0)

    # xattrs
    L.dir("srv/xattrs")
    L.file("srv/xattrs/file-with-xattrs", "look at my xattrs\n",
           xattrs={"user.comment": b"hello from a user xattr",
                   "user.mime_type": b"text/plain"})
    L.dir("srv/xattrs/dir-with-xattrs", xattrs={"user.purpose": b"directory xattr"})
    L.file("srv/xattrs/dir-with-xattrs/plain", "no xattrs here\n")
    L.file("srv/xattrs/cap-net-bind-service", "#!/bin/sh\nexec httpd -f -p 80\n", 0o755,
           xattrs={"security.capability": CAP_NET_BIND_SERVICE_XATTR})

    # sizes and names
    L.dir("srv/files")
    L.file("srv/files/empty", b"")
    L.file("srv/files/sparse-16M", sparse_16m())
    L.file("srv/files/" + NAME_255, "a 255-byte file name\n")
    L.file("srv/files/" + NON_UTF8_NAME, "my name is latin-1, not UTF-8\n")
    L.file("srv/files/utf8-naïve-名前.txt", "my name is UTF-8\n")
    L.file("srv/files/name with spaces", "spaces\n")
    L.file("srv/files/mtime-nanoseconds", "mtime 1700000000.123456789\n", pax_mtime=NS_MTIME)
    L.dirs(f"srv/long-path/{LONG_DIR_A}/{LONG_DIR_B}")
    L.file(f"srv/long-path/{LONG_DIR_A}/{LONG_DIR_B}/file-at-the-end-of-a-long-path.txt",
           "my path is longer than 100 bytes\n")
    deep = "srv/deep/" + "/".join(f"d{i:02d}" for i in range(1, 21))
    L.dirs(deep)
    L.file(deep + "/bottom.txt", "20 directories deep\n")

    # things layers 3 and 4 change
    c = "srv/changes"
    L.dir(c)
    L.file(f"{c}/file-to-whiteout", "deleted in layer 3\n")
    L.dirs(f"{c}/dir-to-whiteout/sub")
    L.file(f"{c}/dir-to-whiteout/a.txt", "deleted with its dir in layer 3\n")
    L.file(f"{c}/dir-to-whiteout/sub/b.txt", "deleted with its dir in layer 3\n")
    L.dirs(f"{c}/opaque-dir/sub")
    L.file(f"{c}/opaque-dir/hidden-1.txt", "hidden by the opaque marker in layer 3\n")
    L.file(f"{c}/opaque-dir/hidden-2.txt", "hidden by the opaque marker in layer 3\n")
    L.file(f"{c}/opaque-dir/sub/hidden-3.txt", "hidden by the opaque marker in layer 3\n")
    L.file(f"{c}/file-becomes-dir", "a file in layer 2, a dir in layer 3\n")
    L.dirs(f"{c}/dir-becomes-file/sub")
    L.file(f"{c}/dir-becomes-file/inner.txt", "gone when layer 3 makes my dir a file\n")
    L.file(f"{c}/dir-becomes-file/sub/deeper.txt", "gone when layer 3 makes my dir a file\n")
    L.file(f"{c}/overwrite-me", "original content (layer 2)\n", 0o644)
    L.dir(f"{c}/chmod-dir", 0o755)
    L.file(f"{c}/chmod-dir/inside.txt", "my dir changes mode and owner in layer 3\n")
    L.file(f"{c}/replaced-by-symlink", "a file in layer 2, a symlink in layer 4\n")
    L.file(f"{c}/readd-file", "layer 2 version, whited out in layer 3\n")
    L.dir(f"{c}/readd-dir")
    L.file(f"{c}/readd-dir/old.txt", "layer 2, must stay hidden after layer 4 re-adds the dir\n")
    return L


def layer3() -> Layer:
    L = Layer(tarfile.PAX_FORMAT, False,
              "layer 3 (PAX): whiteouts, opaque dir, file->dir and dir->file "
              "replacement, overwrite, chmod/chown of a dir, unlink of a hard-link name")
    c = "srv/changes"
    L.dir("srv")
    L.dir(c)  # parents re-declared, as Docker's diff writer does
    L.whiteout(f"{c}/file-to-whiteout")
    L.whiteout(f"{c}/dir-to-whiteout")
    L.whiteout(f"{c}/readd-file")
    L.whiteout(f"{c}/readd-dir")
    L.dir(f"{c}/opaque-dir")
    L.opaque(f"{c}/opaque-dir")
    L.file(f"{c}/opaque-dir/after-opaque.txt", "the only file in opaque-dir\n")
    L.dir(f"{c}/file-becomes-dir")
    L.file(f"{c}/file-becomes-dir/child.txt", "I live in what used to be a file\n")
    L.file(f"{c}/dir-becomes-file", "a dir in layer 2, a file in layer 3\n")
    L.file(f"{c}/overwrite-me", "new content and mode (layer 3)\n", 0o600, 1000, 1000)
    L.dir(f"{c}/chmod-dir", 0o750, 1000, 1000)
    L.dir("srv/hardlinks")
    L.dir("srv/hardlinks/b")
    L.whiteout("srv/hardlinks/b/second-name.txt")
    return L


def layer4() -> Layer:
    L = Layer(tarfile.GNU_FORMAT, False,
              "layer 4 (GNU format, ././@LongLink names): long path and link names, "
              "re-added whited-out names, a symlink replacing a file, a new file in a lower dir")
    c = "srv/changes"
    # no parent entries for srv/, srv/changes/ or etc/: they come from lower layers
    L.file("etc/motd", "Welcome to the strata sample image.\n")
    L.file(f"{c}/readd-file", "re-added in layer 4\n")
    L.dir(f"{c}/readd-dir")
    L.file(f"{c}/readd-dir/new.txt", "the only file in readd-dir\n")
    L.symlink(f"{c}/replaced-by-symlink", "overwrite-me")
    L.dir("srv/gnu-longnames")
    L.dir(GNU_LONG_DIR.rpartition("/")[0])
    L.dir(GNU_LONG_DIR)
    L.file(GNU_LONG_FILE, "my path needs a GNU longname record\n")
    L.hardlink(GNU_LONG_DIR + "/hard-link-with-a-long-name-and-a-long-target.txt",
               GNU_LONG_FILE)
    L.symlink("srv/gnu-longnames/symlink-with-a-long-target",
              GNU_LONG_FILE[len("srv/gnu-longnames/"):])
    return L


# --------------------------------------------------------------------------
# Tar writing
# --------------------------------------------------------------------------

TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}


def tarinfo_for(e: Entry, name: str, fmt, linkname: str | None = None) -> tarfile.TarInfo:
    meta = e.link_to if e.kind == "hardlink" and e.link_to is not None else e
    ti = tarfile.TarInfo(name)
    ti.type = TYPES[e.kind]
    ti.mode = meta.mode
    ti.uid, ti.gid = meta.uid, meta.gid
    ti.uname = UNAMES.get(meta.uid, "")
    ti.gname = GNAMES.get(meta.gid, "")
    ti.mtime = MTIME
    ti.size = len(e.data) if e.kind == "file" else 0
    if e.kind == "symlink":
        ti.linkname = e.target
    if e.kind == "hardlink":
        ti.linkname = linkname
    if e.kind in ("chr", "blk"):
        ti.devmajor, ti.devminor = e.major, e.minor
    pax = {}
    for k in sorted(meta.xattrs):
        pax["SCHILY.xattr." + k] = meta.xattrs[k].decode("utf-8", "surrogateescape")
    if meta.pax_mtime:
        pax["mtime"] = meta.pax_mtime
    if pax:
        assert fmt == tarfile.PAX_FORMAT, f"{name}: xattrs/ns mtime need PAX"
        ti.pax_headers = pax
    return ti


def tar_name(path: str, dot: bool) -> str:
    if dot:
        return "./" + path  # the root dir becomes "./"
    assert path != ""
    return path


def write_entries(entries, fmt, dot) -> bytes:
    """Serialize entries (already in order). Hard links point at the first name
    written for their inode."""
    bio = io.BytesIO()
    first_name = {}  # id(inode Entry) -> tar name
    with tarfile.open(fileobj=bio, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            name = tar_name(e.path, dot)
            inode = e.link_to if e.kind == "hardlink" else e
            if e.kind in ("file", "hardlink") and id(inode) in first_name:
                ti = tarinfo_for(inode, name, fmt)
                ti.type, ti.size, ti.linkname = tarfile.LNKTYPE, 0, first_name[id(inode)]
                tf.addfile(ti)
            elif e.kind in ("file", "hardlink"):
                first_name[id(inode)] = name
                ti = tarinfo_for(inode, name, fmt)
                tf.addfile(ti, io.BytesIO(inode.data))
            else:
                tf.addfile(tarinfo_for(e, name, fmt))
    return bio.getvalue()


def layer_tar(layer: Layer) -> bytes:
    return write_entries(layer.sorted_entries(), layer.fmt, layer.dot_prefix)


def archive_tar(members) -> bytes:
    """members: list of (name, bytes or None for a dir). Sorted, fixed metadata."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(members, key=lambda m: m[0].split("/")):
            ti = tarfile.TarInfo(name)
            ti.mtime = MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.mode, ti.size = 0o644, len(data)
                tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


# --------------------------------------------------------------------------
# Image writing
# --------------------------------------------------------------------------

def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def jdump(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def zstd_compress(path: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTD_")}
    return subprocess.run(ZSTD_CMD + [path], check=True, stdout=subprocess.PIPE,
                          env=env).stdout


def write_file(path: str, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def image_config(layers, diff_ids) -> bytes:
    return jdump({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "author": "strata images/build.py",
        "config": {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "ExposedPorts": {"80/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {"org.opencontainers.image.title": REPO},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]},
        "history": [{"created": CREATED, "created_by": L.created_by} for L in layers],
    })


def write_oci_layout(root: str, config: bytes, blobs: list[bytes], media_type: str) -> str:
    """Write an OCI layout; returns the manifest digest."""
    descs = []

    def put(data: bytes, mt: str) -> dict:
        h = sha256(data)
        write_file(os.path.join(root, "blobs", "sha256", h), data)
        return {"mediaType": mt, "digest": "sha256:" + h, "size": len(data)}

    cfg = put(config, MT_CONFIG)
    for b in blobs:
        descs.append(put(b, media_type))
    manifest = jdump({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                      "config": cfg, "layers": descs})
    mdesc = put(manifest, MT_MANIFEST)
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": IMAGE_REF,
                            "io.containerd.image.name": IMAGE_REF}
    mdesc["platform"] = {"architecture": "amd64", "os": "linux"}
    write_file(os.path.join(root, "oci-layout"), jdump({"imageLayoutVersion": "1.0.0"}))
    write_file(os.path.join(root, "index.json"),
               jdump({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [mdesc]}))
    return mdesc["digest"]


def dir_members(root: str):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out.append((os.path.normpath(os.path.join(rel, d)), None))
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out.append((os.path.normpath(os.path.join(rel, f)), fh.read()))
    return out


def docker_archive(config: bytes, raw: list[bytes], diff_ids: list[str]) -> bytes:
    cfg_hex = sha256(config)
    members = [(cfg_hex + ".json", config)]
    parent = None
    for data, d in zip(raw, diff_ids):
        v1 = {"id": d, "created": CREATED, "os": "linux", "architecture": "amd64"}
        if parent:
            v1["parent"] = parent
        members += [(d, None), (d + "/VERSION", b"1.0"), (d + "/json", jdump(v1)),
                    (d + "/layer.tar", data)]
        parent = d
    members.append(("manifest.json", jdump([{
        "Config": cfg_hex + ".json",
        "RepoTags": [IMAGE_REF],
        "Layers": [d + "/layer.tar" for d in diff_ids],
    }])))
    members.append(("repositories", jdump({REPO: {TAG: diff_ids[-1]}})))
    return archive_tar(members)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(f"usage: {argv[0]} OUTDIR\n")
        return 2
    out = argv[1]
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()

    layers = [layer1(busybox), layer2(), layer3(), layer4()]
    state: dict = {}
    for n, L in enumerate(layers, 1):
        apply_layer(state, L, n)
    raw = [layer_tar(L) for L in layers]
    diff_ids = [sha256(b) for b in raw]

    os.makedirs(out, exist_ok=True)
    for name in ["layers", "oci", "oci-uncompressed", "oci-zstd"]:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for n, b in enumerate(raw, 1):
        write_file(os.path.join(out, "layers", f"{n}.tar"), b)

    gz = [gzip.compress(b, compresslevel=GZIP_LEVEL, mtime=0) for b in raw]
    zs = [zstd_compress(os.path.join(out, "layers", f"{n}.tar"))
          for n in range(1, len(raw) + 1)]
    for b, g, z in zip(raw, gz, zs):  # cheap self-check
        assert gzip.decompress(g) == b

    config = image_config(layers, diff_ids)
    m_gz = write_oci_layout(os.path.join(out, "oci"), config, gz, MT_LAYER["gzip"])
    m_raw = write_oci_layout(os.path.join(out, "oci-uncompressed"), config, raw,
                             MT_LAYER["none"])
    m_zs = write_oci_layout(os.path.join(out, "oci-zstd"), config, zs, MT_LAYER["zstd"])

    write_file(os.path.join(out, "sample.oci.tar"),
               archive_tar(dir_members(os.path.join(out, "oci"))))
    write_file(os.path.join(out, "sample.docker.tar"), docker_archive(config, raw, diff_ids))

    flat = [state[p] for p in sorted(state, key=pkey)]
    write_file(os.path.join(out, "rootfs.tar"),
               write_entries(flat, tarfile.PAX_FORMAT, True))

    print(f"image id (config digest): sha256:{sha256(config)}")
    print(f"manifest digests: gzip sha256:{m_gz[7:]}  uncompressed sha256:{m_raw[7:]}"
          f"  zstd sha256:{m_zs[7:]}")
    for n, d in enumerate(diff_ids, 1):
        print(f"layer {n}: diff_id sha256:{d}  ({len(raw[n - 1])} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
