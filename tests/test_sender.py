"""client.py's requests without a server (imgserve/client/sender.py): error bodies read as data, the
retry policy, a batch's rows. A MockTransport plays the server; a recording `sleep` stands in for the
waits, so nothing here sleeps and the order of events is the order of requests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from imgserve.client import sender as s
from imgserve.client.results import Row

Handler = Callable[[httpx.Request], httpx.Response]


def images_in(request: httpx.Request) -> list[str]:
    """The test images of a request, in upload order: each file's bytes are its name ("ok-1", "bad")."""
    return [m.decode() for m in re.findall(rb"\r\n\r\n(ok-\d+|bad)\r\n--", request.content)]


def answers(names: list[str]) -> httpx.Response:
    return httpx.Response(200, json=[{"model": "m:1", "predictions": [{"label": n, "score": 1.0}]} for n in names])


def folder(tmp_path: Path, names: list[str]) -> list[Path]:
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(name.encode())
    return [tmp_path / f"{name}.png" for name in names]


class Run:
    """A Sender against `handler`: the requests it made, the rows it wrote, the waits it asked for."""

    def __init__(
        self, handler: Handler, retry_for: float = 60, top_k: int = 1, url: str = "http://imgserve.test", **options
    ) -> None:
        self.requests: list[list[str]] = []
        self.rows: list[Row] = []
        self.waits: list[float] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(images_in(request))
            return handler(request)

        async def sleep(seconds: float) -> None:
            self.waits.append(seconds)

        self.client = httpx.AsyncClient(base_url=url, transport=httpx.MockTransport(record))
        self.sender = s.Sender(self.client, self.rows.append, top_k, retry_for, sleep=sleep, **options)

    def classify(self, paths: list[Path], concurrency: int = 2) -> dict[str, Row]:
        return self.classify_batches([paths], concurrency)

    def classify_batches(self, batches: list[list[Path]], concurrency: int = 2) -> dict[str, Row]:
        async def go() -> None:
            async with self.client:
                await self.sender.send_all(batches, concurrency)

        asyncio.run(go())
        assert len({r.path for r in self.rows}) == len(self.rows), "a path has two rows"
        return {Path(r.path).stem: r for r in self.rows}


# --- Error bodies and Retry-After, read as data


@pytest.mark.parametrize(
    ("body", "message", "image"),
    [
        ({"error": "not a supported image", "image": 2}, "not a supported image", 2),
        ({"error": "image 2: not a supported image", "image": 2}, "image 2: not a supported image", 2),  # as sent
        (
            {"error": "too many images in one request: 40, limit is 32"},
            "too many images in one request: 40, limit is 32",
            None,
        ),
        ({"error": "image 2: said in words only"}, "image 2: said in words only", None),  # the index is data, not prose
        ({"error": "x", "image": True}, "x", None),
        ({"error": "x", "image": "2"}, "x", None),
    ],
)
def test_the_servers_error_is_read_from_its_json_fields(body, message, image):
    error = s.read_error(httpx.Response(400, json=body))
    assert (error.status, error.message, error.image, error.retry_after) == (400, message, image, None)


NGINX_413 = (  # ingress-nginx's own page for a body over its proxy-body-size (1 MB unless raised)
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
ENVOY_503 = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
PROXY = " (not the classifier's own answer: from a proxy in front of it?)"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(413, html=NGINX_413), "413 Request Entity Too Large"),
        (httpx.Response(502, text="<html><body><h1>Bad &amp; Gateway</h1>\n</body></html>"), "Bad & Gateway"),
        (httpx.Response(503, text=f"{ENVOY_503}\n"), ENVOY_503),
        (httpx.Response(502, text="x" * 5000), "x" * 197 + "..."),
        (httpx.Response(502), "no message"),
    ],
)
def test_an_error_body_that_is_not_the_servers_is_its_gist_on_one_line(response, message):
    """A proxy's HTML page was the message as it stood: up to 500 characters of markup and line breaks in
    the error column of every row it refused, and in the line that stopped the run."""
    error = s.read_error(response)
    assert (error.status, error.message, error.image) == (response.status_code, message + PROXY, None)


