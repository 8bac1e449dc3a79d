#!/usr/bin/env python3
"""Turns the results of bench/run.sh (hyperfine JSON, `/usr/bin/time -v` output and
key=value files in RESULTS_DIR) into a summary table on stdout and, when a second
argument is given, into BENCHMARKS.md.

usage: report.py RESULTS_DIR [BENCHMARKS.md]

Ratios are imgbuild's median over the reference's median; a target is met (PASS) or
not (MISS) on that ratio, never hidden. bench/notes.md (hand-written analysis of the
last committed run) is appended verbatim when present.
"""

import json
import os
import re
import sys

res = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else None
here = os.path.dirname(os.path.abspath(__file__))


def env(name):
    p = os.path.join(res, name + ".env")
    d = {}
    if os.path.exists(p):
        for line in open(p):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                d[k] = v
    return d


def hyperfine(name):
    """[(display name, prepare, command line, result dict)] of one benchmark, or [].
    A name may join several hyperfine runs: "core-noop+core-noop-podman"."""
    if "+" in name:
        return [row for n in name.split("+") for row in hyperfine(n)]
    p = os.path.join(res, name + ".json")
    if not os.path.exists(p):
        return []
    results = json.load(open(p))["results"]
    cmds = [line.rstrip("\n").split("\t") for line in open(os.path.join(res, name + ".cmds"))]
    return [(c[0] or r["command"], c[1], c[2], r) for c, r in zip(cmds, results)]


def time_v(name):
    """Selected fields of a `/usr/bin/time -v` report."""
    p = os.path.join(res, name + ".time")
    if not os.path.exists(p):
        return None
    d = {}
    for line in open(p):
        line = line.strip()
        for key, field in [
            ("rss_kb", "Maximum resident set size (kbytes)"),
            ("user", "User time (seconds)"),
            ("sys", "System time (seconds)"),
            ("wall", "Elapsed (wall clock) time (h:mm:ss or m:ss)"),
            ("fs_in", "File system inputs"),
            ("fs_out", "File system outputs"),
            ("vcs", "Voluntary context switches"),
            ("exit", "Exit status"),
        ]:
            if line.startswith(field + ":"):
                d[key] = line.split(":", 1)[1].strip() if key != "wall" else line[len(field) + 1 :].strip()
    w = d.get("wall", "0:0")
    parts = [float(x) for x in w.split(":")]
    d["wall_s"] = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    return d


machine = env("machine")
subs = [
    (machine.get("ib", "\0"), "imgbuild"),
    (machine.get("w", "\0"), "$W"),
    (machine.get("repo", "\0"), "$REPO"),
]


def shorten(cmd):
    for a, b in subs:
        if a and a != "\0":
            cmd = cmd.replace(a, b)
    return re.sub(r"\s+", " ", cmd).strip()


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def mib(kb):
    return f"{int(kb) / 1024:.1f} MiB"


lines = []  # BENCHMARKS.md
summary = []  # (metric, imgbuild, reference, ratio, target, verdict)


def cell(s):
    return s.replace("|", "\\|")


def md(s=""):
    lines.append(s)


def table_of(name, title):
    rows = hyperfine(name)
    if not rows:
        return rows
    md(f"#### {title}")
    md()
    md("| command | median | mean ± σ | min … max | CPU user + sys (mean) | runs |")
    md("|---|---:|---:|---:|---:|---:|")
    for n, _, _, r in rows:
        md(f"| {cell(n)} | **{fmt_s(r['median'])}** | {fmt_s(r['mean'])} ± {fmt_s(r['stddev'])} | {fmt_s(r['min'])} … {fmt_s(r['max'])} "
           f"| {fmt_s(r['user'])} + {fmt_s(r['system'])} | {len(r['times'])} |")
    md()
    md("<details><summary>command lines</summary>")
    md()
    md("```sh")
    for n, prep, cmd, _ in rows:
        md(f"# {n}" + (f"   (before each run: {shorten(prep)})" if prep else ""))
        md(shorten(cmd))
    md("```")
    md("</details>")
    md()
    return rows


def ratio_row(metric, rows, i, j, target, le=True):
    """imgbuild = rows[i], reference = rows[j]; target is a max ratio (le) or None."""
    if not rows:
        return
    a, b = rows[i][3]["median"], rows[j][3]["median"]
    r = a / b if b else float("inf")
    if target is None:
        verdict, tgt = "info", "-"
    else:
        verdict = "PASS" if (r <= target if le else r >= target) else "MISS"
        tgt = f"≤ {target:g}×"
    summary.append((metric, fmt_s(a), f"{fmt_s(b)} ({rows[j][0]})", f"{r:.2f}×", tgt, verdict))


