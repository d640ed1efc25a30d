"""The HTTP boundary in-process: the guard in front of a small ASGI app, over httpx's ASGI transport.

No server, no model: each rule of the guard (headers, key, body, form, admission, rewording) with its exact
status and body, in milliseconds. The same rules against a real `bentoml serve` are in test_protocol.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest

from imgserve import config
from imgserve.serving.errors import (
    INTERNAL_ERROR,
    MODEL_QUEUE_FULL,
    NO_IMAGES,
    TOO_MANY_IN_FLIGHT,
    TOO_MANY_UPLOADS,
    ClientError,
)
from imgserve.serving.form import HOW_TO_SEND, LF_ALONE, SEND_AS_THEY_ARE, FormCheck, FormRules
from imgserve.serving.guard import Guard, drain

KEY = "s3cret"
RULES = FormRules(file_field="images", field_checks={"top_k": int}, max_images=2)


class App:
    """Reads the whole body and answers what it was told to: by default 200 with the body's length."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes, list] = (200, b"", [])
        self.bodies: list[bytes] = []
        self.entered = asyncio.Event()  # a request reached the app
        self.release = asyncio.Event()  # set by a test to let held requests finish
        self.hold = False

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        self.entered.set()
        if self.hold:
            await self.release.wait()
        status, answer, headers = self.answer
        answer = answer or json.dumps({"length": len(body)}).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def client(guard: Guard) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test")


def run(coroutine):
    return asyncio.run(coroutine)


async def post(guard: Guard, path: str = "/classify", **kwargs) -> httpx.Response:
    async with client(guard) as c:
        return await c.post(path, **kwargs)


def cat() -> list:
    return [("images", ("cat.jpg", b"\xff\xd8 pretend jpeg", "image/jpeg"))]


def test_a_good_form_reaches_the_app_whole():
    app = App()
    r = run(post(Guard(app, form=RULES), files=cat(), data={"top_k": "3"}))
    assert r.status_code == 200
    assert b"pretend jpeg" in app.bodies[0] and b'name="top_k"' in app.bodies[0]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"files": [("imagez", ("c.jpg", b"x", "image/jpeg"))]},
            "unknown field 'imagez': send the images in the 'images' field (fields: 'images', 'top_k')",
        ),
        ({"files": cat(), "data": {"top_k": "many"}}, "invalid literal for int() with base 10: 'many'"),
        ({"files": cat(), "data": {"top_k": ["1", "2"]}}, "field 'top_k' sent 2 times: send it once"),
        ({"files": cat() * 3}, "too many images in one request: 3, limit is 2 (CLASSIFIER_MAX_IMAGES_PER_REQUEST)"),
        (
            {"data": {"top_k": "1"}, "files": [("top_k", ("x", b"1", "text/plain"))]},
            "field 'top_k' sent 2 times: send it once",
        ),
    ],
    ids=["misspelled field", "bad top_k", "repeated field", "one image too many", "field twice, once as a file"],
)
def test_a_bad_form_is_a_400_that_says_what_to_fix_and_never_reaches_the_app(fields, error):
    app = App()
    r = run(post(Guard(app, form=RULES), **fields))
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert app.bodies == []


def test_images_past_the_limit_are_counted_up_to_a_bound_then_parsing_stops():
    """Past the limit the form was parsed to its end to count its images: 100 MB of empty parts (1.4
    million) held the event loop for ~20 s, while every other client waited."""
    rules = FormRules(max_images=2)
    empty = b'--b\r\nContent-Disposition: form-data; name="images"; filename="x"\r\n\r\n\r\n'
    body = empty * 100_000 + b"--b--\r\n"
    check, fed = FormCheck(rules, b"b"), 0
    with pytest.raises(ClientError) as refused:
        for fed in range(0, len(body), 65536):
            check.feed(body[fed : fed + 65536], final=fed + 65536 >= len(body))
    more = f"more than {config.MAX_IMAGES_COUNTED}"
    assert (
        str(refused.value) == f"too many images in one request: {more}, limit is 2 (CLASSIFIER_MAX_IMAGES_PER_REQUEST)"
    )
    assert fed < len(empty) * (config.MAX_IMAGES_COUNTED + 1000)  # refused as the bound passed, not at the end


