"""Atomic writes leave either the old file or the complete new one, never a partial file or a stray temp."""
import json
import math
import os

import pytest

from lora_route.common.files import atomic_path, write_json, write_text_atomic


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_written_file_has_ordinary_permissions_and_suffix(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "sub" / "plot.png", suffix=".png") as temporary:
            assert temporary.suffix == ".png" and temporary.parent == tmp_path / "sub"
            temporary.write_bytes(b"png")
    finally:
        os.umask(umask)
    written = tmp_path / "sub" / "plot.png"
    assert written.read_bytes() == b"png"
    assert written.stat().st_mode & 0o777 == 0o644


def test_write_json_rejects_nan_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        write_json(target, {"a": math.nan})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
