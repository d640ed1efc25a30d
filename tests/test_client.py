"""client.py as users run it: a separate process against a real `bentoml serve`, rows read back from its file."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from imgserve import config
from imgserve.client import cli as client
from imgserve.testing import Server, metric_sum, running
from tests.helpers import CAT_CLASSES, DATA, PYTHON, ROOT, image_bytes

KEY = "test-key-7"
IN_FLIGHT = 2  # the guarded server's bound on requests in progress (and on uploads), before it answers 503
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
ROCKET_CLASSES = {"missile", "projectile", "space shuttle"}


def run_client(*args: str | Path, key: str | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), env=client_env(key), capture_output=True, text=True, timeout=120, **popen)


def command(*args: str | Path) -> list[str]:
    return [PYTHON, str(ROOT / "client.py"), *map(str, args)]


def client_env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != config.ENV_API_KEY}
    return env | ({config.ENV_API_KEY: key} if key else {})


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["path"] for r in rows}) == len(rows), "a path has two rows"
    return {r["path"]: r for r in rows}


def colour_folder(folder: Path, names: list[str]) -> None:
    """PNGs named `<colour>-<n>.png`, each filled with its colour: the colour model's exact answer."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.png").write_bytes(image_bytes(COLOURS[name.split("-")[0]]))


def classify_requests(server: Server, headers: dict[str, str] | None = None, status: str = "") -> float:
    """Requests to /classify the server has answered (with `status`, if given), from its /metrics."""
    labels = {"endpoint": config.CLASSIFY_PATH, **({"http_response_code": status} if status else {})}
    return metric_sum(server.scrape(headers), "bentoml_service_request_total", labels)


@pytest.mark.serve
def test_a_folder_gets_one_row_per_image_right_classes_and_error_rows_for_bad_files(server, default_model, tmp_path):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(DATA / name, photos / "trip" / name)
    (photos / "broken.jpg").write_bytes((DATA / "cat.jpg").read_bytes()[:3000])  # a copy cut short
    (photos / "scan.png").write_text("an image extension, text inside")
    (photos / "notes.txt").write_text("field notes")
    out = tmp_path / "results.csv"

    r = run_client("photos", "--url", server.url, "--top-k", "3", "--out", out, cwd=tmp_path)

    assert r.returncode == 1, r.stderr  # some images failed
    rows = csv_rows(out)
    assert set(rows) == {"photos/trip/cat.jpg", "photos/trip/coffee.jpg", "photos/trip/rocket.jpg"} | {
        "photos/broken.jpg",
        "photos/scan.png",
    }
    for path, expected in [("cat", CAT_CLASSES), ("coffee", {"espresso"}), ("rocket", ROCKET_CLASSES)]:
        row = rows[f"photos/trip/{path}.jpg"]
        assert row["label_1"] in expected, row
        scores = [float(row[f"score_{i}"]) for i in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.00001
        assert row["model"] == default_model and row["error"] == ""
    assert "truncated or corrupt" in rows["photos/broken.jpg"]["error"]
    formats = ", ".join(config.ACCEPTED_FORMATS)
    # The server names the image by its place in the request ("image": N); the row names the file.
    assert rows["photos/scan.png"]["error"] == f"not a supported image: accepted formats are {formats}"
    assert rows["photos/scan.png"]["label_1"] == rows["photos/scan.png"]["model"] == ""
    assert "skipped, not images: .txt 1" in r.stderr
    assert "3 ok, 2 failed, 1 skipped" in r.stderr
    assert "━" not in r.stderr and "\r" not in r.stderr  # no progress bar in a pipe
    assert r.stdout == ""


@pytest.mark.serve
def test_resume_sends_nothing_twice(colour_server, colour_model, tmp_path, capsys):
    """Counted on the server: with one image per request, its /classify count is the images sent.
    In-process, to save a start of the BentoML client per run; the other tests run it as a program."""
    colour_folder(tmp_path / "in", ["red-1", "green-1", "blue-1"])
    out = tmp_path / "results.jsonl"
    argv = [str(tmp_path / "in"), "--url", colour_server.url, "--out", str(out), "--top-k", "1", "--batch-size", "1"]

    sent = classify_requests(colour_server)
    assert client.main(argv) == client.EXIT_OK
    assert classify_requests(colour_server) - sent == 3

    colour_folder(tmp_path / "in", ["blue-2", "red-2"])
    capsys.readouterr()
    sent = classify_requests(colour_server)
    assert client.main([*argv, "--resume"]) == client.EXIT_OK
    stderr = capsys.readouterr().err
    assert "3 images already in" in stderr and "2 ok, 0 failed, 3 skipped" in stderr
    assert classify_requests(colour_server) - sent == 2  # only the new ones

    sent = classify_requests(colour_server)
    assert client.main([*argv, "--resume"]) == client.EXIT_OK
    assert classify_requests(colour_server) == sent  # nothing at all

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).stem for r in lines) == ["blue-1", "blue-2", "green-1", "red-1", "red-2"]
    for r in lines:
        assert r["predictions"][0]["label"] == Path(r["path"]).name.split("-")[0], r
        assert r["model"] == colour_model and r["error"] is None


