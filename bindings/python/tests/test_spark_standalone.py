"""``HorovodRunner`` on a Spark standalone cluster spread over three fake hosts: network
namespaces with their own addresses and host names (``_netns_cluster``), a master on host 0,
one Worker of 2 cores on each of hosts 1 and 2, all started with pip pyspark's own
``spark-class``, and a driver on host 0. Needs root; CI runs the Python tests as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from _netns_cluster import Cluster, alive, kind

pytestmark = [pytest.mark.spark, pytest.mark.slow]

STEPS, LR = 4, 0.05
WORKERS = (1, 2)


def _why_not() -> str | None:
    """Why network namespaces cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2, util-linux)"
    # Root without CAP_SYS_ADMIN (some containers) cannot: ask the kernel.
    probe = f"fvsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _why_not()
    if why:
        pytest.skip(why)
    pid = os.getpid()
    # 10.214.x: tests/multihost.rs takes 10.200.x to 10.203.x.
    directory = Path(tempfile.mkdtemp(prefix=f"ferrovod-standalone-{pid}-"))
    c = Cluster(f"fvs{pid}", f"10.214.{pid % 250 + 1}", 3, directory)
    try:
        c.up()
        c.start_spark(cores=2, memory="1g", timeout=120)
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


def _finish(cluster: Cluster, driver: subprocess.Popen[bytes], out: Path, timeout: float) -> dict:
    """Waits for a driver to exit; what it wrote, after asserting it exited 0."""
    try:
        code = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait(timeout=10)
        pytest.fail(f"the driver did not finish within {timeout:g} s\n{cluster.log_tails()}")
    result = json.loads(out.read_text()) if out.exists() else {}
    assert code == 0 and "error" not in result, f"driver exit {code}: {result}\n{cluster.log_tails()}"
    return result


def _assert_only_daemons_left(cluster: Cluster, seconds: float) -> None:
    """Once an application ended, within ``seconds``: its executors are gone too, and each host
    runs only its daemon (the master on host 0, one Worker elsewhere)."""
    deadline = time.monotonic() + seconds
    while True:
        left = {h: cluster.processes(h) for h in range(cluster.hosts)}
        extra = {h: {p: c for p, c in procs.items() if kind(c) != ("master" if h == 0 else "worker")}
                 for h, procs in left.items()}
        if not any(extra.values()):
            break
        assert time.monotonic() < deadline, f"still running {seconds:g} s after the application ended: {extra}"
        time.sleep(0.2)
    assert [kind(c) for h in range(cluster.hosts) for c in left[h].values()] == ["master", "worker", "worker"], left


def _reference(steps: int, lr: float) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """What ``_netns_cluster.train`` should reach on 4 ranks, computed here in one process: rank
    0's start, each step on the mean of the 4 shards' gradients. ``(start, params, losses)``."""
    import torch

    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    start = [p.detach().flatten().tolist() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(4)]
    losses = []
    for _ in range(steps):
        grads, step_losses = [], []
        for gen in gens:
            x = torch.randn(16, 4, generator=gen)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.25
            model.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            step_losses.append(loss.item())
        for p, *shards in zip(model.parameters(), *grads):
            p.grad = torch.stack(shards).mean(dim=0)
        opt.step()
        losses.append(sum(step_losses) / 4)
    return start, [p.detach().flatten().tolist() for p in model.parameters()], losses


