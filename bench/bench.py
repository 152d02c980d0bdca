#!/usr/bin/env python3
"""Runs the benchmark scenario (S1..S6) on cairn and its peers, verifies every restore
against a manifest of the expected tree, and writes the report. Started by bench/run, which
installs the peers and builds the root filesystems; stdlib only."""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import stat
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers.sh")

TOOLS = ["cairn", "restic", "borg", "casync", "ostree", "tar", "cp"]
LABELS = {"cp": "cp -a"}
STEPS = [
    ("S1", "first checkpoint"),
    ("S2", "checkpoint after installing the package set"),
    ("S3", "checkpoint after editing 10 files"),
    ("S4", "restore in place to S3 after rm -rf usr/lib usr/share"),
    ("S5", "restore in place to S1"),
    ("S6", "fork S2 into a new directory"),
]
# What a peer does not keep, found by the manifest comparison: reported, not a failure.
# "FIELD" covers every path, "FIELD:." only the machine directory itself.
KNOWN_LOSSES = {
    "restic": {"mode:.": "the restored directory's own mode is not restored (a snapshot of `.`)",
               "mtime:.": "the restored directory's own mtime is not restored (a snapshot of `.`)"},
    "borg": {"mode:.": "the extracted directory's own mode is not restored (an archive of `.`)",
             "mtime:.": "the extracted directory's own mtime is not restored (an archive of `.`)"},
    "casync": {"link": "no hardlinks: each path of a hardlinked file is extracted as its own copy",
               "nlink": "no hardlinks: each path of a hardlinked file is extracted as its own copy"},
    "ostree": {"mtime": "ostree stores no timestamps: files check out with mtime 0, directories with the checkout time",
               "link": "a copying checkout (--force-copy) makes each path of a hardlinked file its own copy",
               "nlink": "a copying checkout (--force-copy) makes each path of a hardlinked file its own copy"},
}
FIELDS = ["type", "mode", "uid", "gid", "size", "mtime", "nlink", "link", "data", "xattrs"]


def label(tool):
    return LABELS.get(tool, tool)


def say(msg):
    print(f"\033[1m== {msg}\033[0m", file=sys.stderr, flush=True)


def loud(msg):
    print(f"\033[1;31m!! {msg}\033[0m", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- manifests

def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)


def xattrs_of(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, hashlib.sha256(os.getxattr(path, n, follow_symlinks=False)).hexdigest()[:16])
                        for n in names))


def walk(top):
    """Yields (relative path, lstat) for top itself and everything below, in sorted order."""
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(top, rel) if rel else top
        st = os.lstat(full)
        yield rel or ".", st
        if stat.S_ISDIR(st.st_mode):
            names = sorted(os.listdir(full), reverse=True)
            stack.extend(os.path.join(rel, n) if rel else n for n in names)


def entry(top, rel, st, first_path, digest):
    mode = st.st_mode
    kind = stat.S_IFMT(mode)
    e = {"type": kind, "mode": stat.S_IMODE(mode), "uid": st.st_uid, "gid": st.st_gid,
         "size": 0, "mtime": st.st_mtime_ns, "nlink": 1, "link": "", "data": "", "xattrs": ()}
    full = os.path.join(top, rel)
    if stat.S_ISREG(mode):
        e["size"] = st.st_size
        e["nlink"] = st.st_nlink
        e["link"] = first_path if st.st_nlink > 1 else ""
        e["data"] = digest
    elif stat.S_ISLNK(mode):
        e["data"] = os.readlink(full)
        e["size"] = st.st_size
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        e["data"] = str(st.st_rdev)
    e["xattrs"] = xattrs_of(full)
    return e


def manifest(top):
    """path -> type, mode, uid, gid, size, mtime (ns), hardlink group, content hash, xattrs."""
    items = list(walk(top))
    first = {}
    for rel, st in items:
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            first.setdefault(st.st_ino, rel)
    regular = [rel for rel, st in items if stat.S_ISREG(st.st_mode)]
    with ThreadPoolExecutor(4) as pool:
        digests = dict(zip(regular, pool.map(lambda r: file_digest(os.path.join(top, r)), regular)))
    return {rel: entry(top, rel, st, first.get(st.st_ino, ""), digests.get(rel, ""))
            for rel, st in items}


def compare(expected, actual):
    """field -> list of paths that differ in it ("missing"/"extra" for absent paths)."""
    diffs = {}
    for path in expected.keys() | actual.keys():
        e, a = expected.get(path), actual.get(path)
        if a is None:
            diffs.setdefault("missing", []).append(path)
        elif e is None:
            diffs.setdefault("extra", []).append(path)
        else:
            for f in FIELDS:
                if e[f] != a[f]:
                    diffs.setdefault(f, []).append(path)
    return diffs


