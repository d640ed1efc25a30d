"""int8 at import: ONNX Runtime static quantization of a stored fp32 model, gated by its answers.

The fp32 graph that import verified against torch is quantized (QDQ, int8 weights per channel,
uint8 activations), calibrated on real photos. What must stay float stays float: the uint8 ->
float prologue and the softmax that `convert.Packaged` adds, and the classifier head, whose
logits the softmax turns into the probabilities clients see. Every convolution is int8: a graph
that switches between float and int8 layers pays a QuantizeLinear/DequantizeLinear pair at each
switch, about what its int8 layers save (README "An int8 model": measured, no faster than fp32).
Then each int8 convolution's bias takes back the shift that rounding gave its output (`correct_biases`).

The gate: top-1 must agree with the fp32 model's on `config.QUANT_MIN_AGREEMENT` of all the views
of the held-back photos (photos that calibration never saw). Otherwise nothing is stored. Only
`import_model.py` and the tests import this file: serving runs the stored result like any model.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgserve import config
from imgserve.importing import faithful
from imgserve.serving import predict, store
from imgserve.serving.preprocess import Preprocessing, resize_crop

log = logging.getLogger(__name__)

# Photographs that ship inside packages (no logos, charts or synthetic images), by file name.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "retina.jpg",
    "rocket.jpg", "cell.png", "microaneurysms.png", "text.png", "clock_motion.png",
)  # fmt: skip
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
GRADIO_PHOTOS = ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "tower.jpg", "groot.jpeg")
THUMBNAIL = 16  # duplicates (data/cat.jpg is skimage's chelsea) are found on 16x16 grey thumbnails
DUPLICATE_MEAN_DIFF = 6.0  # mean absolute grey difference under which two thumbnails are one photo
CROP_AREA = (0.3, 1.0)  # a view: this share of the photo's area ...
CROP_ASPECT = (3 / 4, 4 / 3)  # ... at this aspect ratio, anywhere in the photo, flipped half the time
SEED = 0


@contextlib.contextmanager
def quiet(logger: logging.Logger) -> Iterator[None]:
    """`logger` says only warnings and errors for a while."""
    level = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


class QuantizationRefused(Exception):
    """No int8 model was stored; the message says why and what to do."""


@dataclass(frozen=True)
class Photo:
    """A photo found readable; decoded again for its views, so that a folder of large photos is never
    held in memory whole."""

    name: str  # where it came from, e.g. "skimage/astronaut.png"
    path: Path

    def open(self) -> Image.Image:
        """RGB, upright."""
        with Image.open(self.path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")


def package_photos() -> list[Path]:
    """The photographs of the installed packages that ship some: scikit-image, scikit-learn,
    matplotlib, Gradio. A package that is not installed gives none."""
    found: list[Path] = []
    sources = (
        ("skimage.data", SKIMAGE_PHOTOS),
        ("sklearn.datasets.images", ("china.jpg", "flower.jpg")),
        ("matplotlib", tuple(f"mpl-data/sample_data/{n}" for n in MATPLOTLIB_PHOTOS)),
        ("gradio", tuple(f"media_assets/images/{n}" for n in GRADIO_PHOTOS)),
    )
    import importlib.util

    for module, names in sources:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations)))
        found += [folder / n for n in names if (folder / n).is_file()]
    return found


def folder_photos(folder: Path) -> list[Path]:
    """At most `config.QUANT_MAX_PHOTOS` of a folder's photos, evenly spread over them by name, so that
    each subfolder (a class, often) is among them."""
    if not folder.is_dir():
        raise QuantizationRefused(f"--photos {folder}: no such folder")
    found = faithful.photos_in(folder, limit=None)
    step = len(found) / config.QUANT_MAX_PHOTOS
    return found if step <= 1 else [found[int(i * step)] for i in range(config.QUANT_MAX_PHOTOS)]


def photo_name(path: Path) -> str:
    """Where a photo came from, short: "data/cat.jpg", "skimage/data/astronaut.png", or its path."""
    if "site-packages" in path.parts:
        return "/".join(path.parts[path.parts.index("site-packages") + 1 :])
    return f"data/{path.name}" if path.parent == config.DATA_DIR else str(path)


def load_photos(paths: list[Path]) -> list[Photo]:
    """Each readable photo once, however many copies of it the sources hold."""
    photos: list[Photo] = []
    thumbs: list[np.ndarray] = []
    for path in paths:
        photo = Photo(photo_name(path), path)
        try:
            img = photo.open()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        thumb = np.asarray(img.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), np.float32)
        if any(np.abs(thumb - t).mean() < DUPLICATE_MEAN_DIFF for t in thumbs):
            continue
        thumbs.append(thumb)
        photos.append(photo)
    return photos


def views(photo: Photo, prep: Preprocessing, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` model inputs from one photo: the served centre crop, its mirror image, then crops of
    30-100% of the photo's area, half of them mirrored. uint8, (count, 3, crop, crop)."""
    image = photo.open()
    image = image.convert("L") if prep.grayscale else image  # as the server decodes for the model
    out = [resize_crop(image, prep), resize_crop(ImageOps.mirror(image), prep)]
    width, height = image.size
    while len(out) < count:
        area = rng.uniform(*CROP_AREA) * width * height
        aspect = np.exp(rng.uniform(*np.log(CROP_ASPECT)))
        w, h = min(width, round((area * aspect) ** 0.5)), min(height, round((area / aspect) ** 0.5))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        view = image.crop((left, top, left + w, top + h))
        out.append(resize_crop(ImageOps.mirror(view) if rng.random() < 0.5 else view, prep))
    return np.stack(out[:count])


