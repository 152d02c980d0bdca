"""The mounted-machine benchmark (driven by bench/mounted): a mounted cairn machine against a
btrfs subvolume on a loop-mounted image and against plain ext4, on the same root filesystems,
in one run. Verifies every restore against a manifest of the target tree. Python 3 stdlib only.
"""
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

# step key, label, target ratio, direction ("le": cairn/reference <= target; "ge": >=)
STEPS = [
    ("checkpoint", "checkpoint after editing 10 files", "btrfs subvolume snapshot -r", 2.0, "le"),
    ("restore", "restore, excluding process restart", "btrfs subvolume swap", 2.0, "le"),
    ("fork", "fork (one new machine)", "btrfs subvolume snapshot", 2.0, "le"),
    ("read_tree", "warm read, whole tree", "ext4 directory", 0.8, "ge"),
    ("read_large", "warm read, 20 largest files", "ext4 directory", 0.8, "ge"),
    ("dpkg", "dpkg -i of the package set", "ext4 chroot", 1.2, "le"),
]


def say(msg):
    print(f"\033[1m== {msg}\033[0m", file=sys.stderr, flush=True)


def loud(msg):
    print(f"\033[1;31m!! {msg}\033[0m", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def timed(cmd, **kw):
    """Runs cmd, returns (seconds, CompletedProcess)."""
    kw.setdefault("stdout", subprocess.PIPE)
    t = time.perf_counter()
    p = subprocess.run(cmd, **kw)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else ""
        out = p.stdout.decode(errors="replace") if isinstance(p.stdout, bytes) else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {out[-2000:]} {err[-2000:]}")
    return dt, p


# ---------------------------------------------------------------------------- manifests

def walk(top):
    """(relative path, lstat) for everything under top, top itself as '.'."""
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(top, rel) if rel else top
        st = os.lstat(full)
        yield rel or ".", st
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(rel, n) if rel else n for n in sorted(os.listdir(full), reverse=True))


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def manifest(top, sample=None):
    """path -> (type, mode, uid, gid, size, mtime of non-directories, hash or link target).
    With sample (a set of paths), only those paths' contents are hashed; all are stat'ed."""
    out = {}
    for rel, st in walk(top):
        m = st.st_mode
        full = os.path.join(top, rel)
        data = ""
        if stat.S_ISREG(m) and (sample is None or rel in sample):
            data = digest(full)
        elif stat.S_ISLNK(m):
            data = os.readlink(full)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            data = str(st.st_rdev)
        mtime = 0 if stat.S_ISDIR(m) else st.st_mtime_ns
        size = 0 if stat.S_ISDIR(m) else st.st_size
        out[rel] = (stat.S_IFMT(m), stat.S_IMODE(m), st.st_uid, st.st_gid, size, mtime, data)
    return out


FIELDS = ["type", "mode", "uid", "gid", "size", "mtime", "data"]


def compare(expected, actual, sample=None):
    """List of human-readable mismatches (empty when equal)."""
    bad = []
    for p in sorted(expected.keys() - actual.keys()):
        bad.append(f"missing {p}")
    for p in sorted(actual.keys() - expected.keys()):
        bad.append(f"extra   {p}")
    for p in sorted(expected.keys() & actual.keys()):
        e, a = expected[p], actual[p]
        for i, f in enumerate(FIELDS):
            if f == "data" and sample is not None and e[0] == stat.S_IFREG and p not in sample:
                continue
            if e[i] != a[i]:
                bad.append(f"{f:7} {p}: expected {e[i]!r}, got {a[i]!r}")
    return bad


# ---------------------------------------------------------------------------- reads

