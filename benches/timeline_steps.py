"""Per-step summary of an engine timeline (FERROVOD_TIMELINE) of a training run: where a step's
gradient reduction spends its time. Used to explain the tch example's step against
ferrovod.torch's (benches/compare_train_step.py).

A tensor that occurs once per step (a gradient) has its k-th occurrence in step k. For each
step: from the first gradient's submission to the last one's completion (the engine's span),
the time until the last gradient was submitted (how long backward kept submitting), and the
time on the wire (the union of COMMUNICATED phases). Medians over steps.

    python benches/timeline_steps.py TRACE.json [--steps N]
"""
import argparse
import collections
import json
import statistics


def union(intervals):
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, required=True, help="steps in the run (tensors seen this often are gradients)")
    args = ap.parse_args()
    with open(args.trace) as f:
        events = json.load(f)
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    occurrences = collections.defaultdict(list)  # tid -> [{phase: (start, end)}]
    for e in events:
        if e.get("ph") == "X" and e["name"] == "QUEUED":
            occurrences[e["tid"]].append({})
        if e.get("ph") == "X" and occurrences[e["tid"]]:
            occurrences[e["tid"]][-1][e["name"]] = (e["ts"], e["ts"] + e["dur"])
    grads = {tid: occ for tid, occ in occurrences.items() if len(occ) == args.steps}
    if not grads:
        raise SystemExit(f"no tensor occurs exactly {args.steps} times in {args.trace}")
    span, submitting, wire = [], [], []
    for k in range(args.steps):
        steps = [occ[k] for occ in grads.values()]
        first = min(s["QUEUED"][0] for s in steps)
        last_submit = max(s["QUEUED"][0] for s in steps)
        done = max(v[1] for s in steps for v in s.values())
        span.append(done - first)
        submitting.append(last_submit - first)
        wire.append(union([s["COMMUNICATED"] for s in steps if "COMMUNICATED" in s]))
    med = lambda v: statistics.median(v) / 1e3  # noqa: E731 (µs to ms)
    print(f"{args.trace}: {len(grads)} gradients ({', '.join(sorted(names[t] for t in grads)[:3])}, ...); "
          f"per step (median): first submission to last completion {med(span):.3f} ms, "
          f"submissions spread over {med(submitting):.3f} ms, on the wire {med(wire):.3f} ms")


if __name__ == "__main__":
    main()