def test_retry_after_is_read_from_any_error_answer():
    error = s.read_error(httpx.Response(502, text="<html>Bad Gateway</html>\n", headers={"Retry-After": "7"}))
    assert (error.status, error.retry_after) == (502, 7)


def test_retry_after_is_read_as_seconds_or_as_a_date():
    assert s.retry_after_s("3") == 3.0
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= s.retry_after_s(in_ten) <= 10
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=10), usegmt=True)
    assert s.retry_after_s(past) == 0
    assert s.retry_after_s(None) is None and s.retry_after_s("soon") is None


# --- The retry policy


def test_overload_is_retried_after_retry_after_never_sooner(tmp_path):
    replies = iter([503, 429, 200])

    def busy(request: httpx.Request) -> httpx.Response:
        if (status := next(replies)) == 200:
            return answers(images_in(request))
        return httpx.Response(status, json={"error": "server busy"}, headers={"Retry-After": "2"})

    run = Run(busy)
    rows = run.classify(folder(tmp_path, ["ok-1", "ok-2"]))
    assert run.requests == [["ok-1", "ok-2"]] * 3 and run.sender.retries == 2
    assert len(run.waits) == 2 and all(2 <= w <= 2.4 for w in run.waits)  # a little jitter, never less
    assert {name: row.predictions[0]["label"] for name, row in rows.items()} == {"ok-1": "ok-1", "ok-2": "ok-2"}