# ------------------------------------------------------------------ header
load_s = machine.get("load_start", "")
load_e = machine.get("load_end", "")
nproc = int(machine.get("nproc", "1") or 1)
try:
    peak = max(float(x) for x in (load_s + " " + load_e).split())
    busy = peak > 0.5
except ValueError:
    peak, busy = 0.0, False

md("# Benchmarks")
md()
md("Written by `bench/run.sh` (`just bench`): imgbuild side by side with the peer tools in one run,")
md("medians of hyperfine runs (interleaved: one run of every tool per round), reported as ratios")
md("against the targets. Ratio = imgbuild's median / the reference's median. Nothing here is a timed")
md("assertion in a test. Inputs and outputs live under `$W` = `/var/tmp/imgbuild-bench` (outside")
md("the repository); every tool reads the same inputs from a warm page cache.")
md()
md(f"- **Date**: {machine.get('date', '?')}, {machine.get('runs', '?')} timed runs per command, whole run {machine.get('duration_s', '?')} s")
md(f"- **Machine**: {nproc} cores (`nproc`), {machine.get('cpu', '?')}, {machine.get('mem', '?')} RAM, {machine.get('os', '?')}, kernel {machine.get('kernel', '?')}, {machine.get('fs', '?')}")
md(f"- **Load** (1/5/15 min) at start: {load_s}; at end: {load_e}.")
if busy:
    md(f"  **The machine was shared with other work during this run** (load average up to {peak:.1f} on {nproc} cores):")
    md("  absolute times are noisy and pessimistic; every benchmark interleaves its tools round by round,")
    md("  so the load hits them alike, and the ratios are the meaningful part.")
md("- **Versions**:")
for k, label in [
    ("v_imgbuild", "imgbuild"),
    ("v_tar", "tar"),
    ("v_pigz", "pigz"),
    ("v_podman", "podman"),
    ("v_buildah", "buildah"),
    ("v_umoci", "umoci"),
    ("v_skopeo", "skopeo"),
    ("v_registry", "docker-registry"),
    ("v_dpkg", "dpkg-deb"),
    ("v_hyperfine", "hyperfine"),
]:
    if k in machine:
        md(f"  - {label}: `{machine[k]}`")
md()

# ------------------------------------------------------------------ sections
body = []
saved, lines = lines, body

tree = env("core-tree")
if hyperfine("core-cold"):
    md("## 1. Core: a realistic tree")
    md()
    md(
        f"A `site-packages` of {int(tree.get('sp_bytes', 0)) / 1e6:.1f} MB in {tree.get('sp_files', '?')} files "
        "(the pinned wheels of `bench/wheels.txt`: Django, botocore, sympy, networkx, pip, setuptools, "
        "pygments, docutils, pytz, jinja2 and three cp311 wheels with `.so` files, unpacked) plus a small "
        f"app dir ({int(tree.get('app_bytes', 0)) / 1e3:.0f} kB, {tree.get('app_files', '?')} files). "
        "The image is `FROM scratch` with two layers (site-packages, app); podman builds the equivalent "
        "`Containerfile` (`COPY` ×2) with `--layers` in a private storage root."
    )
    md()
    sizes = env("core-sizes")
    rows = table_of("core-cold", "Cold build (empty store) — target: imgbuild ≤ 0.5 × the tar | pigz floor")
    ratio_row("cold build vs tar|pigz", rows, 0, 1, 0.5)
    ratio_row("cold build vs podman build", rows, 0, 2, None)
    if sizes:
        md(f"Compressed output: imgbuild layers {sizes.get('imgbuild_layer_bytes', '?')} bytes, `tar | pigz -6` {sizes.get('floor_gz_bytes', '?')} bytes, "
           f"`tar | pigz -1` {sizes.get('floor1_gz_bytes', '?')} bytes.")
        md()
    rows = table_of("core-noop+core-noop-podman", "No-op rebuild (warm store, nothing changed) — target: ≤ 2 × a bare stat walk")
    ratio_row("no-op rebuild vs stat walk", rows, 0, 1, 2)
    ratio_row("imgbuild plan vs no-op rebuild", rows, 2, 0, 1)
    ratio_row("no-op rebuild vs podman", rows, 0, 3, None)
    t = time_v("core-noop")
    if t:
        md(f"One no-op build under `/usr/bin/time -v`: {t['wall_s']:.2f} s wall, {t.get('user')} s user, {t.get('sys')} s sys, max RSS {mib(t['rss_kb'])}, {t.get('fs_out')} fs output blocks.")
        md()
    rows = table_of("core-onefile", "One file changed (a line appended to `django/__init__.py`) — target: ≤ 1 × re-tarring that layer")
    ratio_row("one-file change vs tar|pigz of the layer", rows, 0, 1, 1)
    ratio_row("one-file change vs podman", rows, 0, 2, None)
    t = time_v("core-onefile")
    if t:
        md(f"One such build under `/usr/bin/time -v`: {t['wall_s']:.2f} s wall, {t.get('user')} s user, {t.get('sys')} s sys, max RSS {mib(t['rss_kb'])}.")
        md()

