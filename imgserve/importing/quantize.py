"""int8 at import: ONNX Runtime static quantization of a stored fp32 model, gated by its answers.

The fp32 graph that import verified against torch is quantized (QDQ, int8 weights per channel,
uint8 activations), calibrated on real photos. What must stay float stays float: the uint8 ->
float prologue and the softmax that `convert.Packaged` adds, and the classifier head, whose
logits the softmax turns into the probabilities clients see. When the whole graph in int8 changes
answers on the calibration photos, each layer's damage alone is measured there, and the most of
the least damaging layers that change none are put in int8 (bisection).

The gate: top-1 must agree with the fp32 model's on `config.QUANT_MIN_AGREEMENT` of the views of
held-back photos (photos that calibration and the layer search never saw) where the fp32 top-1 is
decided. Otherwise nothing is stored. Only `import_model.py` and the tests import this file:
serving runs the stored result like any model.
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
    name: str  # where it came from, e.g. "skimage/astronaut.png"
    image: Image.Image  # RGB, upright


@dataclass
class Agreement:
    """How the int8 model's answers compare with the fp32 model's on a set of images."""

    images: int
    top1_same: int
    margin: float
    decided: int  # images whose fp32 top-1 leads its runner-up by `margin` of probability or more
    decided_top1_same: int
    max_prob_diff: float

    @property
    def share(self) -> float:
        """The gated figure: top-1 agreement on the decided images."""
        return self.decided_top1_same / self.decided if self.decided else 0.0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "top1_agreement": round(self.top1_same / self.images, 4),
            "decided_images": self.decided,
            "decided_margin": self.margin,
            "decided_top1_agreement": round(self.share, 4),
            "max_prob_diff": round(self.max_prob_diff, 4),
        }


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
    if not folder.is_dir():
        raise QuantizationRefused(f"--photos {folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in config.PHOTO_SUFFIXES)


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
        try:
            with Image.open(path) as opened:
                img = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        thumb = np.asarray(img.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), np.float32)
        if any(np.abs(thumb - t).mean() < DUPLICATE_MEAN_DIFF for t in thumbs):
            continue
        thumbs.append(thumb)
        photos.append(Photo(photo_name(path), img))
    return photos


def views(photo: Photo, prep: Preprocessing, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` model inputs from one photo: the served centre crop, its mirror image, then crops of
    30-100% of the photo's area, half of them mirrored. uint8, (count, 3, crop, crop)."""
    image = photo.image.convert("L") if prep.grayscale else photo.image  # as the server decodes for the model
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


def split_photos(photos: list[Photo]) -> PhotoSplit:
    """Half the photos calibrate (and steer the layer search), the other half only judge."""
    need = config.QUANT_MIN_PHOTOS
    if len(photos) < need:
        raise QuantizationRefused(
            f"too few photos to quantize and check the int8 model: {len(photos)} distinct photos found, "
            f"{need} needed (half to calibrate, half held back to check the answers). Pass a folder of "
            "photos like the ones the model will see with --photos DIR; nothing int8 was stored"
        )
    order = np.random.default_rng(SEED).permutation(len(photos))
    half = len(photos) // 2
    return PhotoSplit([photos[i] for i in order[:half]], [photos[i] for i in order[half:]])


def agreement(reference: np.ndarray, probs: np.ndarray, margin: float = config.QUANT_DECIDED_MARGIN) -> Agreement:
    ranked = np.sort(reference, axis=1)
    decided = ranked[:, -1] - ranked[:, -2] >= margin
    same = reference.argmax(1) == probs.argmax(1)
    return Agreement(
        images=len(reference),
        top1_same=int(same.sum()),
        margin=margin,
        decided=int(decided.sum()),
        decided_top1_same=int(same[decided].sum()),
        max_prob_diff=float(np.abs(reference - probs).max()),
    )


