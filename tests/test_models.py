"""Several models in one server: chosen per request, listed at GET /models, batched each on its own.

A real `bentoml serve` of EfficientNet-Lite0 (the default) and the tiny colour model; the
in-process tests drive the registry's own batchers with a gate, to hold one model's queue full.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import threading
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest

from imgserve import config
from imgserve.serving import registry, store
from imgserve.serving.batcher import Overloaded
from imgserve.serving.preprocess import Preprocessing
from imgserve.testing import BENTOML, free_port, serve_env
from tests.helpers import CAT_CLASSES, COLOURS, DATA, ROOT, image_bytes

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
PHOTOS = ["cat.jpg", "coffee.jpg", "rocket.jpg"]


def photo(name: str) -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (name, (DATA / name).read_bytes(), "image/jpeg"))


def colour(name: str) -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (f"{name}.png", image_bytes(RGB[name]), "image/png"))


def name_of(tag: str) -> str:
    return tag.split(":")[0]


def top1(answer: dict) -> str:
    return answer["predictions"][0]["label"]


# --- The list, checked at start


@pytest.mark.parametrize(
    ("models", "model", "message"),
    [
        ("a:1,,b:2", "", "CLASSIFIER_MODELS='a:1,,b:2' has an empty entry: write store tags separated by commas"),
        ("a:1,", "", "CLASSIFIER_MODELS='a:1,' has an empty entry"),
    ],
)
def test_a_malformed_model_list_is_refused_with_how_to_write_it(monkeypatch, models, model, message):
    monkeypatch.setenv(config.ENV_MODELS, models)
    monkeypatch.setenv(config.ENV_MODEL, model)
    with pytest.raises(config.ModelListError) as refused:
        config.model_tags()
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    ("models", "model", "tags"),
    [
        ("", "", [config.DEFAULT_MODEL_TAG]),
        ("", "flowers:latest", ["flowers:latest"]),  # CLASSIFIER_MODEL keeps working
        (" flowers:latest , cells:v2 ", "", ["flowers:latest", "cells:v2"]),
        ("flowers:latest,cells:v2", "flowers:latest", ["flowers:latest", "cells:v2"]),  # both, agreeing
    ],
)
def test_the_model_list_default_first(monkeypatch, models, model, tags):
    monkeypatch.setenv(config.ENV_MODELS, models)
    monkeypatch.setenv(config.ENV_MODEL, model)
    assert config.model_tags() == tags


def test_models_not_in_the_store_or_listed_twice_are_all_named(monkeypatch, default_model):
    monkeypatch.setenv(config.ENV_MODEL, "")
    monkeypatch.setenv(config.ENV_MODELS, f"{default_model},nosuch:latest,Not A Tag,{name_of(default_model)}:latest")
    with pytest.raises(config.ModelListError) as refused:
        registry.Registry.from_config()
    assert str(refused.value) == (
        f"cannot serve {default_model}, nosuch:latest, Not A Tag, {name_of(default_model)}:latest: "
        "model nosuch:latest is not in the model store; import it first: python import_model.py; "
        "'Not A Tag' is not a model-store tag (name or name:version); "
        f"{default_model} is listed twice"
    )


def test_classifier_model_beside_the_list_must_name_its_first_model_in_any_spelling(
    monkeypatch, default_model, colour_model
):
    """The image sets CLASSIFIER_MODELS to its models' exact tags: `docker run -e CLASSIFIER_MODEL=<name>:latest`
    of the same model was refused as disagreeing, and the container did not start."""
    monkeypatch.setenv(config.ENV_MODELS, f"{default_model},{colour_model}")
    for same in (f"{name_of(default_model)}:latest", name_of(default_model).upper(), default_model):
        monkeypatch.setenv(config.ENV_MODEL, same)
        assert [m.card.tag for m in registry.Registry.from_config()] == [default_model, colour_model]
    for other in (name_of(colour_model), "nosuch:latest"):
        monkeypatch.setenv(config.ENV_MODEL, other)
        with pytest.raises(config.ModelListError) as refused:
            registry.Registry.from_config()
        assert str(refused.value) == (
            f"cannot serve {default_model}, {colour_model}: CLASSIFIER_MODEL={other!r} and "
            f"CLASSIFIER_MODELS='{default_model},{colour_model}' disagree: set only CLASSIFIER_MODELS (its first is "
            "the default)"
        )


def test_name_latest_asks_for_the_newest_served_version_and_a_bare_name_for_the_first_listed(tmp_path):
    """With "cells:<old>,cells:latest" served, model=cells:latest was answered by the old version."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"never opened: the registry reads cards")
    meta = {"labels": COLOURS, "preprocessing": Preprocessing().to_dict(), "arch": "test"}
    old, new = (store.load_card(store.save("cells", onnx, meta)) for _ in range(2))
    for listed in ([old, new], [new, old]):
        models = registry.Registry(listed)
        assert models.get("cells:latest").card is new and models.get("Cells:LATEST").card is new
        assert models.get("cells").card is listed[0]
        assert models.get(old.tag).card is old and models.get(new.tag).card is new


