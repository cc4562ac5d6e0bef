"""replace_atomically: the target is replaced whole on success and untouched on failure."""

import pytest

from amago2.atomic_file import replace_atomically


@pytest.mark.parametrize("fsync", [False, True])
def test_a_clean_exit_replaces_the_file_and_leaves_no_temporary(tmp_path, fsync):
    target = tmp_path / "sub" / "out.csv"  # the parent is made
    with replace_atomically(target, fsync=fsync) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.csv.") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
        assert not target.exists(), "the target appears only at the rename"
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.csv"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replace_atomically(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
