"""Fault cases of the read-only cache commands (``verify``, ``inspect``, ``compact``) and the
reader, kept as regression tests: a truncated manifest fragment, a zero-byte shard, a schema field
of the wrong type, an unsupported schema version, broken group metadata, a missing target, and an
unreachable or unsupported store URL. Each gives one line naming the file / field / URL (exit 2),
or verify's CORRUPT lines (exit 1); never a traceback.

Real components: a real Zarr cache on disk written by the real :class:`CacheWriter`
(``test_cache_roundtrip.make_cache``), copied and broken the way a user's disk or hand breaks it;
the CLI called in-process; a real s3fs client against an endpoint where nothing listens.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from cli_checks import one_line
from test_cache_roundtrip import make_cache, write

from pipeline.cli import main
from storage.cache import CacheReader, layout, manifest
from storage.cache.verify import verify_cache
from storage.errors import CacheMetadataError, CacheMismatchError

SHARD_SIZE = 2
NUM_SAMPLES = 6  # 3 shards of 2 rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A complete cache of 6 rows in 3 shards, its manifest compacted (as a cache job leaves it)."""
    cache = tmp_path_factory.mktemp("fv") / "cache"
    _, writer, data = make_cache(str(cache), num_samples=NUM_SAMPLES, shard_size=SHARD_SIZE)
    write(writer, data)
    manifest.compact_manifest(writer.store, [t.name for t in writer.schema.targets])
    return cache


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    """A fresh copy of :func:`pristine` for a test to break."""
    return Path(shutil.copytree(pristine, tmp_path / "cache"))


def _verify(cache: Path, capsys) -> tuple[int, str]:
    code = main(["verify", str(cache), "--no-progress"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


def _edit_schema(cache: Path, edit) -> Path:
    meta = cache / "zarr.json"
    doc = json.loads(meta.read_text())
    edit(doc["attributes"][layout.ATTR])
    meta.write_text(json.dumps(doc))
    return meta


def test_verify_exit_codes_complete_incomplete_not_a_cache(cache, tmp_path, capsys):
    assert _verify(cache, capsys)[0] == 0
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "verify")
    (cache / manifest.fragment_key(1)).unlink()
    assert _verify(cache, capsys)[0] == 3


# ---- 4. a truncated manifest fragment ---------------------------------------------------------------------

@pytest.mark.parametrize("compacted", [True, False])
def test_truncated_manifest_fragment_is_named(cache, capsys, compacted):
    frag = cache / manifest.fragment_key(1)
    frag.write_bytes(frag.read_bytes()[:300])
    if not compacted:
        (cache / manifest.COMPACTED_KEY).unlink()
    code, out = _verify(cache, capsys)
    assert code == 1
    assert f"CORRUPT: manifest fragment {frag} unreadable" in out
    assert "4 committed ok rows checked" in out and "rows of shards [1] not checked" in out
    report = verify_cache(cache)
    assert report.unreadable_fragments == [1] and not report.ok

    for cmd in (["compact", str(cache)], *([] if compacted else [["inspect", str(cache)]])):
        assert main(cmd) == 2
        err = one_line(capsys.readouterr().err, cmd[0])
        assert f"manifest fragment {frag} unreadable" in err
    assert not (cache / manifest.COMPACTED_KEY).exists() or compacted  # compact wrote nothing
    if not compacted:  # the compacted copy still holds shard 1's rows; without it the reader names the file
        with pytest.raises(CacheMetadataError, match=f"manifest fragment {frag} unreadable"):
            CacheReader(cache)


# ---- 5. a zero-byte shard ---------------------------------------------------------------------------------

def test_zero_byte_shard_is_corrupt_rows_named(cache, capsys):
    reader = CacheReader(cache)
    shard = cache / layout.shard_key(reader._arrays["boxes"]["data"], 2)
    tokens = [reader.sample_tokens[r] for r in (4, 5)]
    shard.write_bytes(b"")
    code, out = _verify(cache, capsys)
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.startswith("CORRUPT:")]
    assert len(lines) == 2, out
    for row, token, line in zip((4, 5), tokens, lines, strict=True):
        assert f"sample {token} view 0 (row {row}): target boxes corrupt at {shard}" in line
        assert "shard index unreadable" in line
    assert "6 committed ok rows checked, 2 bad (2 target problems in boxes)" in out


# ---- 6. a schema field of the wrong type ------------------------------------------------------------------