def test_a_stored_model_that_import_did_not_write_is_refused_by_name(monkeypatch):
    """A BentoML tutorial's model in the same store (no labels, no preprocessing) was a KeyError: 'labels'."""
    with bentoml.models.create("iris-clf", metadata={"framework": "sklearn"}) as entry:
        Path(entry.path_of("saved_model.pkl")).write_bytes(b"not ours")
    monkeypatch.setenv(config.ENV_MODEL, "")
    monkeypatch.setenv(config.ENV_MODELS, "iris-clf:latest")
    with pytest.raises(config.ModelListError) as refused:
        registry.Registry.from_config()
    assert str(refused.value) == (
        f"cannot serve iris-clf:latest: model {entry.tag} was not stored by import_model.py (its metadata has "
        "no 'labels'): serve a model imported with python import_model.py"
    )


@pytest.mark.serve
def test_bentoml_serve_refuses_to_start_with_a_model_not_in_the_store(default_model, tmp_path):
    env = {**os.environ, **serve_env([default_model, "never-imported:latest"])}
    result = subprocess.run(
        [BENTOML, "serve", "service:ImageClassifier", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert (
        f"ModelListError: cannot serve {default_model}, never-imported:latest: model never-imported:latest is not "
        "in the model store; import it first: python import_model.py"
    ) in result.stderr


# --- In process: each model its own batcher and queue bound


@pytest.fixture
def opened(default_model, colour_model, monkeypatch) -> registry.Registry:
    """The registry of both models, loaded; a latency bound of 0: anything queued behind waiting work is shed."""
    monkeypatch.setattr(config, "MAX_LATENCY_MS", 0)
    models = registry.Registry([store.load_card(default_model), store.load_card(colour_model)])
    models.open(on_batch=lambda tag, images, seconds: None)
    return models


def test_a_full_queue_sheds_only_its_own_model_and_the_other_answers_meanwhile(opened, default_model, colour_model):
    slow, fast = opened.get(name_of(default_model)), opened.get(name_of(colour_model))
    assert slow.batcher is not fast.batcher
    run = slow.batcher.run
    entered, gate = threading.Event(), threading.Event()

    def gated(pixels: np.ndarray) -> np.ndarray:
        entered.set()
        assert gate.wait(60), "the test never opened the gate"
        return run(pixels)

    def pixels(m: registry.Served, n: int) -> np.ndarray:
        prep = m.card.preprocessing
        return np.zeros((n, prep.channels, *prep.input_size), np.uint8)

    async def scenario() -> None:
        await slow.batcher(pixels(slow, 1))  # measured: the slow model's seconds per image is known
        await fast.batcher(pixels(fast, 1))
        slow.batcher.run = gated
        running = asyncio.create_task(slow.batcher(pixels(slow, 2)))
        assert await asyncio.to_thread(entered.wait, 60)  # the slow model is busy with it
        queued = asyncio.create_task(slow.batcher(pixels(slow, 2)))
        await asyncio.sleep(0)  # one turn of this event loop: the task joins the queue (no waiting on time)
        assert slow.batcher.queued_images == 2
        with pytest.raises(Overloaded):
            await slow.batcher(pixels(slow, 1))  # behind waiting work, past the bound: shed
        assert not running.done()
        [probabilities] = await fast.batcher(pixels(fast, 1))  # the other model answers while the slow one is held
        assert probabilities.shape == (len(COLOURS),)
        gate.set()
        assert (await running).shape == (await queued).shape == (2, len(slow.card.labels))

    asyncio.run(scenario())


def test_a_request_names_a_model_by_name_or_exact_tag(opened, default_model, colour_model):
    assert opened.get("") is opened.get(None) is opened.default
    assert opened.get(name_of(colour_model)).card.tag == colour_model
    assert opened.get(colour_model).card.tag == colour_model
    assert opened.get(f"{name_of(colour_model)}:latest").card.tag == colour_model
    with pytest.raises(registry.UnknownModel) as unknown:
        opened.get(f"{name_of(colour_model)}:v0")
    assert str(unknown.value) == (
        f"unknown model '{name_of(colour_model)}:v0': this server serves {default_model} (default), {colour_model}"
    )


# --- Over HTTP: one server, two models


@pytest.mark.serve
def test_each_model_answers_when_asked_and_the_default_without_asking(two_model_server, default_model, colour_model):
    with two_model_server.client() as c:
        default = c.post("/classify", files=[photo("cat.jpg")])
        by_name = c.post("/classify", files=[colour("blue")], data={"model": name_of(colour_model), "top_k": "3"})
        by_tag = c.post("/classify", files=[colour("green")], data={"model": colour_model, "top_k": "1"})
        effnet = c.post("/classify", files=[photo("coffee.jpg")], data={"model": default_model, "top_k": "1"})
    assert [r.status_code for r in (default, by_name, by_tag, effnet)] == [200] * 4
    [cat] = default.json()
    assert cat["model"] == default_model and top1(cat) in CAT_CLASSES and len(cat["predictions"]) == 5
    [blue] = by_name.json()
    assert blue["model"] == colour_model
    assert [p["label"] for p in blue["predictions"]] == ["blue", "red", "green"]
    assert blue["predictions"][0]["score"] == pytest.approx(math.exp(10) / (math.exp(10) + 2), abs=1e-6)
    assert by_tag.json()[0]["model"] == colour_model and top1(by_tag.json()[0]) == "green"
    assert effnet.json()[0]["model"] == default_model and top1(effnet.json()[0]) == "espresso"


@pytest.mark.serve
def test_a_model_with_fewer_classes_answers_all_of_them_for_a_larger_top_k(two_model_server, colour_model):
    with two_model_server.client() as c:
        r = c.post("/classify", files=[colour("red")], data={"model": name_of(colour_model), "top_k": "10"})
        too_many = c.post("/classify", files=[colour("red")], data={"top_k": "1001"})
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()[0]["predictions"]] == ["red", "green", "blue"]
    assert too_many.status_code == 400 and "top_k must be a whole number from 1 to 1000, got 1001" in too_many.text


@pytest.mark.serve
@pytest.mark.parametrize("asked", ["flowers", "colours:v0", "efficientnet-lite0:0"])
def test_an_unknown_model_is_a_400_that_names_the_served_models(two_model_server, default_model, colour_model, asked):
    with two_model_server.client() as c:
        r = c.post("/classify", files=[photo("cat.jpg")], data={"model": asked})
        assert c.post("/classify", files=[photo("cat.jpg")]).status_code == 200  # and the next is served
    assert r.status_code == 400, r.text
    body = r.json()
    error = (body[0] if isinstance(body, list) else body)["error"]
    assert error == f"unknown model '{asked}': this server serves {default_model} (default), {colour_model}"


@pytest.mark.serve
def test_get_models_lists_the_served_models_default_first_and_the_docs_list_it(
    two_model_server, default_model, colour_model
):
    with two_model_server.client() as c:
        r = c.get(config.MODELS_PATH)
        docs = c.get("/docs.json").json()
    assert r.status_code == 200, r.text
    listed = r.json()
    expected = []
    for tag, default in ((default_model, True), (colour_model, False)):
        card = store.load_card(tag)
        expected.append(
            {
                "name": name_of(tag),
                "tag": tag,
                "classes": len(card.labels),
                "title": card.title,
                "description": card.description,
                "preprocessing": {"transforms": card.preprocessing.transforms(), **card.preprocessing.to_dict()},
                "default": default,
            }
        )
    assert listed == expected
    assert listed[1]["classes"] == 3 and listed[1]["title"] == "Colours" and listed[0]["classes"] == 1000
    assert "get" in docs["paths"][config.MODELS_PATH]
    form = docs["paths"][config.CLASSIFY_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["model"]["type"] == "string" and "model" not in form["required"]


@pytest.mark.serve
def test_the_bentoml_python_client_chooses_the_model(two_model_server, colour_model):
    with bentoml.SyncHTTPClient(two_model_server.url) as client:
        [red] = client.classify(images=[DATA / "cat.jpg"], top_k=1, model=name_of(colour_model))
        [cat] = client.classify(images=[DATA / "cat.jpg"], top_k=1)
    assert red["model"] == colour_model and top1(red) in COLOURS
    assert top1(cat) in CAT_CLASSES


@pytest.mark.serve
def test_mixed_concurrent_traffic_is_batched_per_model_each_answer_from_the_model_asked(
    two_model_server, default_model, colour_model
):
    """24 requests at once, the two models interleaved: each model's images in its own batches."""
    with two_model_server.client() as c:
        expected = {p: top1(c.post("/classify", files=[photo(p)], data={"top_k": "1"}).json()[0]) for p in PHOTOS}
    jobs = [(default_model, p, expected[p]) for p in PHOTOS * 4]
    jobs = [job for pair in zip(jobs, [(colour_model, c, c) for c in COLOURS * 4], strict=True) for job in pair]
    before = {
        tag: (
            two_model_server.metric(f"{config.METRIC_BATCH_SIZE}_count", tag),
            two_model_server.metric(f"{config.METRIC_BATCH_SIZE}_sum", tag),
        )
        for tag in (default_model, colour_model)
    }

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=two_model_server.url, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/classify",
                        files=[photo(what) if tag == default_model else colour(what)],
                        data={"top_k": "1", "model": name_of(tag)},
                    )
                    for tag, what, _ in jobs
                )
            )

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]
    answers = [r.json()[0] for r in responses]
    assert [(a["model"], top1(a)) for a in answers] == [(tag, label) for tag, _, label in jobs]
    for tag in (default_model, colour_model):
        batches = two_model_server.metric(f"{config.METRIC_BATCH_SIZE}_count", tag) - before[tag][0]
        images = two_model_server.metric(f"{config.METRIC_BATCH_SIZE}_sum", tag) - before[tag][1]
        assert images == len(jobs) / 2, f"{tag}: {images} images in its batches, {len(jobs) / 2} sent to it"
        assert batches < len(jobs) / 2, f"{tag}: {len(jobs) / 2} concurrent requests ran as {batches} model calls"


