"""Writes that never leave half a file."""
import json

import pytest

from intermod.io import atomic_write_json, atomic_write_report, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "table.md", "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("intermod.io.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_a_report_is_its_record_and_its_table_side_by_side(tmp_path):
    written = atomic_write_report(tmp_path / "sub" / "speed", {"steps_per_s": 2.5}, "| a |\n")
    assert written == tmp_path / "sub" / "speed.md" and written.read_text() == "| a |\n"
    assert json.loads((tmp_path / "sub" / "speed.json").read_text()) == {"steps_per_s": 2.5}
    assert atomic_write_json(tmp_path / "x.json", {"k": [1, 2]}).read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