def test_a_form_without_images_is_a_400():
    app = App()
    body = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--b--\r\n'
    r = run(post(Guard(app, form=RULES), content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}))
    assert (r.status_code, r.json()) == (400, {"error": NO_IMAGES})


@pytest.mark.parametrize(
    ("content_type", "status", "error"),
    [
        (
            "multipart/form-data",
            400,
            f"multipart body without a boundary in its Content-Type: let the HTTP library write it; {HOW_TO_SEND}",
        ),
        ("application/json", 415, f"unsupported Content-Type 'application/json': {HOW_TO_SEND}"),
    ],
)
def test_a_body_that_is_no_form_is_refused_with_how_to_send(content_type, status, error):
    r = run(post(Guard(App(), form=RULES), content=b"{}", headers={"Content-Type": content_type}))
    assert (r.status_code, r.json()) == (status, {"error": error})


def test_a_url_encoded_form_is_a_400_no_images_since_it_carries_no_files():
    """What BentoML's Python client sends for images=[]; and curl -d @photo.jpg without a Content-Type."""
    app = App()
    r = run(post(Guard(app, form=RULES), data={"top_k": "1", "model": '""'}))
    error = f"no images: a url-encoded form (application/x-www-form-urlencoded) carries no files; {HOW_TO_SEND}"
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert app.bodies == []


def test_a_request_without_a_body_is_a_400_no_images_not_an_unsupported_content_type():
    """What BentoML's Python client sends for images=[] and nothing else, and curl -X POST: no body, no
    Content-Type (was: a 415 "unsupported Content-Type 'none'"). A body without a Content-Type stays a 415."""
    app = App()
    r = run(post(Guard(app, form=RULES)))
    assert (r.status_code, r.json()) == (400, {"error": f"no images: the request has no body; {HOW_TO_SEND}"})
    r = run(post(Guard(app, form=RULES), content=b"\xff\xd8 pretend jpeg"))
    assert (r.status_code, r.json()) == (415, {"error": f"unsupported Content-Type 'none': {HOW_TO_SEND}"})
    assert app.bodies == []


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "GZIP "])
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=b", "image/jpeg"])
def test_a_compressed_body_is_a_415_naming_its_coding_and_never_reaches_the_app(coding, content_type):
    """Read as it is, gzip'ed bytes were a malformed form or "not a supported image"."""
    app = App()
    headers = {"Content-Type": content_type, "Content-Encoding": coding}
    r = run(post(Guard(app, form=RULES), content=b"\x1f\x8b compressed", headers=headers))
    error = f"Content-Encoding {coding.strip().lower()!r} is not accepted: send the body uncompressed; {HOW_TO_SEND}"
    assert (r.status_code, r.json()) == (415, {"error": error})
    assert r.headers["accept-encoding"] == "identity"
    assert app.bodies == []


def test_an_identity_content_encoding_is_read_as_it_is():
    app = App()
    headers = {"Content-Type": "image/jpeg", "Content-Encoding": "identity"}
    r = run(post(Guard(app, form=RULES), content=b"JPEG", headers=headers))
    assert r.status_code == 200 and len(app.bodies) == 1