@dataclass
class PhotoSplit:
    calibration: list[Photo]
    held_back: list[Photo]


def photo_paths(photo_dirs: Sequence[Path]) -> list[Path]:
    """Your folders' photos when you give any: calibration and the gate then see photos like the ones
    the model will serve (textures and telescope images would judge a bird model on scenes it never
    answers). Without: data/ and the photographs of installed packages, general scenes."""
    if photo_dirs:
        return [p for d in photo_dirs for p in folder_photos(Path(d))]
    return sorted(config.DATA_DIR.glob("*.jpg")) + package_photos()


def split_photos(photos: list[Photo], photo_dirs: Sequence[Path] = ()) -> PhotoSplit:
    """Half the photos calibrate, the other half only judge."""
    need = config.QUANT_MIN_PHOTOS
    if len(photos) < need:
        where, fix = (
            (f" in --photos {', '.join(map(str, photo_dirs))}", "Add photos like the ones the model will see to it")
            if photo_dirs
            else ("", "Pass a folder of photos like the ones the model will see with --photos DIR")
        )
        raise QuantizationRefused(
            f"too few photos to quantize and check the int8 model: {len(photos)} distinct photos found{where}, "
            f"{need} needed (half to calibrate, half held back to check the answers). {fix}; nothing int8 was stored"
        )
    order = np.random.default_rng(SEED).permutation(len(photos))
    half = len(photos) // 2
    return PhotoSplit([photos[i] for i in order[:half]], [photos[i] for i in order[half:]])


