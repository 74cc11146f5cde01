"""Fault cases of issue 12 around the cache job, kept as regression tests: failed rows are retried,
a half-created cache is completed, a full disk or a broken ``zarr.json`` gives one line naming the
file, verify and inspect say when a cache is incomplete or broken, Ray errors come back as their
cause, and a local Ray dies with its driver.

Real components only: a tiny generated nuScenes-format dataroot, the tiny pure-torch teacher of
``test_cache_job_support`` (importable by Ray workers), a real Zarr cache on disk, the CLI called
in-process (or as a subprocess where a process must be killed or a file system mounted), a real
local Ray. Write failures are real: a real full tmpfs (``unshare --mount``, skipped where mount
namespaces are not allowed) and a folder of the cache replaced by a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cli_checks import one_line
from test_cache_job_support import assert_same_caches, copy_dataset, make_dataset, manifest_rows

from pipeline.cache_job import CacheJobConfig
from pipeline.cache_plan import TeacherSource, plan_cache, run_loop
from pipeline.cli import main
from storage.cache import CacheReader, layout, manifest
from storage.cache.verify import verify_cache
from storage.nuscenes_reader import NuScenesReader

REPO = Path(__file__).resolve().parents[1]
TINY = "test_cache_job_support:tiny_bev_teacher"
CONFIG = CacheJobConfig(shard_size=3, batch_size=2, image_size=(320, 180), depth_stride=8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fc") / "nuscenes", num_scenes=2, samples_per_scene=4)


def _cache_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["cache", "--dataroot", str(root), "--teacher", TINY, "--out", str(out), "--shard-size", "3",
            "--batch-size", "2", "--image-hw", "180", "320", "--depth-stride", "8", "--no-progress", *extra]


def broken_teacher():
    """A teacher factory that imports fine and raises when called (inside a Ray actor)."""
    raise ValueError("broken_teacher: weights folder /nowhere/teacher missing")


# ---- 4. a rerun retries failed rows, keeping committed ok rows -------------------------------------------

def test_rerun_retries_failed_rows_and_keeps_ok_rows(dataroot, tmp_path, capsys):
    root, out = copy_dataset(dataroot, tmp_path / "data"), tmp_path / "cache"
    cam = Path(NuScenesReader(root).read(4).camera("CAM_BACK").image_path)
    saved = cam.read_bytes()
    cam.unlink()
    args = _cache_args(root, out, "--no-ray", "--max-failed-fraction", "0", "--batch-size", "1")  # batches of 1:
    assert main(args) == 1  # a retried row is computed exactly as in a fresh run
    capsys.readouterr()
    before = {r[0]: r for r in manifest_rows(out)}
    assert [r[3] for r in before.values()].count("failed") == 1
    frag_times = {p.name: p.stat().st_mtime_ns for p in (out / "manifest").glob("*.parquet")}
    ok_crc = {r: c for r, c in _crcs(out).items() if before[r][3] == "ok"}

    assert main(args) == 1  # still broken: retried, failed again
    assert "retrying 1 failed rows" in capsys.readouterr().err
    cam.write_bytes(saved)  # the user fixes the data and reruns the same command
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "retrying 1 failed rows" in captured.err and "8 rows ok, 0 failed" in captured.out
    assert sorted(r[0] for r in manifest_rows(out)) == list(range(8))  # each row once
    assert {r: c for r, c in _crcs(out).items() if r in ok_crc} == ok_crc  # ok rows kept as committed
    now = {p.name: p.stat().st_mtime_ns for p in (out / "manifest").glob("*.parquet")}
    assert [k for k in now if now[k] != frag_times[k]] == ["shard-000001.parquet"]  # only the retried shard
    run_loop(replace(CONFIG, batch_size=1), NuScenesReader(root), TeacherSource(name=TINY), tmp_path / "fresh")
    assert assert_same_caches(out, tmp_path / "fresh") == 8  # the retried row is what a fresh run stores
    assert verify_cache(out).ok


def _crcs(out: Path) -> dict[int, tuple]:
    table = CacheReader(out).rows.to_pydict()
    names = [k for k in table if k.startswith("crc32c:")]
    return {r: tuple(table[n][j] for n in names) for j, r in enumerate(table["row"])}


# ---- 5. a half-created cache is completed by a rerun -----------------------------------------------------

@pytest.mark.parametrize("interrupt", ["index", "array_meta"])
def test_a_half_created_cache_is_completed_by_rerun(dataroot, tmp_path, capsys, interrupt):
    out = tmp_path / "cache"
    teacher, info = TeacherSource(name=TINY).load()
    plan_cache(out, NuScenesReader(dataroot), teacher, info, CONFIG)  # created, nothing committed yet
    if interrupt == "index":  # the disk filled before the last metadata file (the sample index) was written
        (out / layout.SAMPLES_KEY).unlink()
        named = str(out / layout.SAMPLES_KEY)
    else:  # ... or in the middle of an array's zarr.json
        meta = out / layout.array_path("heatmap", "data") / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:40])
        named = str(meta)
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert named in captured.out and "creation did not finish" in one_line(captured.err, "verify")
    assert main(["inspect", str(out)]) == 1
    captured = capsys.readouterr()
    assert named in captured.err and "rerun the same bevkd cache command to complete it" in captured.out
    assert main(_cache_args(dataroot, out, "--no-ray")) == 0
    assert "8 rows ok, 0 failed" in capsys.readouterr().out
    assert main(["verify", str(out), "--no-progress"]) == 0
    assert main(["inspect", str(out)]) == 0


# ---- 7. --out unusable, corrupt zarr.json, write failures: one line naming the file ----------------------

def test_out_that_is_a_file_or_under_a_file_is_refused_in_one_line(dataroot, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    for out in (afile, afile / "cache"):
        assert main(_cache_args(dataroot, out, "--no-ray")) == 2
        err = one_line(capsys.readouterr().err, "cache")
        assert str(afile) in err and "is a file" in err
    assert afile.read_text() == "mine\n"


def test_corrupt_root_zarr_json_is_named(dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_cache_args(dataroot, out, "--no-ray")) == 0
    root_meta = out / "zarr.json"
    root_meta.write_bytes(root_meta.read_bytes()[:100])  # truncated
    capsys.readouterr()
    for cmd in (_cache_args(dataroot, out, "--no-ray"), ["verify", str(out), "--no-progress"], ["inspect", str(out)]):
        assert main(cmd) == 2
        err = one_line(capsys.readouterr().err, cmd[0])
        assert str(root_meta) in err, err
    assert len(manifest_rows(out)) == 8  # nothing committed was touched


def test_broken_array_metadata_is_noticed_and_named(dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_cache_args(dataroot, out, "--no-ray")) == 0
    meta = out / layout.array_path("heatmap", "data") / "zarr.json"
    meta.write_text(json.dumps({"zarr_format": 3, "node_type": "array"})[:30])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"bevkd inspect: {meta} is not valid JSON" in captured.err and "metadata problems" in captured.out
    assert main(["verify", str(out), "--no-progress"]) == 1
    assert f"CORRUPT: {meta} is not valid JSON" in capsys.readouterr().out
    assert main(_cache_args(dataroot, out, "--no-ray")) == 2
    err = one_line(capsys.readouterr().err, "cache")
    assert str(meta) in err and "not valid Zarr array metadata" in err


def test_a_write_failure_mid_job_is_one_line_and_loses_nothing(dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    teacher, info = TeacherSource(name=TINY).load()
    writer = plan_cache(out, NuScenesReader(dataroot), teacher, info, CONFIG)
    from pipeline.cache_job import process_shard

    process_shard(teacher, NuScenesReader(dataroot), writer, 0, CONFIG)  # shard 0 committed
    committed = manifest_rows(out)
    blocker = out / layout.array_path("heatmap", "data") / "c" / "1"  # shard 1's folder: a file now
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder\n")
    capsys.readouterr()
    assert main(_cache_args(dataroot, out, "--no-ray")) == 2
    err = one_line(capsys.readouterr().err, "cache")
    assert f"cache {out}: cannot write shard 1" in err and "nothing committed is lost" in err
    assert manifest_rows(out) == committed  # shard 0 is still committed, shard 1 is not
    assert main(["verify", str(out), "--no-progress"]) == 3  # sound, incomplete
    blocker.unlink()
    assert main(_cache_args(dataroot, out, "--no-ray")) == 0  # rerun resumes
    assert sorted(r[0] for r in manifest_rows(out)) == list(range(8))
    assert main(["verify", str(out), "--no-progress"]) == 0


def _mount_ns() -> list[str] | None:
    """``unshare`` arguments giving a private mount namespace (root in a user namespace when
    needed), or None where this machine does not allow it."""
    if shutil.which("unshare") is None:
        return None
    args = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    ok = subprocess.run([*args, "true"], capture_output=True).returncode == 0
    return args if ok else None


def test_disk_full_and_read_only_out_on_real_file_systems(dataroot, tmp_path):
    ns = _mount_ns()
    if ns is None:
        pytest.skip("no mount namespaces here (unshare --mount refused): cannot mount a small tmpfs")
    mnt, ro, keep = tmp_path / "mnt", tmp_path / "ro", tmp_path / "keep"
    mnt.mkdir(), ro.mkdir()
    cli = f"{sys.executable} -m pipeline.cli"
    args = " ".join(_cache_args(dataroot, mnt / "cache", "--no-ray")[1:])
    script = (f"mount -t tmpfs -o size=300k tmpfs {mnt} && mount -t tmpfs -o ro,size=64k tmpfs {ro} || exit 99\n"
              f"{cli} cache {args} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc\n"
              f"{cli} cache {args.replace(str(mnt / 'cache'), str(ro / 'cache'))} 2> {tmp_path}/ro.err;"
              f" echo $? > {tmp_path}/ro.rc\n"
              f"cp -a {mnt}/cache {keep}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), OMP_NUM_THREADS="1")
    done = subprocess.run([*ns, "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", full_err
    line = one_line(full_err, "cache")
    assert f"cache {mnt / 'cache'}: cannot write" in line and "No space left on device" in line
    ro_err = (tmp_path / "ro.err").read_text()
    assert (tmp_path / "ro.rc").read_text().strip() == "2"
    assert str(ro) in one_line(ro_err, "cache") and "not writable" in ro_err
    # what was committed on the full disk is sound; on a disk with room the same command resumes it
    committed = manifest_rows(keep)
    assert 1 <= len(committed) < 8, full_err
    assert verify_cache(keep).ok and not verify_cache(keep).complete
    assert main(_cache_args(dataroot, keep, "--no-ray")) == 0
    assert sorted(r[0] for r in manifest_rows(keep)) == list(range(8))
    assert set(manifest_rows(keep)) >= set(committed)



_PUT_MANY_ON_FULL_DISK = """
import sys
from zarr.storage import LocalStore
from storage.cache import stores
try:
    stores.put_many(LocalStore(sys.argv[1]), {f"k{i}": b"x" * 200_000 for i in range(40)})