@pytest.mark.parametrize(
    ("coding", "status"), [(b"base64", 400), (b"quoted-printable", 400), (b"binary", 200), (b"8bit", 200)]
)
def test_a_form_part_in_a_transfer_encoding_is_a_400_naming_it(coding, status):
    """Some old clients base64 a file part (RFC 7578 deprecates it); it was read as its text: "not an image"."""
    app = App()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="images"; filename="cat.jpg"\r\n'
        b"Content-Type: image/jpeg\r\nContent-Transfer-Encoding: " + coding + b"\r\n\r\n"
        + base64.b64encode(b"\xff\xd8 pretend jpeg") + b"\r\n--b--\r\n"
    )  # fmt: skip
    r = run(post(Guard(app, form=RULES), content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}))
    assert r.status_code == status, r.text
    if status == 400:
        error = f"field 'images' has Content-Transfer-Encoding {coding.decode()!r}: {SEND_AS_THEY_ARE}"
        assert r.json() == {"error": error} and app.bodies == []


PART = b'--b\r\nContent-Disposition: form-data; name="images"; filename="cat.jpg"\r\n\r\n'
JPEG = b"\xff\xd8 pretend\njpeg\n" * 50  # image bytes hold LFs of their own


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (PART.replace(b"\r\n", b"\n") + JPEG + b"\n--b--\n", LF_ALONE),  # a form written by hand
        (PART + JPEG + b"\n--b--\n", LF_ALONE),  # its closing boundary
        (PART + JPEG, "multipart body ends before its closing boundary '--b--'"),  # cut short: not LF
        (
            b"notes\n" + PART + JPEG + b"\r\n--b--\r\n",
            "multipart body does not start with the boundary its Content-Type names ('--b')",
        ),
    ],
    ids=["all LF", "closing boundary after LF", "truncated", "preamble"],
)
@pytest.mark.parametrize("chunk", [7, 100, 1 << 20], ids=["7 B", "100 B", "whole"])
def test_a_form_with_lines_ending_in_lf_alone_is_told_so_however_it_arrives(body, error, chunk):
    """It was told "does not start with the boundary" (it did) or "ends before its closing boundary" (it was there)."""
    check = FormCheck(RULES, b"b")
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    with pytest.raises(ClientError) as refused:
        for i, piece in enumerate(pieces):
            check.feed(piece, final=i == len(pieces) - 1)
    assert (refused.value.status, str(refused.value)) == (400, error)


def test_a_raw_image_body_becomes_a_one_image_form_with_top_k_from_the_query():
    app = App()
    r = run(
        post(Guard(app, form=RULES), "/classify?top_k=2", content=b"JPEGDATA", headers={"Content-Type": "image/jpeg"})
    )
    assert r.status_code == 200
    [body] = app.bodies
    assert b'name="images"; filename="upload"' in body and b"JPEGDATA" in body and b'name="top_k"\r\n\r\n2' in body


def test_an_unknown_query_parameter_on_a_raw_image_is_a_400():
    r = run(post(Guard(App(), form=RULES), "/classify?topk=2", content=b"x", headers={"Content-Type": "image/png"}))
    assert (r.status_code, r.json()) == (400, {"error": "unknown query parameter 'topk': the fields are top_k"})


def test_a_query_parameter_sent_twice_on_a_raw_image_is_named_as_one():
    """It was told "field 'top_k' sent 2 times", a field of a form the client never sent."""
    r = run(
        post(Guard(App(), form=RULES), "/classify?top_k=2&top_k=3", content=b"x", headers={"Content-Type": "image/png"})
    )
    assert (r.status_code, r.json()) == (400, {"error": "query parameter 'top_k' sent 2 times: send it once"})


LONG = "a" * 60_000


