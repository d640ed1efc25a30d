"""client.py's output file: rows written, read back for --resume, never overwritten by mistake."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imgserve.client.results import Results, ResultsError, Row, columns

CAT = Row("photos/cat.jpg", "m:1", [{"label": "tabby", "score": 0.75}, {"label": "lynx", "score": 0.2}])
BAD = Row("photos/bad.jpg", error="image data is truncated or corrupt")


def test_csv_rows_have_k_label_and_score_columns_and_error_rows_leave_them_empty(tmp_path):
    out = tmp_path / "results.csv"
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
        results.write(BAD)
    assert out.read_text().splitlines() == [
        ",".join(columns(2)),
        "photos/cat.jpg,tabby,0.750000,lynx,0.200000,m:1,",
        "photos/bad.jpg,,,,,,image data is truncated or corrupt",
    ]


def test_jsonl_rows_keep_the_servers_answer(tmp_path):
    out = tmp_path / "results.jsonl"
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
        results.write(BAD)
    first, second = map(json.loads, out.read_text().splitlines())
    assert first == {"path": "photos/cat.jpg", "model": "m:1", "predictions": CAT.predictions, "error": None}
    assert second == {"path": "photos/bad.jpg", "model": None, "predictions": [], "error": BAD.error}


@pytest.mark.parametrize("name", ["results.csv", "results.jsonl"])
def test_resume_knows_the_paths_written_however_they_were_spelled(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with Results(name, top_k=2, resume=False) as results:
        results.write(CAT)
        results.write(BAD)
    resumed = Results(name, top_k=2, resume=True)
    assert resumed.is_done(Path("./photos/cat.jpg")) and resumed.is_done(tmp_path / "photos" / "bad.jpg")
    assert not resumed.is_done(Path("photos/dog.jpg"))
    with resumed:
        resumed.write(Row("photos/dog.jpg", error="x"))
    assert len((tmp_path / name).read_text().splitlines()) == 3 + name.endswith(".csv")  # one header, no second


def test_resume_drops_a_row_cut_off_by_a_kill_and_refuses_another_top_k(tmp_path):
    out = tmp_path / "results.csv"
    with Results(str(out), top_k=1, resume=False) as results:
        results.write(Row("a.png", model="m:1", predictions=[{"label": "red", "score": 0.9}]))
    with out.open("a") as f:
        f.write("b.png,gre")  # the kill came mid-row
    resumed = Results(str(out), top_k=1, resume=True)
    assert resumed.is_done(Path("a.png")) and not resumed.is_done(Path("b.png"))
    assert out.read_text().splitlines()[-1] == "a.png,red,0.900000,m:1,"
    with pytest.raises(ResultsError, match="resume it with --top-k 1"):
        Results(str(out), top_k=3, resume=True)


@pytest.mark.parametrize(
    ("out", "resume", "message"),
    [
        ("existing.csv", False, "exists: add --resume to continue it, or remove it"),
        ("results.json", False, "name a .csv or a .jsonl file"),
        ("-", True, "--resume needs --out FILE"),
    ],
)
def test_outputs_that_would_lose_or_garble_rows_are_refused(tmp_path, monkeypatch, out, resume, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing.csv").write_text("path\n")
    with pytest.raises(ResultsError, match=message):
        Results(out, top_k=1, resume=resume)


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "taken.csv").mkdir()
    for out in (tmp_path / "no-such-folder" / "results.csv", tmp_path / "taken.csv"):
        with pytest.raises(ResultsError, match=f"cannot write {out}: "), Results(str(out), top_k=1, resume=False):
            pass


def test_a_run_stopped_before_its_first_row_leaves_no_file_to_block_the_next(tmp_path):
    """A refused top_k or model stops the run after the file was opened: no header-only file is left,
    which would need --resume, and then the refused top_k, to run again."""
    out = tmp_path / "results.csv"
    with pytest.raises(RuntimeError), Results(str(out), top_k=1000, resume=False):
        raise RuntimeError("the server refused top_k 1000")
    assert not out.exists()
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
    with Results(str(out), top_k=2, resume=True):  # resumed, nothing new: the file and its row stay
        pass
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize("name", ["results.csv", "results.jsonl"])
def test_resume_refuses_answers_of_another_model_before_writing_them(tmp_path, name):
    """--resume with another --model (or a server whose default changed) mixed two models in one table."""
    out = tmp_path / name
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
    before = out.read_text()
    other = Row("photos/dog.jpg", "flowers:7", CAT.predictions)
    with Results(str(out), top_k=2, resume=True) as results:
        results.write(BAD)  # an error row has no model: nothing to mix
        with pytest.raises(ResultsError) as refused:
            results.write(other)
        results.write(Row("photos/dog.jpg", "m:1", CAT.predictions))  # the file's own model goes on
    assert str(refused.value) == (
        f"{out} holds answers of m:1, this run's are of flowers:7: resume it with --model m:1 "
        "(if the server still serves it), or write to another --out"
    )
    assert "flowers:7" not in out.read_text() and out.read_text().startswith(before)


def test_a_resumed_jsonl_refuses_answers_with_another_top_k(tmp_path):
    """CSV's header names its top-k; JSON Lines has none, and mixed top-2 and top-3 rows silently."""
    out = tmp_path / "results.jsonl"
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
    three = Row("photos/dog.jpg", "m:1", [*CAT.predictions, {"label": "tiger", "score": 0.05}])
    with Results(str(out), top_k=3, resume=True) as results, pytest.raises(ResultsError) as refused:
        results.write(three)
    assert str(refused.value) == f"{out} holds top-2 rows: resume it with --top-k 2"
    assert len(out.read_text().splitlines()) == 1


