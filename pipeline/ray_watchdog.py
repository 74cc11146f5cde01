"""A local Ray started by bevkd dies with its driver, also on ``kill -9`` (Linux).

Ray binds the processes the driver starts (GCS, raylet, monitors) to it with
``PR_SET_PDEATHSIG``, but the raylet's own children, the dashboard agent and the runtime-env
agent (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, ~80-110 MB each), notice the dead
raylet and then hang reporting it to the dead GCS; they never exit (Ray 2.60, measured: still
alive minutes later). :func:`start` launches this module as a separate small process (its own
session, so a signal to the driver's process group does not take it along) with a pipe from the
driver on its stdin. While the driver lives it records, once a second, every descendant of the
driver with its start time; when the pipe reaches EOF (the driver exited, however it died) it
SIGKILLs each recorded process that is still the same process (same start time, so a reused
pid is never hit), then exits. Nothing outside the driver's own process tree is touched.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

#: Seconds between two scans of the driver's process tree.
SCAN_INTERVAL_S = 1.0
#: What the driver writes before closing the pipe when it shut Ray down itself (nothing to kill).
STOP = b"stop\n"


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time in clock ticks)`` of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every living descendant of ``root`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    found, todo = {}, list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in found:
            found[pid] = starts[pid]
            todo += children.get(pid, ())
    return found


def watch(driver: int, stdin: IO[bytes]) -> int:
    """Record the driver's descendants until ``stdin`` reaches EOF, then SIGKILL the survivors.
    Returns how many processes it killed (0 after :data:`STOP`)."""
    me, seen = os.getpid(), {}
    while True:
        seen.update({p: t for p, t in descendants(driver).items() if p != me})
        ready, _, _ = select.select([stdin], [], [], SCAN_INTERVAL_S)
        data = os.read(stdin.fileno(), 4096) if ready else b"x"
        if data.endswith(STOP):  # the driver shut Ray down itself
            return 0
        if not data:  # EOF without STOP: the driver died
            break
    killed = 0
    for pid, start in seen.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def start() -> subprocess.Popen[bytes] | None:
    """Start the watchdog of this process's Ray (None where ``/proc`` is absent). Keep the
    returned object alive; :func:`stop` ends it when the driver shuts Ray down itself."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen([sys.executable, "-m", "pipeline.ray_watchdog", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Tell the watchdog Ray was shut down (it exits without killing anything) and reap it."""
    if proc is None:
        return
    if proc.stdin is not None:
        try:
            proc.stdin.write(STOP)
            proc.stdin.close()
        except OSError:  # it is gone already
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    watch(int(sys.argv[1]), sys.stdin.buffer)
