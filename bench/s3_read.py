"""Read throughput of one cache on local disk vs on S3 (``s3://``, fsspec/s3fs), side by side in one
run, with one reader and with several reader processes at once (per-reader figure).

The S3 server is moto's standalone server (``python -m moto.server``) in a separate process on
127.0.0.1: a pure-Python server sharing this machine's cores with the readers, so the S3 figure is
a floor for the client path (request count, latency, decompression), not a prediction of AWS S3.
Rows are read with ``CacheReader.read(decode=False)`` (what the student's loader does); MB/s
counts the cache's stored (compressed) bytes per row.

Run: ``.venv/bin/python -m bench.s3_read [--rows 32] [--readers 3] [--epochs 2]``
Needs ``moto[server]`` and ``s3fs``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench"


def read_all(location: str, epochs: int) -> dict[str, float]:
    """Best-epoch rows/s of reading every ok row of the cache at ``location``, and the open time."""
    from storage.cache import CacheReader

    t = time.perf_counter()
    reader = CacheReader(location)
    opened = time.perf_counter() - t
    best = 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        for i in reader.ok_rows:
            reader.read(int(i), decode=False)
        best = max(best, len(reader.ok_rows) / (time.perf_counter() - t))
    return {"rows_per_s": best, "open_s": opened, "rows": float(len(reader.ok_rows))}


def _concurrent(location: str, readers: int, epochs: int) -> list[dict[str, float]]:
    """:func:`read_all` in ``readers`` processes started together; each one's own figures."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "bench.s3_read", "--reader", location, "--epochs", str(epochs)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) for _ in range(readers)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a reader process failed: {outs}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def _stored_bytes_per_row(local: Path, rows: int) -> float:
    return sum(p.stat().st_size for p in (local / "targets").rglob("*") if p.is_file()) / rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32, help="rows of the benchmark cache (default 32)")
    p.add_argument("--distinct", type=int, default=2, help="distinct samples they cycle through (default 2)")
    p.add_argument("--readers", type=int, default=3, help="reader processes at once (default 3)")
    p.add_argument("--epochs", type=int, default=2, help="passes per reader; the best is kept (default 2)")
    p.add_argument("--reader", default=None, help=argparse.SUPPRESS)  # internal: one reader process
    args = p.parse_args(argv)
    if args.reader:
        print(json.dumps(read_all(args.reader, args.epochs)))
        return 0

    import s3fs

    from bench.stream import build_cache

    moto, endpoint = _start_moto()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, "cache")
            t = time.perf_counter()
            build_cache(str(local), args.rows, args.distinct)
            print(f"built a {args.rows}-row nuScenes-scale cache in {time.perf_counter() - t:.1f} s")
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            t = time.perf_counter()
            fs.put(str(local), f"{BUCKET}/cache", recursive=True)
            mb_row = _stored_bytes_per_row(local, args.rows) / 1e6
            print(f"uploaded to s3://{BUCKET}/cache in {time.perf_counter() - t:.1f} s; {mb_row:.2f} MB stored/row")
            where = {"local": str(local), "s3": f"s3://{BUCKET}/cache"}
            load = os.getloadavg()[0]
            single = {k: read_all(v, args.epochs) for k, v in where.items()}
            many = {k: _concurrent(v, args.readers, args.epochs) for k, v in where.items()}
            load = max(load, os.getloadavg()[0])
    finally:
        moto.terminate()
        moto.wait()
    print(f"# bench/s3_read.py: {args.rows} rows, read(decode=False), best of {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs, load average up to {load:.1f}; S3 = moto server on 127.0.0.1")
    for k in where:
        per = [r["rows_per_s"] for r in many[k]]
        mean = sum(per) / len(per)
        print(f"{k:5s}: 1 reader {single[k]['rows_per_s']:6.1f} rows/s ({single[k]['rows_per_s'] * mb_row:6.1f} MB/s, "
              f"open {single[k]['open_s']:.2f} s); {args.readers} readers at once: {mean:6.1f} rows/s per reader "
              f"({mean * mb_row:6.1f} MB/s), {sum(per):6.1f} rows/s together")
    ratio1 = single["s3"]["rows_per_s"] / single["local"]["rows_per_s"]
    ratio_n = (sum(r["rows_per_s"] for r in many["s3"]) / sum(r["rows_per_s"] for r in many["local"]))
    print(f"ratio s3/local: {ratio1:.2f}x with 1 reader, {ratio_n:.2f}x with {args.readers} readers (per reader)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
