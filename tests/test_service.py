"""The service as users reach it: a real `bentoml serve`, over HTTP and through the BentoML client."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import bentoml
import httpx
import pytest

from imgserve import config
from tests.helpers import CAT_CLASSES, DATA, image_bytes

pytestmark = pytest.mark.serve


def jpeg(name: str) -> tuple[str, bytes, str]:
    return (name, (DATA / name).read_bytes(), "image/jpeg")


def classify(client, *files, **data):
    return client.post("/classify", files=[("images", f) for f in files], data=data)


def test_a_cat_photo_gets_a_cat_class(server, default_model):
    with server.client() as c:
        r = classify(c, jpeg("cat.jpg"))
    assert r.status_code == 200, r.text
    [answer] = r.json()
    assert answer["model"] == default_model
    assert answer["predictions"][0]["label"] in CAT_CLASSES
    scores = [p["score"] for p in answer["predictions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_several_images_answer_in_upload_order_with_top_k(server):
    with server.client() as c:
        r = classify(c, jpeg("coffee.jpg"), jpeg("cat.jpg"), jpeg("rocket.jpg"), top_k="2")
    assert r.status_code == 200, r.text
    answers = r.json()
    assert [len(a["predictions"]) for a in answers] == [2, 2, 2]
    assert answers[0]["predictions"][0]["label"] == "espresso"
    assert answers[1]["predictions"][0]["label"] in CAT_CLASSES
    assert answers[2]["predictions"][0]["label"] in {"missile", "projectile", "space shuttle"}


def test_a_bad_image_gets_a_400_that_says_so_and_the_next_request_still_works(server):
    truncated = (DATA / "cat.jpg").read_bytes()[:3000]
    with server.client() as c:
        r = classify(c, jpeg("coffee.jpg"), ("broken.jpg", truncated, "image/jpeg"))
        assert r.status_code == 400
        assert "image 2: image data is truncated or corrupt" in r.text
        assert "Traceback" not in r.text
        assert classify(c, jpeg("cat.jpg")).json()[0]["predictions"][0]["label"] in CAT_CLASSES


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    """24 requests at once, three different photos: fewer model calls than requests, no answer swapped."""
    photos = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    with server.client() as c:
        expected = {p: classify(c, jpeg(p), top_k="1").json()[0]["predictions"][0]["label"] for p in photos}
    jobs = photos * 8
    batches_before = server.metric(f"{config.METRIC_BATCH_SIZE}_count")
    images_before = server.metric(f"{config.METRIC_BATCH_SIZE}_sum")

    async def all_at_once() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            responses = await asyncio.gather(
                *(c.post("/classify", files=[("images", jpeg(p))], data={"top_k": "1"}) for p in jobs)
            )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json()[0]["predictions"][0]["label"] for r in responses]

    assert asyncio.run(all_at_once()) == [expected[p] for p in jobs]
    batches = server.metric(f"{config.METRIC_BATCH_SIZE}_count") - batches_before
    images = server.metric(f"{config.METRIC_BATCH_SIZE}_sum") - images_before
    assert images == len(jobs)
    assert batches < len(jobs), f"{len(jobs)} concurrent requests ran as {batches} model calls: not batched"


def test_model_comes_from_configuration_and_scores_are_exact(colour_server, colour_model):
    with colour_server.client() as c:
        r = classify(c, ("b.png", image_bytes((0, 0, 255)), "image/png"), top_k="3")
    [answer] = r.json()
    assert answer["model"] == colour_model
    assert [p["label"] for p in answer["predictions"]] == ["blue", "red", "green"]
    assert answer["predictions"][0]["score"] == pytest.approx(math.exp(10) / (math.exp(10) + 2), abs=1e-6)


def test_the_bentoml_python_client(server):
    with bentoml.SyncHTTPClient(server.url) as client:
        answers = client.classify(images=[DATA / "coffee.jpg", DATA / "cat.jpg"], top_k=1)
    assert answers[0]["predictions"][0]["label"] == "espresso"
    assert answers[1]["predictions"][0]["label"] in CAT_CLASSES


def test_the_bentoml_python_client_with_no_model_or_no_images(server):
    """It sends model=None as 'null' (was: unknown model 'null'), images=[] as a url-encoded form
    (was: a 415 about the Content-Type), and images=[] alone as no body."""
    with bentoml.SyncHTTPClient(server.url) as client:
        [cat] = client.classify(images=[DATA / "cat.jpg"], top_k=1, model=None)
        assert cat["predictions"][0]["label"] in CAT_CLASSES
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.classify(images=[], top_k=1)
        assert refused.value.error_code == 400
        assert json.loads(refused.value.message)["error"].startswith("no images: a url-encoded form")
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.classify(images=[])  # no other field: no body at all (was: a 415 about the Content-Type)
        assert refused.value.error_code == 400
        assert json.loads(refused.value.message)["error"].startswith("no images: the request has no body")
        [again] = client.classify(images=[DATA / "cat.jpg"], top_k=1)
    assert again == cat


def test_bentoml_endpoints_stay_working(server):
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/livez").status_code == 200
        assert "bentoml_service_request_total" in c.get("/metrics").text
        assert "swagger-ui" in c.get(f"{config.DOCS_PATH}/").text  # moved from / (which opens the web page)
        schema = c.get("/docs.json").json()
        assert "/classify" in schema["paths"]


def test_a_png_sent_as_jpeg_is_read_by_its_bytes(server):
    png = image_bytes((250, 250, 250), size=(300, 300))
    with server.client() as c:
        r = classify(
            c, ("looks.jpg", png, "image/jpeg"), ("cat", (DATA / "cat.jpg").read_bytes(), "application/octet-stream")
        )
    assert r.status_code == 200, r.text
    assert r.json()[1]["predictions"][0]["label"] in CAT_CLASSES


def test_request_paths_never_name_files_on_disk(server):
    with server.client() as c:
        r = c.post("/classify", json={"images": [str(Path(__file__).resolve())]})
    # A string is never opened as a path: JSON bodies are refused before BentoML would read one.
    assert r.status_code == 415, r.text
    assert r.json()["error"].startswith("unsupported Content-Type 'application/json': send the images as multipart")
