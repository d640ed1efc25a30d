"""What a model file is, from its bytes, before anything in it is unpickled or run.

torch writes several formats (a zip with a pickle, the legacy pickle, TorchScript and torch.export
archives); safetensors is another. Files that are none of them are named with the way to the model:
researchers hand over an archive, a compressed download, a Git LFS pointer, a saved web page, another
framework's model or the ONNX file instead of the torch model. loading.py reads what this module names.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from imgserve.importing.messages import SHOWN_KEYS, ImportRefused

# The pickle protocol 2 header of torch.save's legacy (pre-1.6, non-zip) format: its magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
SAFETENSORS_MAX_HEADER = 100_000_000  # the largest header the safetensors format allows, in bytes
# What a model file is mistaken for, by its first bytes, and how to get the model out of it.
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip -c"), b"BZh": ("bzip2", "bunzip2 -c"), b"\xfd7zXZ\x00": ("xz", "unxz -c"),
              b"\x28\xb5\x2f\xfd": ("zstd", "unzstd -c")}  # fmt: skip
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # Keras's .h5 models and weights
MODEL_SUFFIXES = (".pth", ".pt", ".pt2", ".safetensors", ".ckpt", ".bin", ".pkl", ".tar")  # as a folder holds them
NOT_PYTORCH = (
    "{path} is {what}, not a PyTorch model: the import takes a model saved with torch (a .pth state_dict with "
    "--arch, a whole model, TorchScript, a .pt2 or .safetensors) and makes the ONNX itself, checked against it"
)


def file_kind(path: Path) -> str:
    """'torch' (torch.save archive), 'torchscript', 'exported' (.pt2), 'legacy' or 'safetensors'; else ImportRefused."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if not head.startswith(b"PK"):  # a tar holding a torch file is found a zip by its end: told first
        refuse_other_formats(path, head)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ImportRefused(f"{path.name} is a damaged zip archive ({e}), not a model torch can read") from None
        if any("/code/__torch__" in n for n in names):
            return "torchscript"
        if any("/data/aotinductor/" in n for n in names):
            raise ImportRefused(
                f"{path.name} is an AOTInductor package (torch._inductor.aoti_compile_and_package): native code "
                "compiled for one machine, with no program in it to export to ONNX. Save the exported program "
                "itself, torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), and import that"
            )
        if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names):
            return "exported"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        inner = [n for n in names if n.lower().endswith(MODEL_SUFFIXES)]
        if inner:
            raise ImportRefused(
                f"{path.name} is a zip archive holding {', '.join(inner[:SHOWN_KEYS])}: unzip it (unzip "
                f"{path.name}) and import the model file"
            )
        if "model.weights.h5" in names:
            raise ImportRefused(NOT_PYTORCH.format(path=path.name, what="a Keras model (.keras)"))
        raise ImportRefused(
            f"{path.name} is a zip archive but not one that torch wrote (no data.pkl, TorchScript code "
            "or torch.export program in it)"
        )
    if head == LEGACY_TORCH_MAGIC:
        return "legacy"
    if head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"  # an 8-byte header length, then the header's JSON
    if head[:1] == b"\x80":
        raise ImportRefused(
            f"{path.name} is a plain Python pickle (pickle.dump), not a file saved with torch.save; "
            "save the model's weights with torch.save(model.state_dict(), path)"
        )
    raise ImportRefused(
        f"{path.name} is not a PyTorch model file: it is none of torch.save's formats, TorchScript, a "
        ".pt2 archive or safetensors (corrupt, truncated, or another kind of file)"
    )


def refuse_other_formats(path: Path, head: bytes) -> None:
    """What researchers give by mistake, named with the way to the model: a download gone wrong (a Git LFS
    pointer, a web page), an archive or a compressed file (downloaded or sent so), another framework's
    model, the ONNX file instead of the model it came from."""
    with open(path, "rb") as f:
        start = f.read(512)
    if start.startswith(b"version https://git-lfs"):
        raise ImportRefused(
            f"{path.name} is a Git LFS pointer ({len(start)} bytes naming the file), not the model: the repository "
            "was cloned without Git LFS. Fetch the file itself: git lfs install, then git lfs pull in the repository"
        )
    if start.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise ImportRefused(
            f"{path.name} is a web page (HTML), not the model: the download saved the page that links to it. On "
            "GitHub, download the file's 'Raw' link; from Google Drive, a large file needs its confirmation page "
            "passed (pip install gdown; gdown <link>)"
        )
    if tarfile.is_tarfile(path):  # compressed or not
        with tarfile.open(path) as tar:
            members = [m.name for m in tar.getmembers() if m.isfile()]
        raise ImportRefused(
            f"{path.name} is a tar archive holding {', '.join(members[:SHOWN_KEYS]) or 'no files'}: extract it "
            f"(tar xf {path.name}) and import the model file"
        )
    for magic, (kind, command) in COMPRESSED.items():
        if head.startswith(magic):
            raise ImportRefused(
                f"{path.name} is {kind}-compressed: decompress it ({command} {path.name} > model.pth) and import "
                "the file it gives"
            )
    if head.startswith(HDF5_MAGIC):
        raise ImportRefused(NOT_PYTORCH.format(path=path.name, what="an HDF5 file (a Keras .h5 model or weights)"))
    if head[:1] == b"\x08":  # a protobuf's first field, as ONNX's ir_version is
        import onnx

        try:
            is_onnx = bool(onnx.load(str(path), load_external_data=False).graph.node)
        except Exception:  # not a protobuf of ONNX's
            is_onnx = False
        if is_onnx:
            raise ImportRefused(NOT_PYTORCH.format(path=path.name, what="an ONNX model"))


def holds_mkldnn_constants(path: Path) -> bool:
    """Whether a TorchScript archive's code stands for MKL-DNN weights it does not hold (ConstantMKLDNNTensor)."""
    with zipfile.ZipFile(path) as z:
        code = [n for n in z.namelist() if "/code/" in n and n.endswith(".py")]
        return any(b"ConstantMKLDNNTensor" in z.read(n) for n in code)
