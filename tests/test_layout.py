"""Package boundaries (STYLE.md §1, §3): imports point one way, heavy deps stay at the edges."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"storage", "teachers", "student", "pipeline"}
ALLOWED = {"storage": set(), "teachers": {"storage"}, "student": {"storage", "teachers"},
           "pipeline": OURS}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imports_point_one_way():
    bad = []
    for pkg in OURS:
        for f in (REPO / pkg).rglob("*.py"):
            used = _imports(f) & OURS - {pkg}
            if used - ALLOWED[pkg]:
                bad.append(f"{f.relative_to(REPO)} imports {sorted(used - ALLOWED[pkg])}")
    assert not bad, bad


def test_heavy_dependencies_stay_at_the_edges():
    bad = []
    for f in REPO.glob("*/**/*.py"):
        top = f.relative_to(REPO).parts[0]
        if top not in OURS:
            continue
        used = _imports(f)
        if "spconv" in used and top != "teachers":
            bad.append(f"{f.relative_to(REPO)} imports spconv")
        if "ray" in used and top != "pipeline":
            bad.append(f"{f.relative_to(REPO)} imports ray")
        if "nuscenes" in used and top != "storage":
            bad.append(f"{f.relative_to(REPO)} imports nuscenes")
    assert not bad, bad


def test_import_storage_is_light():
    code = ("import sys, storage; "
            "print(','.join(m for m in ('torch','ray','nuscenes','spconv','matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"import storage pulled in: {out.stdout}"


def test_cli_reports_bad_input_in_one_line_with_exit_2(tmp_path, capsys):
    from pipeline.cli import main

    missing = tmp_path / "no_cache_here"
    for cmd in ("inspect", "verify", "show"):
        assert main([cmd, str(missing)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bevkd {cmd}: FileNotFoundError") and str(missing) in err and "Traceback" not in err