mem = [(mb, time_v(f"mem-{mb}"), env(f"mem-{mb}")) for mb in (100, 500, 1000)]
if any(t for _, t, _ in mem):
    md("## 2. Peak memory as the layer grows")
    md()
    md("One layer of generated data: a quarter in one random file, the rest 1 MiB files, half random")
    md("(incompressible) and half Python source (compressible). Cold build (empty store) under `/usr/bin/time -v`.")
    md("Target: flat, under 64 MiB at 1 GB.")
    md()
    md("| layer | imgbuild max RSS | wall | user + sys |")
    md("|---|---:|---:|---:|")
    for mb, t, e in mem:
        if t:
            md(f"| {mb} MiB ({int(e.get('bytes', 0)) / 1e6:.0f} MB) | **{mib(t['rss_kb'])}** | {t['wall_s']:.2f} s | {float(t['user']) + float(t['sys']):.2f} s |")
    f = time_v("mem-floor-1000")
    if f:
        md(f"| 1000 MiB, `tar \\| pigz -6` (for scale) | {mib(f['rss_kb'])} (largest process) | {f['wall_s']:.2f} s | {float(f['user']) + float(f['sys']):.2f} s |")
    md()
    ts = [t for _, t, _ in mem if t]
    if len(ts) == 3:
        small, big = int(ts[0]["rss_kb"]) / 1024, int(ts[2]["rss_kb"]) / 1024
        flat = big <= 1.5 * small + 8
        summary.append(("peak RSS, 1000 MiB layer", f"{big:.1f} MiB", f"{small:.1f} MiB at 100 MiB", f"{big / small:.2f}×", "< 64 MiB, flat", "PASS" if big < 64 and flat else "MISS"))

deb = env("debian")
if hyperfine("debian-build"):
    md("## 3. Debian: the nginx image")
    md()
    md(f"`recipes/nginx.toml` with the repository's `imgbuild.lock` ({deb.get('debs', '?')} .debs, {int(deb.get('deb_bytes', 0) or 0) / 1e6:.1f} MB), copied into a")
    md("temp project. The download cache is warm (a first build filled the private store). By hand:")
    md("`dpkg-deb --fsys-tarfile | tar -x` of every .deb of the lock into one rootfs, the site file copied in,")
    md("`umoci init/new/insert` (rootfs, static dir) and `umoci gc`; it decompresses every .deb each time.")
    md("(By hand does less: no users/groups/dirs/symlinks of the recipe, no reproducible timestamps.)")
    md()
    md("Two imgbuild cases. **Nothing unpacked** (the like-for-like comparison): before each run the layer")
    md("records, the unpack records (`records/debian-unpack-v1`) and the uncompressed `data.tar` spools they")
    md(f"point to are deleted, so every .deb is decompressed again (such a build wrote {deb.get('unpack_records_after_cold', '?')} unpack records).")
    md("**Unpack cache warm**: only the layer records are deleted and the spools of an earlier build are")
    md("reused, so imgbuild decompresses nothing (a rebuild after a recipe change).")
    md()
    rows = table_of("debian-build", "Build from warm .debs, nothing unpacked — target: well under the by-hand time (≤ 0.5 ×)")
    ratio_row("nginx from warm .debs (nothing unpacked) vs dpkg-deb+umoci", rows, 0, 1, 0.5)
    rows = table_of("debian-build-warm", "Build from warm .debs with the unpack cache warm")
    ratio_row("nginx from warm .debs (unpack cache warm) vs dpkg-deb+umoci", rows, 0, 1, None)
    rows = table_of("debian-noop", "No-op rebuild with the lock, mirror pointed at a closed port")
    if rows:
        summary.append(("nginx no-op (lock, no mirror)", fmt_s(rows[0][3]["median"]), "-", "-", "no network, no .deb read",
                        "PASS" if deb.get("inet_connects") == "0" and deb.get("debs_opened") == "0" else "MISS"))
        md(f"Under `strace -f -e trace=connect,openat` the no-op build made **{deb.get('inet_connects', '?')}** inet `connect()` calls and opened **{deb.get('debs_opened', '?')}** of the lock's .deb blobs (so nothing was downloaded or decompressed).")
        md()

