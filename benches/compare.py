#!/usr/bin/env python3
"""Join ferrovod-bench and gloo_bench.py JSON results into one markdown table.

    python benches/compare.py --ferrovod f1.json [f2.json ...] --gloo g1.json [...] --out-md cmp.md

Each file is one run: a JSON array of rows with at least op, np, dtype, bytes,
iters, median_s, busbw_gbs. Rows are keyed by (op, np, dtype, bytes); with several
runs per side the table shows the median over runs (of median_s and of busbw).
"per-run busbw ratio" pairs ferrovod run i with gloo run i when both sides have
the same number of runs for that key, otherwise divides each ferrovod run by the
gloo median. Ratios > 1 mean ferrovod is faster. Stdlib only.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict

OP_ORDER = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")


def load(paths):
    """{key: [row, ...]} in file order (one row per run)."""
    runs = defaultdict(list)
    for path in paths:
        with open(path) as f:
            rows = json.load(f)
        for row in rows:
            runs[(row["op"], int(row["np"]), row.get("dtype", "f32"), int(row["bytes"]))].append(row)
    return runs


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


def table(fv, gl):
    head = ["op", "np", "type", "size", "ferrovod time (µs)", "gloo time (µs)",
            "ferrovod busbw (GB/s)", "gloo busbw (GB/s)", "busbw ratio ferrovod/gloo",
            "time ratio gloo/ferrovod", "runs f/g", "per-run busbw ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(set(fv) | set(gl), key=sort_key):
        f_rows, g_rows = fv.get(key, []), gl.get(key, [])
        f_t, g_t = median(f_rows, "median_s", 1e6), median(g_rows, "median_s", 1e6)
        f_bw, g_bw = median(f_rows, "busbw_gbs"), median(g_rows, "busbw_gbs")
        both = f_rows and g_rows
        bw_ratio = f_bw / g_bw if both and g_bw > 0 else None
        t_ratio = g_t / f_t if both and f_t > 0 else None
        per_run = "—"
        if both:
            if len(f_rows) == len(g_rows):
                pairs = [(f["busbw_gbs"], g["busbw_gbs"]) for f, g in zip(f_rows, g_rows)]
            else:
                pairs = [(f["busbw_gbs"], g_bw) for f in f_rows]
            per_run = ", ".join(f"{a / b:.2f}" if b > 0 else "—" for a, b in pairs)
        op, n, dtype, nbytes = key
        cells = [op, str(n), dtype, human(nbytes),
                 fmt(f_t, ".1f"), fmt(g_t, ".1f"),
                 fmt(f_bw, ".3f"), fmt(g_bw, ".3f"), fmt(bw_ratio, ".2f"), fmt(t_ratio, ".2f"),
                 f"{len(f_rows)}/{len(g_rows)}", per_run]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferrovod", nargs="+", required=True, metavar="JSON", help="ferrovod-bench results")
    ap.add_argument("--gloo", nargs="+", required=True, metavar="JSON", help="gloo_bench.py results")
    ap.add_argument("--out-md", metavar="PATH", help="also write the markdown table here")
    args = ap.parse_args()

    md = table(load(args.ferrovod), load(args.gloo))
    sys.stdout.write(md)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
