"""Labels files as researchers write them."""

from __future__ import annotations

import pytest

from imgserve.importing.labels import read_labels


def test_blank_lines_and_surrounding_whitespace_are_ignored(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\n  pink primrose \n\nhard-leaved pocket orchid\t\r\n\n")
    assert read_labels(f) == ["pink primrose", "hard-leaved pocket orchid"]


def test_a_byte_order_mark_is_not_part_of_the_first_label(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffcat\ndog\n".encode())
    assert read_labels(f) == ["cat", "dog"]


def test_an_empty_file_is_refused(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\n \n")
    with pytest.raises(ValueError, match="has no labels"):
        read_labels(f)