def probabilities(onnx_path: Path | str, inputs: np.ndarray) -> np.ndarray:
    """The model's output for `inputs`, in served batches (the import opens dozens of sessions: quietly)."""
    with quiet(predict.log):
        session = predict.open_session(str(onnx_path))
    batch = config.MAX_BATCH_SIZE
    return np.concatenate([predict.run(session, inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


# --- The graph


def float_nodes(model) -> list[str]:
    """Nodes that stay float: everything `convert.Packaged` wraps around the
    model (the uint8 -> float prologue, the softmax), the classifier head (its logits become the
    probabilities; a thousandth of the work), and Pads (their pad value, float 0, is not quantized 0
    where the input is signed, as the prologue's output is)."""
    keep = []
    for node in model.graph.node:
        own = node.name.startswith("/model/")
        if not own or node.op_type in ("Gemm", "MatMul", "Pad"):
            keep.append(node.name)
    return keep


def conv_layers(model, keep_float: list[str]) -> tuple[int, int]:
    """Convolutions in int8, of all the model's own."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/model/")]
    return len(set(convs) - set(keep_float)), len(convs)


# --- Quantization


class _Reader:
    """Calibration batches for ONNX Runtime (its CalibrationDataReader protocol)."""

    def __init__(self, inputs: np.ndarray) -> None:
        batch = config.MAX_BATCH_SIZE
        self.batches = iter([{predict.INPUT_NAME: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def __iter__(self):
        return self.batches


def quantize_graph(source: Path, destination: Path, calibration: np.ndarray, keep_float: list[str]) -> None:
    """QDQ int8: weights int8 per output channel (a depthwise convolution's channels differ by 100x
    after batch-norm folding), activations uint8 (asymmetric: most follow a ReLU6, whose Clip is
    folded into the quantized range), ranges the calibration views' minimum and maximum.

    Measured on EfficientNet-Lite0 (README "An int8 model"): Entropy ranges gave the same answers in 8x
    the time, Percentile 99.99 0.7 points more agreement in 10x; reduce_range (7-bit) and symmetric
    int8 activations lost 13 and 5 points."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet(logging.getLogger()):  # ONNX Runtime logs there, a line per weight channel it rescales
        quantize_static(
            str(source),
            str(destination),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
        )


# --- Bias correction


def _with_outputs(model, names: list[str]) -> bytes:
    """`model` with the tensors `names` as outputs too, serialized, to read what its layers give."""
    from onnx import TensorProto, helper

    copy = type(model)()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return copy.SerializeToString()


def channel_means(model, names: list[str], inputs: np.ndarray) -> list[np.ndarray]:
    """Each named tensor's mean per channel (axis 1) over `inputs`, in served batches."""
    with quiet(predict.log):
        session = predict.open_session(_with_outputs(model, names))
    sums: list[np.ndarray | float] = [0.0] * len(names)
    counts = [0] * len(names)
    for i in range(0, len(inputs), config.MAX_BATCH_SIZE):
        outputs = session.run(names, {predict.INPUT_NAME: inputs[i : i + config.MAX_BATCH_SIZE]})
        for k, x in enumerate(outputs):
            sums[k] = sums[k] + x.sum(axis=tuple(a for a in range(x.ndim) if a != 1), dtype=np.float64)
            counts[k] += x.size // x.shape[1]
    return [np.asarray(total) / count for total, count in zip(sums, counts, strict=True)]


def correct_biases(fp32: Path, int8: Path, calibration: np.ndarray) -> int:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", 4.2), layer by layer in
    graph order: each int8 convolution's bias takes back the shift of its output's mean per channel
    from the fp32 layer's, measured on calibration views after the layers before it were corrected.
    Rounding the 9 weights of a depthwise filter moves its output's mean, and the moves add up over
    the layers: on EfficientNet-Lite0 top-1 agreement goes from 83.3% to 94.1% (README "An int8
    model"; on a third of the calibration views, 93.4%). One pass over the calibration views per
    convolution. Rewrites `int8`; returns how many convolutions it corrected."""
    import onnx
    from onnx import numpy_helper

    reference, model = onnx.load(str(fp32)), onnx.load(str(int8))
    initializers = {i.name: i for i in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    convs = {node.name: node for node in model.graph.node if node.op_type == "Conv"}
    layers = []  # (the fp32 convolution's output, the int8 one's, its int32 bias, the bias's scale)
    for node in reference.graph.node:
        conv = convs.get(node.name) if node.op_type == "Conv" else None
        if conv is None or len(conv.input) < 3:
            continue  # not a convolution, or one without a bias
        bias = made_by.get(conv.input[2])
        if bias is not None and bias.op_type == "DequantizeLinear" and bias.input[0] in initializers:
            scale = numpy_helper.to_array(initializers[bias.input[1]])
            layers.append((node.output[0], conv.output[0], initializers[bias.input[0]], scale))
    targets = channel_means(reference, [fp32_out for fp32_out, *_ in layers], calibration)
    for (_, output, bias, scale), target in zip(layers, targets, strict=True):
        [mean] = channel_means(model, [output], calibration)
        values = numpy_helper.to_array(bias).astype(np.int64) - np.round((mean - target) / scale).astype(np.int64)
        info = np.iinfo(np.int32)
        bias.CopyFrom(numpy_helper.from_array(np.clip(values, info.min, info.max).astype(np.int32), bias.name))
    onnx.save(model, str(int8))
    return len(layers)


# --- From a stored fp32 model to a stored int8 one


def decided(fp32: Path, views: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which views' fp32 top-1 survives every one of `config.QUANT_NOISE_DRAWS` draws of noise of
    one grey level (-1, 0 or +1 on each pixel value, less than a JPEG's own): on the others the fp32
    model has no answer for int8 to keep (a texture or a telescope image for an ImageNet model)."""
    rng = np.random.default_rng(SEED)
    top1 = reference.argmax(1)
    kept = np.ones(len(views), bool)
    for _ in range(config.QUANT_NOISE_DRAWS):
        noisy = np.clip(views + rng.integers(-1, 2, views.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        kept &= probabilities(fp32, noisy).argmax(1) == top1
    return kept


def agreement(fp32: Path, int8: Path, held_back: np.ndarray) -> tuple[dict, str | None]:
    """The int8 model's answers on the held-back views against the fp32 model's: the numbers its
    metadata keeps, and why the gate refuses it (None: it passes). The gate is on all the views; the
    agreement on the decided ones (`decided`) says whether the disagreements are where fp32 itself
    has no stable answer."""
    reference, probs = probabilities(fp32, held_back), probabilities(int8, held_back)
    result = faithful.Agreement.between(reference, probs)
    stable = decided(fp32, held_back, reference)
    same = reference.argmax(1) == probs.argmax(1)
    shown = {
        "images": result.photos,
        "top1_agreement": round(result.fraction, 4),
        "max_prob_diff": round(result.max_prob_diff, 4),
        "decided_views": int(stable.sum()),
        "decided_top1_agreement": round(float(same[stable].mean()) if stable.any() else 0.0, 4),
    }
    log.info("int8 on the held-back views: %s", shown)
    if result.fraction >= config.QUANT_MIN_AGREEMENT:
        return shown, None
    return shown, (
        f"the int8 model's top-1 agrees with the fp32 model's on {result.top1_agree} of {result.photos} "
        f"held-back views ({result.fraction:.2%}), {config.QUANT_MIN_AGREEMENT:.0%} required; largest probability "
        f"difference {result.max_prob_diff:.3f}; on the {shown['decided_views']} views whose fp32 top-1 survives "
        f"one grey level of noise, {shown['decided_top1_agreement']:.2%}. Nothing int8 was stored"
    )


def gate(fp32: Path, int8: Path, held_back: np.ndarray) -> dict:
    """`agreement`, refused below the bar."""
    shown, refusal = agreement(fp32, int8, held_back)
    if refusal:
        raise QuantizationRefused(refusal)
    return shown


def photo_views(photos: list[Photo], prep: Preprocessing) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return np.concatenate([views(p, prep, config.QUANT_VIEWS_PER_PHOTO, rng) for p in photos])


@dataclass(frozen=True)
class Quantized:
    """An int8 graph and the metadata it would be stored with; `refusal` says why the gate refuses it."""

    onnx: Path
    metadata: dict
    refusal: str | None


def quantize(fp32_tag: str, work: Path, photo_dirs: Sequence[Path] = ()) -> Quantized:
    """The int8 version of a stored fp32 model, written into `work`, and the gate's verdict on it."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    entry = store.bentoml.models.get(fp32_tag)
    card = store.ModelCard.from_stored(entry)
    split = split_photos(load_photos(photo_paths(photo_dirs)), photo_dirs)
    calibration = photo_views(split.calibration, card.preprocessing)
    held_back = photo_views(split.held_back, card.preprocessing)
    log.info(
        "int8: calibrating on %d views of %d photos, checking on %d views of %d others",
        len(calibration), len(split.calibration), len(held_back), len(split.held_back),
    )  # fmt: skip
    source = work / "fp32.onnx"  # shapes inferred, constants folded: what quantization works on
    quant_pre_process(entry.path_of(store.ONNX_FILE), str(source), skip_symbolic_shape=True)
    int8 = work / "int8.onnx"
    model = onnx.load(str(source))
    keep_float = float_nodes(model)
    quantize_graph(source, int8, calibration, keep_float)
    corrected = correct_biases(source, int8, calibration)
    layers, of_layers = conv_layers(model, keep_float)
    result, refusal = agreement(Path(entry.path_of(store.ONNX_FILE)), int8, held_back)
    metadata = {
        **card.metadata,
        "title": f"{card.title} (int8)",
        "quantization": {
            "dtype": "int8",
            "fp32_model": card.tag,
            "method": "ONNX Runtime static QDQ: int8 weights per channel, uint8 activations, MinMax; "
            "biases corrected layer by layer",
            "bias_corrected_layers": corrected,
            "int8_layers": layers,
            "of_layers": of_layers,
            "calibration_photos": [p.name for p in split.calibration],
            "held_back_photos": [p.name for p in split.held_back],
            "views_per_photo": config.QUANT_VIEWS_PER_PHOTO,
            "held_back": result,
            "min_agreement": config.QUANT_MIN_AGREEMENT,
            "onnxruntime_version": ort_version(),
        },
    }
    return Quantized(int8, metadata, refusal)


def quantize_stored(fp32_tag: str, photo_dirs: Sequence[Path] = ()) -> str:
    """Quantize a stored fp32 model; store it as NAME-int8 if it passes the gate; return its tag."""
    with tempfile.TemporaryDirectory() as tmp:
        quantized = quantize(fp32_tag, Path(tmp), photo_dirs)
        if quantized.refusal:
            raise QuantizationRefused(quantized.refusal)
        name = store.bentoml.models.get(fp32_tag).tag.name
        return store.save(f"{name}{config.QUANT_SUFFIX}", quantized.onnx, quantized.metadata)


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def import_int8(fp32_tag: str, photo_dirs: list[Path], if_missing: bool = False) -> str:
    """import_model.py's --quantize int8: the int8 tag, or why there is none (the fp32 model stays)."""
    name = f"{fp32_tag.split(':')[0]}{config.QUANT_SUFFIX}"
    if if_missing and store.exists(f"{name}:latest"):
        log.info("%s:latest is already in the model store", name)
        return str(store.bentoml.models.get(f"{name}:latest").tag)
    try:
        return quantize_stored(fp32_tag, photo_dirs)
    except QuantizationRefused as e:
        raise QuantizationRefused(f"{e} ({fp32_tag} is stored and unchanged)") from None
