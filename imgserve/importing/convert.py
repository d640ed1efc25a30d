"""The torch side of import, second step: export a loaded model to ONNX with its preprocessing
inside, and prove the export answers like the original.

Only `import_model.py`, the benchmark and the tests import this file; the server never needs torch.
"""

from __future__ import annotations

import hashlib
import io
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode  # public API, documented under 'Extending PyTorch'

from imgserve import config
from imgserve.importing.messages import ImportRefused, error_line, quiet_torch
from imgserve.importing.probing import is_scripted
from imgserve.serving.predict import INPUT_NAME, OUTPUT_NAME, open_session, run
from imgserve.serving.preprocess import Preprocessing


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Outputs(StrEnum):
    """What a model's outputs are, read at import; each says what the stored graph adds to make them
    the probabilities the server answers with (stored in the model's metadata as `outputs`)."""

    LOGITS = "logits"  # softmax added (to log-probabilities too: it gives back the probabilities)
    PROBABILITIES = "probabilities"  # the model ends in softmax: nothing added
    SIGMOIDS = "sigmoid probabilities"  # ends in sigmoid, several classes (multi-label): each class's own
    MULTI_LOGITS = "multi-label logits"  # several classes, each its own logit (--multi-label): sigmoid added to each
    ONE_LOGIT = "one logit"  # a binary classifier's one score: sigmoid added, [1 - p, p]
    ONE_PROBABILITY = "one probability"  # the same ending in sigmoid: [1 - p, p]

    @property
    def said(self) -> str:
        """In the import's summary."""
        return {
            Outputs.LOGITS: "logits or log-probabilities: softmax added (a multi-label model: --multi-label)",
            Outputs.PROBABILITIES: "probabilities (the model ends in softmax)",
            Outputs.SIGMOIDS: "one probability per class (the model ends in sigmoid; multi-label): served as they are",
            Outputs.MULTI_LOGITS: "one logit per class (--multi-label): sigmoid added to each, not a softmax across",
            Outputs.ONE_LOGIT: "one logit (a binary classifier): sigmoid added; it is the second label's probability",
            Outputs.ONE_PROBABILITY: "one probability (a binary classifier ending in sigmoid): the second label's",
        }[self]

    @property
    def one_output(self) -> bool:
        return self in (Outputs.ONE_LOGIT, Outputs.ONE_PROBABILITY)

    @property
    def sigmoid_added(self) -> bool:
        return self in (Outputs.ONE_LOGIT, Outputs.MULTI_LOGITS)


def to_probabilities(out: torch.Tensor, outputs: Outputs) -> torch.Tensor:
    """The model's outputs as the probabilities served: (batch, classes), two classes for one output."""
    return _probabilities(out, outputs is Outputs.LOGITS, outputs.sigmoid_added, outputs.one_output)


def _probabilities(out: torch.Tensor, softmax: bool, sigmoid: bool, two_from_one: bool) -> torch.Tensor:
    """to_probabilities with plain flags, which TorchScript can compile (a scripted model's wrapper is)."""
    if sigmoid:
        out = torch.sigmoid(out)
    if two_from_one:
        out = torch.cat([1 - out, out], dim=1)
    if softmax:
        out = torch.softmax(out, dim=1)
    return out