def read_files(top, rels):
    n = 0
    for rel in rels:
        with open(os.path.join(top, rel), "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                n += len(b)
    return n


WARM_PASSES = 5
# Checkpoint-and-fork rounds per repetition (each side; all count towards the median).
CHECKPOINT_ROUNDS = 3


def timed_reads(tops, rels):
    """Reads the files under each of `tops` once to warm the cache, then WARM_PASSES rounds in
    which every top is read once, in an order that rotates from round to round, so that load
    drifting on a shared machine falls on every side alike. Returns the median seconds of each
    top's warm passes (one pass of the largest files is only tens of ms, too short to trust
    alone) and the bytes each top read in one pass."""
    for top in tops:
        read_files(top, rels)
    times = {top: [] for top in tops}
    sizes = {}
    for k in range(WARM_PASSES):
        for top in tops[k % len(tops):] + tops[:k % len(tops)]:
            t = time.perf_counter()
            sizes[top] = read_files(top, rels)
            times[top].append(time.perf_counter() - t)
    return {top: statistics.median(v) for top, v in times.items()}, sizes


class Bench:
    def __init__(self, args, fs):
        self.args = args
        self.fs = fs
        self.base = os.path.join(args.rootfs_cache, fs, "base")
        self.dir = os.path.join(args.work, f"run-{fs}")
        self.home = os.path.join(self.dir, "home")
        self.debs = os.path.join(args.work, f"debs-{fs}")
        self.results = {k: {"cairn": [], "ref": []} for k, *_ in STEPS}
        self.phases = {}  # step -> phase name -> [ms]
        self.controls = {}  # read step -> [s] through an overlay over the ext4 copy
        self.mismatches = []
        self.data_layer = None  # (copies, bytes) in cairn's data layer at the end
        self.lowers = []  # per repetition: what the machine's overlay stood on during the reads
        self.notes = []

    def cairn(self, *a, timed_call=False, **kw):
        cmd = [self.args.cairn, "--home", self.home, "--json", *a]
        if timed_call:
            dt, p = timed(cmd, stderr=subprocess.PIPE, **kw)
            return dt, json.loads(p.stdout or b"null")
        p = run(cmd, stdout=subprocess.PIPE, **kw)
        return json.loads(p.stdout or b"null")

    def phase(self, step, report):
        for ph in (report or {}).get("phases", []) if isinstance(report, dict) else []:
            self.phases.setdefault(step, {}).setdefault(ph["name"], []).append(ph["ms"])

    # -------------------------------------------------------------- setup

    def setup(self):
        fs, d = self.fs, self.dir
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        say(f"[{fs}] copying {self.base} to ext4 ({d}/ext4)")
        self.ext4 = os.path.join(d, "ext4")
        run(["cp", "-a", self.base, self.ext4])
        # Device nodes are not part of the trees (bench/run removes them); keep /dev empty.
        self.expected = manifest(self.ext4)
        self.regular = [p for p, e in self.expected.items() if e[0] == stat.S_IFREG]
        self.largest = sorted(self.regular, key=lambda p: -self.expected[p][4])[:20]
        self.tree_bytes = sum(self.expected[p][4] for p in self.regular)
        # Ten files to edit: regular, writable by owner, spread over the tree.
        cands = sorted(p for p in self.regular if self.expected[p][4] > 0 and p.startswith(("etc/", "usr/share/doc/")))
        step = max(1, len(cands) // 10)
        self.edits = cands[::step][:10]

        say(f"[{fs}] cairn: directory machine over the ext4 copy, checkpoint v1, mounted machine from it")
        self.cairn("machine", "create", "src", "--dir", self.ext4)
        self.cairn("checkpoint", "create", "src")
        self.cairn("machine", "create", "box", "--mounted", "--from", "src@v1")
        self.phase("up", self.cairn("machine", "up", "box"))
        self.box = os.path.join(self.home, "machines", "box", "root")

        # The floor for reads through any overlay: the same overlay options as a machine's,
        # over the plain ext4 copy instead of cairn's view.
        self.control = os.path.join(d, "overlay-over-ext4")
        ctl = {n: os.path.join(d, f"control-{n}") for n in ("upper", "work", "data")}
        for x in (*ctl.values(), self.control):
            os.makedirs(x)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.ext4}::{ctl['data']},upperdir={ctl['upper']},workdir={ctl['work']},"
             "redirect_dir=on,metacopy=on,index=off,xino=off", self.control])

        say(f"[{fs}] btrfs: sparse image, mkfs.btrfs, mount -o loop, subvolume with the tree")
        img = os.path.join(d, "btrfs.img")
        size = max(4 << 30, 4 * self.tree_bytes + (2 << 30))
        with open(img, "wb") as f:
            f.truncate(size)
        run(["mkfs.btrfs", "-q", "-f", img], stdout=subprocess.DEVNULL)
        self.mnt = os.path.join(d, "btrfs")
        os.makedirs(self.mnt)
        run(["mount", "-o", "loop", img, self.mnt])
        self.live = os.path.join(self.mnt, "live")
        run(["btrfs", "-q", "subvolume", "create", self.live], stdout=subprocess.DEVNULL)
        run(["cp", "-a", "--reflink=never", self.base + "/.", self.live])
        for sub in ("snaps", "forks"):
            os.makedirs(os.path.join(self.mnt, sub))
        self.btrfs_base = os.path.join(self.mnt, "snaps", "base")
        run(["btrfs", "-q", "subvolume", "snapshot", "-r", self.live, self.btrfs_base], stdout=subprocess.DEVNULL)
        run(["sync"])

        say(f"[{fs}] verifying the fresh machine's view against the ext4 tree")
        self.verify("fresh machine", self.box, full=True)
        self.prepare_debs()

    def prepare_debs(self):
        """The package set and its dependencies for this root filesystem, downloaded once."""
        done = os.path.join(self.debs, ".done")
        if os.path.exists(done):
            return
        say(f"[{self.fs}] downloading the package set's .debs once into {self.debs}")
        scratch = os.path.join(self.dir, "dl")
        run(["cp", "-a", self.base, scratch])
        shutil.copy("/etc/resolv.conf", os.path.join(scratch, "etc/resolv.conf"))
        dev = os.path.join(scratch, "dev")
        run(["mount", "--bind", "/dev", dev])
        run(["mount", "--make-private", dev])
        try:
            run(["chroot", scratch, "/bin/sh", "-c",
                 "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                 f"--download-only --no-install-recommends {self.args.pkgset}"],
                stdout=subprocess.DEVNULL)
        except subprocess.CalledProcessError:
            loud("could not download the package set (no network to the Debian mirror?); dpkg step skipped")
            return
        finally:
            subprocess.run(["umount", dev])
        if os.path.exists(self.debs):
            shutil.rmtree(self.debs)
        os.makedirs(self.debs)
        arch = os.path.join(scratch, "var/cache/apt/archives")
        for n in os.listdir(arch):
            if n.endswith(".deb"):
                shutil.copy(os.path.join(arch, n), self.debs)
        shutil.rmtree(scratch)
        open(done, "w").close()

    # -------------------------------------------------------------- checks

    def verify(self, what, top, full):
        sample = None
        if not full:
            sample = set(self.edits) | set(self.largest) | set(self.regular[::10])
        bad = compare(self.expected, manifest(top, sample), sample)
        if bad:
            loud(f"[{self.fs}] MISMATCH after {what}: {len(bad)} differences")
            for b in bad[:40]:
                loud("   " + b)
            self.mismatches.append((what, len(bad), bad[:10]))
        else:
            say(f"[{self.fs}] {what}: view equals the target ({len(self.expected)} entries, "
                f"{'all' if full else len(sample)} files hashed)")

    def edit(self, top, rep):
        for rel in self.edits:
            with open(os.path.join(top, rel), "ab") as f:
                f.write(f"\n# edited by the mounted benchmark, rep {rep}\n".encode())

    # -------------------------------------------------------------- one repetition

    def rep(self, i):
        fs, r = self.fs, self.results
        last = i == self.args.reps - 1
        say(f"[{fs}] repetition {i + 1}/{self.args.reps} (load {os.getloadavg()[0]:.2f})")
        # As before each install: the previous repetition's installs and its chroot's copy and
        # removal (about 600 MB) are still being written back, and a step timed during that
        # flush measures the disk queue (a first catalog open waits ~8 ms for SQLite's -shm
        # truncation behind it), whichever side happens to run first.
        run(["sync"])

        # checkpoint after a small change, then fork it: a few rounds, since each takes
        # milliseconds and one sample per repetition left the medians at the mercy of the
        # host's noise; the side that goes first alternates from round to round
        for j in range(CHECKPOINT_ROUNDS):
            tag = f"{i}.{j}"
            snap = os.path.join(self.mnt, "snaps", f"c{tag}")
            ver = None

            def checkpoint_cairn():
                nonlocal ver
                self.edit(self.box, tag)
                dt, rep = self.cairn("checkpoint", "create", "box", timed_call=True)
                r["checkpoint"]["cairn"].append(dt)
                self.phase("checkpoint", rep)
                ver = rep["checkpoint"]["id"]

            def checkpoint_btrfs():
                self.edit(self.live, tag)
                dt, _ = timed(["btrfs", "-q", "subvolume", "snapshot", "-r", self.live, snap])
                r["checkpoint"]["ref"].append(dt)

            def fork_cairn():
                dt, rep = self.cairn("fork", ver, f"fork{i}-{j}", timed_call=True)
                r["fork"]["cairn"].append(dt)
                self.phase("fork", rep)

            def fork_btrfs():
                dt, _ = timed(["btrfs", "-q", "subvolume", "snapshot", snap,
                               os.path.join(self.mnt, "forks", f"fork{tag}")])
                r["fork"]["ref"].append(dt)

            order = [(checkpoint_cairn, checkpoint_btrfs), (fork_cairn, fork_btrfs)]
            for pair in order:
                for step in (pair if (i + j) % 2 == 0 else pair[::-1]):
                    step()

        # restore to the base (v1): wall time minus the process stop/restart phase
        dt, rep = self.cairn("restore", "box@v1", timed_call=True)
        self.phase("restore", rep)
        stop = sum(p["ms"] for p in rep.get("phases", []) if p["name"] == "stop") / 1000
        r["restore"]["cairn"].append(dt - stop)
        self.phases.setdefault("restore", {}).setdefault("wall incl. stop", []).append(dt * 1000)
        new = os.path.join(self.mnt, "live.new")
        old = os.path.join(self.mnt, "live.old")
        t = time.perf_counter()
        run(["btrfs", "-q", "subvolume", "snapshot", self.btrfs_base, new], stdout=subprocess.DEVNULL)
        os.rename(self.live, old)
        os.rename(new, self.live)
        run(["btrfs", "-q", "subvolume", "delete", old], stdout=subprocess.DEVNULL)
        r["restore"]["ref"].append(time.perf_counter() - t)
        self.verify(f"restore {i + 1} (box@v1)", self.box, full=(i == 0 or last))
        self.verify(f"btrfs swap {i + 1}", self.live, full=False)

        say(f"[{fs}] repetition {i + 1} (ms, cairn / btrfs): " + ", ".join(
            f"{k} " + " ".join(f"{c * 1e3:.1f}/{b * 1e3:.1f}" for c, b in
                               zip(r[k]["cairn"][-n:], r[k]["ref"][-n:]))
            for k, n in (("checkpoint", CHECKPOINT_ROUNDS), ("fork", CHECKPOINT_ROUNDS),
                         ("restore", 1))))

        # warm reads of unchanged files: whole tree, then the largest files
        self.lowers.append(lower_kind(self.box))
        for key, rels in (("read_tree", self.regular), ("read_large", self.largest)):
            dts, sizes = timed_reads([self.ext4, self.box, self.control], rels)
            r[key]["ref"].append(dts[self.ext4])
            r[key]["cairn"].append(dts[self.box])
            self.controls.setdefault(key, []).append(dts[self.control])
            n, n2 = sizes[self.ext4], sizes[self.box]
            if n != n2:
                loud(f"[{fs}] {key}: read {n2} bytes through the view, {n} from ext4")
                self.mismatches.append((key, 1, [f"{n2} != {n}"]))
            self.read_bytes = getattr(self, "read_bytes", {})
            self.read_bytes[key] = n

        # dpkg -i of the package set, offline, in the machine and in an ext4 chroot
        if os.path.exists(os.path.join(self.debs, ".done")):
            self.dpkg(i)
        # leave the machine at its base for the next repetition
        self.cairn("restore", "box@v1")

    DPKG_SH = "DEBIAN_FRONTEND=noninteractive dpkg -i /debs/*.deb >/dev/null"

    def dpkg(self, i):
        # Two runs of each side per repetition, in the order ABBA (BAAB in odd repetitions):
        # this machine's speed drifts over minutes, and a drift that is linear over the four
        # runs falls equally on both sides. Each machine run starts from a freshly restored
        # box@v1, each chroot run from a fresh copy.
        a, b = self.dpkg_machine, self.dpkg_chroot
        order = [a, b, b, a] if i % 2 == 0 else [b, a, a, b]
        machine_runs = 0
        for side in order:
            if side == a:
                if machine_runs:
                    self.cairn("restore", "box@v1")
                machine_runs += 1
            side()

    def dpkg_machine(self):
        # As before the chroot's run: nothing left to write back from what came before (the
        # other side's copy and removal of a whole tree) may fall into the timed install.
        run(["sync"])
        dt, _ = timed([self.args.cairn, "--home", self.home, "run", "box", "--bind", f"{self.debs}:/debs:ro",
                       "--", "/bin/sh", "-c", self.DPKG_SH], stderr=subprocess.PIPE)
        self.results["dpkg"]["cairn"].append(dt)
        say(f"[{self.fs}] dpkg -i in the machine: {dt:.2f} s")

    def dpkg_chroot(self):
        env_sh = self.DPKG_SH
        chroot = os.path.join(self.dir, "chroot")
        if os.path.exists(chroot):
            shutil.rmtree(chroot)
        run(["cp", "-a", self.base, chroot])
        run(["sync"])
        mounts = []
        try:
            # What `cairn run` gives its command: the package cache read-only, a /proc and a /dev.
            os.makedirs(os.path.join(chroot, "debs"), exist_ok=True)
            for src, dst in ((self.debs, "debs"), ("/dev", "dev")):
                run(["mount", "--bind", src, os.path.join(chroot, dst)])
                mounts.append(os.path.join(chroot, dst))
                run(["mount", "--make-private", os.path.join(chroot, dst)])
            run(["mount", "-o", "remount,bind,ro", os.path.join(chroot, "debs")])
            run(["mount", "-t", "proc", "proc", os.path.join(chroot, "proc")])
            mounts.append(os.path.join(chroot, "proc"))
            dt, _ = timed(["chroot", chroot, "/bin/sh", "-c", env_sh], stderr=subprocess.PIPE)
            self.results["dpkg"]["ref"].append(dt)
            say(f"[{self.fs}] dpkg -i in the chroot: {dt:.2f} s")
        finally:
            for m in reversed(mounts):
                subprocess.run(["umount", m])
        shutil.rmtree(chroot)

    def teardown(self):
        files = os.path.join(self.home, "cache", "files")
        sizes = [os.path.getsize(os.path.join(dp, f)) for dp, dn, fs in os.walk(files)
                 if os.path.basename(dp) != "tmp" for f in fs]
        self.data_layer = (len(sizes), sum(sizes))
        for m in ["box"]:
            try:
                self.cairn("machine", "down", m)
            except subprocess.CalledProcessError:
                pass
        subprocess.run(["umount", self.mnt])

    def go(self):
        self.load = [os.getloadavg()]
        self.setup()
        try:
            for i in range(self.args.reps):
                self.rep(i)
        finally:
            self.load.append(os.getloadavg())
            self.teardown()
        return self


# ---------------------------------------------------------------------------- report

def lower_kind(mountpoint):
    """What the overlay at `mountpoint` stands on: `image` or `view` (`none` if not mounted)."""
    kind = "none"
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            dash = fields.index(b"-")
            if fields[4].decode() == mountpoint:
                kind = "image" if fields[dash + 2].startswith(b"cairn-image:") else "view"
    return kind


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.1f} s"