def test_schema_field_of_wrong_type_is_one_line_naming_file_and_field(cache, capsys):
    meta = _edit_schema(cache, lambda s: s["grid"].__setitem__("voxel_size", "big"))
    for cmd in (["verify", str(cache), "--no-progress"], ["inspect", str(cache)], ["compact", str(cache)]):
        assert main(cmd) == 2
        err = one_line(capsys.readouterr().err, cmd[0])
        assert f"CacheMetadataError: cache {cache}: {meta} field grid.voxel_size: needs 3 numbers, got 'big'" in err
    with pytest.raises(CacheMetadataError, match="field grid.voxel_size"):
        CacheReader(cache)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: s.pop("num_rows"), "field num_rows: missing"),
    (lambda s: s.__setitem__("views", "two"), "field views: needs an integer"),
    (lambda s: s["targets"][2].pop("codec"), "field targets[2]: codec missing"),
    (lambda s: s["grid"].__setitem__("point_cloud_range", [0, 0, 0]), "field grid.point_cloud_range: needs 6"),
])
def test_other_broken_schema_fields_are_named(cache, capsys, edit, field):
    meta = _edit_schema(cache, edit)
    assert main(["verify", str(cache), "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err, "verify")
    assert f"{meta} {field}" in err, err


# ---- 7. an unsupported schema version ---------------------------------------------------------------------

def test_unsupported_schema_version_is_refused(cache, capsys):
    meta = _edit_schema(cache, lambda s: s.__setitem__("schema_version", 99))
    (cache / manifest.COMPACTED_KEY).unlink()
    for cmd in (["verify", str(cache), "--no-progress"], ["inspect", str(cache)], ["compact", str(cache)]):
        assert main(cmd) == 2
        err = one_line(capsys.readouterr().err, cmd[0])
        assert f"CacheMismatchError: cache {cache}: schema version 99 in {meta}" in err
        assert "reads version 1" in err
    assert not (cache / manifest.COMPACTED_KEY).exists()  # compact wrote nothing into it
    with pytest.raises(CacheMismatchError, match="schema version 99"):
        verify_cache(cache)


# ---- 8. broken group metadata -----------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["targets/heatmap", "targets/bev_features", "targets"])
def test_broken_group_metadata_is_named(cache, capsys, group):
    meta = cache / group / "zarr.json"
    meta.write_text('{"bad\n')
    code, out = _verify(cache, capsys)
    assert code == 1 and f"CORRUPT: {meta} is not valid JSON" in out
    assert "1 metadata problem(s)" in out
    assert main(["inspect", str(cache)]) == 1
    assert f"bevkd inspect: {meta} is not valid JSON" in capsys.readouterr().err


# ---- 9. a missing target / unreadable array metadata: the summary counts its rows -------------------------

def test_missing_target_counts_every_row_in_the_summary(cache, capsys):
    shutil.rmtree(cache / "targets" / "boxes")
    code, out = _verify(cache, capsys)
    assert code == 1
    assert f"CORRUPT: group metadata {cache / 'targets/boxes/zarr.json'} missing" in out
    assert "CORRUPT: target boxes unreadable" in out and "every committed ok row is affected (6 rows)" in out
    assert "6 committed ok rows checked, 6 bad (6 target problems in boxes)" in out
    report = verify_cache(cache)
    assert report.bad_rows == 6 and report.target_problems == 6 and list(report.unreadable_targets) == ["boxes"]


def test_garbage_array_metadata_counts_every_row_in_the_summary(cache, capsys):
    meta = cache / layout.array_path("heatmap", "data") / "zarr.json"
    meta.write_text("garbage\n")
    code, out = _verify(cache, capsys)
    assert code == 1 and f"CORRUPT: {meta} is not valid JSON" in out
    assert "6 committed ok rows checked, 6 bad (6 target problems in heatmap)" in out


# ---- 20. unreachable store, fsspec backend not installed --------------------------------------------------

@pytest.fixture
def fresh_s3fs():
    """s3fs caches one client per set of arguments and reads the endpoint from the environment
    when it makes one: drop the cache around a test that points the environment elsewhere, so
    neither a client of another test (tests/test_s3.py's moto server) is reused here nor this
    test's dead endpoint there."""
    s3fs = pytest.importorskip("s3fs", reason="needs s3fs: pip install 'bevkd[s3]'")
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_unreachable_s3_endpoint_is_one_line(fresh_s3fs, monkeypatch, capsys):
    # nothing listens on port 9 (discard); one attempt, so the test takes about a second
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for cmd in ("inspect", "verify"):
        assert main([cmd, "s3://nobucket/cache", *(["--no-progress"] if cmd == "verify" else [])]) == 2
        err = one_line(capsys.readouterr().err, cmd)
        assert "cannot read s3://nobucket/cache/zarr.json" in err and "EndpointConnectionError" in err


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_missing_fsspec_backend_says_what_to_install(capsys):
    assert main(["inspect", "gs://foo/bar"]) == 2
    err = one_line(capsys.readouterr().err, "inspect")
    assert "cache gs://foo/bar: cannot open gs:// locations" in err and "pip install gcsfs" in err
    assert main(["verify", "nosuchproto://foo/bar", "--no-progress"]) == 2
    assert "cannot open nosuchproto:// locations" in one_line(capsys.readouterr().err, "verify")
