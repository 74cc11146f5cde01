"""Test helpers shared by the CLI fault tests: the one-line error contract, file fingerprints,
and editing nuScenes tables of a hard-linked dataset copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def one_line(err: str, command: str) -> str:
    """Assert ``err`` (captured stderr) is exactly one line ``bevkd <command>: ...`` with no
    traceback, and return it."""
    assert err.startswith(f"bevkd {command}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def file_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (what "untouched" compares)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of the dataset ``src`` at ``dst`` made of hard links (cheap); edit its files only
    by replacing them (:func:`edit_table`)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def edit_table(root: Path, table: str, edit: Callable[[list[dict[str, Any]]], object]) -> Path:
    """Apply ``edit`` to the records of ``root/v1.0-mini/<table>.json`` and write them back as a
    new file (the copy is hard-linked: never edit in place). Returns the table's path."""
    path = root / "v1.0-mini" / f"{table}.json"
    rows = json.loads(path.read_text())
    edit(rows)
    path.unlink()
    path.write_text(json.dumps(rows))
    return path