def test_dropped_connections_are_retried_with_growing_backoff(tmp_path):
    outcomes = iter([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset")])

    def flaky(request: httpx.Request) -> httpx.Response:
        if error := next(outcomes, None):
            raise error
        return answers(images_in(request))

    run = Run(flaky)
    assert set(run.classify(folder(tmp_path, ["ok-1"]))) == {"ok-1"}
    assert len(run.requests) == 4 and run.sender.retries == 3
    first = s.BACKOFF_FIRST_S  # 0.5, 1, 2 ... seconds, each plus up to 0.5
    assert [n * first <= w <= (n + 1) * first for n, w in zip([1, 2, 4], run.waits, strict=True)] == [True] * 3


@pytest.mark.parametrize(
    "fault", [lambda: httpx.Response(503, json={"error": "server busy"}), httpx.ConnectError("refused")]
)
def test_when_retry_for_runs_out_the_run_stops_without_rows_for_the_images_never_judged(tmp_path, fault):
    def away(request: httpx.Request) -> httpx.Response:
        if isinstance(fault, Exception):
            raise fault
        return fault()

    run = Run(away, retry_for=0.2)  # shorter than the first backoff: the first failure is the last
    with pytest.raises(s.Fatal, match=r"gave up after 1 attempts \(--retry-for 0.2 s\): (HTTP 503|ConnectError)"):
        run.classify(folder(tmp_path, ["ok-1", "ok-2"]))
    assert run.rows == [] and run.waits == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_run_at_once_naming_the_variable(tmp_path, status):
    run = Run(lambda request: httpx.Response(status, json={"error": "API key missing or wrong"}))
    with pytest.raises(s.Fatal, match=r"needs an API key \(HTTP \d+\): set \$CLASSIFIER_API_KEY"):
        run.classify(folder(tmp_path, ["ok-1"]))
    assert len(run.requests) == 1 and run.rows == []


# --- A batch's rows


def test_the_form_has_one_images_part_per_file_top_k_and_model_only_when_named(tmp_path):
    forms: list[bytes] = []

    def server(request: httpx.Request) -> httpx.Response:
        forms.append(request.content)
        return answers(images_in(request))

    paths = folder(tmp_path, ["ok-1", "ok-2"])
    Run(server).classify(paths)
    Run(server, model="flowers").classify(paths)
    for form in forms:
        assert form.count(b'name="images"; filename="ok-') == 2
        assert re.search(rb'name="top_k"\r\n\r\n1\r\n', form)
    assert b'name="model"' not in forms[0] and re.search(rb'name="model"\r\n\r\nflowers\r\n', forms[1])


@pytest.mark.parametrize("prefix", ["", "image {n}: "])  # servers that also wrote the index into the message
def test_a_rejected_image_gets_its_own_error_row_and_the_rest_are_sent_again(tmp_path, prefix):
    def server(request: httpx.Request) -> httpx.Response:
        names = images_in(request)
        if "bad" in names:
            n = names.index("bad") + 1
            return httpx.Response(400, json={"error": prefix.format(n=n) + "not a supported image", "image": n})
        return answers(names)

    run = Run(server)
    rows = run.classify(folder(tmp_path, ["ok-1", "bad", "ok-2"]))
    assert run.requests == [["ok-1", "bad", "ok-2"], ["ok-1", "ok-2"]]
    assert rows["bad"] == Row(str(tmp_path / "bad.png"), error="not a supported image")  # the row names the file
    assert [rows[n].predictions[0]["label"] for n in ("ok-1", "ok-2")] == ["ok-1", "ok-2"]


def test_a_request_refused_as_a_whole_is_sent_again_one_image_at_a_time(tmp_path):
    def server(request: httpx.Request) -> httpx.Response:
        names = images_in(request)
        if len(names) > 1:
            return httpx.Response(400, json={"error": "too many images in one request: 3, limit is 1"})
        return answers(names) if names != ["bad"] else httpx.Response(400, json={"error": "not an image", "image": 1})

    run = Run(server)
    rows = run.classify(folder(tmp_path, ["ok-1", "ok-2", "bad"]), concurrency=1)
    assert run.requests == [["ok-1", "ok-2", "bad"], ["ok-1"], ["ok-2"], ["bad"]]
    assert rows["bad"].error == "not an image" and rows["ok-2"].predictions[0]["label"] == "ok-2"


def test_a_batch_larger_than_the_server_takes_is_halved_until_it_fits_and_later_batches_fit_at_once(tmp_path):
    """--batch-size 8 against a server that takes 2 images a request (CLASSIFIER_MAX_IMAGES_PER_REQUEST):
    sent one at a time after each refusal, a run took a request per image and a refused one per batch."""

    def server(request: httpx.Request) -> httpx.Response:
        names = images_in(request)
        if len(names) > 2:
            return httpx.Response(400, json={"error": f"too many images in one request: {len(names)}, limit is 2"})
        return answers(names)

    run = Run(server)
    names = [f"ok-{i}" for i in range(12)]
    paths = folder(tmp_path, names)
    rows = run.classify_batches([paths[:8], paths[8:]], concurrency=1)
    assert [len(r) for r in run.requests] == [8, 4, 2, 2, 2, 2, 2, 2]
    assert sorted(rows) == sorted(names) and all(rows[n].predictions[0]["label"] == n for n in names)

    run = Run(server)  # several requests at a time, each refused batch halved by the others' limit too
    rows = run.classify_batches([paths[i : i + 3] for i in range(0, 12, 3)], concurrency=4)
    assert sorted(rows) == sorted(names) and all(rows[n].predictions[0]["label"] == n for n in names)
    assert all(len(r) <= 2 for r in run.requests[-6:])


def test_when_the_first_requests_are_all_refused_the_run_stops_with_the_servers_message(tmp_path):
    run = Run(lambda request: httpx.Response(400, json={"error": "unknown model 'flowers'"}), model="flowers")
    with pytest.raises(s.Fatal, match=r"the server refused the first requests \(HTTP 400\): unknown model 'flowers'"):
        run.classify(folder(tmp_path, ["ok-1", "ok-2"]))
    assert run.rows == []


def test_a_file_over_the_servers_body_limit_gets_its_row_and_the_run_goes_on(tmp_path):
    """A server with a lower CLASSIFIER_MAX_REQUEST_BYTES than the client's: the first file's 413 stopped
    the run as "the server refused the first requests"."""
    too_large = "request body too large: limit is 300000 bytes (CLASSIFIER_MAX_REQUEST_BYTES)"

    def server(request: httpx.Request) -> httpx.Response:
        names = images_in(request)
        return httpx.Response(413, json={"error": too_large}) if "bad" in names else answers(names)

    run = Run(server)
    rows = run.classify(folder(tmp_path, ["bad", "ok-1", "ok-2"]), concurrency=1)
    assert run.requests == [["bad", "ok-1", "ok-2"], ["bad", "ok-1"], ["bad"], ["ok-1"], ["ok-2"]]  # halves
    assert rows["bad"] == Row(str(tmp_path / "bad.png"), error=too_large)
    assert [rows[n].predictions[0]["label"] for n in ("ok-1", "ok-2")] == ["ok-1", "ok-2"]

    run = Run(server)  # one file's bytes lower nothing: the next batch goes whole
    more = folder(tmp_path, ["ok-3", "ok-4", "ok-5"])
    run.classify_batches([folder(tmp_path, ["bad", "ok-1", "ok-2"]), more], concurrency=1)
    assert run.requests[-1] == ["ok-3", "ok-4", "ok-5"]


def test_files_that_cannot_be_sent_get_error_rows_without_a_request(tmp_path):
    (big := tmp_path / "big.png").write_bytes(b"x" * 101)
    run = Run(lambda request: answers(images_in(request)), max_bytes=100)
    rows = run.classify([*folder(tmp_path, ["ok-1"]), big, tmp_path / "gone.png"])
    assert run.requests == [["ok-1"]]
    assert rows["big"].error.startswith("file too large: 101 bytes") and rows["gone"].error == "cannot read the file"


# --- The check before the work


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.ConnectError("refused"), "cannot reach http://imgserve.test (ConnectError: refused): is the server"),
        (httpx.ReadTimeout(""), "cannot reach http://imgserve.test (ReadTimeout): is the server running?"),
        (httpx.Response(401, json={"error": "API key missing or wrong"}), "needs an API key (HTTP 401)"),
        (httpx.Response(404, text="Not Found"), "schema.json answered HTTP 404 without a BentoML schema: wrong URL?"),
        (httpx.Response(200, json={"routes": [{"name": "predict"}]}), "serves no /classify endpoint"),
    ],
)
def test_the_server_check_names_what_is_wrong(answer, message):
    def server(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    run = Run(server, retry_for=0)  # a refused connection is asked again for --retry-for: here, not at all
    with pytest.raises(s.Fatal, match=re.escape(message)):
        asyncio.run(run.sender.check_server())


def test_the_server_check_waits_out_a_restarting_server_as_every_request_does():
    """503 with Retry-After while the server restarts: asked again, not taken for a wrong URL."""
    schema = {"routes": [{"name": "classify"}]}
    answers = iter([httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "busy"})] * 2)

    run = Run(lambda request: next(answers, httpx.Response(200, json=schema)))
    asyncio.run(run.sender.check_server())
    assert len(run.waits) == 2 and all(2 <= w <= 2.5 for w in run.waits)


