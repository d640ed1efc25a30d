"""The whole service in-process: service.py's BentoML app (guard, /classify, /models, batching) over
Starlette's test client, no server. The model is a real ONNX file in the real model store, written
with onnx's helper so that no torch import is needed: mean colour -> red, green or blue, exactly.

The same service under a real `bentoml serve` is test_service.py and the tiers after it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from starlette.testclient import TestClient

from imgserve import config
from imgserve.serving import predict, store
from imgserve.serving.errors import NO_IMAGES
from imgserve.serving.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue"]
SCALE = 10 / 255  # logits: 10 x the mean of each channel in [0, 1]


def colour_onnx(path: Path) -> None:
    """uint8 pixels (n, 3, 32, 32) -> softmax(10 x mean colour): a pure colour is its class with p > 0.9999."""
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [predict.OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info(predict.INPUT_NAME, TensorProto.UINT8, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info(predict.OUTPUT_NAME, TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [SCALE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # ONNX Runtime reads it
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def app():
    """service.py imported against a store that holds the colour model, its app started (lifespan)."""
    folder = Path(tempfile.mkdtemp(prefix="imgserve-asgi-"))
    colour_onnx(folder / "colours.onnx")
    prep = Preprocessing(resize=32, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    meta = {"labels": COLOURS, "preprocessing": prep.to_dict(), "arch": "mean colour", "title": "Colours"}
    tag = store.save("asgi-colours", folder / "colours.onnx", meta)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(config.ENV_MODELS, tag)
        env.delenv(config.ENV_MODEL, raising=False)
        spec = importlib.util.spec_from_file_location("service", ROOT / "service.py")
        service = importlib.util.module_from_spec(spec)
        env.setitem(sys.modules, "service", service)  # its annotations are resolved by its module's name
        spec.loader.exec_module(service)
        with TestClient(service.ImageClassifier.to_asgi(), raise_server_exceptions=False) as client:
            yield client, tag


def png(colour: str, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def test_each_image_gets_its_own_class_in_upload_order(app):
    client, tag = app
    files = [("images", (f"{c}.png", png(c), "image/png")) for c in ("blue", "red", "lime")]
    r = client.post("/classify", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert [a["predictions"][0]["label"] for a in answers] == ["blue", "red", "green"]
    assert all(a["model"] == tag and len(a["predictions"]) == 2 for a in answers)
    expected = np.exp(10.0) / (np.exp(10.0) + 2)  # softmax of (10, 0, 0)
    assert answers[1]["predictions"][0]["score"] == pytest.approx(expected, abs=1e-4)


def test_uploads_reach_the_model_without_a_temporary_file_each(app, monkeypatch):
    """BentoML would write each upload to a file of its own (imgserve/serving/uploads.py says why not)."""
    client, _ = app
    created = []
    named = tempfile.NamedTemporaryFile

    def recording(*args, **kwargs):
        created.append(kwargs.get("suffix"))
        return named(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", recording)
    files = [("images", (f"{c}.png", png(c), "image/png")) for c in ("red", "blue")]
    r = client.post("/classify", files=files)
    assert r.status_code == 200, r.text
    assert [a["predictions"][0]["label"] for a in r.json()] == ["red", "blue"]
    assert created == []


def test_a_bad_image_names_itself_as_data_and_the_next_request_is_answered(app):
    client, _ = app
    files = [("images", ("ok.png", png("red"), "image/png")), ("images", ("bad.png", b"not an image", "image/png"))]
    r = client.post("/classify", files=files)
    formats = ", ".join(config.ACCEPTED_FORMATS)
    assert r.status_code == 400
    assert r.json() == {"error": f"image 2: not a supported image: accepted formats are {formats}", "image": 2}
    again = client.post("/classify", files=[("images", ("ok.png", png("red"), "image/png"))])
    assert again.status_code == 200 and again.json()[0]["predictions"][0]["label"] == "red"


def test_a_raw_image_body_is_classified(app):
    client, _ = app
    r = client.post("/classify?top_k=1", content=png("blue"), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and [p["label"] for p in r.json()[0]["predictions"]] == ["blue"]


def test_form_mistakes_are_400s_in_the_one_shape(app):
    client, _ = app
    cases = {
        "misspelled": ({"files": [("image", ("r.png", png("red"), "image/png"))]}, "unknown field 'image'"),
        "top_k 0": (
            {"files": [("images", ("r.png", png("red"), "image/png"))], "data": {"top_k": "0"}},
            "top_k must be a whole number from 1 to 3, got 0",
        ),
        "unknown model": (
            {"files": [("images", ("r.png", png("red"), "image/png"))], "data": {"model": "nosuch"}},
            "nosuch",
        ),
        "no images": ({"data": {"top_k": "1"}, "files": {}}, NO_IMAGES),
    }
    for name, (kwargs, words) in cases.items():
        if name == "no images":  # a form with one text field and no file part
            body = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--b--\r\n'
            r = client.post("/classify", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        else:
            r = client.post("/classify", **kwargs)
        assert r.status_code == 400, (name, r.text)
        assert set(r.json()) == {"error"} and words in r.json()["error"], (name, r.text)


def test_models_lists_the_served_model_with_its_preprocessing(app):
    client, tag = app
    [model] = client.get(config.MODELS_PATH).json()
    assert (model["tag"], model["classes"], model["title"]) == (tag, 3, "Colours")
    assert model["preprocessing"]["crop"] == 32


def test_the_openapi_document_lists_the_error_answers(app):
    client, _ = app
    responses = client.get("/docs.json").json()["paths"][config.CLASSIFY_PATH]["post"]["responses"]
    assert {"400", "413", "415", "503", "504"} <= set(responses)
    assert json.loads(json.dumps(responses["400"]))["content"]["application/json"]["schema"]["$ref"].endswith("Error")


def test_an_endpoints_path_with_a_trailing_slash_is_the_endpoint(app):
    """Starlette answered `/classify/` with an empty 307 to a URL built from the Host header: curl's
    POST printed nothing, and behind a proxy the redirect could lead to the pod's own address."""
    client, tag = app
    files = [("images", ("b.png", png("blue"), "image/png"))]
    for path in (f"{config.CLASSIFY_PATH}/", f"{config.CLASSIFY_PATH}//"):
        r = client.post(path, files=files, data={"top_k": "1"}, follow_redirects=False)
        assert r.status_code == 200, (path, r.status_code, r.headers)
        assert [p["label"] for p in r.json()[0]["predictions"]] == ["blue"]
    r = client.get(f"{config.MODELS_PATH}/", follow_redirects=False)
    assert r.status_code == 200 and [m["tag"] for m in r.json()] == [tag]
    assert client.get("/readyz/", follow_redirects=False).status_code == 200
    r = client.get(f"{config.CLASSIFY_PATH}/", follow_redirects=False)
    assert (r.status_code, r.json()) == (405, {"error": "method not allowed: GET /classify"})