push = env("push")
if "skipped" in push:
    md("## 4. Push")
    md()
    md(f"Not measured in this run: {push['skipped']}.")
    md()
elif hyperfine("push-cold"):
    md("## 4. Push to a local registry")
    md()
    mb = lambda k: f"{int(push[k]) / 1e6:.1f} MB" if push.get(k, "").isdigit() else "?"
    md(f"The stack's `app` ({mb('app_bytes')}) and `worker` ({mb('worker_bytes')}) images, built from `recipes/` with the")
    md("lock (both `from = \"venv\"`: Debian's python3.11 and the venv, then one small app layer each), pushed to a")
    md("`docker-registry` on 127.0.0.1 (emptied and restarted before each cold run): `imgbuild push app worker`")
    md("(one release; the venv layers go up once and are mounted into the second repository); skopeo copies")
    md("imgbuild's `out/app.tar` and `out/worker.tar` (OCI archives), one invocation per image, as a CI script")
    md("would; podman pushes the same two images loaded into its storage (it stores layers uncompressed and")
    md("compresses on push). The one-file change appends a line to `layers/app/app.py` and rebuilds (not timed):")
    md("only the app layer, the app config and manifest are new.")
    md()
    if "cold_uploaded" in push:
        md(f"Sent by imgbuild: cold {mb('cold_uploaded')} uploaded + {mb('cold_mounted')} mounted; "
           f"after the one-file change {int(push.get('onefile_uploaded', '0')):,} bytes uploaded; nothing to send: 0 bytes, only HEAD requests.")
        md()
    # targets of the push issue: cold at least as fast as skopeo, warm and after a
    # one-file change at most half of skopeo's time
    for name, title, metric, target in [
        ("push-cold", "Cold push (empty registry) — target: ≤ 1 × skopeo", "cold push", 1),
        ("push-warm", "Warm push (nothing to send) — target: ≤ 0.5 × skopeo", "warm push", 0.5),
        ("push-onefile", "Push after a one-file change in the app layer (rebuild not timed) — target: ≤ 0.5 × skopeo", "push after one-file change", 0.5),
    ]:
        rows = table_of(name, title)
        ratio_row(f"{metric} vs skopeo", rows, 0, 1, target)
        ratio_row(f"{metric} vs podman", rows, 0, 2, None)
    if "ib_digest_ok" in push:
        md(f"Check after the runs: the manifests in the registry under `ib/app:latest` and `ib/worker:latest` are imgbuild's own "
           f"(`{push.get('ib_manifests', '?')}`): **{'yes' if push['ib_digest_ok'] == '1' else 'NO'}**; "
           f"skopeo's copies have the same digests: {'yes' if push.get('sk_digest_same') == '1' else 'no (skopeo rewrote the manifests)'}.")
        md()

notes = os.path.join(here, "notes.md")
if os.path.exists(notes):
    md("## Analysis")
    md()
    md(open(notes).read().rstrip())
    md()

lines = saved
md("## Summary")
md()
md("| metric | imgbuild | reference | ratio | target | result |")
md("|---|---:|---:|---:|---|---|")
for row in summary:
    md("| " + " | ".join(cell(c) for c in row) + " |")
md()
lines += body

# ------------------------------------------------------------------ output
w = [max(len(r[i]) for r in summary + [("metric", "imgbuild", "reference", "ratio", "target", "result")]) for i in range(6)]
print()
for r in [("metric", "imgbuild", "reference", "ratio", "target", "result")] + summary:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
if out:
    open(out, "w").write("\n".join(lines).rstrip() + "\n")
    print(f"\nwrote {out}")