@pytest.mark.parametrize(
    ("path", "content_type", "body", "error"),
    [
        (f"/classify?{LONG}=1", "image/png", b"x", "unknown query parameter 'AAA...': the fields are top_k"),
        (
            f"/classify?{LONG}=1",
            "multipart/form-data; boundary=b",
            b"",
            "query parameter 'AAA...' with a form: send it as a form field (curl -F AAA...=...)",
        ),
        ("/classify", f"text/{LONG[:10_000]}", b"x", f"unsupported Content-Type 'text/{LONG[:95]}...': {HOW_TO_SEND}"),
    ],
    ids=["query name, raw image", "query name, form", "Content-Type"],
)
def test_what_the_client_sent_is_quoted_cut_short(path, content_type, body, error):
    """A name of 60 kB in the URL came back whole in the answer, twice, and in the log line."""
    r = run(post(Guard(App(), form=RULES), path, content=body, headers={"Content-Type": content_type}))
    assert (r.status_code // 100, r.json()) == (4, {"error": error.replace("AAA", "a" * 100)})


def test_bodies_over_the_limit_are_413_from_the_header_or_as_they_stream():
    app = App()
    guard = Guard(app, max_request_bytes=1000, form=RULES)
    declared = run(post(guard, content=b"x" * 2000, headers={"Content-Type": "image/png"}))

    async def streamed():
        for _ in range(10):
            yield b"y" * 300

    chunked = run(post(guard, content=streamed(), headers={"Content-Type": "image/png"}))
    message = "request body too large: limit is 1000 bytes (CLASSIFIER_MAX_REQUEST_BYTES)"
    assert (declared.status_code, declared.json()) == (413, {"error": message})
    assert (chunked.status_code, chunked.json()) == (413, {"error": message})
    assert declared.headers["connection"] == chunked.headers["connection"] == "close"  # the rest goes unread
    assert app.bodies == []


def test_headers_over_the_limit_are_431():
    r = run(post(Guard(App()), "/anything", headers={"X-Big": "x" * 20_000}))
    assert r.status_code == 431 and r.json()["error"].startswith("request headers too large")


def test_the_api_key_is_asked_of_everything_but_the_probes():
    guard = Guard(App(), api_key=KEY, form=RULES)

    async def calls():
        async with client(guard) as c:
            basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
            return (
                await c.post("/classify", files=cat()),
                await c.post("/classify", files=cat(), headers={"Authorization": "Bearer wrong"}),
                await c.post("/classify", files=cat(), headers={"Authorization": f"Bearer {KEY}"}),
                await c.get("/ui/", headers={"Authorization": f"Basic {basic}"}),
                await c.get("/ui/"),
                await c.get("/readyz"),
            )

    none, wrong, bearer, browser, page, probe = run(calls())
    for refused in (none, wrong):
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "missing or wrong API key: send 'Authorization: Bearer <CLASSIFIER_API_KEY>'"
        }
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="imgserve"'
    assert page.status_code == 401 and page.headers["WWW-Authenticate"] == 'Basic realm="imgserve"'
    # A visitor who cancels the browser's password prompt reads what to do, not only a program's header.
    assert page.json() == {
        "error": "missing or wrong API key: reload the page and enter the key as the password when the browser "
        "asks (any user name; whoever shared this address has the key); programs send 'Authorization: Bearer "
        "<CLASSIFIER_API_KEY>'"
    }
    assert bearer.status_code == browser.status_code == probe.status_code == 200


def test_a_stalled_body_is_a_408_that_closes_the_connection():
    guard = Guard(App(), body_timeout_s=0.05, form=RULES)
    sent: list[dict] = []
    stall = asyncio.Event()  # never set: the client sends its headers and a first chunk, then nothing

    async def exchange():
        chunks = [{"type": "http.request", "body": b"--b\r\n", "more_body": True}]

        async def receive():
            if chunks:
                return chunks.pop()
            await stall.wait()

        async def send(message):
            sent.append(message)

        headers = [(b"content-type", b"multipart/form-data; boundary=b")]
        await guard({"type": "http", "method": "POST", "path": "/classify", "headers": headers}, receive, send)

    run(exchange())
    start, body = sent
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"].startswith("request body stalled: no data for 0.05 s")


