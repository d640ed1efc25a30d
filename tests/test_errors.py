"""Bad input against a real server: the right status and message every time, and the next request still answered.

The corpus is generated here; only the three photos in data/ are files.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imgserve import config
from imgserve.serving.errors import ERROR_ANSWERS, MODEL_QUEUE_FULL, TOO_MANY_IN_FLIGHT
from imgserve.testing import running
from tests.helpers import CAT_CLASSES, COLOURS, DATA, ROOT, colour_module, image_bytes, imported_tag, run_import

pytestmark = pytest.mark.serve

CAT = (DATA / "cat.jpg").read_bytes()
API_KEY = "test-key-0123456789"
SCRIPT_LABEL = "<script>alert('x')</script>"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def zipped() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cat.jpg", CAT)
    return buf.getvalue()


def twelve_bit(jpeg: bytes) -> bytes:
    """The JPEG with its frame header saying 12 bits a sample (medical and scientific cameras write them)."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 4] + bytes([12]) + jpeg[sof + 5 :]


def middle(data: bytes, junk: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + junk + data[mid + len(junk) :]


# (name, bytes, content type, expected status, expected text in the error)
BAD = [
    ("empty", b"", "image/jpeg", 400, "empty file"),
    ("text", b"just some notes\n" * 20, "text/plain", 400, "not a supported image"),
    ("pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "application/pdf", 400, "not a supported image"),
    ("zip", zipped(), "application/zip", 400, "not a supported image"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/svg+xml", 400, "not a supported"),
    ("truncated jpeg", CAT[: len(CAT) // 2], "image/jpeg", 400, "truncated or corrupt"),
    ("jpeg, corrupt middle", middle(CAT, bytes(range(256)) * 8), "image/jpeg", 400, "truncated or corrupt"),
    ("zero width", png_header(0, 10), "image/png", 400, "image 1: unreadable PNG image"),
    # Was "not a supported image: accepted formats are JPEG, ...", to a JPEG.
    ("12-bit jpeg", twelve_bit(CAT), "image/jpeg", 400, "unreadable JPEG image (cannot handle 12-bit layers): save"),
    (
        "decompression bomb",
        png_header(100_000, 100_000),
        "image/png",
        413,
        "image too large: 100000x100000 = 10000000000 pixels, limit is 50000000 (CLASSIFIER_MAX_IMAGE_PIXELS)",
    ),
    ("bomb under Pillow's own limit", png_header(10_000, 9_000), "image/png", 413, "too large: 10000x9000"),
]

# Odd but valid: each must simply classify, and the photos must keep their answer.
_RGBA = Image.open(DATA / "cat.jpg").convert("RGBA")
_EXIF = Image.Exif()
_EXIF[0x0112] = 6  # "rotate 90 degrees clockwise to view"
_CAT_RGB = Image.open(DATA / "cat.jpg").convert("RGB")
ANIMATED = save(_CAT_RGB.convert("P"), "GIF", save_all=True, append_images=[Image.new("P", _CAT_RGB.size)])
ROTATED = save(_CAT_RGB.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=_EXIF)
GOOD = [
    ("1x1", image_bytes(size=(1, 1)), "image/png", None),
    ("rgba", save(_RGBA, "PNG"), "image/png", CAT_CLASSES),
    ("la", image_bytes((90, 200), mode="LA"), "image/png", None),
    ("palette+transparency", save(Image.open(DATA / "cat.jpg").convert("P"), "PNG", transparency=0), "image/png", None),
    ("grayscale", save(Image.open(DATA / "cat.jpg").convert("L"), "PNG"), "image/png", None),
    ("16-bit png", save(Image.fromarray(np.full((50, 60), 40000, np.uint16)), "PNG"), "image/png", None),
    ("cmyk jpeg", save(Image.open(DATA / "cat.jpg").convert("CMYK"), "JPEG"), "image/jpeg", CAT_CLASSES),
    ("animated gif", ANIMATED, "image/gif", CAT_CLASSES),
    ("exif-rotated", ROTATED, "image/jpeg", CAT_CLASSES),
    ("png sent as image/jpeg", save(Image.open(DATA / "cat.jpg"), "PNG"), "image/jpeg", CAT_CLASSES),
    ("jpeg sent as image/jpg", CAT, "image/jpg", CAT_CLASSES),
    ("jpeg sent as octet-stream", CAT, "application/octet-stream", CAT_CLASSES),
    ("jpeg, zeroed middle: libjpeg resyncs", middle(CAT, bytes(2000)), "image/jpeg", None),
]


def post(client: httpx.Client, files: list[tuple[str, bytes, str]], **data) -> httpx.Response:
    return client.post("/classify", files=[("images", f) for f in files], data=data)


def error_of(r: httpx.Response) -> str:
    """The sentence of an error answer, which must be exactly one JSON object (`image` allowed)."""
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and set(body) <= {"error", "image"}, r.text
    return body["error"]


def assert_still_answers(client: httpx.Client) -> None:
    r = post(client, [("cat.jpg", CAT, "image/jpeg")], top_k="1")
    assert r.status_code == 200, r.text
    assert r.json()[0]["predictions"][0]["label"] in CAT_CLASSES


@pytest.mark.parametrize(("name", "data", "ctype", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_message(server, name, data, ctype, status, message):
    with server.client() as c:
        r = post(c, [(f"{name}.bin", data, ctype)])
        assert r.status_code == status, r.text
        assert message in error_of(r) and "Traceback" not in r.text
        assert r.json()["image"] == 1  # which image, as data
        assert_still_answers(c)


@pytest.mark.parametrize(("name", "data", "ctype", "classes"), GOOD, ids=[g[0] for g in GOOD])
def test_odd_but_valid_images_classify(server, name, data, ctype, classes):
    with server.client() as c:
        r = post(c, [(f"{name}.bin", data, ctype)], top_k="1")
    assert r.status_code == 200, r.text
    if classes:
        assert r.json()[0]["predictions"][0]["label"] in classes


def test_exif_rotated_photo_answers_like_the_upright_one(server):
    with server.client() as c:
        upright = post(c, [("a.jpg", save(Image.open(DATA / "cat.jpg"), "JPEG"), "image/jpeg")]).json()
        turned = post(c, [("b.jpg", ROTATED, "image/jpeg")]).json()
    assert [p["label"] for p in turned[0]["predictions"]] == [p["label"] for p in upright[0]["predictions"]]


def test_the_bad_image_among_good_ones_is_named(server):
    with server.client() as c:
        r = post(c, [("a.jpg", CAT, "image/jpeg"), ("b.txt", b"hello", "text/plain"), ("c.jpg", CAT, "image/jpeg")])
    formats = ", ".join(config.ACCEPTED_FORMATS)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": f"image 2: not a supported image: accepted formats are {formats}", "image": 2}


@pytest.mark.parametrize(
    ("top_k", "shown"), [("0", "0"), ("-3", "'-3'"), ("1001", "1001"), ("abc", "'abc'"), ("2.5", "'2.5'"), ("", "''")]
)
def test_top_k_outside_its_range_names_the_range(server, top_k, shown):
    with server.client() as c:
        r = post(c, [("cat.jpg", CAT, "image/jpeg")], top_k=top_k)
        assert r.status_code == 400, r.text
        assert r.json() == {"error": f"top_k must be a whole number from 1 to 1000, got {shown}"}
        assert_still_answers(c)


@pytest.mark.parametrize("text", ["/etc/passwd", "http://127.0.0.1:9/x.jpg", "file:///etc/hostname"])
def test_text_in_place_of_a_file_is_never_opened_or_fetched(server, text):
    with server.client() as c:
        r = c.post("/classify", files=[("images", (None, text))])
        assert r.status_code == 400, r.text
        assert "images must be uploaded files" in error_of(r)
        assert_still_answers(c)


def test_a_request_without_images_is_a_400(server):
    with server.client() as c:
        r = c.post("/classify", files=[("top_k", (None, "3"))])
        assert r.status_code == 400, r.text
        assert r.json() == {"error": "no images: send one or more files in the 'images' field"}
        assert_still_answers(c)


# --- Limits, API key and timeout: a server with small settings, serving a model whose labels are markup.

LIMITS = {
    config.ENV_API_KEY: f"{API_KEY}\n",  # as a Secret from a file holds it: the clients send the key alone
    config.ENV_MAX_REQUEST_BYTES: "2000000",
    config.ENV_MAX_IMAGES: "16",
    config.ENV_REQUEST_TIMEOUT_S: "1",
    config.ENV_MAX_CONCURRENT: "4",
}


class SlowOnWhite(nn.Module):
    """The colour model, made slow on purpose: an all-white image takes `rounds` convolutions more (about
    5 s on a 2-core machine, so far past the 1 s timeout that a machine several times faster still is);
    any other image takes microseconds, so importing it (checked on photos) is quick."""

    def __init__(self, rounds: int = 20_000, channels: int = 32) -> None:
        super().__init__()
        self.rounds = rounds
        self.colour = colour_module()
        self.widen = nn.Conv2d(3, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.colour(x)
        if bool(x.amin() > 0.99):
            z = self.widen(x)
            for _ in range(self.rounds):
                z = torch.tanh(self.conv(z))
            y = y + 0.0 * z.mean()
        return y


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """Two models: `markup` (the colour model, its first label markup) answers at once; `slow` is SlowOnWhite."""
    tmp = tmp_path_factory.mktemp("limited")
    labels = tmp / "labels.txt"
    labels.write_text(f"{SCRIPT_LABEL}\n{COLOURS[1]}\n{COLOURS[2]}\n")
    exact = ["--labels", labels, "--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32"]
    tags = []
    for name, module in (("markup", colour_module()), ("slow", SlowOnWhite().eval())):
        path = tmp / f"{name}.pt"
        torch.jit.script(module).save(str(path))
        tags.append(imported_tag(run_import(path, "--name", name, *exact)))
    with running(tags, tmp, LIMITS) as server:
        yield server


def authed(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"})


RED = ("red.png", image_bytes((255, 0, 0)), "image/png")


def test_labels_are_data_not_markup(limited):
    with authed(limited) as c:
        r = post(c, [RED], top_k="1")
    assert r.json()[0]["predictions"][0]["label"] == SCRIPT_LABEL
    assert r.headers["content-type"].startswith("application/json")


BASIC = "Basic " + base64.b64encode(f"anyone:{API_KEY}".encode()).decode()  # a browser's login prompt


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
        ({"Authorization": BASIC}, 200),
    ],
)
def test_the_api_key_guards_classify(limited, headers, status):
    r = httpx.post(f"{limited.url}/classify", files=[("images", RED)], headers=headers, timeout=30)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json() == {"error": "missing or wrong API key: send 'Authorization: Bearer <CLASSIFIER_API_KEY>'"}
        assert "Bearer" in r.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/livez", 200), ("/readyz", 200), ("/metrics", 401), ("/docs.json", 401), ("/", 307)],  # / only redirects
)
def test_only_health_probes_are_open_with_a_key(limited, path, status):
    assert httpx.get(f"{limited.url}{path}", timeout=10).status_code == status


@pytest.mark.parametrize("path", [config.UI_PATH, config.DOCS_PATH])
def test_the_web_page_and_api_docs_ask_a_browser_for_the_key_as_a_password(limited, path):
    r = httpx.get(f"{limited.url}{path}/", timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
    assert httpx.get(f"{limited.url}{path}/", headers={"Authorization": BASIC}, timeout=30).status_code == 200


def test_the_root_url_leads_a_browser_to_the_page_that_asks_for_the_key(limited):
    root = httpx.get(f"{limited.url}/", timeout=10)
    assert (root.status_code, root.headers["location"]) == (307, f"{config.UI_PATH}/")


def test_too_many_images_is_a_400_at_limit_plus_one(limited):
    with authed(limited) as c:
        assert post(c, [RED] * 16).status_code == 200
        r = post(c, [RED] * 17)
    assert r.status_code == 400
    assert error_of(r) == "too many images in one request: 17, limit is 16 (CLASSIFIER_MAX_IMAGES_PER_REQUEST)"


def test_an_oversized_body_is_refused_from_its_content_length(limited):
    with authed(limited) as c:
        r = post(c, [("big.jpg", b"\xff" * 2_100_000, "image/jpeg")])
        assert r.status_code == 413
        assert error_of(r) == "request body too large: limit is 2000000 bytes (CLASSIFIER_MAX_REQUEST_BYTES)"
        assert post(c, [RED]).status_code == 200


def test_a_body_far_over_the_limit_gets_its_413_not_a_reset_connection(limited):
    """Sent whole before reading (as an HTTP library streams a file): the server answered from the
    Content-Length and closed with megabytes unread, the kernel reset the connection, and the client
    never saw the 413 (httpx: ReadError, which client.py retried for --retry-for as a lost server)."""
    body = b"\xff" * (4 * 2_000_000)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
            sock.sendall(head.encode() + body)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # to the server's close
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
        too_large = "request body too large: limit is 2000000 bytes (CLASSIFIER_MAX_REQUEST_BYTES)"
        assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": too_large}
    with authed(limited) as c:
        assert post(c, [RED]).status_code == 200


def test_an_oversized_streamed_body_is_cut_off(limited):
    """No Content-Length: the guard counts the stream and stops reading past the limit."""

    def body():
        yield b"--x\r\nContent-Disposition: form-data; name=images; filename=a.jpg\r\n\r\n"
        for _ in range(100):  # 10 MB offered, 2 MB allowed
            yield b"\xff" * 100_000
        yield b"\r\n--x--\r\n"

    with authed(limited) as c:
        r = c.post("/classify", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413
        assert error_of(r) == "request body too large: limit is 2000000 bytes (CLASSIFIER_MAX_REQUEST_BYTES)"
        assert post(c, [RED]).status_code == 200


def slow_images(n: int) -> list[tuple[str, bytes, str]]:
    """Images slow to decode for their size (9 MP in 27 kB each): many requests of them overlap."""
    big = save(Image.new("RGB", (3000, 3000), (255, 0, 0)), "PNG")
    return [(f"big{i}.png", big, "image/png") for i in range(n)]


def test_a_request_past_the_timeout_gets_504_and_the_next_is_served(limited):
    white = ("white.png", image_bytes((255, 255, 255)), "image/png")
    with authed(limited) as c:
        r = post(c, [white], model="slow")
        assert r.status_code == 504, r.text
        assert r.json() == {"error": "Not able to process the request in 1.0 seconds"}  # BentoML's own answer
        assert post(c, [RED]).status_code == 200  # the other model, while the slow one still works


def test_overload_is_shed_with_503_and_retry_after_never_500(limited):
    images = slow_images(2)

    def one(_: int) -> httpx.Response:
        with authed(limited) as c:
            return post(c, images)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(one, range(12)))
    statuses = sorted(r.status_code for r in responses)
    shed = [r for r in responses if r.status_code == 503]
    assert shed, f"12 concurrent slow requests against a limit of 4 were all let in: {statuses}"
    assert all(r.headers.get("retry-after") == str(config.RETRY_AFTER_S) for r in shed)
    assert all(error_of(r) in (TOO_MANY_IN_FLIGHT, MODEL_QUEUE_FULL) for r in shed)
    assert set(statuses) <= {200, 503, 504}, statuses
    with authed(limited) as c:
        assert post(c, [RED]).status_code == 200


@pytest.fixture(scope="module")
def no_queue(colour_model, tmp_path_factory):
    """A server whose model queue admits nothing behind waiting work (latency bound 0 ms)."""
    env = {config.ENV_MAX_LATENCY_MS: "0", config.ENV_MAX_BATCH_SIZE: "2"}
    with running(colour_model, tmp_path_factory.mktemp("no-queue"), env) as server:
        yield server


def test_a_full_model_queue_is_a_503_that_says_so_and_the_next_request_is_served(no_queue):
    with no_queue.client() as c:
        assert post(c, [RED]).status_code == 200  # the model's time per image is now measured
        # Three images are two batches, queued at once: the second would wait behind the first.
        r = post(c, [RED, RED, RED])
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after") == str(config.RETRY_AFTER_S)
        assert r.json() == {"error": "server busy: the model queue is full, retry shortly"}
        r = post(c, [RED])
        assert r.status_code == 200 and r.json()[0]["predictions"][0]["label"] == "red"


# --- The README's table is checked against the service.

ERRORS_SECTION = (ROOT / "README.md").read_text().split("## Errors and limits")[1].split("\n## ")[0]
# (status, meaning, body, setting, default) of each row; no cell holds a "|"
TABLE = [
    tuple(cell.strip().strip("`") for cell in line.strip("|").split("|"))
    for line in ERRORS_SECTION.splitlines()
    if re.match(r"^\| \d{3} \|", line)
]


def test_the_errors_table_defaults_are_the_real_defaults():
    defaults = {
        config.ENV_MAX_IMAGES: config.MAX_IMAGES_PER_REQUEST,
        config.ENV_MAX_REQUEST_BYTES: config.MAX_REQUEST_BYTES,
        config.ENV_MAX_PIXELS: config.MAX_IMAGE_PIXELS,
        config.ENV_MAX_CONCURRENT: config.MAX_CONCURRENT_REQUESTS,
        config.ENV_REQUEST_TIMEOUT_S: int(config.REQUEST_TIMEOUT_S),
        config.ENV_MAX_LATENCY_MS: config.MAX_LATENCY_MS,
        config.ENV_BODY_TIMEOUT_S: int(config.BODY_TIMEOUT_S),
        config.ENV_MAX_UPLOADS: config.MAX_UPLOADS,
    }
    rows = {setting: default for *_, setting, default in TABLE if setting and setting != config.ENV_API_KEY}
    assert set(rows) == set(defaults)
    assert {k: int(v) for k, v in rows.items()} == defaults


def test_the_errors_table_lists_every_status_the_api_docs_list_in_the_one_shape():
    """README rows = the guard's ERROR_ANSWERS = /docs.json (checked live in tests/test_protocol.py)."""
    assert {int(status) for status, *_ in TABLE} == set(ERROR_ANSWERS)
    for _, _, body, *_ in TABLE:
        answer = json.loads(body)
        assert isinstance(answer["error"], str) and set(answer) <= {"error", "image"}, body
        named = re.match(r"image (\d+): ", answer["error"])
        assert answer.get("image") == (int(named[1]) if named else None), body


def test_every_status_in_the_errors_table_is_produced_by_the_suite():
    """Each status the README promises is asserted by a test here or in tests/test_protocol.py;
    500 is the answer no request should get, and none does."""
    source = Path(__file__).read_text() + (Path(__file__).parent / "test_protocol.py").read_text()
    for status, *_ in TABLE:
        if status != "500":
            assert re.search(rf"(status_code == |, |\(){status}\b", source), f"no test produces {status}"