@pytest.mark.serve
def test_resume_with_another_top_k_stops_before_a_row_is_mixed_in(colour_server, tmp_path):
    """JSON Lines has no header to compare: top-1 and top-2 rows were appended to one file."""
    colour_folder(tmp_path / "in", ["red-1"])
    out = tmp_path / "results.jsonl"
    common = [tmp_path / "in", "--url", colour_server.url, "--out", out]
    assert run_client(*common, "--top-k", "1").returncode == client.EXIT_OK
    before = out.read_text()
    colour_folder(tmp_path / "in", ["green-1"])
    r = run_client(*common, "--top-k", "2", "--resume")
    assert r.returncode == client.EXIT_FATAL, r.stderr
    assert f"error: {out} holds top-1 rows: resume it with --top-k 1" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == before
    assert run_client(*common, "--top-k", "1", "--resume").returncode == client.EXIT_OK
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.serve
def test_model_chooses_one_of_the_servers_models_and_each_row_names_it(
    two_model_server, default_model, colour_model, tmp_path
):
    colour_folder(tmp_path / "in", ["red-1", "green-1", "blue-1"])
    shutil.copy(DATA / "cat.jpg", tmp_path / "in" / "cat.jpg")
    chosen, default = tmp_path / "colours.csv", tmp_path / "default.csv"
    common = [tmp_path / "in", "--url", two_model_server.url, "--top-k", "1"]
    r = run_client(*common, "--model", colour_model.split(":")[0], "--out", chosen)
    assert r.returncode == client.EXIT_OK, r.stderr
    rows = {Path(p).name: row for p, row in csv_rows(chosen).items()}
    assert {row["model"] for row in rows.values()} == {colour_model}
    assert [rows[f"{c}-1.png"]["label_1"] for c in ("red", "green", "blue")] == ["red", "green", "blue"]
    assert rows["cat.jpg"]["label_1"] in COLOURS  # the colour model's answer for a photo, not ImageNet's
    r = run_client(*common, "--out", default)  # no --model: the server's default
    assert r.returncode == client.EXIT_OK, r.stderr
    assert {row["model"] for row in csv_rows(default).values()} == {default_model}
    assert csv_rows(default)[str(tmp_path / "in" / "cat.jpg")]["label_1"] in CAT_CLASSES


@pytest.mark.serve
def test_a_model_the_server_does_not_serve_stops_the_run_naming_those_it_does(
    two_model_server, default_model, colour_model, tmp_path
):
    colour_folder(tmp_path / "in", ["red-1", "green-1"])
    r = run_client(tmp_path / "in", "--url", two_model_server.url, "--model", "flowers", "--out", tmp_path / "r.csv")
    assert r.returncode == client.EXIT_FATAL, r.stderr
    assert (
        "the server refused the first requests (HTTP 400): unknown model 'flowers': "
        f"this server serves {default_model} (default), {colour_model}"
    ) in r.stderr
    assert "0 ok, 0 failed" in r.stderr


@pytest.mark.serve
def test_ctrl_c_keeps_every_finished_row_and_resume_completes_the_rest(colour_server, tmp_path):
    names = [f"{colour}-{i}" for i in range(20) for colour in COLOURS]
    colour_folder(tmp_path / "in", names)
    out = tmp_path / "results.csv"
    # One image per request, one at a time: slow enough to interrupt in the middle.
    args = [tmp_path / "in", "--url", colour_server.url, "--out", out, "--top-k", "1"]
    proc = subprocess.Popen(
        command(*args, "--batch-size", "1", "--concurrency", "1"),
        env=client_env(None),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=30)[1]

    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    kept = csv_rows(out)
    assert 3 <= len(kept) < len(names)
    assert all(row["label_1"] == Path(path).name.split("-")[0] for path, row in kept.items())

    r = run_client(*args, "--resume")
    assert r.returncode == 0, r.stderr
    rows = csv_rows(out)  # each path once
    assert sorted(Path(p).stem for p in rows) == sorted(names)
    assert all(row["label_1"] == Path(path).name.split("-")[0] for path, row in rows.items())