def test_work_past_the_in_flight_bound_gets_503_and_retry_after_and_the_held_ones_finish():
    app = App()
    app.hold = True
    guard = Guard(app, max_in_flight=1, form=RULES)

    async def calls():
        async with client(guard) as c:
            first = asyncio.create_task(c.post("/classify", files=cat()))
            await app.entered.wait()  # the first is at work, held there
            second = await c.post("/classify", files=cat())
            app.release.set()
            return await first, second

    first, second = run(calls())
    assert first.status_code == 200
    assert (second.status_code, second.json()) == (503, {"error": TOO_MANY_IN_FLIGHT})
    assert second.headers["Retry-After"] == "1"
    assert guard.admission.in_flight == 0 and guard.admission.uploading == 0


def test_uploads_past_their_own_bound_get_503_before_sending():
    guard = Guard(App(), max_uploads=0, form=RULES)
    r = run(post(guard, files=cat()))
    assert (r.status_code, r.json()) == (503, {"error": TOO_MANY_UPLOADS})


def test_the_pages_script_is_refused_in_a_sentence_it_shows_as_it_is():
    """The web page shows a refused upload as "HTTP 503: " and the answer's text: the sentence, not JSON."""
    app = App()
    app.hold = True
    guard = Guard(app, max_in_flight=1, max_uploads=1, form=RULES)
    upload = f"{config.UI_PATH}/gradio_api/upload"

    async def calls():
        async with client(guard) as c:
            first = asyncio.create_task(c.post("/classify", files=cat()))
            await app.entered.wait()  # at work: the in-flight bound is reached
            busy = await c.post(upload, files=cat())
            app.release.set()
            await first
            guard.admission.uploading = 1  # another client still sending its body
            return busy, await c.post(upload, files=cat()), await c.post("/classify", files=cat())

    busy, uploading, api = run(calls())
    assert (busy.status_code, busy.text) == (503, TOO_MANY_IN_FLIGHT)
    assert (uploading.status_code, uploading.text) == (503, TOO_MANY_UPLOADS)
    for r in (busy, uploading):
        assert r.headers["content-type"] == "text/plain; charset=utf-8" and r.headers["Retry-After"] == "1"
    assert (api.status_code, api.json()) == (503, {"error": TOO_MANY_UPLOADS})  # programs: the one shape


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'[{"error": "bad input"}]', {"error": "bad input"}),  # BentoML's list for a 4xx
        (
            400,
            json.dumps({"error": "1 validation error", "detail": [{"loc": ["top_k"], "msg": "Value error, too big"}]}),
            {"error": "top_k: too big"},  # pydantic's dump
        ),
        (404, b"Not Found", {"error": "not found: POST /classify"}),  # Starlette's plain text
        (
            400,
            ClientError(400, "not a supported image", image=2).encoded(),
            {"error": "image 2: not a supported image", "image": 2},
        ),
        (
            500,
            b'{"error": "An unexpected error has occurred, please check the server log."}',
            {"error": "An unexpected error has occurred, please check the server log."},
        ),
    ],
    ids=["bentoml list", "pydantic", "plain text", "already in shape, with its image", "bentoml 500"],
)
def test_every_error_of_the_app_leaves_in_the_one_shape(status, body, expected):
    app = App()
    app.answer = (status, body if isinstance(body, bytes) else body.encode(), [(b"content-type", b"text/plain")])
    r = run(post(Guard(app, form=RULES), files=cat()))
    assert (r.status_code, r.json()) == (status, expected)
    assert r.headers["content-type"] == "application/json"


def test_a_405_keeps_the_apps_allow_header():
    """RFC 9110: a 405 names the methods the endpoint takes; the reworded answer dropped the header."""
    app = App()
    app.answer = (405, b"Method Not Allowed", [(b"allow", b"POST"), (b"content-type", b"text/plain")])
    r = run(post(Guard(app, form=RULES), files=cat()))
    assert (r.status_code, r.json()) == (405, {"error": "method not allowed: POST /classify"})
    assert r.headers["Allow"] == "POST"


