"""Atomic file replacement: the new content whole, the asked permissions, the old file kept on failure."""
import stat

import pytest

from latentserve.files import PARTIAL, remove_partial_writes, write_atomically


def test_a_file_is_replaced_whole_with_the_asked_permissions_and_no_temporary_left(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old")
    write_atomically(path, "new text")
    assert path.read_text() == "new text" and stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomically(path, b"\x00bytes", mode=0o600)
    assert path.read_bytes() == b"\x00bytes" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "aliases.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(path, 42)  # neither bytes nor text: fails after the temporary file exists
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["aliases.json"]


def test_the_temporary_files_of_killed_writes_are_found_and_removed(tmp_path):
    (tmp_path / "000000001.png").write_bytes(b"whole")
    (tmp_path / f".000000002.png{PARTIAL}x1y2z3ab").write_bytes(b"half")  # the name write_atomically gives them
    (tmp_path / ".hidden").write_text("not ours")
    assert remove_partial_writes(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "000000001.png"]
    assert remove_partial_writes(tmp_path / "absent") == 0
