"""Renders bench.py's results as BENCHMARKS.md: medians, ratios, targets met or not."""

import statistics

from bench import KNOWN_LOSSES, STEPS, TOOLS, label

MB = 1e6
PEERS = ["restic", "borg", "casync", "ostree", "tar"]


def med(runs, step, key):
    vals = [r[step][key] for r in runs if step in r and r[step].get(key) is not None]
    return statistics.median(vals) if vals else None


def verdicts(runs, step):
    vals = {r[step]["verify"] for r in runs if step in r and r[step].get("verify")}
    if not vals:
        return ""
    return "MISMATCH" if "MISMATCH" in vals else ("ok*" if "ok*" in vals else "ok")


def fmt_time(t):
    return "–" if t is None else (f"{t:.2f} s" if t < 10 else f"{t:.1f} s")


def table(s, key, fmt, with_ratio):
    runs = s["runs"]
    tools = [t for t in TOOLS if t in runs]
    head = "| step | " + " | ".join(label(t) for t in tools) + " |"
    lines = [head, "|---" * (len(tools) + 1) + "|"]
    for step, what in STEPS:
        mine = med(runs.get("cairn", []), step, key)
        cells = []
        for t in tools:
            v = med(runs[t], step, key)
            cell = fmt(v) if v is not None and not (key == "stored" and t == "cp") else ""
            if with_ratio and t != "cairn" and v and mine:
                cell += f" ({mine / v:.2f}×)"
            if key == "time" and verdicts(runs[t], step) == "MISMATCH":
                cell += " **wrong**"
            cells.append(cell)
        lines.append(f"| {step} {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verify_table(s):
    runs = s["runs"]
    tools = [t for t in TOOLS if t in runs]
    lines = ["| step | " + " | ".join(label(t) for t in tools) + " |", "|---" * (len(tools) + 1) + "|"]
    for step, what in STEPS[3:]:
        lines.append(f"| {step} | " + " | ".join(verdicts(runs[t], step) for t in tools) + " |")
    return "\n".join(lines)


def targets(name, s):
    runs = s["runs"]
    c = runs.get("cairn", [])
    out = []
    missing = [p for p in PEERS if p not in runs]
    if missing:
        out.append(f"- Not measured on this root filesystem: {', '.join(missing)}; the targets "
                   "below compare against the peers that were, so they are incomplete.")

    def line(ok, text):
        if ok is None:
            out.append(f"- n/a: {text} (not measured in this run)")
        else:
            out.append(f"- {'**met**' if ok else '**not met**'}: {text}")

    def peer_min(step, key, peers):
        vals = [med(runs[p], step, key) for p in peers if p in runs]
        vals = [v for v in vals if v is not None]
        return min(vals) if vals else None

    t1 = med(c, "S1", "time")
    if t1:
        rate = s["bytes"] / t1 / MB
        fastest = peer_min("S1", "time", ["restic", "borg", "casync"])
        line(rate >= 200 and (fastest is None or t1 < fastest),
             f"S1 ≥ 200 MB/s and faster than restic, borg, casync: {rate:.0f} MB/s, "
             f"{fmt_time(t1)} vs fastest of those {fmt_time(fastest)}")
    if name == "large":
        t3, r3 = med(c, "S3", "time"), med(runs.get("restic", []), "S3", "time")
        line(None if not (t3 and r3) else t3 <= 0.3 * r3,
             f"S3 ≤ 0.3× restic: {fmt_time(t3)} vs {fmt_time(r3)}"
             + (f" = {t3 / r3:.2f}×" if t3 and r3 else ""))
    for step in ("S4", "S5"):
        t, best = med(c, step, "time"), peer_min(step, "time", PEERS)
        line(None if not (t and best) else t < best,
             f"{step} faster than every peer's in-place restore: {fmt_time(t)} vs fastest peer {fmt_time(best)}")
    t6, cp = med(c, "S6", "time"), med(runs.get("cp", []), "S6", "time")
    line(None if not (t6 and cp) else t6 <= cp, f"S6 at least as fast as cp -a: {fmt_time(t6)} vs {fmt_time(cp)}")
    st, small = med(c, "S3", "stored"), peer_min("S3", "stored", PEERS)
    line(None if not (st and small) else st <= small,
         f"stored bytes after S3 ≤ the smallest peer repository: {st / MB:.0f} MB vs {small / MB:.0f} MB"
         if st and small else "stored bytes after S3")
    for step in ("S1", "S4"):
        m, r = med(c, step, "rss"), med(runs.get("restic", []), step, "rss")
        line(None if not (m and r) else m <= r,
             f"peak RSS in {step} ≤ restic's: {m / 1024:.0f} MiB vs {r / 1024:.0f} MiB" if m and r
             else f"peak RSS in {step}")
    return "\n".join(out)


def render(res, peers_text):
    m = res["machine"]
    reps = ", ".join(f"{n}: {s['reps']}" for n, s in res["sets"].items())
    kind = "a **--quick smoke run** (1 repetition, small root filesystem only)" if res["quick"] \
        else f"repetitions per tool — {reps}"
    if res.get("partial"):
        kind += " (**partial**: the run was still going when this was written)"
    cache = "dropped before every timed step, for every tool" if res["drop_caches"] \
        else "warm (not dropped; the machine is shared), the same for every tool"
    parts = [
        "# Benchmarks",
        "",
        f"Written by `bench/run` on {res['date']}: {kind}; total runtime "
        f"{res['elapsed'] / 60:.0f} min. The machine is shared with other builds and tests, so "
        "compare the ratios within this run rather than absolute times.",
        "",
    ] + ([res["note"], ""] if res.get("note") else []) + [
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} memory, kernel {m['kernel']}, "
        f"{m['filesystem']} (repositories, machine directories and root filesystems on the same disk)",
        "- Versions: " + "; ".join(f"{v}" for v in res["versions"].values()),
        f"- Page cache: {cache}; `sync` runs (untimed) before every timed step.",
        "- Times are medians of the repetitions; `(0.25×)` after a peer's time is cairn's time "
        "divided by the peer's (below 1: cairn is faster). Each repetition runs S1–S6 from an "
        "empty repository; the tool order rotates between repetitions.",
        "- Stored = bytes of all files in the tool's repository after the step (cairn: its whole "
        "home, catalog and stat cache included; restic's and borg's local caches are not counted).",
        "- Peak RSS: `/usr/bin/time -f %M` over the step's whole command (the largest process).",
        "",
        "## Scenario",
        "",
        "The root filesystem is copied with `cp -a` into a fresh directory that each tool then "
        "tracks. S2 applies a prepared package-set install (`apt-get install --no-install-recommends "
        f"{res['pkgset']}` done once in a copy of the tree, applied with `rsync -aHAX --delete`), "
        "so the change is identical for every tool and needs no network. S3 appends a line to 10 "
        "files spread over the tree. After S4, S5 and S6 the result is compared with a manifest "
        "of the expected tree (path, type, mode, uid, gid, size, mtime in ns, hardlink group, "
        "SHA-256 of the data, xattrs); `ok*` means it differs only in what the tool does not keep "
        "(listed below), `MISMATCH` means a wrong restore. The root filesystems have no device "
        "nodes in /dev (ostree cannot store them; container images have none).",
        "",
    ]
    for name, s in res["sets"].items():
        desc = {"small": "debootstrap --variant=minbase bookworm",
                "large": "debootstrap --variant=minbase --include=build-essential,python3,git bookworm"}[name]
        parts += [
            f"## {name} root filesystem",
            "",
            f"`{desc}`: {s['bytes'] / MB:.0f} MB in {s['entries']} entries; after the package set "
            f"{s['after_bytes'] / MB:.0f} MB in {s['after_entries']} entries.",
            "",
            "Median wall time (cairn ÷ peer):",
            "",
            table(s, "time", fmt_time, True),
            "",
            "Stored bytes after the step (MB):",
            "",
            table(s, "stored", lambda v: f"{v / MB:.0f}", False),
            "",
            "CPU time, user + system (s; median):",
            "",
            table(s, "cpu", lambda v: f"{v:.1f}", False),
            "",
            "Peak RSS (MiB):",
            "",
            table(s, "rss", lambda v: f"{v / 1024:.0f}", False),
            "",
            "Restore verified against the expected tree:",
            "",
            verify_table(s),
            "",
            "Targets:",
            "",
            targets(name, s),
            "",
        ]
    parts += ["## What the peers do not keep", ""]
    parts += [f"- {t}: `{f.replace(':.', '')}`{' of the directory itself' if f.endswith(':.') else ''} — {why}"
              for t, losses in KNOWN_LOSSES.items() for f, why in losses.items()]
    parts += ["", "## Exact commands", "", "`bench/peers.sh`, the functions timed in each step "
              "(`save` = S1–S3, `restore` = S4–S5, `fork` = S6):", "", "```bash", peers_text.rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    # Re-renders a report from a run's results.json: report.py RESULTS.json OUT.md
    import json
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    with open(sys.argv[1]) as f:
        results = json.load(f)
    with open(os.path.join(here, "peers.sh")) as f:
        text = render(results, f.read())
    with open(sys.argv[2], "w") as f:
        f.write(text)