def machine_info():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return f"{cpu}, {os.cpu_count()} cores, {mem} memory, Linux {platform.release()}"


def cairn_version(cairn):
    try:
        return subprocess.run([cairn, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        return "?"


def report(args, benches, started):
    L = []
    kind = "QUICK RUN (smoke test, few repetitions)" if args.quick else "full run"
    L.append("# cairn mounted-machine benchmark")
    L.append("")
    L.append(f"Generated by `bench/mounted` ({kind}, {args.reps} repetitions of "
             f"{CHECKPOINT_ROUNDS} checkpoint-and-fork rounds each, medians) on "
             f"{started:%Y-%m-%d %H:%M} UTC. Machine: {machine_info()}. {cairn_version(args.cairn)}, "
             "release build.")
    L.append("")
    L.append("The machine is shared with other heavy work: every ratio compares medians measured "
             "in the same run, alternating cairn and the reference within each repetition. "
             "Warm page cache throughout. Ratio = cairn / reference for times (lower is better), "
             "reference / cairn for reads (throughput, higher is better).")
    L.append("")
    for b in benches:
        gib = b.tree_bytes / (1 << 20)
        L.append(f"## {b.fs} root filesystem ({gib:.0f} MiB in {len(b.regular)} files, "
                 f"{len(b.expected)} entries)")
        L.append("")
        L.append(f"Load average (1 min) at start {b.load[0][0]:.2f}, at end {b.load[-1][0]:.2f}.")
        L.append("")
        L.append("| step | cairn | reference | ratio | target | met? |")
        L.append("|---|---:|---|---:|---:|---|")
        for key, label, ref, target, way in STEPS:
            c, r = median(b.results[key]["cairn"]), median(b.results[key]["ref"])
            if c is None or r is None:
                L.append(f"| {label} | – | {ref} | – | – | not measured |")
                continue
            if way == "le":
                ratio = c / r
                met = ratio <= target
                tgt = f"≤ {target:g}×"
            else:
                ratio = r / c
                met = ratio >= target
                tgt = f"≥ {target:g}×"
            extra = ""
            if key.startswith("read"):
                mb = b.read_bytes[key] / (1 << 20)
                extra = f" ({mb / c:.0f} vs {mb / r:.0f} MiB/s)"
            L.append(f"| {label} | {fmt_s(c)} | {ref}: {fmt_s(r)}{extra} | {ratio:.2f}× | {tgt} | "
                     f"{'**met**' if met else '**not met**'} |")
        L.append("")
        for key, label, *_ in STEPS:
            ctl, ext4 = median(b.controls.get(key, [])), median(b.results[key]["ref"])
            c = median(b.results[key]["cairn"])
            if ctl is not None and ext4 is not None and c is not None:
                L.append(f"- {label} through an overlay with the same options over the ext4 copy "
                         f"(no cairn): {fmt_s(ctl)}, {ext4 / ctl:.2f}× ext4; cairn's view under "
                         f"the overlay reads at {ctl / c:.2f}× that.")
        L.append("")
        if b.lowers:
            n = sum(1 for k in b.lowers if k == "image")
            where = ("in every repetition" if n == len(b.lowers) else
                     f"in {n} of {len(b.lowers)} repetitions, a FUSE view in the rest")
            L.append(f"- the machine's lower during the reads: its base's lower image {where} "
                     f"(an image is written once the data layer holds the base's files).")
        if b.data_layer:
            n, size = b.data_layer
            L.append(f"- data layer after the run: {n} copies, {size / (1 << 20):.0f} MiB "
                     f"(every non-empty file without holes, read by the overlay directly).")
            L.append("")
        L.append("cairn's own phase timings (`--json`, medians, ms):")
        L.append("")
        for step in ("checkpoint", "restore", "fork", "up"):
            ph = b.phases.get(step)
            if ph:
                L.append(f"- {step}: " + ", ".join(f"{n} {median(v):.1f}" for n, v in ph.items()))
        L.append("")
        if b.mismatches:
            L.append(f"**Verification FAILED**: {len(b.mismatches)} comparisons differed: "
                     + "; ".join(f"{w} ({n})" for w, n, _ in b.mismatches))
        else:
            L.append("Verification: after every restore the machine's view equalled the target tree "
                     "(path, type, mode, owner, size, mtime of non-directories, symlink targets; "
                     "every file's content hashed after the first and last restore, a sample of "
                     "one in ten plus the edited and largest files otherwise).")
        L.append("")
    L.append("## How it is measured")
    L.append("")
    L.append("- Every repetition starts after a `sync`, so no step is timed while the previous "
             "repetition's installs and copies are still being written back.")
    L.append("- **checkpoint**: append a line to 10 files in the running machine's view, then "
             "`cairn checkpoint create box`; the same edit in a btrfs subvolume, then "
             f"`btrfs subvolume snapshot -r`. Each repetition takes {CHECKPOINT_ROUNDS} rounds of "
             "a checkpoint and a fork of it on each side, the side that goes first alternating "
             "from round to round; every round counts towards the median.")
    L.append("- **restore**: `cairn restore box@v1` wall time minus its `stop` phase (unmounting "
             "the overlay and view and stopping processes; it is listed above); btrfs: "
             "snapshot the base snapshot to a new subvolume, rename the live one aside and the new "
             "one into place, delete the old one.")
    L.append("- **fork**: `cairn fork box@vN forkN` (one mounted machine) against a writable "
             "`btrfs subvolume snapshot` of the checkpoint's snapshot.")
    L.append("- **warm reads**: after a restore (empty upper, everything from the lower layers: "
             "the view, and the data layer's copies of every file without holes, made once when "
             "the machine first came up) read every regular file, and separately the 20 largest: "
             "one pass of each side to warm the cache, then "
             f"{WARM_PASSES} rounds that read every side once, in an order rotating from round to "
             "round (each side's median counts). The reference reads the same files from the plain "
             "ext4 copy; the control reads them through an overlay with the same options (an empty "
             "data-only layer) over that copy.")
    L.append(f"- **dpkg -i**: the package set (`{args.pkgset}` and its dependencies, downloaded "
             "once with apt-get) installed offline: `cairn run box --bind DEBS:/debs:ro -- sh -c "
             "'dpkg -i /debs/*.deb'` on a freshly restored machine, against `chroot DIR sh -c "
             "'dpkg -i /debs/*.deb'` in a fresh `cp -a` of the tree on ext4 with the same "
             "read-only bind, /proc and /dev. Each repetition runs each side twice, in the order "
             "machine, chroot, chroot, machine (the reverse in odd repetitions), the machine "
             "restored to box@v1 before its second run; every run starts after a `sync`.")
    L.append("- Every cairn timing includes starting the `cairn` process; every btrfs timing "
             "includes starting `btrfs`. The btrfs file system is a sparse image on the same "
             "ext4 disk, loop-mounted.")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cairn", required=True)
    ap.add_argument("--rootfs-cache", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pkgset", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("sets", nargs="+")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    benches = []
    for fs in args.sets:
        benches.append(Bench(args, fs).go())
        # Written after each root filesystem, so an interrupted run keeps what it measured.
        text = report(args, benches, started)
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)
    print(text)
    if any(b.mismatches for b in benches):
        loud("verification failed: see above")
        sys.exit(1)


if __name__ == "__main__":
    main()