def test_a_csv_saved_again_by_excel_resumes(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte order mark: the header read '\\ufeffpath', and the
    run was told to resume with --top-k 2, the --top-k it had been given, whatever it was given."""
    out = tmp_path / "results.csv"
    with Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())  # as Excel saves it: BOM, CRLF line ends
    resumed = Results(str(out), top_k=2, resume=True)
    assert resumed.is_done(Path(CAT.path)) and resumed.models == {"m:1": 2}
    with resumed:
        resumed.write(BAD)
    assert out.read_text(encoding="utf-8-sig").splitlines()[1:] == [
        "photos/cat.jpg,tabby,0.750000,lynx,0.200000,m:1,",
        "photos/bad.jpg,,,,,,image data is truncated or corrupt",
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("labels.csv", "file,class\ncat.jpg,tabby\n", "labels.csv is not a table client.py wrote: its first line is "),
        ("empty.csv", "\n", "empty.csv is not a table client.py wrote"),
        ("r.jsonl", '{"path": "a.jpg", "predictions": []}\nnot json\n', "r.jsonl, line 2: not a row client.py wrote"),
        ("r.jsonl", '["a.jpg"]\n', "r.jsonl, line 1: not a row client.py wrote"),
        ("r.jsonl", '{"file": "a.jpg"}\n', "r.jsonl, line 1: not a row client.py wrote"),
    ],
)
def test_resuming_a_file_client_py_did_not_write_names_what_is_wrong(tmp_path, name, content, message):
    """Another program's CSV was to be resumed 'with --top-k 0'; a JSON Lines file with a line of another
    kind (edited by hand, two files joined) crashed with JSONDecodeError, TypeError or KeyError."""
    (tmp_path / name).write_text(content)
    with pytest.raises(ResultsError, match=re.escape(str(tmp_path / message))):
        Results(str(tmp_path / name), top_k=2, resume=True)


def test_a_full_disk_stops_the_run_with_the_reason_not_a_traceback(tmp_path):
    """A write that fails (the disk full, a quota) was an OSError traceback through the run's task group."""
    out = tmp_path / "results.csv"
    out.symlink_to("/dev/full")  # every write: "No space left on device"
    full = re.escape(f"cannot write {out}: No space left on device")
    with pytest.raises(ResultsError, match=full), Results(str(out), top_k=2, resume=False) as results:
        results.write(CAT)
    jsonl = tmp_path / "results.jsonl"
    jsonl.symlink_to("/dev/full")
    with Results(str(jsonl), top_k=2, resume=False) as results:  # no header: the first row finds out
        with pytest.raises(ResultsError, match=re.escape(f"cannot write {jsonl}: No space left on device")):
            results.write(CAT)
        assert results.rows == 0