# --- Answers that are not the classifier's


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (httpx.Response(200, html="<html><title>Sign in</title></html>"), "text/html"),  # a login or captive page
        (httpx.Response(200, json={"detail": "ok"}), "application/json"),  # another service at --url
        (httpx.Response(200, json=[{"label": "cat", "score": 0.9}]), "application/json"),
        (httpx.Response(200), "an empty body"),
    ],
)
def test_a_200_that_is_not_the_classifiers_answer_stops_the_run_without_rows(tmp_path, answer, kind):
    """A 200 whose body was not /classify's JSON list crashed the run with a traceback (JSONDecodeError in
    an ExceptionGroup), or wrote rows from whatever the list held."""
    run = Run(lambda request: answer)
    with pytest.raises(s.Fatal) as stopped:
        run.classify(folder(tmp_path, ["ok-1"]))
    assert str(stopped.value) == (
        f"http://imgserve.test/classify answered HTTP 200 with {kind}, not the classifier's answers: "
        "is --url the classifier's, with nothing in between that answers for it?"
    )
    assert run.rows == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_stops_the_run_naming_the_url_to_give(tmp_path, status):
    """http:// to a host that serves https:// only: the check said "answered HTTP 308 without a BentoML
    schema: wrong URL?" and a redirected /classify crashed with a traceback. Not followed (the POST's
    images would not go with it, the key might go to another host): the run names the --url to give."""

    def https_only(request: httpx.Request) -> httpx.Response:
        location = str(request.url.copy_with(scheme="https"))
        return httpx.Response(status, headers={"Location": location}, text="Moved")

    run = Run(https_only)
    https = "https://imgserve.test"
    expected = f"http://imgserve.test redirects to {https} (HTTP {status}): give --url {https}"
    with pytest.raises(s.Fatal, match=re.escape(expected)):
        asyncio.run(run.sender.check_server())
    run = Run(https_only)
    with pytest.raises(s.Fatal, match=re.escape(expected)):
        run.classify(folder(tmp_path, ["ok-1"]))
    assert run.rows == []

    run = Run(lambda request: httpx.Response(302, headers={"Location": "/login?next=/schema.json"}))
    elsewhere = "http://imgserve.test/schema.json redirects to http://imgserve.test/login"
    with pytest.raises(s.Fatal, match=re.escape(elsewhere)):
        asyncio.run(run.sender.check_server())


