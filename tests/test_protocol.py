"""Protocol-level abuse against a real server: malformed forms, odd names and spellings, lying
and stalled clients, a burst. Each gets its exact status and one JSON error object, the next good
request is answered right, the log gets one line and no traceback, and memory stays flat.

The bad-image corpus is in tests/test_errors.py; this is the HTTP around the images.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from imgserve import config
from imgserve.serving.bentoml_compat import OTHER_ENDPOINT, TEXT_FOR_FILE
from imgserve.serving.errors import ERROR_ANSWERS, ERROR_SCHEMA, MODEL_QUEUE_FULL, TOO_MANY_IN_FLIGHT
from imgserve.serving.form import HOW_TO_SEND, LF_ALONE
from imgserve.testing import running, tree_rss_bytes
from tests.helpers import CAT_CLASSES, DATA, image_bytes

pytestmark = pytest.mark.serve

CAT = (DATA / "cat.jpg").read_bytes()
B = b"b0undary"
FORM = f"multipart/form-data; boundary={B.decode()}"
FIELDS = "(fields: 'images', 'top_k', 'model')"
LIMIT = config.MAX_IMAGES_PER_REQUEST


def part(
    name: str | None, data: bytes, filename: bytes | None = b"cat.jpg", ctype: bytes | None = b"image/jpeg"
) -> bytes:
    """One part of a multipart form, written by hand so that it can be wrong in any way."""
    disposition = b"form-data"
    if name is not None:
        disposition += b'; name="%s"' % name.encode()
    if filename is not None:
        disposition += b'; filename="%s"' % filename
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    return b"--" + B + b"\r\n" + head + b"\r\n" + data + b"\r\n"


def form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (b"--" + B + b"--\r\n" if close else b"")


IMAGE = part("images", CAT)
TOP_K_1 = part("top_k", b"1", filename=None, ctype=None)


def err(error: str, **extra: object) -> dict:
    return {"error": error, **extra}


# (name, Content-Type or None, body, query, status, the exact JSON answer)
REFUSED = [
    (
        "no boundary",
        "multipart/form-data",
        form(IMAGE),
        {},
        400,
        err(f"multipart body without a boundary in its Content-Type: let the HTTP library write it; {HOW_TO_SEND}"),
    ),
    (
        "empty boundary",
        "multipart/form-data; boundary=",
        form(IMAGE),
        {},
        400,
        err(f"multipart body without a boundary in its Content-Type: let the HTTP library write it; {HOW_TO_SEND}"),
    ),
    (
        "wrong boundary",
        "multipart/form-data; boundary=other",
        form(IMAGE),
        {},
        400,
        err("multipart body does not start with the boundary its Content-Type names ('--other')"),
    ),
    (
        "boundary over 256 bytes",
        "multipart/form-data; boundary=" + "b" * 300,
        form(IMAGE).replace(B, b"b" * 300),
        {},
        400,
        err(
            "multipart boundary refused (Boundary length 300 exceeds maximum of 256): "
            f"let the HTTP library write it; {HOW_TO_SEND}"
        ),
    ),
    (
        "no closing boundary",
        FORM,
        form(IMAGE, close=False),
        {},
        400,
        err("multipart body ends before its closing boundary '--b0undary--'"),
    ),
    ("lines ending in LF alone", FORM, form(IMAGE).replace(b"\r\n", b"\n"), {}, 400, err(LF_ALONE)),
    ("empty body", FORM, b"", {}, 400, err("no images: send one or more files in the 'images' field")),
    (
        "only the closing boundary",
        FORM,
        form(),
        {},
        400,
        err("no images: send one or more files in the 'images' field"),
    ),
    ("only top_k", FORM, form(TOP_K_1), {}, 400, err("no images: send one or more files in the 'images' field")),
    (
        "hundreds of image parts",
        FORM,
        form(*[part("images", b"x")] * 300),
        {},
        400,
        err(f"too many images in one request: 300, limit is {LIMIT} (CLASSIFIER_MAX_IMAGES_PER_REQUEST)"),
    ),
    (
        "thousands of image parts",
        FORM,
        form(*[part("images", b"x")] * 3000),
        {},
        400,
        err(f"too many images in one request: more than 1000, limit is {LIMIT} (CLASSIFIER_MAX_IMAGES_PER_REQUEST)"),
    ),
    (
        "thousands of top_k parts",
        FORM,
        form(IMAGE, *[TOP_K_1] * 3000),
        {},
        400,
        err("field 'top_k' sent 2 times: send it once"),
    ),
    (
        "field misspelled",
        FORM,
        form(part("image", CAT)),
        {},
        400,
        err(f"unknown field 'image': send the images in the 'images' field {FIELDS}"),
    ),
    (
        "field capitalised",
        FORM,
        form(part("Images", CAT)),
        {},
        400,
        err(f"unknown field 'Images': send the images in the 'images' field {FIELDS}"),
    ),
    (
        "a good part, then a misspelled one",
        FORM,
        form(IMAGE, part("file", CAT)),
        {},
        400,
        err(f"unknown field 'file': send the images in the 'images' field {FIELDS}"),
    ),
    (
        "empty field name",
        FORM,
        form(part("", CAT)),
        {},
        400,
        err(f"a form part without a field name: name each part, e.g. {HOW_TO_SEND}"),
    ),
    (
        "part without headers",
        FORM,
        b"--" + B + b"\r\n\r\n" + CAT + b"\r\n--" + B + b"--\r\n",
        {},
        400,
        err(f"a form part without a field name: name each part, e.g. {HOW_TO_SEND}"),
    ),
    (
        "empty image part",
        FORM,
        form(part("images", b"")),
        {},
        400,
        err("image 1: empty file: no image data was uploaded", image=1),
    ),
    (
        "text part in the images field",
        FORM,
        form(part("images", b"/etc/passwd", filename=None, ctype=None)),
        {},
        400,
        err(TEXT_FOR_FILE),
    ),
    ("an image part without a filename", FORM, form(part("images", CAT, filename=None)), {}, 400, err(TEXT_FOR_FILE)),
    (
        "a base64 image part (an old client's)",
        FORM,
        form(part("images", base64.encodebytes(CAT), ctype=b"image/jpeg\r\nContent-Transfer-Encoding: base64")),
        {},
        400,
        err(f"field 'images' has Content-Transfer-Encoding 'base64': send the bytes as they are; {HOW_TO_SEND}"),
    ),
    (
        "top_k far too long",
        FORM,
        form(IMAGE, part("top_k", b"9" * 5000, filename=None, ctype=None)),
        {},
        400,
        err("field 'top_k' too long: more than 1000 bytes"),
    ),
    (
        "file name of 5000 characters",
        FORM,
        form(part("images", CAT, filename=b"a" * 5000 + b".jpg")),
        {},
        400,
        err("a form part's headers are too large (Maximum header size exceeded): shorten the file name"),
    ),
    (
        "a part with ten headers",
        FORM,
        form(part("images", CAT).replace(b"\r\n\r\n", b"".join(b"\r\nX-%d: y" % i for i in range(9)) + b"\r\n\r\n", 1)),
        {},
        400,
        err("a form part's headers are too large (Maximum header count exceeded): send fewer headers per part"),
    ),
    (
        "json",
        "application/json",
        json.dumps({"images": ["cat.jpg"], "top_k": 3}).encode(),
        {},
        415,
        err(f"unsupported Content-Type 'application/json': {HOW_TO_SEND}"),
    ),
    (
        "urlencoded",
        "application/x-www-form-urlencoded",
        b"images=cat.jpg&top_k=3",
        {},
        400,
        err(f"no images: a url-encoded form (application/x-www-form-urlencoded) carries no files; {HOW_TO_SEND}"),
    ),
    ("plain text", "text/plain", b"cat.jpg", {}, 415, err(f"unsupported Content-Type 'text/plain': {HOW_TO_SEND}")),
    ("no Content-Type", None, CAT, {}, 415, err(f"unsupported Content-Type 'none': {HOW_TO_SEND}")),
    (
        "raw text sent as an image",
        "image/png",
        b"hello",
        {},
        400,
        err("image 1: not a supported image: accepted formats are JPEG, PNG, GIF, BMP, WEBP, TIFF", image=1),
    ),
    (
        "raw image, bad top_k",
        "image/jpeg",
        CAT,
        {"top_k": "abc"},
        400,
        err("top_k must be a whole number from 1 to 1000, got 'abc'"),
    ),
    (
        "raw image, unknown query",
        "image/jpeg",
        CAT,
        {"k": "3"},
        400,
        err("unknown query parameter 'k': the fields are top_k, model"),
    ),
    (
        "form with top_k in the query",
        FORM,
        form(IMAGE),
        {"top_k": "1"},
        400,
        err("query parameter 'top_k' with a form: send it as a form field (curl -F top_k=...)"),
    ),
]

# Odd but fine: (name, Content-Type, body, query, predictions expected)
ACCEPTED = [
    ("raw jpeg", "image/jpeg", CAT, {}, config.DEFAULT_TOP_K),
    ("raw jpeg, top_k in the query", "image/jpeg", CAT, {"top_k": "2"}, 2),
    ("raw jpeg as octet-stream", "application/octet-stream", CAT, {}, config.DEFAULT_TOP_K),
    ("Content-Type in capitals", FORM.replace("multipart/form-data", "Multipart/Form-Data"), form(IMAGE), {}, 5),
    ("quoted boundary", f'multipart/form-data; boundary="{B.decode()}"', form(IMAGE, TOP_K_1), {}, 1),
    ("file name of 300 characters", FORM, form(part("images", CAT, filename=b"a" * 300 + b".jpg")), {}, 5),
    ("file name with path separators", FORM, form(part("images", CAT, filename=b"../../../../etc/passwd")), {}, 5),
    ("windows path as file name", FORM, form(part("images", CAT, filename=b"C:\\Users\\me\\cat.jpg")), {}, 5),
    ("unicode file name", FORM, form(part("images", CAT, filename="猫 🐈.jpg".encode())), {}, 5),
    ("control characters in the file name", FORM, form(part("images", CAT, filename=b"a\x01\x1b[31m\x7f.jpg")), {}, 5),
    ("NUL in the file name", FORM, form(part("images", CAT, filename=b"a\x00.jpg")), {}, 5),
    ("empty file name", FORM, form(part("images", CAT, filename=b"")), {}, 5),
    ("no part Content-Type", FORM, form(part("images", CAT, ctype=None)), {}, 5),
    ("preamble CRLF before the first boundary", FORM, b"\r\n" + form(IMAGE), {}, 5),
]


def send(client: httpx.Client, ctype: str | None, body: bytes, query: dict) -> httpx.Response:
    return client.post("/classify", content=body, headers={"Content-Type": ctype} if ctype else {}, params=query)


def the_error(r: httpx.Response) -> dict:
    """The body of an error answer: exactly one JSON object with an `error` sentence."""
    assert r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text
    assert set(body) <= set(ERROR_SCHEMA["properties"]), r.text
    return body


def assert_still_answers(client: httpx.Client) -> None:
    r = client.post("/classify", files=[("images", ("cat.jpg", CAT, "image/jpeg"))], data={"top_k": "1"})
    assert r.status_code == 200, r.text
    assert r.json()[0]["predictions"][0]["label"] in CAT_CLASSES


@pytest.mark.parametrize(("name", "ctype", "body", "query", "status", "answer"), REFUSED, ids=[c[0] for c in REFUSED])
def test_protocol_abuse_gets_its_status_and_one_error_object(server, name, ctype, body, query, status, answer):
    with server.client() as c:
        r = send(c, ctype, body, query)
        assert r.status_code == status, r.text
        assert the_error(r) == answer
        assert_still_answers(c)


@pytest.mark.parametrize(("name", "ctype", "body", "query", "top_k"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_odd_but_valid_requests_classify(server, name, ctype, body, query, top_k):
    with server.client() as c:
        r = send(c, ctype, body, query)
    assert r.status_code == 200, r.text
    [answer] = r.json()
    assert len(answer["predictions"]) == top_k and answer["predictions"][0]["label"] in CAT_CLASSES


@pytest.mark.parametrize(
    ("top_k", "given"),
    [(" 3 ", 3), ("03", 3), ("3\n", 3), ("\t7", 7), ("1000", 1000)],
)
def test_top_k_spellings_of_a_whole_number_are_accepted(server, top_k, given):
    with server.client() as c:
        r = c.post("/classify", files=[("images", ("cat.jpg", CAT, "image/jpeg"))], data={"top_k": top_k})
    assert r.status_code == 200, r.text
    assert len(r.json()[0]["predictions"]) == given


@pytest.mark.parametrize(
    "top_k", ["+3", "3.0", "1e1", "0x3", "٣", "true", "null", "[3]", '"3"', "3 4", "three", "1_000", "-0"]
)
def test_odd_top_k_spellings_are_refused_quoting_what_was_sent(server, top_k):
    with server.client() as c:
        r = c.post("/classify", files=[("images", ("cat.jpg", CAT, "image/jpeg"))], data={"top_k": top_k})
        assert r.status_code == 400, r.text
        assert the_error(r) == err(f"top_k must be a whole number from 1 to 1000, got {top_k!r}")
        assert_still_answers(c)


@pytest.mark.parametrize(("ctype", "body"), [(FORM, form(IMAGE)), ("image/jpeg", CAT)], ids=["form", "raw image"])
def test_a_gzipped_body_is_a_415_that_says_to_send_it_uncompressed_and_the_next_request_is_served(server, ctype, body):
    """It was read as it came: a malformed form, or "not a supported image"."""
    with server.client() as c:
        headers = {"Content-Type": ctype, "Content-Encoding": "gzip"}
        r = c.post("/classify", content=gzip.compress(body), headers=headers)
        assert r.status_code == 415, r.text
        uncompressed = f"Content-Encoding 'gzip' is not accepted: send the body uncompressed; {HOW_TO_SEND}"
        assert the_error(r) == err(uncompressed)
        assert r.headers["accept-encoding"] == "identity"
        assert_still_answers(c)


def test_huge_headers_are_a_431_and_the_next_request_is_served(server):
    with server.client() as c:
        r = c.get("/livez", headers={"X-Padding": "a" * 20_000})
        assert r.status_code == 431, r.text
        assert the_error(r) == err("request headers too large: limit is 16384 bytes")
        r = c.post("/classify", files=[("images", ("cat.jpg", CAT, "image/jpeg"))], headers={"Cookie": "a" * 8000})
        assert r.status_code == 200, r.text  # a big cookie is fine


@pytest.mark.parametrize(
    ("method", "path", "status", "answer"),
    [
        ("GET", "/classify", 405, err("method not allowed: GET /classify")),
        ("PUT", "/classify", 405, err("method not allowed: PUT /classify")),
        ("GET", "/no-such-page", 404, err("not found: GET /no-such-page")),
        ("POST", "/classify/more", 404, err("not found: POST /classify/more")),
        ("GET", "/docs/no-such-page", 404, err("not found: GET /docs/no-such-page")),
    ],
)
def test_wrong_method_or_path_is_one_error_object(server, method, path, status, answer):
    r = httpx.request(method, f"{server.url}{path}", timeout=30)
    assert r.status_code == status, r.text
    assert the_error(r) == answer
    if status == 405:  # RFC 9110: it names the method the endpoint takes
        assert r.headers["allow"] == "POST"


def test_an_endpoint_with_a_trailing_slash_answers_as_the_endpoint_not_an_empty_redirect(server):
    """`curl -F images=@cat.jpg .../classify/` got an empty 307 to a URL built from the Host header."""
    with server.client() as c:
        r = c.post("/classify/", files=[("images", ("cat.jpg", CAT, "image/jpeg"))], headers={"Host": "pod:3000"})
        assert r.status_code == 200, (r.status_code, r.headers)
        assert r.json()[0]["predictions"][0]["label"] in CAT_CLASSES
        assert c.get("/readyz/").status_code == 200


def test_the_api_docs_list_the_real_error_answers(server):
    """/docs.json lists every error status the endpoint answers, each with the one error shape."""
    document = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    responses = document["paths"]["/classify"]["post"]["responses"]
    assert {int(s) for s in responses if s != "200"} == set(ERROR_ANSWERS)
    for status in ERROR_ANSWERS:
        assert responses[str(status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)


def read_answer(s: socket.socket) -> tuple[int, bytes]:
    """One HTTP answer off a raw socket: its status and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = int(next(line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return int(lines[0].split(" ", 2)[1]), body[:length]


def test_a_content_type_that_is_not_utf8_gets_its_whole_answer_and_the_next_request_too(server):
    """BentoML's access log read the Content-Type as UTF-8 and cut the answer short (an empty body)."""
    with server.client() as c:
        r = c.post("/classify", content=b"x", headers={"Content-Type": b"text/\xe9"})
        assert r.status_code == 415 and the_error(r)["error"].startswith("unsupported Content-Type")
        models = c.get("/models", headers={"Content-Type": b"\xe9"})
        assert models.status_code == 200 and models.json()
        assert_still_answers(c)


def test_made_up_paths_add_no_series_to_the_metrics(server):
    """Each path a scanner makes up is counted under one label, not one each (BentoML labels by the
    path as sent); the requests themselves keep their paths: each 404 names its own."""
    made_up = [f"/scan-{i:04d}" for i in range(40)] + [f"{config.UI_PATH}/nope-{i}" for i in range(5)]
    with server.client() as c:
        for path in made_up:
            r = c.get(path)
            assert r.status_code == 404
            if not path.startswith(config.UI_PATH):  # the page keeps Gradio's own answers
                assert path in the_error(r)["error"]
        assert_still_answers(c)
    text = server.scrape()
    endpoints = set(re.findall(r'request_total\{[^}]*endpoint="([^"]*)"', text))
    assert config.CLASSIFY_PATH in endpoints and OTHER_ENDPOINT in endpoints
    assert not any(p in endpoints for p in made_up), sorted(endpoints)
    ours = {config.CLASSIFY_PATH, config.MODELS_PATH, config.UI_PATH, config.DOCS_PATH, OTHER_ENDPOINT}
    assert endpoints <= ours | {"/", "/docs.json", "/livez", "/readyz", "/healthz"}, sorted(endpoints)


def test_a_content_length_shorter_than_the_body_is_a_400(server):
    """Fewer bytes declared than sent: the rest is not HTTP. The HTTP server (uvicorn) answers it
    before any application sees it, with its own plain-text 400, the one answer not in JSON."""
    head = f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nContent-Length: 60\r\n\r\n"
    with connect(server) as s:
        s.sendall(head.encode() + form(IMAGE))
        status, body = read_answer(s)
    assert status == 400
    assert body in (
        b"Invalid HTTP request received.",
        b'{"error": "multipart body ends before its closing boundary \'--b0undary--\'"}',
    )
    with server.client() as c:
        assert_still_answers(c)


def test_a_burst_of_good_and_bad_requests_each_gets_its_own_answer(server):
    """300 requests at once, a third each good, misspelled and JSON: every answer is the right one
    for its own request; a good one may be shed (503, Retry-After), none is a 500."""

    async def burst() -> list[tuple[str, httpx.Response]]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:

            async def one(kind: str) -> tuple[str, httpx.Response]:
                if kind == "good":
                    return kind, await c.post("/classify", files=[("images", ("cat.jpg", CAT, "image/jpeg"))])
                if kind == "misspelled":
                    return kind, await c.post("/classify", files=[("image", ("cat.jpg", CAT, "image/jpeg"))])
                return kind, await c.post("/classify", json={"images": ["cat.jpg"]})

            return await asyncio.gather(*(one(kind) for kind in ["good", "misspelled", "json"] * 100))

    answers = asyncio.run(burst())
    for kind, r in answers:
        if r.status_code == 503:
            assert kind == "good" and the_error(r)["error"] in (TOO_MANY_IN_FLIGHT, MODEL_QUEUE_FULL)
            assert r.headers["retry-after"] == str(config.RETRY_AFTER_S)
        elif kind == "good":
            assert r.status_code == 200 and r.json()[0]["predictions"][0]["label"] in CAT_CLASSES, r.text
        elif kind == "misspelled":
            assert r.status_code == 400 and the_error(r)["error"].startswith("unknown field 'image'"), r.text
        else:
            assert r.status_code == 415 and the_error(r)["error"].startswith("unsupported Content-Type"), r.text
    served = sum(r.status_code == 200 for _, r in answers)
    assert served >= 50, f"only {served} of 100 good requests in the burst were served"
    with server.client() as c:
        assert_still_answers(c)


def log_since(path: Path, offset: int) -> str:
    return path.read_text(errors="replace")[offset:]


def wait_for_log(path: Path, offset: int, needle: str, count: int) -> str:
    """The log after `offset` once `needle` is in it `count` times (the server logs after answering)."""
    deadline = time.monotonic() + 30
    while (text := log_since(path, offset)).count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} not logged {count} times:\n{text[-3000:]}"
        time.sleep(0.1)
    return text


def test_client_errors_log_one_line_each_and_no_traceback(server):
    offset = len(server.log.read_text(errors="replace"))
    with server.client() as c:
        for _, ctype, body, query, status, _answer in REFUSED:
            assert send(c, ctype, body, query).status_code == status
        bad_image = c.post("/classify", files=[("images", ("a.txt", b"hello", "text/plain"))])
        assert bad_image.status_code == 400
    text = wait_for_log(server.log, offset, "POST /classify: 4", len(REFUSED) + 1)
    assert "Traceback" not in text and "[ERROR]" not in text, text[-3000:]
    assert text.count("POST /classify: 4") == len(REFUSED) + 1  # one line each, with the reason
    assert "POST /classify: 400 image 1: not a supported image" in text


def test_memory_stays_flat_over_rounds_of_the_corpus(server):
    rounds, memory = 4, []
    with server.client() as c:
        for _ in range(rounds):
            for _, ctype, body, query, status, _ in REFUSED:
                assert send(c, ctype, body, query).status_code == status
            memory.append(tree_rss_bytes(server.process.pid))
    growth = (memory[-1] - memory[0]) / 2**20
    assert growth < 20, f"server memory grew {growth:.0f} MiB over {rounds - 1} rounds of the corpus: {memory}"


# --- Slow, stalled and vanishing clients: a server with a short body timeout and a small in-flight bound.

SLOW = {config.ENV_BODY_TIMEOUT_S: "2", config.ENV_MAX_CONCURRENT: "4"}
STALLED_CLIENTS = 40  # ten times the in-flight bound
RED = image_bytes((255, 0, 0))
STALLED = err("request body stalled: no data for 2 s (CLASSIFIER_BODY_TIMEOUT_S): send the whole body")


@pytest.fixture(scope="module")
def slow_server(colour_model, tmp_path_factory):
    with running(colour_model, tmp_path_factory.mktemp("slow"), SLOW) as server:
        yield server


def red_form() -> bytes:
    return form(part("images", RED, filename=b"red.png", ctype=b"image/png"))


def head(length: int) -> bytes:
    return f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nContent-Length: {length}\r\n\r\n".encode()


def assert_red(server) -> None:
    with server.client() as c:
        r = c.post("/classify", files=[("images", ("red.png", RED, "image/png"))], data={"top_k": "1"})
    assert r.status_code == 200 and r.json()[0]["predictions"][0]["label"] == "red", r.text


def in_progress(server) -> float:
    return server.metric("bentoml_service_request_in_progress")


def wait_in_progress(server, count: int) -> None:
    """Until `count` requests are inside the server (BentoML's own gauge), or fail."""
    deadline = time.monotonic() + 30
    while (now := in_progress(server)) < count:
        assert time.monotonic() < deadline, f"only {now} of {count} requests reached the server"
        time.sleep(0.05)


def test_stalled_uploads_do_not_lock_out_a_good_client_and_each_gets_408(slow_server):
    body = red_form()
    stalled = []
    for _ in range(STALLED_CLIENTS):  # headers and half the body, then nothing
        s = connect(slow_server)
        s.sendall(head(len(body)) + body[: len(body) // 2])
        stalled.append(s)
    wait_in_progress(slow_server, STALLED_CLIENTS)  # all of them inside the server, reading
    assert_red(slow_server)  # ten times the in-flight bound stalled, and a good client is served
    assert in_progress(slow_server) >= STALLED_CLIENTS  # ... while they were all still there
    for s in stalled:
        status, answer = read_answer(s)
        assert (status, json.loads(answer)) == (408, STALLED)
        s.close()
    assert_red(slow_server)


@pytest.mark.parametrize(
    "sent",
    [b"", b"--" + B + b"\r\n", b"--" + B + b"\r\nContent-Disposition: form-data; name=images; filename=a.png\r\n\r\n"],
    ids=["headers only", "one boundary", "part headers, no data"],
)
def test_a_body_shorter_than_its_content_length_gets_408(slow_server, sent):
    with connect(slow_server) as s:
        s.sendall(head(10_000) + sent)
        status, answer = read_answer(s)
    assert (status, json.loads(answer)) == (408, STALLED)
    assert_red(slow_server)


def test_a_slow_body_that_keeps_coming_is_served(slow_server):
    """A body trickled over longer than the body timeout, never pausing as long: not a stall."""
    body = red_form()
    pieces = [body[i : i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
    with connect(slow_server) as s:
        s.sendall(head(len(body)))
        started = time.monotonic()
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.4)  # the client's pace, under the 2 s body timeout; 8+ pieces take > 3 s
        status, answer = read_answer(s)
    assert time.monotonic() - started > float(SLOW[config.ENV_BODY_TIMEOUT_S])
    assert status == 200 and json.loads(answer)[0]["predictions"][0]["label"] == "red"


def test_a_client_that_leaves_mid_upload_is_one_log_line(slow_server):
    offset = len(slow_server.log.read_text(errors="replace"))
    body = red_form()
    with connect(slow_server) as s:
        s.sendall(head(len(body) * 10) + body[:100])
        wait_in_progress(slow_server, 1)
    text = wait_for_log(slow_server.log, offset, "the client left before its body was read", 1)
    assert "Traceback" not in text and "[ERROR]" not in text, text
    assert_red(slow_server)


def test_clients_that_leave_are_not_held_in_progress(slow_server):
    """Mid-upload or after the whole body, then a reset: BentoML's request timeout waited for an answer
    that never came, holding each such request (in progress in /metrics, its memory kept) for 60 s."""
    body = red_form()
    before = in_progress(slow_server)
    for cut in [100, len(body)] * 10:
        s = connect(slow_server)
        s.sendall(head(len(body)) + body[:cut])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.close()
    deadline = time.monotonic() + 10
    while (now := in_progress(slow_server)) > before:
        assert time.monotonic() < deadline, f"{now - before:g} requests of clients gone still in progress after 10 s"
        time.sleep(0.1)
    assert_red(slow_server)


def test_the_work_of_clients_that_leave_before_their_answer_is_dropped(server):
    """Fire and forget: 16 requests of 8 photos each, all bodies sent, then every client resets. Their
    work was done for nobody, filling the model's queue (others were shed with 503 meanwhile); now
    only what the model had begun is computed."""
    name = f"{config.METRIC_BATCH_SIZE}_sum"
    before, busy = server.metric(name), in_progress(server)
    body = form(*[IMAGE] * 8)
    sockets = []
    for _ in range(16):
        s = connect(server)
        s.sendall(head(len(body)) + body)
        sockets.append(s)
    wait_in_progress(server, busy + 16)
    time.sleep(0.2)  # decoded and queued
    for s in sockets:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    deadline = time.monotonic() + 30
    while in_progress(server) > busy:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    computed = server.metric(name) - before
    assert computed <= 64, f"{computed:g} of 128 photos computed for clients that had left"
    with server.client() as c:
        assert_still_answers(c)
