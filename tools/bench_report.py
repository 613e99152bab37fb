#!/usr/bin/env python3
"""Turn tools/bench's raw samples into the result table and JSON (stdlib only).

usage: bench_report.py RUNDIR OUT.json

RUNDIR/samples.tsv  measurement<TAB>fs<TAB>round<TAB>value   (value: seconds, KiB for rss_* and
                    disk_*, "fail", or "exdev" for a rename that got EXDEV)
RUNDIR/meta.tsv     fs<TAB>NAME<TAB>available(0/1)<TAB>version<TAB>note
                    info<TAB>KEY<TAB>VALUE
                    sanity<TAB>FS<TAB>IMAGE<TAB>ENTRIES<TAB>ok|mismatch|fail
                    error<TAB>FS<TAB>STEP<TAB>ROUND<TAB>MESSAGE   (a failed write-path step)
"""

import json
import statistics
import sys

FS = [("kernel", "kernel"), ("fo110", "fo-1.10"), ("fo2", "fo-2.0"), ("strata", "strata"),
      ("strata-no", "strata-no"), ("strata-dev", "strata-dev"), ("strata-pt", "strata-pt")]
# strata-no (--io no-open): read-only; strata-dev (--io-uring off) and strata-pt (--rw --io
# passthrough): writable
WRITE_FS = {"kernel", "fo110", "fo2", "strata", "strata-dev", "strata-pt"}
READ_FS = {"kernel", "fo110", "fo2", "strata", "strata-no"}

# key, label, kind: time (seconds, ratio to kernel) | rss (KiB -> MiB, no ratio) |
# size (KiB -> MiB, no ratio) | derived | section (a heading line)
ROWS = [
    ("read", "read-only mounts", "section"),
    ("seq_read_cold", "seq read {big}, cold", "time"),
    ("seq_read_warm", "seq read {big}, warm", "time"),
    ("stat_walk_cold", "stat-walk bench ({entries_bench} entries), cold", "time"),
    ("stat_walk_warm", "stat-walk bench ({entries_bench} entries), warm", "time"),
    ("small_read_warm", "read {small} small files, warm", "time"),
    ("walk1_warm", "stat-walk rootfs, 1 layer, warm", "time"),
    ("walk50_warm", "stat-walk rootfs, 50 layers, warm", "time"),
    ("walk50_over_1", "  50-layer / 1-layer walk", "derived"),
    ("rss_bench", "daemon peak RSS, bench (MiB)", "rss"),
    ("rss_bench50", "daemon peak RSS, bench50 (MiB)", "rss"),
    ("write", "writable mount of bench, a fresh one per round", "section"),
    ("rw_seq_read_warm", "seq read {big}, warm", "time"),
    ("rw_stat_walk_warm", "stat-walk of the whole mount, warm", "time"),
    ("rw_small_read_warm", "read {small} small files, warm", "time"),
    ("write_untar", "untar {untar_files} files + sync", "time"),
    ("rss_untar_rw", "daemon peak RSS after the untar (MiB)", "rss"),
    ("disk_untar_rw", "upper / layer dir disk use after the untar (MiB)", "size"),
    ("write_create", "create {write_n} empty files", "time"),
    ("write_unlink", "unlink {write_n} files", "time"),
    ("write_mkdir", "mkdir {write_n} dirs", "time"),
    ("write_rmdir", "find -delete {write_n} dirs", "time"),
    ("write_1byte", "1-byte write into {big} lower file", "time"),
    ("write_rename_dir", "rename lower dir smallfiles/ ({small} files)", "time"),
    ("write_seq", "seq write {big} + fsync", "time"),
    ("disk_apparent_rw", "upper / layer dir, apparent size (MiB)", "size"),
    ("disk_alloc_rw", "upper / layer dir, disk use (MiB)", "size"),
    ("rss_rw", "daemon peak RSS, writable (MiB)", "rss"),
]


def load(rundir):
    samples = {}
    with open(f"{rundir}/samples.tsv") as f:
        for line in f:
            m, fs, rnd, val = line.rstrip("\n").split("\t")
            v = None if val == "fail" else val if val == "exdev" else float(val)
            samples.setdefault(m, {}).setdefault(fs, []).append(v)
    fsinfo, info, sanity, errors = {}, {}, [], []
    with open(f"{rundir}/meta.tsv") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "fs":
                fsinfo[parts[1]] = {"available": parts[2] == "1", "version": parts[3], "note": parts[4]}
            elif parts[0] == "info":
                info[parts[1]] = parts[2]
            elif parts[0] == "sanity":
                sanity.append({"fs": parts[1], "image": parts[2], "entries": int(parts[3]) if parts[3].isdigit() else None,
                               "result": parts[4]})
            elif parts[0] == "error":
                errors.append({"fs": parts[1], "step": parts[2], "round": parts[3], "message": parts[4]})
    return samples, fsinfo, info, sanity, errors


def summarize(vals):
    if not vals:
        return None
    failed = sum(v is None for v in vals)
    exdev = sum(v == "exdev" for v in vals)
    if failed or exdev:
        return {"median": None, "failed": failed, "exdev": exdev, "samples": vals}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "samples": vals}


def part_of(key):
    return "write" if key.startswith(("write", "disk_", "rss_rw", "rss_untar", "rw_")) else "read"


def fmt_time(v):
    if v >= 0.1:
        return f"{v:.3f}s"
    if v >= 0.001:
        return f"{v * 1e3:.2f}ms"
    return f"{v * 1e6:.0f}us"


def fmt_ratio(x):
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.3f}x" if x >= 0.001 else f"{x:.1e}x"


