"""Spark standalone across fake hosts, for ``test_spark_standalone.py``.

The hosts are network namespaces made by ``tests/multihost/hosts.sh`` (each its own address on
one bridge), and every process started on one also gets its own UTS namespace, so its own host
name: ferrovod tells hosts apart by host name and boot id, and the boot id is shared. Host 0
runs the master and the driver, every other host one Worker; all of them are pip pyspark's own
``spark-class``, as a user would start them. Needs root.

Run as a script, this file is the driver on host 0 (``Cluster.start_driver`` starts it)::

    python _netns_cluster.py MASTER_URL OUT_JSON train STEPS LR
    python _netns_cluster.py MASTER_URL OUT_JSON cancel MARKER_DIR

The job functions (``train``, ``block``) live here too, at module level, so ``ferrovod.spark``
sends them by reference: the executors share this machine's file system.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HOSTS_SH = REPO / "tests" / "multihost" / "hosts.sh"

#: What may run on a host once no job runs: the master, the Worker, the executor of a live
#: application and its PySpark daemon (whose forks, the idle Python workers, share its command
#: line). Anything else there is a leftover.
WORKER_DAEMONS = {
    "master": "org.apache.spark.deploy.master.Master",
    "worker": "org.apache.spark.deploy.worker.Worker",
    "executor": "org.apache.spark.executor.CoarseGrainedExecutorBackend",
    "pyspark-daemon": "pyspark.daemon",
}


def pyspark_home() -> Path:
    spec = importlib.util.find_spec("pyspark")
    assert spec is not None and spec.submodule_search_locations, "pyspark is not installed"
    return Path(list(spec.submodule_search_locations)[0])


def java_home() -> str:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Spark needs Java: no `java` on PATH and no JAVA_HOME")
    return str(Path(os.path.realpath(java)).parents[1])


def cmdline(pid: int) -> str:
    """``/proc/PID/cmdline`` with spaces; ``""`` for a process already gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kind(command: str) -> str | None:
    """Which of ``WORKER_DAEMONS`` a command line is, or ``None``."""
    for name, marker in WORKER_DAEMONS.items():
        if name == "pyspark-daemon":
            if " -m pyspark.daemon " in f"{command} ":
                return name
        elif command.startswith(("java ", "/")) and f" {marker} " in f"{command} ":
            return name
    return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<{path}: {e}>"
    return f"--- {path} (last {min(lines, len(text))} lines)\n" + "\n".join(text[-lines:])


