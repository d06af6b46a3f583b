"""Atomic file writes."""
import pytest


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from capsrun.atomic import write_bytes_atomic

    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "eval.json", "not bytes")
    assert list(tmp_path.iterdir()) == []