def test_horovodrunner_trains_across_two_worker_hosts(cluster):
    out = cluster.dir / "train.json"
    started = time.monotonic()
    result = _finish(cluster, cluster.start_driver("driver-train", out, "train", str(STEPS), str(LR)), out, 240)
    print(f"train: cluster ready for the driver after {result['ready_s']:.1f} s, job {result['job_s']:.1f} s, "
          f"driver {time.monotonic() - started:.1f} s")
    facts = result["value"]
    assert [f["rank"] for f in facts] == [0, 1, 2, 3] and all(f["size"] == 4 for f in facts)

    # Placement: two hosts (the workers' own host names), two ranks each, local and cross
    # ranks by host.
    host_of = {cluster.hostname(h): h for h in WORKERS}
    assert Counter(f["hostname"] for f in facts) == {cluster.hostname(h): 2 for h in WORKERS}, facts
    by_host = {h: [f for f in facts if f["hostname"] == cluster.hostname(h)] for h in WORKERS}
    for h, ranks in by_host.items():
        assert [f["local_rank"] for f in ranks] == [0, 1], (h, ranks)
        assert all(f["local_size"] == 2 and f["cross_size"] == 2 for f in ranks), (h, ranks)
        assert len({f["cross_rank"] for f in ranks}) == 1, (h, ranks)
    assert sorted(ranks[0]["cross_rank"] for ranks in by_host.values()) == [0, 1]
    assert facts[0]["cross_rank"] == 0  # rank 0's host comes first

    # Every collective is exact, on every rank.
    for f in facts:
        assert f["ints"] == [1001001001 + 10 * i for i in range(6)], f["ints"]
        assert f["halves"] == [8.0, 1.875, -6.0], f["halves"]
        assert f["rows"] == [[r, r] for r in range(4) for _ in range(r + 1)], f["rows"]
        assert f["root"] == [22.0], f["root"]

    # The hosts talk over their own addresses, never loopback: the rendezvous is task 0's host
    # (rank 0's), and every connection of every rank runs from its host's address to one of
    # the cluster's.
    rank0_address = cluster.address(host_of[facts[0]["hostname"]])
    for f in facts:
        mine = cluster.address(host_of[f["hostname"]])
        other = cluster.address(3 - host_of[f["hostname"]])
        assert f["rendezvous"].rsplit(":", 1)[0] == rank0_address, f
        assert f["master_addr"] in (None, rank0_address), f
        conns = f["connections"]
        assert conns, f"rank {f['rank']} has no TCP connection"
        for local, remote in conns:
            assert local == mine, f"rank {f['rank']} on {mine} has a connection from {local}: {conns}"
            assert remote.startswith(cluster.subnet + ".") and remote != cluster.address(0), (f["rank"], conns)
        assert other in {remote for _, remote in conns}, f"rank {f['rank']} has no link to the other host: {conns}"

    # The training: rank 0's start everywhere, the replicas equal after every step, and equal
    # to one process stepping on the mean of the four shards' gradients.
    start, params, losses = _reference(STEPS, LR)
    for f in facts:
        assert f["start"] == start, f"rank {f['rank']} did not start from rank 0's parameters"
        assert f["params"] == facts[0]["params"], f"rank {f['rank']}'s replica differs from rank 0's"
        assert f["losses"] == facts[0]["losses"]
    for got, want in zip(facts[0]["params"], params):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert facts[0]["losses"] == pytest.approx(losses, rel=1e-5)
    assert facts[0]["params"] != start and losses[-1] < losses[0]

    _assert_only_daemons_left(cluster, 30)


def test_cancelling_the_job_leaves_no_process_on_any_host(cluster):
    markers = cluster.dir / "markers"
    markers.mkdir()
    out = cluster.dir / "cancel.json"
    driver = cluster.start_driver("driver-cancel", out, "cancel", str(markers))
    try:
        deadline = time.monotonic() + 180
        while len(list(markers.glob("rank-?"))) < 4:
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the 4 ranks did not all start (driver exit {driver.poll()}): "
                            f"{sorted(p.name for p in markers.iterdir())}\n{cluster.log_tails()}")
            time.sleep(0.2)
        ranks = {p.name: json.loads(p.read_text()) for p in markers.glob("rank-?")}
        assert Counter(r["hostname"] for r in ranks.values()) == {cluster.hostname(h): 2 for h in WORKERS}, ranks

        # What the job runs on the worker hosts: each rank and its launcher (ferrovod-run), in
        # the namespace of the host its name says.
        before = {h: cluster.processes(h) for h in WORKERS}
        host_of = {cluster.hostname(h): h for h in WORKERS}
        for name, r in ranks.items():
            h = host_of[r["hostname"]]
            assert "ferrovod._worker" in before[h].get(r["pid"], ""), (name, r, before[h])
            assert " -m ferrovod " in before[h].get(r["launcher"], "") + " ", (name, r, before[h])
        job = {p: c for h in WORKERS for p, c in before[h].items() if kind(c) is None}
        assert {p for r in ranks.values() for p in (r["pid"], r["launcher"])} <= set(job), (ranks, job)

        (markers / "cancel").touch()  # the driver cancels the job group now
        cancelled = time.monotonic()
        limit = 30
        while True:
            now = {h: cluster.processes(h) for h in WORKERS}
            left = [p for p in job if alive(p)]
            # What may stay: the Worker, the application's executor and its PySpark daemon
            # (with its idle workers); nothing of the job, nothing else.
            strays = {h: {p: c for p, c in procs.items() if kind(c) is None} for h, procs in now.items()}
            if not left and not any(strays.values()):
                break
            assert time.monotonic() - cancelled < limit, (
                f"{limit} s after the cancel, still running: {[(p, job[p]) for p in left]}; "
                f"not a Spark daemon: {strays}"
            )
            time.sleep(0.1)
        print(f"cancel: the job's {len(job)} processes were gone {time.monotonic() - cancelled:.1f} s after the cancel")
        assert all(kind(c) is not None for h in WORKERS for c in now[h].values())

        result = _finish(cluster, driver, out, 90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
    # HorovodRunner.run raised, saying why; it returned nothing.
    assert result.get("job_error_type", "").endswith(".FerrovodError"), result
    assert "cancelled" in result["job_error"] and not result.get("returned"), result
    print(f"cancel: HorovodRunner.run raised {result['cancel_to_return_s']:.1f} s after the cancel")
    _assert_only_daemons_left(cluster, 30)
