"""The web page at /ui as people reach it: in headless Chromium, and as Gradio's API answers it.

Browser tests drive Debian's Chromium (.ci/run installs it) with Playwright; each leaves a
screenshot of its last state in test-artifacts/. The others check over HTTP that the page
serves the stored model's card and that its work joins the model's batches.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import bentoml
import pytest

from imgserve import config
from imgserve.serving import docs, store
from imgserve.serving.errors import TOO_MANY_UPLOADS
from imgserve.serving.preprocess import Preprocessing
from imgserve.serving.ui import about, confidences
from imgserve.testing import start_server, stop_server
from tests.helpers import (
    CAT_CLASSES,
    COLOURS,
    DATA,
    EXAMPLE_PHOTOS,
    ROOT,
    colour_module,
    image_bytes,
    imported_tag,
    run_import,
)

PHONE = {"width": 360, "height": 740}  # a small phone's screen in CSS pixels
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; a test tool's own browser download does not work here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    # This machine's network is closed: no background calls home, no waiting on them.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    # A camera that shows a test pattern, allowed without asking: the webcam path runs for real.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 60_000  # a page load on a busy 2-core machine takes seconds; a hang still fails
NOT_AN_IMAGE = b"meeting notes, saved with the wrong name\n"
HEARTBEAT = f"{config.UI_PATH}/gradio_api/heartbeat/visitor"  # what an open page holds open, per session
# What a person's drag-and-drop and copy do, given a PNG `blob` in the page.
DROP_JS = "const dt = new DataTransfer(); dt.items.add(new File([blob], 'photo.png', {type: blob.type})); return dt;"
COPY_JS = "await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]);"


def card_of(tag: str) -> store.ModelCard:
    return store.ModelCard.from_stored(bentoml.models.get(tag))


# --- Without a server


def test_a_repeated_class_name_stays_two_bars():
    predictions = [SimpleNamespace(label=name, score=s) for name, s in [("crane", 0.5), ("kite", 0.3), ("crane", 0.2)]]
    assert confidences(predictions) == {"crane": 0.5, "kite": 0.3, "crane (2)": 0.2}


def test_the_about_area_comes_from_the_metadata():
    card = store.ModelCard(
        tag="birds:abc123",
        labels=["robin", "wren"],
        preprocessing=Preprocessing(resize=256, crop=224),
        title="Garden birds",
        description="Names garden birds.",
        metadata={"arch": "resnet18", "source_file": "birds.pth", "source_sha256": "ab" * 32},
    )
    text = about(card)
    assert "- **Model:** `birds:abc123`\n" in text and "- **Classes:** 2\n" in text
    assert "- **Input:** 224×224 pixels, RGB: `Resize(256), CenterCrop(224), ToTensor(), Normalize(" in text
    assert f"- **Weights:** `birds.pth`, SHA-256 `{'ab' * 32}`\n" in text
    assert f"[API docs]({config.DOCS_PATH}/)" in text


# --- Over HTTP, no browser


@pytest.mark.serve
def test_the_page_answers_with_the_models_card_and_the_api_docs_link_to_it(server, default_model):
    card = card_of(default_model)
    with server.client() as c:
        r = c.get(config.UI_PATH, follow_redirects=True)
        assert r.status_code == 200
        assert card.title in r.text and default_model in r.text
        classify = c.get("/docs.json").json()["paths"]["/classify"]["post"]
    assert f"]({config.UI_PATH})" in classify["description"]


@pytest.mark.serve
def test_the_root_url_sends_browsers_to_the_page_and_programs_keep_bentomls_endpoints(server, default_model):
    with server.client() as c:
        for method in ("GET", "HEAD"):
            root = c.request(method, "/")
            assert (root.status_code, root.headers["location"]) == (307, f"{config.UI_PATH}/")
        assert c.get("/", follow_redirects=True).url.path == f"{config.UI_PATH}/"
        document = c.get("/docs.json").json()  # BentoML's OpenAPI document, for programs, as it was
        assert document["info"]["title"] == "image-classifier"
        assert {"/healthz", "/livez", "/readyz", "/metrics", config.CLASSIFY_PATH} <= set(document["paths"])
        page = c.get(f"{config.DOCS_PATH}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert docs.info([card_of(default_model)])["title"] in page.text
    assert "googletagmanager" not in page.text and "https://" not in page.text


@pytest.mark.serve
def test_a_redirect_keeps_the_query_string_that_gradio_reads(server):
    """`/ui?__theme=dark` led to /ui/, the theme dropped; `/?view=api` to the page without its API view."""
    with server.client() as c:
        for path, target in [
            (f"{config.UI_PATH}?__theme=dark", f"{config.UI_PATH}/?__theme=dark"),
            ("/?view=api", f"{config.UI_PATH}/?view=api"),
            (f"{config.DOCS_PATH}?a=1&b=%20", f"{config.DOCS_PATH}/?a=1&b=%20"),
        ]:
            moved = c.get(path)
            assert (moved.status_code, moved.headers["location"]) == (307, target)
        assert c.get(f"{config.UI_PATH}?__theme=dark", follow_redirects=True).status_code == 200


@pytest.mark.serve
def test_behind_an_https_proxy_every_url_a_visitor_is_sent_to_stays_on_the_public_https_host(server):
    """A hosting platform ends HTTPS in its proxy and forwards plain HTTP, naming the public host and
    scheme in headers; its own Host may be the pod's address. No redirect, page config or example photo
    may send the browser to http:// (mixed content, or a downgrade) or to that internal address."""
    proxy = {"Host": "10.0.0.5:3000", "X-Forwarded-Host": "public.example.org", "X-Forwarded-Proto": "https"}
    public = f"https://public.example.org{config.UI_PATH}"
    with server.client(headers=proxy) as c:
        for path, target in [("/", f"{config.UI_PATH}/"), (config.UI_PATH, f"{config.UI_PATH}/")]:
            moved = c.get(path)
            assert (moved.status_code, moved.headers["location"]) == (307, target)  # a path: scheme and host kept
        assert c.get(config.DOCS_PATH).headers["location"] == f"{config.DOCS_PATH}/"
        page_config = c.get(f"{config.UI_PATH}/config")
        docs_page = c.get(f"{config.DOCS_PATH}/").text
    assert page_config.status_code == 200
    assert page_config.json()["root"] == public
    samples = [comp.get("props", {}).get("samples") or [] for comp in page_config.json()["components"]]
    examples = [sample[0]["url"] for some in samples for sample in some]  # the example photos' URLs
    assert examples and all(url.startswith(f"{public}/") for url in examples), examples
    assert "http://" not in page_config.text and "10.0.0.5" not in page_config.text
    assert "http://" not in docs_page and "https://" not in docs_page  # the API docs' URLs are paths on this host


