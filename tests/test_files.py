"""Which files client.py sends, and how it groups them into requests (imgserve/client/files.py)."""

from __future__ import annotations

import os
import sys

import pytest

from imgserve.client import files


def test_folders_are_walked_for_image_extensions_and_named_files_are_taken_as_given(tmp_path):
    for name in ["a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.webp", "e.tiff", "notes.txt", "raw.dat", ".DS_Store"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "t.jpg").write_bytes(b"x")
    images, skipped = files.find_images([tmp_path, tmp_path / "raw.dat", tmp_path / "a.jpg"])
    assert [p.relative_to(tmp_path).as_posix() for p in images] == [
        "a.jpg",
        "b.JPEG",
        "e.tiff",
        "sub/c.png",
        "sub/deeper/d.webp",
        "raw.dat",  # named on the command line: sent, the server judges the bytes
    ]
    assert skipped == {".txt": 1, ".dat": 1, "hidden": 2}
    with pytest.raises(files.NoSuchPath, match="no such file or folder"):
        files.find_images([tmp_path / "missing"])


def test_batches_hold_at_most_n_images_and_fit_one_request_body(tmp_path):
    sizes = [40, 40, 40, 10, 10, 10, 10, 10, 200]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"x" * size)
    groups = [[sizes[int(p.stem)] for p in batch] for batch in files.batches(paths, 4, max_bytes=100)]
    assert groups == [[40, 40], [40, 10, 10, 10], [10, 10], [200]]  # an oversized file goes alone
    assert files.local_problem(paths[-1], 100).startswith("file too large: 200 bytes")
    assert files.local_problem(paths[0], 40) is None  # exactly the limit fits
    assert files.local_problem(tmp_path / "gone.jpg", 100) == "cannot read the file"


def test_a_symlink_loop_is_sent_as_the_file_it_claims_to_be_not_a_traceback(tmp_path):
    """Path.resolve() raises RuntimeError on a loop (Python 3.11): the walk crashed before sending anything."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "loop1.jpg").symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(tmp_path / "loop1.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder loop: links to folders are not followed
    images, _ = files.find_images([tmp_path, tmp_path / "sub" / "up" / "a.jpg"])
    assert [p.name for p in images] == ["a.jpg", "loop1.jpg", "loop2.jpg"]  # each once, a.jpg by either path
    assert files.local_problem(tmp_path / "loop1.jpg", 100) == "cannot read the file"  # its error row


def test_a_named_pipe_in_a_folder_is_skipped_not_read_forever(tmp_path):
    """Opened for its bytes, a FIFO named photo.jpg blocked the whole run until someone wrote to it."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.jpg")
    images, skipped = files.find_images([tmp_path])
    assert [p.name for p in images] == ["a.jpg"]
    assert skipped["not a regular file"] == skipped.total() == 1


def test_a_tree_deeper_than_pythons_recursion_limit_is_walked(tmp_path):
    """Python 3.11's os.walk recurses once per folder level: 1,000 nested folders (a program's output
    nested by accident) were a RecursionError traceback before anything was sent."""
    depth = sys.getrecursionlimit() + 50
    folders = [tmp_path / "top"]
    for _ in range(depth):  # one level at a time: Path.mkdir(parents=True) recurses too
        folders.append(folders[-1] / "d")
    try:
        for folder in folders:
            folder.mkdir()
        (folders[-1] / "deep.jpg").write_bytes(b"x")
        (folders[0] / "top.jpg").write_bytes(b"x")
        (folders[1] / ".hidden").mkdir()
        images, skipped = files.find_images([folders[0]])
        assert images == [folders[0] / "top.jpg", folders[-1] / "deep.jpg"]  # each folder's files, then below
        assert skipped == {"hidden": 1}
    finally:  # and removed one level at a time: shutil.rmtree recurses as well
        (folders[-1] / "deep.jpg").unlink(missing_ok=True)
        (folders[0] / "top.jpg").unlink(missing_ok=True)
        if (folders[1] / ".hidden").exists():
            (folders[1] / ".hidden").rmdir()
        for folder in reversed(folders):
            if folder.exists():
                folder.rmdir()