@pytest.mark.serve
def test_a_busy_slow_model_does_not_hold_up_a_fast_ones_answers(two_model_server, default_model, colour_model):
    """EfficientNet-Lite0 is given 256 images (~2 s of model time here); once its first batch of them is
    done, the colour model is asked six times in a row: every answer comes while the slow work is still
    running. Behind one shared queue they would all wait for the 256 images."""
    count = f"{config.METRIC_BATCH_SIZE}_count"
    slow_image = ("images", ("slow.png", image_bytes((200, 120, 40)), "image/png"))
    slow_before = two_model_server.metric(count, default_model)
    fast_before = two_model_server.metric(count, colour_model)

    async def scenario() -> tuple[list[httpx.Response], int, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=two_model_server.url, timeout=120) as c:
            slow = [
                asyncio.create_task(c.post("/classify", files=[slow_image] * 32, data={"top_k": "1"})) for _ in range(8)
            ]
            # The event: a model call of this work has finished, so the rest of it is queued or running.
            while await asyncio.to_thread(two_model_server.metric, count, default_model) == slow_before:
                assert not any(t.done() for t in slow), [t.result().text for t in slow if t.done()]
            fast = []
            for name in COLOURS * 2:
                fast.append(await c.post("/classify", files=[colour(name)], data={"model": name_of(colour_model)}))
            still_running = sum(not t.done() for t in slow)
            return fast, still_running, await asyncio.gather(*slow)

    fast, still_running, slow = asyncio.run(scenario())
    assert [r.status_code for r in slow] == [200] * 8, [r.text for r in slow if r.status_code != 200]
    assert {a["model"] for r in slow for a in r.json()} == {default_model}
    assert [(r.status_code, r.json()[0]["model"], top1(r.json()[0])) for r in fast] == [
        (200, colour_model, name) for name in COLOURS * 2
    ]
    assert still_running > 0, "the fast model's answers waited until the slow model had finished"
    # Each fast request was its own model call of the colour model: none joined a slow batch.
    assert two_model_server.metric(count, colour_model) - fast_before == len(fast)
