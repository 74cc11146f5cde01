"""The cache job on a real two-node Ray cluster on this machine: a head node and a worker node, each
its own raylet (``ray start``) with 1 CPU, its own ``--temp-dir`` under the test's tmp dir and its
own ports. ``bevkd cache --address`` runs in a subprocess; the worker node is killed (SIGKILL of
every process of that node) once the first shard is committed: the job must finish on the head
node alone, ``bevkd verify`` must be clean, and no process of either node may be left behind.

Never ``ray stop``: it would stop every Ray on the machine, other people's too. Processes are
found by their node's temp dir in ``/proc/*/cmdline`` and by parentage (actor workers rename
themselves ``ray::ShardWorker``)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cache_job_support import make_dataset, manifest_rows

from pipeline.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
#: Fast detection of a dead node (defaults: 3 s period x 5 failures after a 5 s delay).
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                 "health_check_initial_delay_ms": 1000}


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (non-zombie) process we can read."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":  # a zombie is gone, only not yet reaped by its parent
            out[int(d.name)] = (int(ppid), cmd)
    return out


def node_pids(temp_dir: Path) -> dict[int, str]:
    """pid -> command line of the processes of the Ray node whose temp dir is ``temp_dir``: those
    naming it on their command line, and their descendants (workers, which rename themselves)."""
    procs = _procs()
    found = {pid for pid, (_, cmd) in procs.items() if str(temp_dir) in cmd and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {pid: procs[pid][1] for pid in found}


def kill_node(temp_dir: Path, sig: int = signal.SIGKILL) -> None:
    for pid in node_pids(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_args(temp_dir: Path, worker_ports: int) -> list[str]:
    """Flags giving a node its own temp dir, 1 CPU, a small object store and ports of its own."""
    return ["--temp-dir", str(temp_dir), "--num-cpus", "1", "--object-store-memory", str(80 * 1024 ** 2),
            "--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
            "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 49),
            "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
            "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
            "--disable-usage-stats"]


@dataclass(frozen=True, kw_only=True)
class LocalCluster:
    """A head node and one worker node on this machine (1 CPU each)."""

    address: str
    head_dir: Path
    worker_dir: Path
    env: dict[str, str]


@pytest.fixture
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """Start the two nodes; the finalizer always kills every process of both (``ray stop`` would hit
    other people's Ray) and fails the test if one survives."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("Ray tests do not run under xdist")
    head_dir, worker_dir = tmp_path_factory.mktemp("rh"), tmp_path_factory.mktemp("rw")  # short: socket paths
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    base = random.Random(port).randrange(20000, 30000, 100)  # worker port ranges, distinct per node
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                        "--include-dashboard", "false", "--ray-client-server-port", str(_free_port()),
                        "--system-config", json.dumps(SYSTEM_CONFIG), *_node_args(head_dir, base)],
                       env=env, check=True, capture_output=True, text=True, timeout=180)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                        *_node_args(worker_dir, base + 50)],
                       env=env, check=True, capture_output=True, text=True, timeout=180)
        yield LocalCluster(address=f"127.0.0.1:{port}", head_dir=head_dir, worker_dir=worker_dir, env=env)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"ray start failed: {exc.stdout[-2000:]}{exc.stderr[-2000:]}")
    finally:
        for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            for d in (worker_dir, head_dir):
                kill_node(d, sig)
            deadline = time.monotonic() + grace_s
            while (node_pids(head_dir) or node_pids(worker_dir)) and time.monotonic() < deadline:
                time.sleep(0.2)
        left = {**node_pids(head_dir), **node_pids(worker_dir)}
        assert not left, f"Ray processes left behind: {left}"


def _worker_node_has_an_actor(worker_dir: Path) -> bool:
    return any("ShardWorker" in cmd for cmd in node_pids(worker_dir).values())


def test_cache_job_survives_the_loss_of_a_worker_node(cluster, tmp_path_factory):
    dataroot = make_dataset(tmp_path_factory.mktemp("cl") / "nuscenes", num_scenes=2, samples_per_scene=6)
    out = tmp_path_factory.mktemp("clout") / "cache"
    cmd = [sys.executable, "-m", "pipeline.cli", "cache", "--address", cluster.address, "--dataroot", str(dataroot),
           "--teacher", "test_cache_job_support:slow_tiny_bev_teacher", "--out", str(out), "--shard-size", "1",
           "--image-size", "320", "180", "--depth-stride", "8", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(cluster.env, RAY_TMPDIR=str(cluster.head_dir)),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("manifest/shard-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before the node was killed: {proc.communicate()}"
        assert _worker_node_has_an_actor(cluster.worker_dir), "no actor ran on the worker node"
        committed_before = len(list(out.glob("manifest/shard-*.parquet")))
        kill_node(cluster.worker_dir)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert committed_before < 12, "the node was killed after the job had committed everything"
    assert "12 rows ok, 0 failed" in stdout and "with 2 worker(s)" in stdout, stdout
    assert not node_pids(cluster.worker_dir)
    rows = manifest_rows(out)
    assert sorted(r[0] for r in rows) == list(range(12)) and {r[3] for r in rows} == {"ok"}
    assert main(["verify", str(out), "--no-progress"]) == 0