def test_the_services_503_keeps_its_words_and_gets_retry_after():
    app = App()
    app.answer = (503, ClientError(503, MODEL_QUEUE_FULL).encoded(), [])
    r = run(post(Guard(app, form=RULES), files=cat()))
    assert (r.status_code, r.json(), r.headers["Retry-After"]) == (503, {"error": MODEL_QUEUE_FULL}, "1")


def test_the_openapi_document_gets_the_real_error_answers():
    app = App()
    app.answer = (
        200,
        json.dumps({"paths": {"/classify": {"post": {"responses": {"200": {}, "500": {}}}}}}).encode(),
        [],
    )

    async def get():
        async with client(Guard(app)) as c:
            return await c.get("/docs.json")

    document = run(get()).json()
    responses = document["paths"]["/classify"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "503", "504"} <= set(responses)
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]


def test_an_unexpected_error_before_the_answer_is_a_500_at_once_with_its_traceback_logged(caplog):
    """A bug below the guard (ours or a library's) is answered in the one shape, not left to BentoML's
    request timeout, and the next request is served."""

    class Failing(App):
        async def __call__(self, scope, receive, send) -> None:
            if scope["path"] == "/bug":
                raise RuntimeError("a bug")
            await super().__call__(scope, receive, send)

    async def go():
        async with client(Guard(Failing())) as c:
            return await c.get("/bug"), await c.get("/fine")

    with caplog.at_level("ERROR", logger="bentoml.service.guard"):
        bug, fine = run(go())
    assert (bug.status_code, bug.json()) == (500, {"error": INTERNAL_ERROR})
    assert fine.status_code == 200
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.exc_info and "a bug" in str(record.exc_info[1])


def test_the_rest_of_a_refused_body_is_read_within_its_bounds_of_bytes_and_time():
    """Read, so the refusal is not lost to a reset connection; bounded, so a refused client that trickles
    or sends gigabytes holds its connection no longer than a stalled one."""
    chunks: list[int] = []

    def body(pause_s: float, size: int, ends_after: int | None = None):
        async def receive() -> dict:
            await asyncio.sleep(pause_s)
            chunks.append(size)
            return {"type": "http.request", "body": b"x" * size, "more_body": len(chunks) != ends_after}

        return receive

    run(drain(body(0, 10, ends_after=3), timeout_s=5, limit=1000))
    assert chunks == [10, 10, 10]  # to its end
    chunks.clear()
    run(drain(body(0, 100), timeout_s=5, limit=1000))
    assert sum(chunks) == 1100  # past the limit: the connection closes
    chunks.clear()
    started = time.monotonic()
    run(drain(body(0.01, 1), timeout_s=0.2, limit=1000))
    assert time.monotonic() - started < 1 and len(chunks) < 30  # a trickle: the time bound


def test_a_client_that_leaves_after_its_body_cancels_its_work_and_frees_its_place(caplog):
    """The work went on for nobody: its images kept their place in the model's queue, and fire-and-forget
    clients filled it (good clients were shed with 503 while the model computed answers no one read)."""
    app = App()
    app.hold = True  # at work (in the model's queue) until cancelled
    guard = Guard(app, form=RULES)
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="c.jpg"\r\n\r\n\xff\xd8 jpeg\r\n--b--\r\n'
    scope = {
        "type": "http", "method": "POST", "path": "/classify", "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"%d" % len(body))],
    }  # fmt: skip
    sent: list[dict] = []

    async def go() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await app.entered.wait()  # the work has begun: then the client goes
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        async with asyncio.timeout(5):  # held until released, which no one does
            await guard(scope, receive, send)

    with caplog.at_level("INFO", logger="bentoml.service.guard"):
        run(go())
    assert sent == [] and guard.admission.in_flight == 0
    assert "POST /classify: the client left before its answer; its work was dropped" in caplog.text
    app.hold = False
    assert run(post(guard, files=cat())).status_code == 200  # the next is served