def verdict(tool, step, expected, actual):
    """"ok", "ok*" (only known losses) or "MISMATCH"; prints mismatches loudly."""
    diffs = compare(expected, actual)
    known = KNOWN_LOSSES.get(tool, {})
    bad, noted = {}, {}
    for f, paths in diffs.items():
        if f in known:
            noted[f] = paths
        elif f + ":." in known and paths == ["."]:
            noted[f + ":."] = paths
        else:
            bad[f] = paths
    for f, paths in sorted(bad.items()):
        first = sorted(paths)[0]
        got = (expected.get(first, {}).get(f, "absent"), actual.get(first, {}).get(f, "absent"))
        loud(f"MISMATCH {label(tool)} {step}: {len(paths)} paths differ in {f}, e.g. "
             f"{sorted(paths)[:3]}; {first}: expected {got[0]!r}, got {got[1]!r}")
    for f, paths in sorted(noted.items()):
        say(f"  noted: {label(tool)} {step}: {len(paths)} paths differ in {f} ({known[f]})")
    if bad:
        return "MISMATCH"
    return "ok*" if noted else "ok"


# ---------------------------------------------------------------------------- scenario

def tree_size(top):
    seen, total = set(), 0
    for dirpath, dirs, files in os.walk(top):
        for n in files:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def fix_dir_times(top, man):
    """rsync leaves the mtime of some unchanged directories alone; set them as in the tree."""
    for rel, st in walk(top):
        e = man.get(rel)
        if e and stat.S_ISDIR(st.st_mode) and e["mtime"] != st.st_mtime_ns:
            os.utime(os.path.join(top, rel), ns=(e["mtime"], e["mtime"]), follow_symlinks=False)


def pick_edits(man, n=10):
    """n regular files spread evenly over the sorted tree; the same ones for every tool."""
    files = sorted(p for p, e in man.items() if e["type"] == stat.S_IFREG and e["nlink"] == 1
                   and e["size"] > 0 and e["mode"] & 0o200)
    return [files[i * len(files) // n] for i in range(n)]


class Runner:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.logdir = os.path.join(work, "logs")

    def env(self, tool):
        w = self.work
        return dict(os.environ, W=f"{w}/{tool}/W", R=f"{w}/{tool}/R", F=f"{w}/{tool}/F",
                    C=f"{w}/{tool}/C", SRC=self.src)

    def call(self, tool, fn, arg="", timed=True):
        """Runs one peers.sh function; returns (wall s, peak RSS KiB, CPU s: user + system)."""
        env = self.env(tool)
        if timed:
            subprocess.run(["sync"], check=True)
            if self.args.drop_caches:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
        rss = os.path.join(self.work, "rss")
        os.makedirs(self.logdir, exist_ok=True)
        with open(os.path.join(self.logdir, f"{tool}.log"), "a") as log:
            log.write(f"--- {fn} {arg}\n")
            log.flush()
            start = time.monotonic()
            rc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss, "bash", "-c",
                                 f'source "{PEERS}"; {tool}_{fn} {arg}'],
                                env=env, stdout=log, stderr=log).returncode
            wall = time.monotonic() - start
        if rc != 0:
            loud(f"{label(tool)} {fn} {arg} failed (exit {rc}); see {self.logdir}/{tool}.log")
            raise RuntimeError(f"{tool} {fn} failed")
        with open(rss) as f:
            kib, user, system = f.read().split()[-3:]
        return wall, int(kib), float(user) + float(system)

    def stored(self, tool):
        return tree_size(self.env(tool)["R"])

    def scenario(self, tool, fs):
        """One repetition of S1..S6 from scratch; step -> {time, rss, stored, verify}."""
        env = self.env(tool)
        W, F = env["W"], env["F"]
        shutil.rmtree(os.path.join(self.work, tool), ignore_errors=True)
        os.makedirs(os.path.join(self.work, tool))
        out = {}

        def record(step, t_rss, verify=None):
            out[step] = {"time": t_rss[0], "rss": t_rss[1], "cpu": t_rss[2],
                         "stored": self.stored(tool), "verify": verify}
            note = f" verify={verify}" if verify else ""
            say(f"  {label(tool):7s} {step} {t_rss[0]:8.2f} s  {t_rss[1] / 1024:7.0f} MiB RSS {t_rss[2]:7.2f} s CPU{note}")

        if tool == "cp":
            record("S6", self.call(tool, "fork"), verdict(tool, "S6", fs["s2"], manifest(F)))
            return out
        subprocess.run(["cp", "-a", fs["base"], W], check=True)
        self.call(tool, "init", timed=False)
        record("S1", self.call(tool, "save", "s1"))
        subprocess.run(["rsync", "-aHAX", "--delete", fs["after"] + "/", W + "/"], check=True)
        fix_dir_times(W, fs["s2"])
        if not fs.get("prep_checked"):
            fs["prep_checked"] = True
            if verdict("prep", "S2 state", fs["s2"], manifest(W)) != "ok":
                loud("the S2 state prepared with rsync differs from the package-set tree")
        record("S2", self.call(tool, "save", "s2"))
        s3 = dict(fs["s2"])
        for rel in fs["edits"]:
            with open(os.path.join(W, rel), "ab") as f:
                f.write(b"\n# edited by the cairn benchmark\n")
            st = os.lstat(os.path.join(W, rel))
            s3[rel] = entry(W, rel, st, "", file_digest(os.path.join(W, rel)))
        record("S3", self.call(tool, "save", "s3"))
        shutil.rmtree(os.path.join(W, "usr/lib"))
        shutil.rmtree(os.path.join(W, "usr/share"))
        r = self.call(tool, "restore", "s3")
        record("S4", r, verdict(tool, "S4", s3, manifest(W)))
        r = self.call(tool, "restore", "s1")
        record("S5", r, verdict(tool, "S5", fs["s1"], manifest(W)))
        r = self.call(tool, "fork", "s2")
        record("S6", r, verdict(tool, "S6", fs["s2"], manifest(F)))
        return out


