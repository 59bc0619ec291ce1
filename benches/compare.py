#!/usr/bin/env python3
"""Join ferrovod-bench, gloo_bench.py and mpi_bench.py JSON results into markdown tables.

    python benches/compare.py --ferrovod f1.json [f2.json ...] --gloo g1.json [...] --out-md cmp.md
    python benches/compare.py --ferrovod f*.json --gloo g*.json --mpi m*.json

Each file is one run: a JSON array of rows with at least op, np, dtype, bytes,
iters, median_s, busbw_gbs. Rows are keyed by (op, np, dtype, bytes); with several
runs per implementation the tables show the median over runs (of median_s and of busbw).
Give the files of one implementation in run order: run i of ferrovod is paired with
run i of a peer.

Implementations: ferrovod rows are split by their "transport" field ("ferrovod shm",
"ferrovod tcp", ...) when rows of more than one transport are given, otherwise they
are one "ferrovod" column; the peers are "gloo" (--gloo) and "openmpi" (--mpi, at
least one peer is needed). A busbw ratio is ferrovod (each transport) over a peer:
the ratio of the medians; "per-run" pairs ferrovod run i with the peer's run i when
both have the same number of runs for that key, otherwise divides each ferrovod run
by the peer's median. Ratios > 1 mean ferrovod is faster.

With one ferrovod column and one peer the output is one table (time, busbw, ratios,
runs, per-run ratios; the layout compare_gloo.sh has always printed). Otherwise it is
two tables: times (with the run counts), then busbw with the ratios, each ratio cell
"median (per-run, ...)". Stdlib only.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict

OP_ORDER = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")
TRANSPORT_ORDER = ("shm", "shm+tcp", "tcp", "mem")


def load(paths, impl=None):
    """{key: [row, ...]} in file order (one row per run). Warns when a row's "impl"
    is not `impl` (a file passed to the wrong option)."""
    runs = defaultdict(list)
    for path in paths:
        with open(path) as f:
            rows = json.load(f)
        for row in rows:
            if impl and row.get("impl", impl) != impl:
                print(f"compare.py: warning: {path}: impl {row['impl']!r}, expected {impl!r}",
                      file=sys.stderr)
            runs[(row["op"], int(row["np"]), row.get("dtype", "f32"), int(row["bytes"]))].append(row)
    return runs


def split_transport(runs):
    """[(label, {key: [row, ...]})]: one "ferrovod" entry, or one per transport when the
    rows carry more than one "transport" value."""
    transports = {row.get("transport") for rows in runs.values() for row in rows}
    if len(transports) <= 1:
        return [("ferrovod", runs)]
    order = lambda t: (TRANSPORT_ORDER.index(t) if t in TRANSPORT_ORDER else len(TRANSPORT_ORDER), str(t))  # noqa: E731
    out = []
    for t in sorted(transports, key=order):
        sub = {}
        for key, rows in runs.items():
            picked = [r for r in rows if r.get("transport") == t]
            if picked:
                sub[key] = picked
        out.append((f"ferrovod {t if t is not None else '(no transport)'}", sub))
    return out


def human(nbytes):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def sort_key(key):
    op, n, dtype, nbytes = key
    rank = OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER)
    return (rank, op, n, dtype, nbytes)


def median(rows, field, scale=1.0):
    """Median of rows[field] * scale over runs, None when there are no runs."""
    return statistics.median(r[field] * scale for r in rows) if rows else None


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def ratios(f_rows, p_rows):
    """(busbw ratio of the medians, [per-run ratios]) of ferrovod over a peer;
    (None, []) unless both have runs."""
    if not (f_rows and p_rows):
        return None, []
    p_bw = median(p_rows, "busbw_gbs")
    ratio = median(f_rows, "busbw_gbs") / p_bw if p_bw > 0 else None
    if len(f_rows) == len(p_rows):
        pairs = [(f["busbw_gbs"], p["busbw_gbs"]) for f, p in zip(f_rows, p_rows)]
    else:
        pairs = [(f["busbw_gbs"], p_bw) for f in f_rows]
    return ratio, [a / b if b > 0 else None for a, b in pairs]


def key_cells(key):
    op, n, dtype, nbytes = key
    return [op, str(n), dtype, human(nbytes)]


def md_table(head, body):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def table(fv, gl, f_name="ferrovod", g_name="gloo"):
    """One ferrovod column against one peer: the single-table layout."""
    head = ["op", "np", "type", "size", f"{f_name} time (µs)", f"{g_name} time (µs)",
            f"{f_name} busbw (GB/s)", f"{g_name} busbw (GB/s)", f"busbw ratio {f_name}/{g_name}",
            f"time ratio {g_name}/{f_name}", f"runs {f_name[0]}/{g_name[0]}", "per-run busbw ratio"]
    body = []
    for key in sorted(set(fv) | set(gl), key=sort_key):
        f_rows, g_rows = fv.get(key, []), gl.get(key, [])
        f_t, g_t = median(f_rows, "median_s", 1e6), median(g_rows, "median_s", 1e6)
        f_bw, g_bw = median(f_rows, "busbw_gbs"), median(g_rows, "busbw_gbs")
        bw_ratio, per_run = ratios(f_rows, g_rows)
        t_ratio = g_t / f_t if f_rows and g_rows and f_t > 0 else None
        per_run = ", ".join(fmt(r, ".2f") for r in per_run) or "—"
        body.append(key_cells(key) + [
            fmt(f_t, ".1f"), fmt(g_t, ".1f"),
            fmt(f_bw, ".3f"), fmt(g_bw, ".3f"), fmt(bw_ratio, ".2f"), fmt(t_ratio, ".2f"),
            f"{len(f_rows)}/{len(g_rows)}", per_run])
    return md_table(head, body)


def tables(ferrovods, peers):
    """Several implementations: a time table and a busbw table with the ratios of
    every ferrovod column over every peer."""
    impls = ferrovods + peers
    keys = sorted(set().union(*(runs.keys() for _, runs in impls)), key=sort_key)

    head = ["op", "np", "type", "size"] + [f"{name} time (µs)" for name, _ in impls] + \
           ["runs " + "/".join(name for name, _ in impls)]
    body = []
    for key in keys:
        cells = key_cells(key)
        cells += [fmt(median(runs.get(key, []), "median_s", 1e6), ".1f") for _, runs in impls]
        cells.append("/".join(str(len(runs.get(key, []))) for _, runs in impls))
        body.append(cells)
    time_md = md_table(head, body)

    pairs = [(f, p) for f in ferrovods for p in peers]
    head = ["op", "np", "type", "size"] + [f"{name} busbw (GB/s)" for name, _ in impls] + \
           [f"busbw ratio {f}/{p} (per run)" for (f, _), (p, _) in pairs]
    body = []
    for key in keys:
        cells = key_cells(key)
        cells += [fmt(median(runs.get(key, []), "busbw_gbs"), ".3f") for _, runs in impls]
        for (_, f_runs), (_, p_runs) in pairs:
            ratio, per_run = ratios(f_runs.get(key, []), p_runs.get(key, []))
            cell = fmt(ratio, ".2f")
            if len(per_run) > 1:
                cell += " (" + ", ".join(fmt(r, ".2f") for r in per_run) + ")"
            cells.append(cell)
        body.append(cells)
    bw_md = md_table(head, body)

    return ("Time: median over runs of each run's median iteration time (µs).\n\n" + time_md +
            "\nBus bandwidth: median over runs (GB/s); ratios > 1: ferrovod is faster.\n\n" + bw_md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferrovod", nargs="+", required=True, metavar="JSON", help="ferrovod-bench results")
    ap.add_argument("--gloo", nargs="+", default=[], metavar="JSON", help="gloo_bench.py results")
    ap.add_argument("--mpi", nargs="+", default=[], metavar="JSON", help="mpi_bench.py results (Open MPI)")
    ap.add_argument("--out-md", metavar="PATH", help="also write the markdown here")
    args = ap.parse_args()
    if not (args.gloo or args.mpi):
        ap.error("give at least one peer: --gloo and/or --mpi")

    ferrovods = split_transport(load(args.ferrovod, "ferrovod"))
    peers = [(name, load(paths, impl)) for name, paths, impl in
             (("gloo", args.gloo, "gloo"), ("openmpi", args.mpi, "openmpi-vader")) if paths]
    if len(ferrovods) == 1 and len(peers) == 1:
        md = table(ferrovods[0][1], peers[0][1], ferrovods[0][0], peers[0][0])
    else:
        md = tables(ferrovods, peers)
    sys.stdout.write(md)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