def test_a_wrong_method_is_a_405_that_names_the_allowed_ones(app):
    """RFC 9110: a 405 carries Allow; the guard's rewording into the one shape dropped it. It lists HEAD
    wherever GET is, as every other endpoint's does (/models said GET alone, though it answers HEAD)."""
    client, _ = app
    for method, path, allowed in [
        ("GET", config.CLASSIFY_PATH, "POST"),
        ("DELETE", config.MODELS_PATH, "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
    ]:
        r = client.request(method, path)
        assert (r.status_code, r.json()) == (405, {"error": f"method not allowed: {method} {path}"})
        assert set(r.headers["allow"].split(", ")) == set(allowed.split(", "))  # BentoML's order is a set's


def test_head_is_answered_wherever_get_is(app):
    """A monitor's HEAD /models was a 405 (FastAPI's GET routes take no HEAD); it is not in the API docs."""
    client, _ = app
    for path in (config.MODELS_PATH, "/readyz", "/livez", "/docs.json"):  # /metrics needs a real server
        r = client.head(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
    assert set(client.get("/docs.json").json()["paths"][config.MODELS_PATH]) == {"get"}


def test_a_request_whose_client_left_mid_upload_ends_at_once(app):
    """BentoML's request timeout waited for an answer that never comes: such a request was held, and
    counted in progress in /metrics, for the whole timeout (60 s), each one's memory kept meanwhile."""
    client, _ = app
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="r.png"\r\n\r\n' + png("red", 400)
    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"%d" % (len(body) * 2))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": config.CLASSIFY_PATH, "raw_path": config.CLASSIFY_PATH.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict) -> None:
        sent.append(message)

    async def request() -> float:
        started = time.monotonic()
        with anyio.fail_after(10):  # the service's request timeout is 60 s
            await client.app(scope, receive, send)
        return time.monotonic() - started

    assert client.portal.call(request) < 2
    assert sent == []  # nobody to answer
