"""What the import says when it cannot go on: a refusal (`ImportRefused`) whose message tells the
user what to do, an error of torch or of the user's code in one line, and torch's warnings kept out of
the output."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

SHOWN_KEYS = 4  # key names quoted in a mismatch message; the rest are counted
TORCHSCRIPT_ERROR = "The following operation failed in the TorchScript interpreter"  # its errors' first line


class ImportRefused(Exception):
    """The model cannot be imported as asked; the message tells the user what to do."""


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's deprecation chatter (TorchScript, the legacy ONNX exporter, the tracer) says nothing a user
    can act on. Only torch's own calls run inside: what they warn of is torch's, whatever module it names."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("ignore", message=".*constant folding.*", category=UserWarning)
        # torchvision's GoogLeNet and Inception, scripted, say so on every call; their logits are taken
        warnings.filterwarnings("ignore", message="Scripted .* always returns", category=UserWarning)
        yield


def error_line(e: Exception) -> str:
    """What an error says, in one line: its first, or for TorchScript the last (the error itself, after
    the stack of the code that was traced or scripted)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith(TORCHSCRIPT_ERROR):
        lines = lines[-1:]
    return (lines or [type(e).__name__])[0][:300]