class Cluster:
    """``hosts`` namespaces ``NAME-h0..``; ``dir`` holds every log, the workers' work
    directories and what the tests share with the ranks."""

    def __init__(self, name: str, subnet: str, hosts: int, directory: Path) -> None:
        self.name, self.subnet, self.hosts, self.dir = name, subnet, hosts, directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._up = False

    # --- hosts -------------------------------------------------------------------------------

    def up(self) -> None:
        self._up = True  # set first: a half-made set of namespaces is removed too
        self._script("up", self.name, str(self.hosts), self.subnet)

    def down(self) -> None:
        """Stops every process started here, removes the namespaces (``hosts.sh`` SIGKILLs what
        still runs in them) and reaps the children."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue  # still running: `hosts.sh down` below SIGKILLs it
        if self._up:
            self._script("down", self.name, str(self.hosts))
            self._up = False
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _script(self, *args: str) -> None:
        out = subprocess.run(["bash", str(HOSTS_SH), *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"hosts.sh {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")

    def address(self, host: int) -> str:
        return f"{self.subnet}.{10 + host}"

    def namespace(self, host: int) -> str:
        return f"{self.name}-h{host}"

    def hostname(self, host: int) -> str:
        return f"{self.name}-host{host}"

    def pids(self, host: int) -> list[int]:
        """Every process in host ``host``'s network namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.namespace(host)], capture_output=True, text=True, timeout=10)
        return [int(p) for p in out.stdout.split()]

    def processes(self, host: int) -> dict[int, str]:
        """The live processes on host ``host``: pid -> command line."""
        return {p: cmdline(p) for p in self.pids(host) if alive(p)}

    def start(self, host: int, label: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Runs ``argv`` on host ``host`` under its host name, output into ``dir/LABEL.log``.
        ``ip netns exec``, ``unshare`` and ``sh`` all exec: the child is ``argv`` itself."""
        log = self.dir / f"{label}.log"
        command = [
            "ip", "netns", "exec", self.namespace(host), "unshare", "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname(host), *argv,
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.dir, start_new_session=True)
        self.procs[label], self.logs[label] = proc, log
        return proc

    # --- Spark -------------------------------------------------------------------------------

    def spark_env(self, host: int) -> dict[str, str]:
        home = pyspark_home()
        conf = self.dir / "conf"  # empty: no spark-defaults or log settings of the machine's
        conf.mkdir(exist_ok=True)
        return {
            **os.environ,
            "JAVA_HOME": java_home(),
            "SPARK_HOME": str(home),
            "SPARK_CONF_DIR": str(conf),
            # Spark binds to and advertises the host's own address, never a name: no name of
            # these hosts resolves anywhere.
            "SPARK_LOCAL_IP": self.address(host),
            "SPARK_LOCAL_HOSTNAME": self.address(host),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_DAEMON_MEMORY": "512m",
        }

    @property
    def master_url(self) -> str:
        return f"spark://{self.address(0)}:7077"

    def start_spark(self, cores: int, memory: str, timeout: float) -> None:
        """The master on host 0, a Worker on every other host; returns once every Worker has
        registered with the master, or raises with the logs' tails after ``timeout`` seconds."""
        spark_class = str(pyspark_home() / "bin" / "spark-class")
        self.start(0, "master", [
            spark_class, "org.apache.spark.deploy.master.Master",
            "--host", self.address(0), "--port", "7077", "--webui-port", "0",
        ], self.spark_env(0))
        for host in range(1, self.hosts):
            work = self.dir / f"work{host}"
            work.mkdir()
            self.start(host, f"worker{host}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", self.master_url,
                "--host", self.address(host), "--cores", str(cores), "--memory", memory,
                "--work-dir", str(work), "--webui-port", "0",
            ], self.spark_env(host))
        deadline = time.monotonic() + timeout
        while True:
            registered = self.registered_workers()
            if len(registered) == self.hosts - 1:
                return
            dead = [label for label, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not within {timeout:g} s"
                raise RuntimeError(f"the standalone cluster did not come up ({why}); registered: {registered}\n"
                                   + self.log_tails())
            time.sleep(0.5)

    def registered_workers(self) -> list[str]:
        """The worker addresses the master's log says it registered."""
        try:
            text = self.logs["master"].read_text(errors="replace")
        except OSError:
            return []
        return [self.address(h) for h in range(1, self.hosts)
                if any("Registering worker" in line and f"{self.address(h)}:" in line for line in text.splitlines())]

    def start_driver(self, label: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
        """This file as the driver on host 0 (see the module's doc)."""
        env = {**self.spark_env(0), "PYTHONUNBUFFERED": "1"}
        script = str(Path(__file__).resolve())
        return self.start(0, label, [sys.executable, script, self.master_url, str(out), *args], env)

    def log_tails(self) -> str:
        """The last lines of every log here: the daemons', the drivers', the executors'."""
        paths = list(self.logs.values()) + sorted(self.dir.glob("work*/app-*/*/std*"))
        return "\n".join(tail(p) for p in paths)


# --- the driver, on host 0 ----------------------------------------------------------------------


def driver_main(master: str, out: str, mode: str, *args: str) -> int:
    address = master.split("//", 1)[1].rsplit(":", 1)[0]
    from pyspark.sql import SparkSession

    import ferrovod.spark as fs

    # By reference: this module's functions as ``_netns_cluster.*``, not ``__main__.*``.
    import _netns_cluster as jobs

    start = time.monotonic()
    spark = (
        SparkSession.builder.master(master)
        .appName(f"ferrovod-standalone-{mode}")
        .config("spark.driver.host", address)
        .config("spark.driver.bindAddress", address)
        .config("spark.executor.cores", "2")
        .config("spark.task.cpus", "1")
        .config("spark.cores.max", "4")
        .config("spark.executor.memory", "768m")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    sc = spark.sparkContext
    result: dict = {}
    try:
        # Both executors, before the job: a barrier stage of 4 tasks needs all 4 slots.
        executors = 0
        deadline = time.monotonic() + 120
        while executors < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {executors} executor(s) registered within 120 s")
            time.sleep(0.2)
            executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # less the driver
        result["ready_s"] = time.monotonic() - start
        began = time.monotonic()
        if mode == "train":
            steps, lr = int(args[0]), float(args[1])
            result["value"] = fs.HorovodRunner(np=4).run(jobs.train, steps=steps, lr=lr)
        elif mode == "cancel":
            result.update(_run_and_cancel(sc, fs, jobs, Path(args[0])))
        else:
            raise ValueError(f"unknown mode {mode!r}")
        result["job_s"] = time.monotonic() - began
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        Path(out).write_text(json.dumps(result))
        spark.stop()
    return 0


def _run_and_cancel(sc, fs, jobs, markers: Path) -> dict:
    """Runs ``block`` in a thread under a job group and, once the test creates ``markers/cancel``
    (it has seen every rank start), cancels the group as a notebook's cancel button does."""
    group = "ferrovod-standalone-cancel"
    outcome: dict = {}

    def job() -> None:
        sc.setJobGroup(group, "cancelled by the test", interruptOnCancel=True)
        try:
            fs.HorovodRunner(np=4).run(jobs.block, marker_dir=str(markers), seconds=300.0)
            outcome["returned"] = True
        except BaseException as e:
            outcome["job_error_type"] = f"{type(e).__module__}.{type(e).__qualname__}"
            outcome["job_error"] = str(e)

    thread = threading.Thread(target=job, name="horovodrunner")
    thread.start()
    deadline = time.monotonic() + 240
    while not (markers / "cancel").exists():
        if not thread.is_alive() or time.monotonic() > deadline:
            thread.join(timeout=5)
            raise RuntimeError(f"no cancel request from the test (job ended: {not thread.is_alive()}, {outcome})")
        time.sleep(0.1)
    cancelled = time.monotonic()
    sc.cancelJobGroup(group)
    thread.join(timeout=60)
    if thread.is_alive():
        raise RuntimeError("HorovodRunner.run did not return within 60 s of the cancel")
    return {**outcome, "cancel_to_return_s": time.monotonic() - cancelled}


# --- the job functions, on the ranks -------------------------------------------------------------


def own_tcp_connections() -> list[tuple[str, str]]:
    """``(local, remote)`` addresses of this process's established TCP connections, from
    ``/proc/self/net`` (this network namespace's table) matched against its own socket fds."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])

    def ip(hexaddr: str) -> str:
        raw = bytes.fromhex(hexaddr)
        # The kernel prints each 32-bit word in host (little-endian) order.
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        addr = ipaddress.ip_address(raw)
        mapped = getattr(addr, "ipv4_mapped", None)
        return str(mapped or addr)

    conns = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes:  # 01: ESTABLISHED
                conns.append((ip(local.split(":")[0]), ip(remote.split(":")[0])))
    return conns


def train(steps: int, lr: float) -> list[dict]:
    """A Horovod training loop, unchanged but for the import, preceded by collectives whose
    exact results the test knows. Every rank's facts come back through rank 0 (HorovodRunner
    returns rank 0's value): rank, placement, host name, what it reduced, its own TCP
    connections, its parameters before and after training."""
    import socket

    import torch

    import ferrovod.torch as hvd

    hvd.init()
    rank = hvd.rank()
    ints = hvd.allreduce(torch.arange(6, dtype=torch.int64) * (rank + 1) + 1000 ** rank, op=hvd.Sum, name="ints")
    halves = hvd.allreduce(torch.tensor([rank + 0.5, 2.0 ** -rank, -rank], dtype=torch.float64), op=hvd.Sum, name="f64")
    rows = hvd.allgather(torch.full((rank + 1, 2), rank, dtype=torch.int32), name="rows")
    root = hvd.broadcast(torch.tensor([7.0 * rank + 1]), root_rank=3, name="root")

    torch.manual_seed(1234 + rank)  # a different start on every rank: the broadcast must undo it
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    start = [p.detach().flatten().tolist() for p in model.parameters()]
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.25
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(hvd.allreduce(loss.detach(), op=hvd.Average, name="loss").item())
    facts = {
        "rank": rank, "size": hvd.size(),
        "local_rank": hvd.local_rank(), "local_size": hvd.local_size(),
        "cross_rank": hvd.cross_rank(), "cross_size": hvd.cross_size(),
        "hostname": socket.gethostname(),
        "rendezvous": os.environ.get("FERROVOD_RENDEZVOUS"),
        "master_addr": os.environ.get("MASTER_ADDR"),
        "connections": own_tcp_connections(),  # while the job's links are still up
        "ints": ints.tolist(), "halves": halves.tolist(), "rows": rows.tolist(), "root": root.tolist(),
        "start": start, "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "losses": losses,
    }
    everyone = hvd.allgather_object(facts, name="facts")
    hvd.shutdown()
    return everyone


def block(marker_dir: str, seconds: float) -> None:
    """Allreduces in a loop for ``seconds``: the job only ends when it is cancelled. Once its
    first allreduce is done, each rank writes ``rank-N`` (JSON: its pid, its launcher's pid,
    its host name) into ``marker_dir``."""
    import socket

    import numpy as np

    import ferrovod as fv

    fv.init()
    tick = np.ones(4)
    fv.allreduce(tick, op=fv.Sum, name="tick")
    path = Path(marker_dir) / f"rank-{fv.rank()}"
    path.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), "launcher": os.getppid(),
                                                     "hostname": socket.gethostname()}))
    path.with_suffix(".tmp").rename(path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fv.allreduce(tick, op=fv.Sum, name="tick")
        time.sleep(0.2)
    fv.shutdown()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # teardown's SIGTERM stops Spark too
    sys.exit(driver_main(*sys.argv[1:]))