except OSError as exc:
    print("put_many:", exc.strerror, file=sys.stderr)
sys.exit(2)
"""


def test_failed_concurrent_writes_leave_no_unretrieved_errors(tmp_path):
    """A full disk fails many of a shard's concurrent writes. Exiting right after the first error
    used to race the others: asyncio printed "Task exception was never retrieved" with a
    traceback for each, and the one-line error became ~100 lines (seen in CI)."""
    ns = _mount_ns()
    if ns is None:
        pytest.skip("no mount namespaces here (unshare --mount refused): cannot mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "put.py").write_text(_PUT_MANY_ON_FULL_DISK)
    runs = 6
    script = (f"mount -t tmpfs -o size=300k tmpfs {mnt} || exit 99\n"
              f"for i in $(seq {runs}); do rm -rf {mnt}/*; {sys.executable} {tmp_path}/put.py {mnt}; done\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([*ns, "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "never retrieved" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.splitlines() == ["put_many: No space left on device"] * runs, done.stderr[-3000:]


# ---- 10. verify: a distinct exit code for an incomplete cache --------------------------------------------

def test_verify_says_incomplete_with_exit_3(dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_cache_args(dataroot, out, "--no-ray")) == 0
    assert main(["verify", str(out), "--no-progress"]) == 0
    (out / manifest.fragment_key(2)).unlink()
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 3
    err = one_line(capsys.readouterr().err, "verify")
    assert "incomplete: 1 of 3 shards not committed" in err and str(out) in err


# ---- image size flags: --image-hw H W, --image-size W H deprecated ----------------------------------------

def test_image_hw_flag_and_the_deprecated_image_size_alias(dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_cache_args(dataroot, out, "--no-ray", "--targets", "heatmap", "view_mask")) == 0
    stored = json.loads((out / "zarr.json").read_text())["attributes"][layout.JOB_ATTR]
    assert stored["image_size"] == [320, 180]  # (W, H) in the job config
    assert "deprecated" not in capsys.readouterr().err
    args = [a for a in _cache_args(dataroot, out, "--no-ray", "--targets", "heatmap", "view_mask")]
    i = args.index("--image-hw")
    args[i:i + 3] = ["--image-size", "320", "180"]
    assert main(args) == 0  # the same cache: resumes, nothing refused
    captured = capsys.readouterr()
    assert captured.err == ("bevkd cache: --image-size W H is deprecated, use --image-hw 180 320 "
                            "(height first, as in configs)\n")
    assert "(3 already committed)" in captured.out


# ---- 6. Ray: one line with the cause; a bad sample fails only its row ------------------------------------

@pytest.mark.ray
def test_ray_checks_teacher_and_checkpoint_before_actors(ray_session, dataroot, tmp_path, capsys):
    cases = [(["--teacher", "no_such_module:factory"], "No module named 'no_such_module'"),
             (["--teacher", "centerpoint", "--checkpoint", str(tmp_path / "missing.pt")], "missing.pt: file not found"),
             (["--teacher", "test_faults_cache:broken_teacher"], "weights folder /nowhere/teacher missing")]
    for extra, expected in cases:
        args = [a for a in _cache_args(dataroot, tmp_path / "cache", "--workers", "1")]
        args[args.index("--teacher"):args.index("--teacher") + 2] = []
        t0 = time.monotonic()
        assert main(args + extra) == 2
        err = one_line(capsys.readouterr().err, "cache")
        assert expected in err and "ActorDiedError" not in err and "RayTaskError" not in err, err
        if extra[1] != "test_faults_cache:broken_teacher":  # refused in the driver: no actor, no cache
            assert time.monotonic() - t0 < 5 and not (tmp_path / "cache").exists()


@pytest.mark.ray
def test_ray_bad_sample_fails_its_row_and_write_failure_is_one_line(ray_session, dataroot, tmp_path, capsys):
    root = copy_dataset(dataroot, tmp_path / "data")
    lidar = Path(NuScenesReader(root).read(4).lidar_path)
    lidar.unlink()
    lidar.mkdir()  # reading it raises (IsADirectoryError)
    out = tmp_path / "cache"
    assert main(_cache_args(root, out, "--workers", "2", "--max-failed-fraction", "0.2")) == 0
    captured = capsys.readouterr()
    assert "7 rows ok, 1 failed" in captured.out and "FAILED: sample" in captured.out
    failed = [r for r in manifest_rows(out) if r[3] == "failed"]
    assert [r[0] for r in failed] == [4]  # not rows 3 and 5, which share its shard
    # a write failure inside an actor stops the job with one line naming the cache (not RayTaskError)
    (out / manifest.fragment_key(1)).unlink()
    blocker = out / layout.array_path("heatmap", "data") / "c" / "1"
    shutil.rmtree(blocker)
    blocker.write_text("not a folder\n")
    assert main(_cache_args(root, out, "--workers", "1")) == 2
    err = one_line(capsys.readouterr().err, "cache")
    assert err.startswith(f"bevkd cache: cache {out}: cannot write shard 1") and "RayTaskError" not in err
    assert len(manifest_rows(out)) == 5  # shards 0 and 2 stay committed


# ---- 9. a local Ray started by bevkd dies with its driver --------------------------------------------------

def _ray_processes(tag: str) -> list[int]:
    """Living processes of the Ray whose temp dir is ``tag``: named in their command line, their
    environment or their open files (agents rename themselves ``ray::...`` but keep log files open)."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if tag in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(pid)
                continue
            if tag.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
                continue
            if any(tag in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")):
                found.append(pid)
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


@pytest.mark.ray
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc to find Ray's processes")
def test_kill_9_of_the_driver_leaves_no_ray_process(dataroot, tmp_path, tmp_path_factory):
    ray_tmp = tmp_path_factory.mktemp("rl")  # short: Ray's socket paths must stay under 107 bytes
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "pipeline.cli", *_cache_args(dataroot, out, "--shard-size", "1")]
    cmd[cmd.index("--teacher") + 1] = "test_cache_job_support:slow_tiny_bev_teacher"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
               RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("manifest/shard-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read()[-3000:]}"
        assert len(_ray_processes(str(ray_tmp))) >= 4  # the driver, GCS, raylet, agents, workers
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a user's kill -9 would
        proc.wait()
        deadline, left = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            left = _ray_processes(str(ray_tmp))
            if not left:
                break
            time.sleep(0.5)
        names = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left if os.path.exists(f"/proc/{p}")}
        assert not left, f"Ray processes outlived their driver by 30 s: {names}"
    finally:
        for pid in _ray_processes(str(ray_tmp)):  # never leave a leak behind, whatever happened
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