def probabilities(onnx_path: Path | str, inputs: np.ndarray) -> np.ndarray:
    """The model's output for `inputs`, in served batches (the import opens dozens of sessions: quietly)."""
    with quiet(predict.log):
        session = predict.open_session(str(onnx_path))
    batch = config.MAX_BATCH_SIZE
    return np.concatenate([predict.run(session, inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


# --- The graph


def float_nodes(model) -> list[str]:
    """Nodes that stay float whatever the search finds: everything `convert.Packaged` wraps around the
    model (the uint8 -> float prologue, the softmax), the classifier head (its logits become the
    probabilities; a thousandth of the work), and Pads (their pad value, float 0, is not quantized 0
    where the input is signed, as the prologue's output is)."""
    keep = []
    for node in model.graph.node:
        own = node.name.startswith("/model/")
        if not own or node.op_type in ("Gemm", "MatMul", "Pad"):
            keep.append(node.name)
    return keep


def units(model) -> list[list[str]]:
    """The layers the search may keep float: each Conv with the activation (Clip, Relu) that alone
    consumes its output. A Conv kept float without its activation would hand the activation's
    quantized input the whole pre-activation range, and lose its precision."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or not node.name.startswith("/model/"):
            continue
        unit = [node.name]
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
            unit.append(after[0].name)
        out.append(unit)
    return out


# --- Quantization and the layer search


class _Reader:
    """Calibration batches for ONNX Runtime (its CalibrationDataReader protocol)."""

    def __init__(self, inputs: np.ndarray) -> None:
        batch = config.MAX_BATCH_SIZE
        self.batches = iter([{predict.INPUT_NAME: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def __iter__(self):
        return self.batches


def quantize_graph(
    source: Path, destination: Path, calibration: np.ndarray, keep_float: list[str], cache: Path
) -> None:
    """QDQ int8: weights int8 per output channel, activations uint8 (asymmetric: most follow a
    ReLU6), ranges from the calibration photos (measured once, then read from `cache`)."""
    with quiet(logging.getLogger()):  # ONNX Runtime logs there, a line per weight channel it rescales
        _quantize_static(source, destination, calibration, keep_float, cache)


def _quantize_static(source: Path, destination: Path, calibration: np.ndarray, keep_float: list[str], cache: Path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

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
        calibration_cache_path=str(cache),
        # A Clip kept float must stay in the graph, not be folded into its Conv's quantized range.
        extra_options={"QDQKeepRemovableActivations": True},
    )


def snr_db(reference: np.ndarray, probs: np.ndarray) -> float:
    """How far int8 probabilities are from fp32 ones: signal-to-noise in decibels."""
    noise = float(np.linalg.norm(probs - reference))
    return float("inf") if noise == 0 else 20 * float(np.log10(np.linalg.norm(reference) / noise))


def rank_layers(source: Path, model, calibration: np.ndarray, work: Path) -> list[list[str]]:
    """The layers, least damaging first: each quantized alone, its output's distance from the fp32
    output measured on some of the calibration views."""
    tuning = calibration[:: max(1, len(calibration) // config.QUANT_RANKING_VIEWS)]
    reference = probabilities(source, tuning)
    keep = float_nodes(model)
    layers = units(model)
    every = {name for unit in layers for name in unit}
    damage = []
    for unit in layers:
        path = work / "one-layer.onnx"
        quantize_graph(source, path, calibration, keep + sorted(every - set(unit)), work / "ranges.json")
        damage.append(snr_db(reference, probabilities(path, tuning)))
    order = np.argsort(damage)[::-1]  # highest SNR first
    log.info("layers by damage alone (output SNR, dB): %s", [(layers[i][0], round(damage[i], 1)) for i in order])
    return [layers[i] for i in order]


@dataclass
class Quantized:
    path: Path
    layers: int  # Conv layers in int8
    of_layers: int
    tuning: Agreement


def search(source: Path, calibration: np.ndarray, work: Path) -> Quantized:
    """The most layers in int8 whose answers on the calibration views still pass the gate.

    The whole graph first; when that fails, layers ordered by their measured damage (each
    quantized alone) are put in int8 from the least damaging on, the count found by bisection.
    """
    import onnx

    model = onnx.load(str(source))
    reference = probabilities(source, calibration)
    keep, layers = float_nodes(model), units(model)
    ranges = work / "ranges.json"

    def attempt(count: int, order: list[list[str]]) -> Quantized:
        path = work / f"int8-{count}.onnx"
        in_int8 = {name for unit in order[:count] for name in unit}
        floats = keep + sorted({name for unit in order for name in unit} - in_int8)
        quantize_graph(source, path, calibration, floats, ranges)
        tuning = agreement(reference, probabilities(path, calibration), config.QUANT_TUNING_MARGIN)
        return Quantized(path, count, len(order), tuning)

    whole = attempt(len(layers), layers)
    log.info("int8, all %d layers: %s", len(layers), whole.tuning.to_dict())
    if whole.tuning.share >= config.QUANT_TUNING_AGREEMENT:
        return whole
    best = None if len(layers) == 1 else bisect(attempt, rank_layers(source, model, calibration, work))
    if best is None:
        t = whole.tuning
        raise QuantizationRefused(
            f"no layer of this model can be int8 without changing its answers: with all in int8, top-1 agrees "
            f"with the fp32 model's on {t.decided_top1_same} of {t.decided} calibration views, all needed. "
            "Nothing int8 was stored"
        )
    return best


def bisect(attempt, order: list[list[str]]) -> Quantized | None:
    """The largest count of layers, in `order`, whose int8 model passes on the calibration views."""
    low, high, best = 0, len(order), None  # a passing count is >= low; a failing one > high
    while low < high:
        mid = (low + high + 1) // 2
        trial = attempt(mid, order)
        log.info("int8, %d of %d layers: %s", mid, len(order), trial.tuning.to_dict())
        if trial.tuning.share >= config.QUANT_TUNING_AGREEMENT:
            low, best = mid, trial
        else:
            high = mid - 1
    return best


# --- From a stored fp32 model to a stored int8 one


def gate(fp32: Path, int8: Path, held_back: np.ndarray) -> dict:
    """The int8 model's answers on the held-back views against the fp32 model's; refused below the bar."""
    result = agreement(probabilities(fp32, held_back), probabilities(int8, held_back))
    log.info("int8 on the held-back views: %s", result.to_dict())
    if result.share < config.QUANT_MIN_AGREEMENT:
        raise QuantizationRefused(
            f"the int8 model's top-1 agrees with the fp32 model's on {result.decided_top1_same} of "
            f"{result.decided} held-back views ({result.share:.2%}; the views where the fp32 top-1 leads by "
            f"{result.margin} or more), {config.QUANT_MIN_AGREEMENT:.0%} required; on all {result.images} views "
            f"{result.top1_same}, largest probability difference {result.max_prob_diff:.3f}. Nothing int8 was stored"
        )
    return result.to_dict()


def photo_views(photos: list[Photo], prep: Preprocessing) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return np.concatenate([views(p, prep, config.QUANT_VIEWS_PER_PHOTO, rng) for p in photos])


def quantize_stored(fp32_tag: str, photo_dirs: Sequence[Path] = ()) -> str:
    """Quantize a stored fp32 model; store it as NAME-int8 if it passes the gate; return its tag."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    entry = store.bentoml.models.get(fp32_tag)
    card = store.ModelCard.from_stored(entry)
    paths = (
        sorted(config.DATA_DIR.glob("*.jpg"))
        + [p for d in photo_dirs for p in folder_photos(Path(d))]
        + package_photos()
    )
    split = split_photos(load_photos(paths))
    calibration = photo_views(split.calibration, card.preprocessing)
    held_back = photo_views(split.held_back, card.preprocessing)
    log.info(
        "int8: calibrating on %d views of %d photos, checking on %d views of %d others",
        len(calibration), len(split.calibration), len(held_back), len(split.held_back),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "fp32.onnx"  # shapes inferred, constants folded: what quantization works on
        quant_pre_process(entry.path_of(store.ONNX_FILE), str(source), skip_symbolic_shape=True)
        found = search(source, calibration, work)
        log.info("int8: %d of %d layers", found.layers, found.of_layers)
        result = gate(Path(entry.path_of(store.ONNX_FILE)), found.path, held_back)
        metadata = {
            **card.metadata,
            "title": f"{card.title} (int8)",
            "quantization": {
                "dtype": "int8",
                "fp32_model": card.tag,
                "method": "ONNX Runtime static QDQ: int8 weights per channel, uint8 activations, MinMax",
                "int8_layers": found.layers,
                "of_layers": found.of_layers,
                "calibration_photos": [p.name for p in split.calibration],
                "held_back_photos": [p.name for p in split.held_back],
                "views_per_photo": config.QUANT_VIEWS_PER_PHOTO,
                "tuning": found.tuning.to_dict(),
                "held_back": result,
                "min_agreement": config.QUANT_MIN_AGREEMENT,
                "onnxruntime_version": ort_version(),
            },
        }
        return store.save(f"{entry.tag.name}{config.QUANT_SUFFIX}", found.path, metadata)


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