STOP_WITHIN_S = 20  # the platform's grace before SIGKILL: Kubernetes' default is 30 s


@pytest.mark.serve
def test_a_stop_with_the_page_open_ends_its_stream_answers_the_upload_in_flight_and_exits(default_model, tmp_path):
    """A platform stops the container (SIGTERM to `bentoml serve`, its first process) while a visitor has
    the page open and someone's upload is under way: the page's heartbeat stream ends, the upload is still
    answered, and the server exits by itself, well before the platform would kill it."""
    server = start_server(default_model, tmp_path)
    try:
        photo = (DATA / "cat.jpg").read_bytes()
        form = (
            b'--b\r\nContent-Disposition: form-data; name="images"; filename="cat.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b--\r\n"
        )
        upload = socket.create_connection(("127.0.0.1", server.port), timeout=STOP_WITHIN_S)
        with server.client() as c, c.stream("GET", HEARTBEAT, timeout=STOP_WITHIN_S) as heartbeat:
            beats = heartbeat.iter_lines()
            assert next(beats) == "data: ALIVE"
            # The server reads this upload's body (it asks for it: 100 Continue) before it is told to stop.
            upload.sendall(
                f"POST {config.CLASSIFY_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {len(form)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            assert upload.recv(100).startswith(b"HTTP/1.1 100 Continue")
            server.process.send_signal(signal.SIGTERM)
            told = time.monotonic()
            for _ in beats:  # one every 15 s for as long as the stream lasts
                assert time.monotonic() - told < STOP_WITHIN_S, "the page's stream outlived the stop"
        upload.sendall(form)
        answer = upload.makefile("rb").read().decode()
        assert answer.startswith("HTTP/1.1 200 "), answer[:300]
        assert json.loads(answer.split("\r\n\r\n", 1)[1])[0]["predictions"][0]["label"] in CAT_CLASSES
        assert server.process.wait(timeout=STOP_WITHIN_S) == 0
    finally:
        stop_server(server)


@pytest.mark.serve
def test_the_pages_classifications_join_the_models_batches(server):
    """Twelve page users at once get the API's answers, in fewer model calls than photos. Served by
    EfficientNet-Lite0: its few milliseconds a call let the others queue behind one (a model of a
    few microseconds, like the colour model, is often done before the next photo arrives)."""
    from gradio_client import Client, handle_file

    photos = sorted(DATA.glob("*.jpg"))
    with server.client() as c:
        api = {p: c.post("/classify", files=[("images", (p.name, p.read_bytes(), "image/jpeg"))]) for p in photos}
    expected = {p: r.json()[0]["predictions"][0]["label"] for p, r in api.items()}
    jobs = [p for _ in range(4) for p in photos]
    page = Client(f"{server.url}{config.UI_PATH}/", verbose=False)
    batches_before, images_before = (
        server.metric(f"{config.METRIC_BATCH_SIZE}_count"),
        server.metric(f"{config.METRIC_BATCH_SIZE}_sum"),
    )

    submitted = [page.submit(handle_file(p), 1, api_name="/classify") for p in jobs]
    assert [job.result(timeout=60)["label"] for job in submitted] == [expected[p] for p in jobs]

    batches = server.metric(f"{config.METRIC_BATCH_SIZE}_count") - batches_before
    images = server.metric(f"{config.METRIC_BATCH_SIZE}_sum") - images_before
    assert images == len(jobs), "the page's images did not all go through the batched model"
    assert batches < len(jobs), f"{len(jobs)} concurrent page requests ran as {batches} model calls: not batched"


@pytest.mark.serve
def test_the_page_refuses_a_bad_file_with_the_apis_message(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.jpg"
    notes.write_bytes(NOT_AN_IMAGE)
    with server.client() as c:
        api = c.post("/classify", files=[("images", ("notes.jpg", NOT_AN_IMAGE, "image/jpeg"))])
    assert api.status_code == 400
    with pytest.raises(AppError) as refused:
        Client(f"{server.url}{config.UI_PATH}/", verbose=False).predict(handle_file(notes), 3, api_name="/classify")
    message = str(refused.value)
    assert message.startswith("image 1: not a supported image") and message in api.text


@pytest.mark.serve
def test_the_pages_api_reads_uploads_only_not_any_path_on_the_server(server, tmp_path):
    """Gradio's API puts a file's path in the JSON it is sent: a path outside the upload folder is
    refused, whether the file exists or not, and is never classified."""
    from gradio_client import Client, handle_file

    elsewhere = tmp_path / "not-uploaded.jpg"
    elsewhere.write_bytes((DATA / "cat.jpg").read_bytes())
    with server.client() as c:
        for path in (elsewhere, tmp_path / "missing.jpg", Path("/etc/hostname")):
            call = c.post(
                f"{config.UI_PATH}/gradio_api/call/classify",
                json={"data": [{"path": str(path), "meta": {"_type": "gradio.FileData"}}, 3, ""]},
            )
            assert call.status_code == 200, call.text
            events = c.get(f"{config.UI_PATH}/gradio_api/call/classify/{call.json()['event_id']}").text
            assert events.startswith("event: error") and "cat" not in events, events
    # An upload still works, through the same API.
    page = Client(f"{server.url}{config.UI_PATH}/", verbose=False)
    assert page.predict(handle_file(elsewhere), 1, api_name="/classify")["label"] in CAT_CLASSES


@pytest.mark.serve
def test_the_pages_api_called_with_the_photo_alone_uses_the_defaults_of_the_rest(server):
    """The page's API view says top_k (and the model) may be left out; curl's {"data": [photo]} got
    `event: error`, `data: {"error": null}`, and the log a traceback (gradio_client fills them itself)."""
    api = f"{config.UI_PATH}/gradio_api"
    with server.client() as c:
        [path] = c.post(f"{api}/upload", files={"files": ("cat.jpg", (DATA / "cat.jpg").read_bytes())}).json()
        photo = {"path": path, "meta": {"_type": "gradio.FileData"}}
        for data, shown in (([photo], config.DEFAULT_TOP_K), ([photo, 2], 2), ([], 0)):
            call = c.post(f"{api}/call/classify", json={"data": data})
            assert call.status_code == 200, call.text
            events = c.get(f"{api}/call/classify/{call.json()['event_id']}").text
            assert "event: complete" in events, events
            answer = json.loads(events.split("event: complete\ndata: ")[1].split("\n")[0])[0]
            assert len(answer.get("confidences", [])) == shown
            assert not shown or answer["label"] in CAT_CLASSES
    assert "enough input values" not in server.output()


@pytest.mark.serve
def test_an_api_name_the_page_has_not_is_a_404_naming_its_api_not_a_500(server):
    """Gradio's docs call a gr.Interface's API /call/predict: here that was a bare 500 and two tracebacks."""
    api = f"POST {config.UI_PATH}/gradio_api/call/classify (its inputs: {config.UI_PATH}/?view=api)"
    with server.client() as c:
        for name in ("predict", "predict/", "nosuch"):
            r = c.post(f"{config.UI_PATH}/gradio_api/call/{name}", json={"data": [None, 3, ""]})
            shown = name.rstrip("/")
            assert (r.status_code, r.json()) == (404, {"error": f"the web page has no API named '{shown}': call {api}"})
        call = c.post(f"{config.UI_PATH}/gradio_api/call/classify", json={"data": [None, 3, ""]})
        assert call.status_code == 200, call.text  # the page's own API answers as before
    assert "FnIndexInferError" not in server.output()


@pytest.mark.serve
def test_a_function_index_the_page_has_not_is_a_400_not_a_500(server):
    """The page script's queue/join, sent a function index the page has not: a 500 and a KeyError traceback."""
    api = f"POST {config.UI_PATH}/gradio_api/call/classify (its inputs: {config.UI_PATH}/?view=api)"
    with server.client() as c:
        for index in (99, -1):
            body = {"data": [None, 3, ""], "fn_index": index, "session_hash": "s"}
            r = c.post(f"{config.UI_PATH}/gradio_api/queue/join", json=body)
            error = f"the web page has no function index '{index}': programs call {api}"
            assert (r.status_code, r.json()) == (400, {"error": error})
        assert c.get("/readyz").status_code == 200
    assert "KeyError" not in server.output()


@pytest.mark.serve
def test_an_event_stream_for_an_event_the_page_does_not_hold_ends_whole_after_its_error(server):
    """A mistyped or stale event id (Gradio's curl API: POST .../call/classify, then GET .../call/classify/<id>):
    Gradio sent its error event, then cut the connection mid-answer and logged a traceback."""
    with server.client() as c:
        for path in ("call/classify/0123456789abcdef", "queue/data?session_hash=nosuch"):
            r = c.get(f"{config.UI_PATH}/gradio_api/{path}")  # read whole: a cut stream raises here
            assert r.status_code == 200 and "404: Not Found" in r.text, r.text
        assert c.get("/readyz").status_code == 200
    assert "Exception in ASGI application" not in server.output()
    assert f"GET {config.UI_PATH}/gradio_api/queue/data: 404 Not Found, the event stream ended" in server.output()


# --- In Chromium


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no {CHROMIUM}: install Debian's Chromium (apt-get install chromium), or deselect: -m 'not browser'"
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium, request) -> Iterator:
    """A fresh tab that records every request it and the tabs it opens make; its last state is saved as
    a screenshot. `page.foreign` lists the requests to any host but the server's."""
    context = chromium.new_context(
        viewport={"width": 1100, "height": 760}, permissions=["camera", "clipboard-read", "clipboard-write"]
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.hosts, page.urls, page.http_errors = set(), [], []

    def record(r) -> None:
        page.hosts.add(urlsplit(r.url).hostname)
        page.urls.append(r.url)

    context.on("request", record)
    context.on("response", lambda r: r.status >= 400 and page.http_errors.append(f"{r.status} {r.url}"))
    yield page
    page.screenshot(path=ARTIFACTS / f"ui-{request.node.name}.png", full_page=True)
    context.close()
    assert page.http_errors == [], "the page asked for something that failed"


def open_ui(page, server) -> None:
    page.goto(f"{server.url}{config.UI_PATH}")
    page.locator("#about li").first.wait_for()  # rendered, down to the About area


def foreign(page, server) -> list[str]:
    """Every request the tabs made to a host other than the server's."""
    return [url for url in page.urls if urlsplit(url).netloc != urlsplit(server.url).netloc]


def shown(page) -> list[tuple[str, str]]:
    rows = page.locator("#answer dl")
    return [(row.locator("dt").inner_text(), row.locator("dd").inner_text()) for row in rows.all()]


def expect_top(page, *classes: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#answer [data-testid=label-output-value]")).to_have_text(
        re.compile("^(" + "|".join(map(re.escape, classes)) + ")$")
    )


def png_in_page(page, colour: tuple[int, int, int], script: str):
    """Run `script` in the page with a PNG of one colour as a Blob named `blob`."""
    return page.evaluate_handle(
        f"async (hex) => {{ const blob = await (await fetch('data:image/png;base64,' + hex)).blob(); {script} }}",
        base64.b64encode(image_bytes(colour)).decode(),
    )


@pytest.mark.serve
@pytest.mark.browser
def test_upload_a_photo_and_see_the_same_top_classes_as_the_api(browser_page, server, default_model):
    from playwright.sync_api import expect

    page = browser_page
    card = card_of(default_model)
    open_ui(page, server)
    expect(page.locator("h1")).to_have_text(card.title)
    expect(page.get_by_text(default_model)).to_be_visible()  # name and version of the stored model
    expect(page.locator("#model")).to_have_count(0)  # one model: no chooser

    page.locator("#photo input[type=file]").set_input_files(DATA / "cat.jpg")
    expect_top(page, *CAT_CLASSES)
    with server.client() as c:
        [api] = c.post("/classify", files=[("images", ("cat.jpg", (DATA / "cat.jpg").read_bytes()))]).json()
    expected = [(p["label"], f"{round(100 * p['score'])}%") for p in api["predictions"]]
    expect(page.locator("#answer dl")).to_have_count(len(expected))
    assert shown(page) == expected
    page.screenshot(path=ARTIFACTS / "ui.png")  # README's docs/ui.png, reduced to a palette

    page.get_by_label("number input for Classes shown").fill("3")
    page.keyboard.press("Tab")  # Gradio's slider answers when the box loses focus (or the handle is let go)
    expect(page.locator("#answer dl")).to_have_count(3)
    assert shown(page) == expected[:3]
    assert page.hosts == {"127.0.0.1"}, "the page fetched from other hosts"


@pytest.mark.serve
@pytest.mark.browser
def test_on_a_phone_the_page_fits_the_screen_and_the_about_area_shows_all_it_says(browser_page, server):
    """A visitor on a phone classifies a photo and reads the About area (the weights' SHA-256, the input
    transforms: long unbroken words) without anything running past the screen's edge."""
    page = browser_page
    page.set_viewport_size(PHONE)
    open_ui(page, server)
    page.locator("#photo input[type=file]").set_input_files(DATA / "cat.jpg")
    expect_top(page, *CAT_CLASSES)
    past_the_edge = page.evaluate(
        """() => [...document.querySelectorAll('#photo, #answer, #examples, #about *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth)
            .map(e => e.tagName + ': ' + e.textContent.slice(0, 40))"""
    )
    assert past_the_edge == [], "cut off on a phone's screen"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling


@pytest.mark.serve
@pytest.mark.browser
def test_an_example_photo_is_one_click_away(browser_page, server):
    from playwright.sync_api import expect

    page = browser_page
    open_ui(page, server)
    # The default model has none of its own: the bundled photos, of ImageNet classes.
    expect(page.locator("#examples img")).to_have_count(len(list(DATA.glob("*.jpg"))))
    page.locator("#examples button:has(img[src$='/coffee.jpg'])").click()
    expect_top(page, "espresso")
    preview = page.locator("#photo img")
    expect(preview).to_have_attribute("src", re.compile(f"{config.UI_PATH}/.*/coffee.jpg$"))
    assert preview.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0  # the photo is shown


@pytest.mark.serve
@pytest.mark.browser
def test_a_file_that_is_not_an_image_shows_the_apis_reason_not_a_stack_trace(browser_page, server):
    from playwright.sync_api import expect

    page = browser_page
    open_ui(page, server)
    page.locator("#photo input[type=file]").set_input_files(
        {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": NOT_AN_IMAGE}
    )
    error = page.get_by_test_id("toast-text")
    expect(error).to_have_text(
        f"image 1: not a supported image: accepted formats are {', '.join(config.ACCEPTED_FORMATS)}"
    )
    assert "Traceback" not in page.content()
    expect(page.locator("#answer dl")).to_have_count(0)


@pytest.mark.serve
@pytest.mark.browser
def test_a_refused_photo_does_not_keep_the_last_photos_classes_and_the_next_photo_is_classified(browser_page, server):
    """A visitor classifies a cat, then uploads a truncated copy of it: the page says why it was refused
    and shows no classes, not the cat's beside the refused file; the reason stays (Gradio's messages go
    after 10 s, leaving a bare "Error"). The next photo is classified, and the message of the last closes."""
    from playwright.sync_api import expect

    page = browser_page
    open_ui(page, server)
    photo = page.locator("#photo input[type=file]")
    photo.set_input_files(DATA / "cat.jpg")
    expect_top(page, *CAT_CLASSES)

    cat = (DATA / "cat.jpg").read_bytes()
    photo.set_input_files({"name": "cut.jpg", "mimeType": "image/jpeg", "buffer": cat[: len(cat) // 3]})
    expect(page.get_by_test_id("toast-text")).to_have_text(re.compile("^image 1: image data is truncated or corrupt"))
    expect(page.locator("#answer dl")).to_have_count(0)
    expect(page.locator("#answer [data-testid=label-output-value]")).to_have_count(0)
    # It stays: nothing counts it down (Gradio's 10 s countdown is a bar under the message).
    expect(page.locator("[data-testid=toast-body] .timer")).to_have_count(0)

    photo.set_input_files(DATA / "coffee.jpg")
    expect_top(page, "espresso")
    expect(page.get_by_test_id("toast-text")).to_have_count(0)


@pytest.mark.serve
@pytest.mark.browser
def test_a_busy_server_tells_the_visitor_in_words_and_the_next_upload_is_classified(
    browser_page, default_model, tmp_path
):
    """Uploads in progress at their bound (here 1: another client's, stalled mid-body): the page's upload is
    refused with 503, and the visitor reads the server's sentence, not its JSON. Once that client is gone,
    the same page classifies the next photo."""
    from playwright.sync_api import expect

    server = start_server(default_model, tmp_path, {"CLASSIFIER_MAX_UPLOADS": "1", "CLASSIFIER_BODY_TIMEOUT_S": "60"})
    try:
        page = browser_page
        open_ui(page, server)
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        stalled.sendall(
            f"POST {config.CLASSIFY_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert stalled.recv(100).startswith(b"HTTP/1.1 100 Continue")  # counted as an upload in progress
        # Gradio follows an upload's progress; for one refused, that ends in a 404 (after 3 s).
        with page.expect_response(lambda r: "/gradio_api/upload_progress" in r.url) as progress:
            page.locator("#photo input[type=file]").set_input_files(DATA / "cat.jpg")
            expect(page.get_by_test_id("toast-text")).to_have_text(f"HTTP 503: {TOO_MANY_UPLOADS}")
        stalled.close()
        page.locator("#photo input[type=file]").set_input_files(DATA / "coffee.jpg")
        expect_top(page, "espresso")
        upload_id = urlsplit(progress.value.url).query
        assert page.http_errors == [
            f"503 {server.url}{config.UI_PATH}/gradio_api/upload?{upload_id}",
            f"404 {server.url}{config.UI_PATH}/gradio_api/upload_progress?{upload_id}",
        ]
        page.http_errors.clear()  # the refused upload's, expected
    finally:
        stop_server(server)


LONG_LABEL = (  # a class name as a microbiology lab writes it: underscores for spaces, one long word
    "Pseudomonas_aeruginosa_strain_PAO1_biofilm_stained_with_crystal_violet_under_brightfield_microscopy_"
    "at_one_thousand_times_magnification_replicate_A"
)


@pytest.mark.serve
@pytest.mark.browser
@pytest.mark.model  # it imports one
def test_a_long_class_name_is_shown_whole_with_its_percentage_on_a_wide_screen_and_a_phone(browser_page, tmp_path):
    """The colour model, its "red" renamed to one long word: the top class and every bar's percentage
    stay inside the answer's box, the name wrapped rather than cut off at both ends."""
    import torch

    torch.jit.script(colour_module()).save(str(tmp_path / "long.pt"))
    (tmp_path / "labels.txt").write_text(f"{LONG_LABEL}\ngreen\nblue\n")
    tag = imported_tag(
        run_import(tmp_path / "long.pt", "--labels", tmp_path / "labels.txt", "--name", "long-names",
                   "--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32")
    )  # fmt: skip
    server = start_server(tag, tmp_path)
    try:
        page = browser_page
        open_ui(page, server)
        page.locator("#photo input[type=file]").set_input_files(
            {"name": "red.png", "mimeType": "image/png", "buffer": image_bytes((255, 0, 0))}
        )
        expect_top(page, LONG_LABEL)
        assert shown(page)[0] == (LONG_LABEL, "100%")
        for size in ({"width": 1100, "height": 760}, PHONE):
            page.set_viewport_size(size)
            outside = page.evaluate(
                """() => { const box = document.querySelector('#answer').getBoundingClientRect();
                    return [...document.querySelectorAll('#answer [data-testid=label-output-value], #answer dl *')]
                        .filter(e => { const r = e.getBoundingClientRect(); return r.left < box.left
                                       || r.right > box.right || e.scrollWidth > e.clientWidth; })
                        .map(e => e.tagName + ': ' + e.textContent.trim().slice(0, 40)); }"""
            )
            assert outside == [], f"cut off at {size['width']} px"
    finally:
        stop_server(server)


@pytest.mark.serve
@pytest.mark.browser
def test_a_user_model_by_drop_paste_and_webcam(browser_page, colour_server, colour_model):
    """The tiny colour model: its own title and labels from the store; exact answers."""
    from playwright.sync_api import expect

    page = browser_page
    open_ui(page, colour_server)
    expect(page.locator("h1")).to_have_text(card_of(colour_model).title)
    expect(page.locator("#examples")).to_have_count(0)  # its own classes and no photos of them: no cat

    dropped = png_in_page(page, (255, 0, 0), DROP_JS)
    drop_zone = page.get_by_label("Drop an image file here to upload")
    for event in ("dragenter", "dragover", "drop"):
        drop_zone.dispatch_event(event, {"dataTransfer": dropped})
    expect_top(page, "red")
    assert [name for name, _ in shown(page)] == ["red", "green", "blue"]  # all three classes, best first

    png_in_page(page, (0, 0, 255), COPY_JS)
    page.get_by_label("Paste from clipboard").click()
    expect_top(page, "blue")

    page.get_by_label("Capture from camera").click()
    page.get_by_text("Click to Access Webcam").click()
    page.wait_for_function("document.querySelector('#photo video')?.readyState >= 2")  # showing frames
    page.get_by_label("capture photo").click()
    expect_top(page, *COLOURS)  # Chromium's fake camera: whichever colour its test pattern is


@pytest.mark.serve
@pytest.mark.browser
def test_the_api_docs_link_to_the_page_and_the_page_back(browser_page, server, default_model):
    from playwright.sync_api import expect

    docs = browser_page
    docs.goto(f"{server.url}{config.DOCS_PATH}")
    docs.locator(".opblock-summary", has_text="/classify").click()
    with docs.expect_popup() as opened:
        docs.get_by_role("link", name="the web page").click()
    ui = opened.value
    expect(ui.locator("h1")).to_have_text(card_of(default_model).title)
    with ui.expect_popup() as opened:
        ui.get_by_role("link", name="API docs").click()
    expect(opened.value.locator(".opblock-summary", has_text="/classify")).to_be_visible()


# --- Two models in one server: the chooser


@pytest.mark.serve
def test_with_two_models_the_page_classifies_with_the_chosen_one(
    two_model_server, default_model, colour_model, tmp_path
):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    red = tmp_path / "red.png"
    red.write_bytes(image_bytes((255, 0, 0)))
    page = Client(f"{two_model_server.url}{config.UI_PATH}/", verbose=False)
    colours = page.predict(handle_file(red), 3, colour_model, api_name="/classify")
    assert [c["label"] for c in colours["confidences"]] == ["red", "green", "blue"]
    # The API's documented default top_k (5, the first model's slider) with the 3-class model: all three
    # classes, as /classify answers (was: 'top_k must be from 1 to 3, got 5').
    assert page.predict(handle_file(red), tag=colour_model, api_name="/classify") == colours
    cat = page.predict(handle_file(DATA / "cat.jpg"), 1, default_model, api_name="/classify")
    assert cat["label"] in CAT_CLASSES
    with pytest.raises(AppError) as refused:
        page.predict(handle_file(red), 1, "flowers:latest", api_name="/classify")
    assert str(refused.value) == f"unknown model 'flowers:latest': choose one of {default_model}, {colour_model}"


def choose(page, card: store.ModelCard) -> None:
    page.locator("#model input").click()
    page.get_by_role("option", name=f"{card.title} ({card.tag})").click()


@pytest.mark.serve
@pytest.mark.browser
def test_with_two_models_a_chooser_picks_the_model_and_the_page_follows(
    browser_page, two_model_server, default_model, colour_model
):
    from playwright.sync_api import expect

    page = browser_page
    default, colours = card_of(default_model), card_of(colour_model)
    open_ui(page, two_model_server)
    expect(page.locator("h1")).to_have_text(default.title)
    expect(page.locator("#examples")).to_be_visible()
    expect(page.locator("#examples-1")).to_have_count(0)  # the colour model has no photos of its own: none

    page.locator("#photo input[type=file]").set_input_files(
        {"name": "red.png", "mimeType": "image/png", "buffer": image_bytes((255, 0, 0))}
    )
    expect(page.locator("#answer dl")).to_have_count(5)  # ImageNet's top 5 for a red square
    choose(page, colours)
    expect(page.locator("h1")).to_have_text(colours.title)
    expect(page.locator("#about code", has_text=colour_model)).to_be_visible()  # About follows the choice
    expect_top(page, "red")  # the photo on the page, classified again by the chosen model
    assert [name for name, _ in shown(page)] == ["red", "green", "blue"]  # its three classes: the slider's top
    expect(page.locator("#examples")).to_be_hidden()  # not the default's cat for a colour model

    choose(page, default)
    expect(page.locator("h1")).to_have_text(default.title)
    page.locator("#photo input[type=file]").set_input_files(DATA / "cat.jpg")
    expect_top(page, *CAT_CLASSES)
    expect(page.locator("#answer dl")).to_have_count(3)  # the slider kept 3, within the default's range
    expect(page.get_by_test_id("toast-text")).to_have_count(0)  # no error on the way


@pytest.mark.serve
@pytest.mark.browser
def test_a_visitor_goes_from_the_root_url_to_the_page_and_the_api_docs_and_no_one_else_hears(
    browser_page, examples_server, examples_model, example_photos
):
    """The hosted demo as a visitor meets it: the shared URL opens the page, with the model's own
    examples and its About area; its link opens the API docs with the model's title. Nothing on the
    way is fetched from another host: no tracker, no badge, no font."""
    from playwright.sync_api import expect

    page = browser_page
    card = card_of(examples_model)
    page.goto(f"{examples_server.url}/")
    expect(page).to_have_url(f"{examples_server.url}{config.UI_PATH}/")
    expect(page.locator("h1")).to_have_text(card.title)
    expect(page.get_by_text(card.description)).to_be_visible()

    # Its own photos, and no others.
    thumbnails = page.locator("#examples img")
    expect(thumbnails).to_have_count(len(EXAMPLE_PHOTOS))
    srcs = thumbnails.evaluate_all("imgs => imgs.map(i => i.src)")
    names = sorted(Path(urlsplit(src).path).name for src in srcs)
    assert names == sorted(f"{name}.jpg" for name in EXAMPLE_PHOTOS)
    photo = example_photos / f"{EXAMPLE_PHOTOS[0]}.jpg"
    page.locator(f"#examples button:has(img[src$='/{photo.name}'])").click()
    with examples_server.client() as c:
        [api] = c.post("/classify", files=[("images", (photo.name, photo.read_bytes()))], data={"top_k": "3"}).json()
    expect_top(page, api["predictions"][0]["label"])
    expect(page.locator("#answer dl")).to_have_count(3)
    assert shown(page) == [(p["label"], f"{round(100 * p['score'])}%") for p in api["predictions"]]

    # About this model: from the metadata.
    rows = dict(item.split(": ", 1) for item in page.locator("#about li").all_inner_texts())
    assert rows["Model"] == card.tag and rows["Classes"] == str(len(card.labels))
    height, width = card.preprocessing.input_size
    assert rows["Input"].startswith(f"{height}×{width} pixels, RGB: ")
    expect(page.locator("#about")).to_contain_text("How to cite")
    page.screenshot(path=ARTIFACTS / "ui-visitor.png", full_page=True)

    with page.expect_popup() as opened:
        page.locator("#about").get_by_role("link", name="API docs").click()
    api_docs = opened.value
    expect(api_docs).to_have_url(f"{examples_server.url}{config.DOCS_PATH}/")
    expect(api_docs).to_have_title(f"{card.title}: API")
    expect(api_docs.locator(".info .title")).to_contain_text(card.title)
    expect(api_docs.locator(".info .description")).to_contain_text(card.description)
    expect(api_docs.locator(".opblock-summary", has_text=config.CLASSIFY_PATH)).to_be_visible()
    api_docs.wait_for_load_state("networkidle")  # everything the docs page loads, loaded
    api_docs.screenshot(path=ARTIFACTS / "docs.png", full_page=True)

    assert any(urlsplit(u).path == "/docs.json" for u in page.urls)  # the recording saw the docs page work
    assert foreign(page, examples_server) == [], "a page asked another host for something"