def machine_info(work):
    def first(path, key):
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "?"
    mem_kib = int(first("/proc/meminfo", "MemTotal").split()[0])
    df = subprocess.run(["df", "--output=fstype", work], capture_output=True, text=True)
    fstype = df.stdout.split()[-1] if df.returncode == 0 else "?"
    return {"cpu": first("/proc/cpuinfo", "model name"), "cores": os.cpu_count(),
            "memory": f"{mem_kib / 1048576:.0f} GiB", "kernel": platform.release(),
            "filesystem": fstype}


def versions():
    cmds = {"cairn": ["cairn", "--version"], "restic": ["restic", "version"],
            "borg": ["borg", "--version"], "casync": ["casync", "--version"],
            "ostree": ["ostree", "--version"], "tar": ["tar", "--version"], "cp": ["cp", "--version"]}
    out = {}
    for tool, cmd in cmds.items():
        try:
            text = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            text = "?"
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        if tool == "ostree":
            lines = [f"ostree {l.split(':', 1)[1].strip(chr(39) + ' ')}" for l in lines if l.startswith("Version")]
        out[tool] = lines[0] if lines else "?"
    return out


def write_report(args, results, started, final):
    """Writes results.json and the report; called after each root filesystem, so a run cut
    short still leaves what it measured (labelled as partial)."""
    results["elapsed"] = time.monotonic() - started
    results["partial"] = not final
    with open(os.path.join(args.cache, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    import report
    text = report.render(results, open(PEERS).read())
    with open(args.out, "w") as f:
        f.write(text)
    return text


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--large-reps", type=int)
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--out", required=True)
    p.add_argument("--pkgset", default="")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--drop-caches", action="store_true")
    p.add_argument("sets", nargs="+")
    args = p.parse_args()
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    work = os.path.join(args.cache, "work")
    sys.path.insert(0, HERE)
    started = time.monotonic()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine_info(args.cache), "versions": versions(),
               "quick": args.quick, "drop_caches": args.drop_caches, "pkgset": args.pkgset,
               "sets": {}}
    for name in args.sets:
        reps = args.large_reps if name == "large" and args.large_reps else args.reps
        base, after = os.path.join(args.cache, name, "base"), os.path.join(args.cache, name, "after")
        say(f"{name}: manifests of the S1 and S2 states")
        fs = {"base": base, "after": after, "s1": manifest(base), "s2": manifest(after)}
        fs["edits"] = pick_edits(fs["s2"])
        runner = Runner(args, work)
        runner.src = after
        shutil.rmtree(work, ignore_errors=True)
        runs = {t: [] for t in tools}
        for rep in range(reps):
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]  # rotate: no tool always first
            for tool in order:
                say(f"{name} rep {rep + 1}/{reps}: {label(tool)}")
                try:
                    runs[tool].append(runner.scenario(tool, fs))
                except RuntimeError:
                    runs[tool].append({})
                shutil.rmtree(os.path.join(work, tool), ignore_errors=True)
        results["sets"][name] = {
            "bytes": tree_size(base), "entries": len(fs["s1"]),
            "after_bytes": tree_size(after), "after_entries": len(fs["s2"]),
            "reps": reps, "edits": fs["edits"], "runs": runs}
        write_report(args, results, started, final=name == args.sets[-1])
    print(write_report(args, results, started, final=True))
    say(f"wrote {args.out} ({results['elapsed'] / 60:.1f} min); raw results in {args.cache}/results.json")


if __name__ == "__main__":
    main()