class _Sigmoids(TorchDispatchMode):
    """Records what every sigmoid computes during one forward pass, whatever called it: an nn.Sigmoid,
    torch.sigmoid in the model's forward, TorchScript or a torch.export graph."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # torch's signature
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.sigmoid, torch.ops.aten.sigmoid_):
            self.results.append(out.detach().clone())
        return out


def read_outputs(model: nn.Module, samples: torch.Tensor, multi_label: bool = False) -> Outputs:
    """What the model's outputs are, from running it on real inputs (normalized, one at a time).

    Ends in softmax: every row is non-negative and sums to 1. Ends in sigmoid: its outputs are what
    a sigmoid computed last, seen by recording the sigmoids as the model runs (a value in [0, 1] is
    no proof: a logit can be one). Several bare logits are a softmax's unless the user says they are
    each a class's own (`multi_label`, trained with BCEWithLogitsLoss): nothing in a file tells them apart.
    """
    rows, ends_in_sigmoid = [], True
    for sample in samples:
        sigmoids = _Sigmoids()
        with torch.inference_mode(), sigmoids:
            out = model(sample[None])
        rows.append(out)
        ends_in_sigmoid &= any(
            s.numel() == out.numel() and torch.equal(s.reshape(out.shape), out) for s in sigmoids.results
        )
    out = torch.cat(rows)
    if bool((out == 1).all()) and not ends_in_sigmoid:  # one image a call: a softmax over the batch is 1 everywhere
        raise ImportRefused(
            "the model answers 1 for every output of every image: a softmax over the wrong dimension, the batch "
            "(nn.Softmax(dim=0), F.softmax(x, dim=0): 1 for one image), or over a single output. Its answers say "
            "nothing of the image: softmax over the classes, dim=1 (for one output, a sigmoid, or nothing with "
            "BCEWithLogitsLoss), and import again (a TorchScript or .pt2 file saved again after that change)"
        )
    if out.shape[1] == 1:
        return Outputs.ONE_PROBABILITY if ends_in_sigmoid else Outputs.ONE_LOGIT
    if ends_in_sigmoid:
        return Outputs.SIGMOIDS
    if bool((out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3)):
        if multi_label:
            raise ImportRefused(
                "--multi-label, but the model's outputs are probabilities that sum to 1 (it ends in softmax): "
                "one class per image, not several; leave out --multi-label"
            )
        return Outputs.PROBABILITIES
    return Outputs.MULTI_LOGITS if multi_label else Outputs.LOGITS


class Packaged(nn.Module):
    """uint8 pixels in, probabilities out: the stored model carries its own preprocessing."""

    def __init__(self, model: nn.Module, prep: Preprocessing, outputs: Outputs) -> None:
        super().__init__()
        self.model = model
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.outputs = outputs
        self.softmax = outputs is Outputs.LOGITS
        self.sigmoid = outputs.sigmoid_added
        self.two_from_one = outputs.one_output
        self.training = False  # the wrapper only; `model` keeps its own mode (a torch.export module has none)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() * self.scale + self.shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _probabilities(self.model(self.normalize(pixels)), self.softmax, self.sigmoid, self.two_from_one)


def export_onnx(packaged: Packaged, prep: Preprocessing, destination: Path, one_image_per_call: bool = False) -> None:
    """uint8 (batch, channels, height, width) in; a batch of any size unless the model takes one image a call.

    The TorchScript-based exporter first: fast, and it takes TorchScript models. What it cannot convert
    (adaptive pooling to a size that does not divide the input, newer ops) goes to torch.export's exporter.
    """
    example = torch.zeros(1, prep.channels, *prep.input_size, dtype=torch.uint8)
    try:
        _export_torchscript_based(packaged, example, destination, one_image_per_call)
    except Exception as first:  # the exporter's own errors have no common base class
        if is_scripted(packaged.model):
            if not one_image_per_call and _exports_one_image(packaged, example, destination):
                raise NoBatches from None
            raise ImportRefused(
                f"the ONNX exporter cannot convert this TorchScript model: {error_line(first)}"
            ) from None
        try:
            _export_dynamo(packaged, example, destination, one_image_per_call)
        except Exception as second:
            raise ImportRefused(
                f"neither ONNX exporter can convert this model: {error_line(first)}; {error_line(second)}"
            ) from None


def _exports_one_image(packaged: Packaged, example: torch.Tensor, destination: Path) -> bool:
    """Whether a TorchScript model the exporter cannot convert for a batch of any size converts for one
    image: a graph whose shapes the exporter needs fixed (batch norm without running statistics)."""
    try:
        _export_torchscript_based(packaged, example, destination, one=True)
    except Exception:
        return False
    return True


def _export_torchscript_based(packaged: Packaged, example: torch.Tensor, destination: Path, one: bool) -> None:
    buffer = io.BytesIO()
    # A loaded TorchScript model cannot be traced from a Python wrapper; script the wrapper.
    scripted = is_scripted(packaged.model)
    with quiet_torch():
        torch.onnx.export(
            torch.jit.script(packaged) if scripted else packaged,
            (example,),
            buffer,
            dynamo=False,
            # The models are in eval mode already; PRESERVE does not call .train(), which a torch.export
            # module refuses.
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={} if one else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=config.ONNX_OPSET,
        )
    destination.write_bytes(buffer.getvalue())


def _export_dynamo(packaged: Packaged, example: torch.Tensor, destination: Path, one: bool) -> None:
    with quiet_torch():
        program = torch.onnx.export(
            packaged,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=None if one else ({0: torch.export.Dim("batch")},),
            opset_version=config.ONNX_OPSET_DYNAMO,
            verbose=False,
        )
    program.save(str(destination))


class NoBatches(Exception):
    """The model exports or answers for one image at a time but not a batch: export it for one image a call."""


def check_parity(packaged: Packaged, onnx_path: Path, inputs: np.ndarray) -> dict:
    """Run torch and ONNX Runtime on the same uint8 inputs, one at a time and batched; refuse unless
    they agree. NoBatches when only the batch fails (a forward written for one image: `x.view(1, -1)`,
    a loop over `range(x.shape[0])` that the exporter unrolled)."""
    with torch.inference_mode(), quiet_torch():
        expected = np.concatenate([packaged(torch.from_numpy(x[None])).numpy() for x in inputs])
    session = open_session(str(onnx_path))
    try:
        single = np.concatenate([run(session, x[None]) for x in inputs])
    except Exception as e:  # ONNX Runtime's errors have no common base class
        raise ImportRefused(f"the exported ONNX model cannot run: {error_line(e)}") from None
    got = single
    if not isinstance(session.get_inputs()[0].shape[0], int):
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a batch that fails is expected here, not an error to print
        try:
            [got] = session.run([OUTPUT_NAME], {INPUT_NAME: inputs}, quiet)
        except Exception:
            raise NoBatches from None
        if got.shape != single.shape or not np.allclose(got, single, atol=config.PARITY_MAX_PROB_DIFF):
            raise NoBatches
    max_diff = float(max(np.abs(got - expected).max(), np.abs(single - expected).max()))
    top1_agree = bool((got.argmax(1) == expected.argmax(1)).all() and (single.argmax(1) == expected.argmax(1)).all())
    result = {"inputs": len(inputs), "max_prob_diff": max_diff, "top1_agree": top1_agree}
    if not top1_agree or max_diff > config.PARITY_MAX_PROB_DIFF:
        raise ImportRefused(
            f"the exported ONNX model does not answer like the torch model (top-1 agrees: {top1_agree}, "
            f"largest probability difference {max_diff:.2e}, allowed {config.PARITY_MAX_PROB_DIFF:.0e}); "
            "nothing was stored"
        )
    return result
