#!/usr/bin/env python3
"""Image builders for tools/bench (stdlib only, deterministic output).

Subcommands:
  smallfiles OUT.tar --dirs D --subdirs S --files F
      D*S*F small files (100 B .. 4 KiB, content derived from the path) under
      smallfiles/dNN/sNN/fNNNN, plus their directories.
  bigfile OUT.tar --mib N
      one file bigfile/data.bin of N MiB: a pseudo-random 1 MiB block repeated
      (non-zero, incompressible within a block, no holes).
  split IN.tar OUTDIR --layers N
      spread the entries of IN.tar over N layer tars OUTDIR/00.tar .. by a hash
      of the path (hard links follow their target); every layer also carries the
      directories its entries need, so a directory like usr/bin exists in
      (almost) every layer, which is what makes lookups layer-heavy.
  oci OUTDIR --name NAME:TAG LAYER.tar [LAYER.tar ...]   (bottom layer first)
      write an OCI image layout with uncompressed layer blobs (hard-linked to
      the input tars when possible), a config with rootfs.diff_ids and an
      index.json annotated with org.opencontainers.image.ref.name and
      io.containerd.image.name.

All output files are written to a temporary name and renamed, so an
interrupted build never leaves a complete-looking file behind.
"""

import argparse
import hashlib
import io
import json
import os
import posixpath
import shutil
import sys
import tarfile

MTIME = 1767225600  # 2026-01-01T00:00:00Z
CREATED = "2026-01-01T00:00:00Z"


def _dir_info(name, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _file_info(name, size, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.REGTYPE
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def small_content(path):
    h = hashlib.sha256(path.encode()).digest()
    size = 100 + int.from_bytes(h[:4], "little") % (4096 - 100 + 1)
    return hashlib.shake_256(b"strata-bench:" + path.encode()).digest(size)


def cmd_smallfiles(a):
    tmp = a.out + ".part"
    n = total = 0
    with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(_dir_info("./"))  # the root, so the merged root's attributes are defined
        t.addfile(_dir_info("smallfiles"))
        for d in range(a.dirs):
            dn = f"smallfiles/d{d:02d}"
            t.addfile(_dir_info(dn))
            for s in range(a.subdirs):
                sn = f"{dn}/s{s:02d}"
                t.addfile(_dir_info(sn))
                for i in range(a.files):
                    fn = f"{sn}/f{i:04d}"
                    data = small_content(fn)
                    t.addfile(_file_info(fn, len(data)), io.BytesIO(data))
                    n += 1
                    total += len(data)
    os.replace(tmp, a.out)
    print(f"smallfiles: {n} files, {total} bytes -> {a.out}")


def cmd_bigfile(a):
    block = hashlib.shake_256(b"strata-bench-bigfile").digest(1 << 20)
    tmp = a.out + ".part"
    with open(tmp, "wb") as f:
        for ti in (_dir_info("./"), _dir_info("bigfile"), _file_info("bigfile/data.bin", a.mib << 20)):
            f.write(ti.tobuf(tarfile.GNU_FORMAT))
        for _ in range(a.mib):
            f.write(block)
        # data is a multiple of 512 bytes: no padding; then two zero blocks,
        # rounded up to tarfile's default record size like GNU tar does.
        f.write(b"\0" * 1024)
        pos = f.tell()
        rec = tarfile.RECORDSIZE
        if pos % rec:
            f.write(b"\0" * (rec - pos % rec))
    os.replace(tmp, a.out)
    print(f"bigfile: {a.mib} MiB -> {a.out}")


def _norm(name):
    # tarfile reports "./" as "."; the root is ""
    n = posixpath.normpath("/" + name).strip("/")
    return n


def _layer_of(key, n):
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def cmd_split(a):
    n = a.layers
    os.makedirs(a.outdir, exist_ok=True)
    # pass 1: decide the layer of every entry, and which dirs each layer needs
    with tarfile.open(a.input) as t:
        members = t.getmembers()
    dirs = {}  # normalised path -> member name (as in the tar)
    for m in members:
        if m.isdir():
            dirs[_norm(m.name)] = m.name
    where = {}  # member index -> layer
    need = [set() for _ in range(n)]  # normalised dir paths per layer
    for i, m in enumerate(members):
        key = _norm(m.linkname) if m.islnk() else _norm(m.name)
        layer = _layer_of(key, n)
        where[i] = layer
        p = _norm(m.name)
        if m.isdir():
            need[layer].add(p)
        while p:
            p = p.rpartition("/")[0]
            if p in dirs:
                need[layer].add(p)
            if not p:
                break
    # pass 2: stream the tar, writing each entry to its layer(s)
    outs = []
    for k in range(n):
        f = open(os.path.join(a.outdir, f"{k:02d}.tar.part"), "wb")
        outs.append((f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)))
    counts = [0] * n
    with tarfile.open(a.input) as t:
        for i, m in enumerate(t):
            if m.isdir():
                p = _norm(m.name)
                for k in range(n):
                    if p in need[k]:
                        outs[k][1].addfile(m)
                        counts[k] += 1
            else:
                k = where[i]
                outs[k][1].addfile(m, t.extractfile(m) if m.isreg() else None)
                counts[k] += 1
    for k, (f, t) in enumerate(outs):
        t.close()
        f.close()
        os.replace(os.path.join(a.outdir, f"{k:02d}.tar.part"), os.path.join(a.outdir, f"{k:02d}.tar"))
    print(f"split: {len(members)} entries over {n} layers, {min(counts)}..{max(counts)} entries per layer")


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _put_blob(blobs, data=None, src=None):
    if src is not None:
        hexd = _sha256_file(src)
        size = os.path.getsize(src)
        dst = os.path.join(blobs, hexd)
        if not os.path.exists(dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst + ".part")
                os.replace(dst + ".part", dst)
    else:
        hexd = hashlib.sha256(data).hexdigest()
        size = len(data)
        dst = os.path.join(blobs, hexd)
        with open(dst + ".part", "wb") as f:
            f.write(data)
        os.replace(dst + ".part", dst)
    return "sha256:" + hexd, size


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def cmd_oci(a):
    out = a.outdir
    tmp = out + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = os.path.join(tmp, "blobs", "sha256")
    os.makedirs(blobs)
    layers = []
    for path in a.layers:
        d, size = _put_blob(blobs, src=path)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        "history": [{"created": CREATED, "created_by": f"tools/bench layer {i + 1}"} for i in range(len(layers))],
    }
    cd, csize = _put_blob(blobs, data=_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": layers,
    }
    md, msize = _put_blob(blobs, data=_json(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": msize,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": a.name,
                            "io.containerd.image.name": a.name},
        }],
    }
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(_json(index))
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(_json({"imageLayoutVersion": "1.0.0"}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"oci: {a.name} ({len(layers)} layers, manifest {md}) -> {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smallfiles")
    s.add_argument("out")
    s.add_argument("--dirs", type=int, default=20)
    s.add_argument("--subdirs", type=int, default=10)
    s.add_argument("--files", type=int, default=100)
    s = sub.add_parser("bigfile")
    s.add_argument("out")
    s.add_argument("--mib", type=int, default=1024)
    s = sub.add_parser("split")
    s.add_argument("input")
    s.add_argument("outdir")
    s.add_argument("--layers", type=int, default=50)
    s = sub.add_parser("oci")
    s.add_argument("outdir")
    s.add_argument("--name", required=True)
    s.add_argument("layers", nargs="+")
    a = p.parse_args()
    {"smallfiles": cmd_smallfiles, "bigfile": cmd_bigfile, "split": cmd_split, "oci": cmd_oci}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