def test_a_top_k_past_every_served_models_classes_stops_at_the_check(tmp_path):
    """The server refuses it too, but only at the first request: --top-k 100000000 (a slip of the finger)
    first began a CSV header of 200 million names, minutes and gigabytes of it."""
    served = [{"name": "digits", "classes": 10}, {"name": "imagenet", "classes": 1000}]

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/models":
            return httpx.Response(200, json=served)
        return httpx.Response(200, json={"routes": [{"name": "classify"}]})

    for top_k in (1, 1000):
        asyncio.run(Run(server, top_k=top_k).sender.check_server())
    run = Run(server, top_k=100_000_000)
    message = "--top-k 100000000: the server's models have at most 1000 classes: give 1 to 1000"
    with pytest.raises(s.Fatal, match=re.escape(message)):
        asyncio.run(run.sender.check_server())
    # A server that does not list its models (an older one) is left to answer the first request.
    unlisted = Run(lambda request: httpx.Response(200, json={"routes": [{"name": "classify"}]}), top_k=10**8)
    asyncio.run(unlisted.sender.check_server())


def test_a_concurrency_far_above_the_work_starts_no_idle_requests(tmp_path):
    """--concurrency N started N workers however few the batches: a million took 500 MB and 15 s before the
    first request, and --concurrency 1000000000 ran the machine out of memory."""
    tasks: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        tasks.append(len(asyncio.all_tasks()))  # the run's own task and its workers, at each request
        return answers(images_in(request))

    run = Run(server)
    rows = run.classify_batches([folder(tmp_path, ["ok-1"]), folder(tmp_path, ["ok-2"])], concurrency=10**6)
    assert max(tasks) <= 3  # one worker per batch, at most
    assert {name: row.predictions[0]["label"] for name, row in rows.items()} == {"ok-1": "ok-1", "ok-2": "ok-2"}


def test_the_endpoints_url_given_as_the_servers_is_told_the_address_to_give():
    """--url http://host:3000/classify, copied from the curl examples, was told 'schema.json answered HTTP
    404 without a BentoML schema: wrong URL?', which does not say what is wrong with it."""
    not_found = lambda request: httpx.Response(404, json={"error": f"not found: GET {request.url.path}"})  # noqa: E731
    run = Run(not_found, url="http://imgserve.test/classify")
    with pytest.raises(s.Fatal) as stopped:
        asyncio.run(run.sender.check_server())
    assert str(stopped.value) == (
        "http://imgserve.test/classify/schema.json answered HTTP 404: --url is the server's address, "
        "not its endpoint: give --url http://imgserve.test"
    )


def test_an_address_where_no_host_takes_the_connection_stops_the_check_at_once():
    """A wrong IP address or a firewalled port: no answer to the connection (ConnectTimeout, after 10 s)
    was asked again for --retry-for, five minutes of silence before 'cannot reach'."""
    replies = iter([httpx.ConnectTimeout("timed out")])

    def nobody(request: httpx.Request) -> httpx.Response:
        if error := next(replies, None):
            raise error
        return httpx.Response(200, json={"routes": [{"name": "classify"}]})

    run = Run(nobody, retry_for=300)
    message = "cannot reach http://imgserve.test (ConnectTimeout: timed out): is the server running?"
    with pytest.raises(s.Fatal, match=re.escape(message)):
        asyncio.run(run.sender.check_server())
    assert len(run.requests) == 1 and run.waits == []