def main():
    rundir, out = sys.argv[1], sys.argv[2]
    samples, fsinfo, info, sanity, errors = load(rundir)
    results = {}
    for key, _, kind in ROWS:
        if kind == "section":
            continue
        row = {}
        for fs, _ in FS:
            if kind == "derived":
                a = results.get("walk50_warm", {}).get(fs)
                b = results.get("walk1_warm", {}).get(fs)
                if a and b and a["median"] and b["median"]:
                    row[fs] = {"value": a["median"] / b["median"]}
                continue
            s = summarize(samples.get(key, {}).get(fs, []))
            if s is None:
                continue
            if kind in ("rss", "size") and s["median"] is not None:
                s = {"kib": s["median"], "mib": s["median"] / 1024, "samples": s["samples"]}
            row[fs] = s
        if kind == "time":
            k = row.get("kernel", {}).get("median")
            for fs, v in row.items():
                if k and v.get("median") is not None:
                    v["ratio_to_kernel"] = v["median"] / k
        results[key] = row

    # ---- table ----
    fmt = {"big": info.get("big_file", "big file"), "small": info.get("small_files", "small"),
           "entries_bench": info.get("entries_bench", "?"), "write_n": info.get("write_n", "N"),
           "untar_files": info.get("untar_files", "N")}
    parts = info.get("parts", "read,write").split(",")
    rows = [r for r in ROWS if part_of(r[0]) in parts]
    labels = [label.format(**fmt) for _, label, _ in rows]
    w0 = max(len(x) for x in labels) + 2
    wc = 17
    lines = []
    lines.append("".ljust(w0) + "".join(name.rjust(wc) for _, name in FS))
    lines.append("-" * (w0 + wc * len(FS)))
    for (key, _, kind), label in zip(rows, labels):
        if kind == "section":
            if len(lines) > 2:
                lines.append("")
            lines.append(f"[{label}]")
            continue
        is_write = part_of(key) == "write"
        cells = []
        for fs, _ in FS:
            v = results[key].get(fs)
            if ((kind == "rss" and fs == "kernel") or (is_write and fs not in WRITE_FS)
                    or (not is_write and fs not in READ_FS)):
                cells.append("-")
            elif v is None:
                cells.append("n/a")
            elif kind == "derived":
                cells.append(f"{v['value']:.2f}x")
            elif kind in ("rss", "size"):
                n = len(v.get("samples", []))
                cells.append(f"{v['mib']:.1f}" if "mib" in v else "fail" if v["failed"] == n else f"fail {v['failed']}/{n}")
            elif v.get("median") is None:
                n = len(v["samples"])
                if v["exdev"]:
                    cells.append("EXDEV" if v["exdev"] == n else f"EXDEV {v['exdev']}/{n}")
                else:
                    cells.append("fail" if v["failed"] == n else f"fail {v['failed']}/{n}")
            elif fs == "kernel" or "ratio_to_kernel" not in v:
                cells.append(fmt_time(v["median"]))
            else:
                cells.append(f"{fmt_time(v['median'])} {fmt_ratio(v['ratio_to_kernel']):>6}")
        lines.append(label.ljust(w0) + "".join(c.rjust(wc) for c in cells))
    lines.append("")
    rounds = f"median of {info.get('rounds', '?')} interleaved rounds"
    if "write_rounds" in info:
        rounds += f" ({info['write_rounds']} for the writable mounts)"
    lines.append(f"{rounds}; 'N.NNx' = time / kernel overlayfs time (> 1 is slower); "
                 "RSS = VmHWM of the FUSE daemon; 'fail k/n' = k of n rounds failed")
    if "load_start" in info:
        lines.append(f"machine: {info.get('cpus', '?')} CPUs, load average (1/5/15 min) {info['load_start']} at the start, "
                     f"{info.get('load_end', '?')} at the end (other work on the machine makes every number noisier); "
                     f"open files limit {info.get('nofile', '?')} (soft/hard)")
    if "cpuidle" in info:
        why = ""
        if "guest_halt_poll_ns" in info["cpuidle"]:
            why = (" (0 = no halt polling: each FUSE round trip that wakes an idle vCPU costs "
                   "more; see tools/README)")
        lines.append(f"cpu idle driver: {info['cpuidle']}{why}")
    if "fuse_uring" in info:
        lines.append(f"FUSE over io_uring: {info['fuse_uring']} (strata's mounts use it; "
                     "strata-dev: the writable mount through /dev/fuse; strata-pt: the writable mount with "
                     "--io passthrough)")
    if "scratch_fs" in info:
        lines.append(f"writable mounts' upper / layer dirs on {info['scratch_fs']}")
    for fs, name in FS:
        fi = fsinfo.get(fs)
        if fi:
            state = fi["version"] if fi["available"] else "n/a"
            note = f" ({fi['note']})" if fi["note"] else ""
            lines.append(f"  {name:9} {state}{note}")
    bad = [s for s in sanity if s["result"] != "ok"]
    if bad:
        lines.append("SANITY: merged views differing from kernel overlayfs: " +
                     ", ".join(f"{s['fs']}/{s['image']} ({s['result']})" for s in bad) +
                     f"  (listings in {rundir}/listing-*.txt)")
    if errors:
        lines.append("FAILED STEPS (the first error of each; all of them in the JSON):")
        seen = {}
        for e in errors:
            seen.setdefault((e["fs"], e["step"]), []).append(e)
        for (fs, step), es in seen.items():
            rounds_ = ",".join(e["round"] for e in es)
            lines.append(f"  {fs} {step} (round {rounds_}): {es[0]['message']}")
    table = "\n".join(lines)
    print(table)

    doc = {"info": info, "filesystems": fsinfo, "sanity": sanity, "errors": errors, "results": results,
           "labels": {k: label.format(**fmt) for k, label, kind in ROWS if kind != "section"}, "table": table}
    with open(out, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