@pytest.fixture(scope="module")
def guarded_server(colour_model, tmp_path_factory) -> Iterator[Server]:
    """A real server that requires an API key and holds few requests and uploads at once; the
    uploads held open by a test are not timed out while it runs."""
    env = {
        config.ENV_API_KEY: KEY,
        config.ENV_MAX_CONCURRENT: str(IN_FLIGHT),
        config.ENV_MAX_UPLOADS: str(IN_FLIGHT),
        config.ENV_BODY_TIMEOUT_S: "120",
    }
    with running(colour_model, tmp_path_factory.mktemp("logs"), env) as s:
        yield s


@contextlib.contextmanager
def uploads_held_open(server: Server, n: int) -> Iterator[None]:
    """`n` /classify requests whose bodies never finish: each stays an upload in progress until released."""
    address = urlparse(server.url)
    head = (
        "POST /classify HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 100000\r\n\r\n--b\r\n"
    ).encode()
    sockets = []
    try:
        for _ in range(n):
            sockets.append(socket.create_connection((address.hostname, address.port)))
            sockets[-1].sendall(head)
        yield
    finally:
        for s in sockets:
            s.close()


@pytest.mark.serve
def test_a_server_that_sheds_load_is_retried_until_every_image_is_classified(guarded_server, tmp_path):
    """Real shedding, made deterministic: the server answers 503 + Retry-After once
    $CLASSIFIER_MAX_UPLOADS uploads are in progress, so the test holds that many
    uploads open, starts the client, waits until the server's /metrics show the client's own
    request was shed, then lets the uploads go. The batcher's own 503 depends on timing and
    cannot be forced; this is the same answer from the same server, on demand."""
    colour_folder(tmp_path / "in", ["red-1", "green-1", "blue-1"])
    out = tmp_path / "results.csv"
    auth = {"Authorization": f"Bearer {KEY}"}
    with uploads_held_open(guarded_server, IN_FLIGHT):
        deadline = time.monotonic() + 30
        probe = httpx.post(f"{guarded_server.url}/classify", headers=auth, files={"images": image_bytes()})
        while probe.status_code != 503 and time.monotonic() < deadline:  # until the held uploads are counted
            probe = httpx.post(f"{guarded_server.url}/classify", headers=auth, files={"images": image_bytes()})
        assert probe.status_code == 503 and probe.headers["Retry-After"] == str(config.RETRY_AFTER_S)
        shed = classify_requests(guarded_server, auth, "503")
        proc = subprocess.Popen(
            command(tmp_path / "in", "--url", guarded_server.url, "--out", out, "--top-k", "1", "-v"),
            env=client_env(KEY),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while classify_requests(guarded_server, auth, "503") == shed and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        assert classify_requests(guarded_server, auth, "503") > shed, "the client was never shed"
    stderr = proc.communicate(timeout=60)[1]

    assert proc.returncode == 0, stderr
    assert "3 ok, 0 failed" in stderr
    waits = [float(s) for s in re.findall(r"HTTP 503: .*; retrying in ([\d.]+) s", stderr)]
    assert waits and min(waits) >= config.RETRY_AFTER_S  # Retry-After honoured, never sooner
    rows = csv_rows(out)
    assert {Path(p).stem: row["label_1"] for p, row in rows.items()} == {
        "red-1": "red",
        "green-1": "green",
        "blue-1": "blue",
    }


@pytest.mark.serve
def test_without_the_right_api_key_the_run_stops_at_once_and_names_the_variable(
    guarded_server, tmp_path, monkeypatch, capsys
):
    """In-process (the shed test above runs the client with the right key as a user would)."""
    colour_folder(tmp_path / "in", ["green-1"])
    out = tmp_path / "results.csv"
    argv = [str(tmp_path / "in"), "--url", guarded_server.url, "--out", str(out)]
    monkeypatch.delenv(config.ENV_API_KEY, raising=False)
    assert client.main(argv) == client.EXIT_FATAL
    assert f"the server needs an API key (HTTP 401): set ${config.ENV_API_KEY}" in capsys.readouterr().err
    monkeypatch.setenv(config.ENV_API_KEY, "not-the-key")
    assert client.main(argv) == client.EXIT_FATAL
    assert f"the server refused the API key in ${config.ENV_API_KEY}" in capsys.readouterr().err
    assert not out.exists()  # a run that cannot start leaves no file to --resume or remove


def test_an_unreachable_server_stops_the_run_at_once_with_a_message(tmp_path, capsys):
    colour_folder(tmp_path / "in", ["red-1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # a port that nothing listens on
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code = client.main([str(tmp_path / "in"), "--url", url, "--out", str(tmp_path / "results.csv")])
    assert code == client.EXIT_FATAL
    assert f"cannot reach {url}" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.serve
def test_rows_on_stdout_keep_a_file_name_that_is_not_utf8(colour_server, tmp_path):
    """A name from a Latin-1 system (a camera's card, an old archive) crashed the default CSV-on-stdout with
    UnicodeEncodeError ('surrogates not allowed') when its row was written; it goes out as its bytes, as in
    the CSV file."""
    folder = tmp_path / "in"
    colour_folder(folder, ["green-1"])
    latin1 = os.fsdecode(b"caf\xe9-red.png")  # not UTF-8: Python holds the byte as a surrogate
    (folder / latin1).write_bytes(image_bytes(COLOURS["red"]))
    # Python's stdout under en_US.UTF-8 (a Linux desktop): strict UTF-8 (C.UTF-8 lets surrogates through).
    env = client_env(None) | {"PYTHONIOENCODING": "utf-8"}
    r = subprocess.run(command(folder, "--url", colour_server.url, "--top-k", "1"), env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    rows = {line.split(b",")[0]: line.split(b",")[1] for line in r.stdout.splitlines()[1:]}
    assert rows == {os.fsencode(folder / latin1): b"red", os.fsencode(folder / "green-1.png"): b"green"}


@pytest.mark.serve
def test_rows_to_a_pipe_that_closes_stop_the_run_with_one_line_not_a_traceback(colour_server, tmp_path):
    """`client.py photos/ | head`: once head had its lines, the next row was a BrokenPipeError traceback
    (and a second one as Python flushed stdout at exit)."""
    colour_folder(tmp_path / "in", ["red-1", "green-1"])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first row: every write meets a closed pipe
    try:
        r = subprocess.run(
            command(tmp_path / "in", "--url", colour_server.url, "--top-k", "1"),
            env=client_env(None),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert r.returncode == client.EXIT_FATAL, r.stderr
    assert "error: stdout was closed by the program reading the rows: give --out FILE" in r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--top-k", "0", "--top-k must be 1 or more"),
        ("--batch-size", "-1", "--batch-size must be 1 or more"),
        ("--concurrency", "0", "--concurrency must be 1 or more"),
        ("--retry-for", "-1", "--retry-for must be 0 or more seconds, got -1"),
        ("--retry-for", "nan", "--retry-for must be 0 or more seconds, got nan"),  # retried forever
    ],
)
def test_an_option_out_of_range_is_a_usage_error_before_anything_is_sent(tmp_path, capsys, option, value, message):
    """--retry-for took any float: -1 ran, and nan never stopped retrying (no time is past nan)."""
    colour_folder(tmp_path / "in", ["red-1"])
    out = tmp_path / "r.csv"
    with pytest.raises(SystemExit) as usage:
        client.main([str(tmp_path / "in"), "--url", "http://127.0.0.1:9", option, value, "--out", str(out)])
    assert usage.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.serve
def test_a_top_k_past_the_servers_classes_stops_before_the_output_is_begun(colour_server, tmp_path, capsys):
    """Checked against the server's own /models: the colour model has 3 classes."""
    colour_folder(tmp_path / "in", ["red-1"])
    out = tmp_path / "results.csv"
    started = time.monotonic()
    code = client.main([str(tmp_path / "in"), "--url", colour_server.url, "--top-k", "100000000", "--out", str(out)])
    assert code == client.EXIT_FATAL and time.monotonic() - started < 30
    message = "--top-k 100000000: the server's models have at most 3 classes: give 1 to 3"
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:3000", "give the scheme too: http://localhost:3000"),  # retried for --retry-for, then
        ("127.0.0.1:3000", "give the scheme too: http://127.0.0.1:3000"),  # "cannot reach ...: is it running?"
        ("http://localhost:80800", "80800 is not a TCP port: give one from 1 to 65535"),  # OverflowError traceback
        ("ftp://localhost", "give the server's address, http:// or https://, e.g. http://localhost:3000"),
        ("", "give the server's address, http:// or https://, e.g. http://localhost:3000"),
    ],
)
def test_a_url_that_is_no_servers_address_is_a_usage_error_before_anything_is_sent(tmp_path, capsys, url, message):
    colour_folder(tmp_path / "in", ["red-1"])
    argv = [str(tmp_path / "in"), "--url", url, "--retry-for", "1", "--out", str(tmp_path / "r.csv")]
    with pytest.raises(SystemExit) as usage:
        client.main(argv)
    assert usage.value.code == 2
    assert f"error: --url {url}: {message}" in capsys.readouterr().err
