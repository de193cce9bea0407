"""fileio.atomic_output: a fresh temporary name, renamed onto the target, an existing target replaced whole."""

from __future__ import annotations

from pathlib import Path

from ggprec.fileio import atomic_output


def test_the_temporary_path_is_a_fresh_name_the_writer_creates(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()  # not an empty file a writer would truncate
        tmp.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"new"


def test_an_existing_target_is_replaced_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    with atomic_output(target, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"new"
