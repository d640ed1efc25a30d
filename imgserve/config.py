"""Every constant and serving knob, defined once, each with the reason for its value.

Import and serve both read from here; nothing else re-types a name, a limit or a default.
Values that an operator may want to change are read from environment variables (named in
`ENV_*`); the README's "Errors and limits" and "Configuration" tables list them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """Settings from the environment out of their range: the server does not start; the message names each."""


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, and the container's CPU quota (cgroup v2's
    cpu.max) when it has one: a 2-CPU container on a 64-core node counts 2, not 64."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity stands
    return max(1, cpus)


CPUS = available_cpus()


def knob(env: str, default: float, low: float, high: float, kind: type = int) -> Any:
    """A field of Settings: read from $env, a whole number (or `kind` float) from `low` to `high`."""
    return field(default=default, metadata={"env": env, "low": low, "high": high, "kind": kind})


def parse_knob(env: str, raw: str, low: float, high: float, kind: type) -> float:
    what = "a whole number" if kind is int else "a number"
    allowed = f"{env}={raw!r}: must be {what} from {kind(low)} to {kind(high)}"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(allowed) from None
    if not (low <= value <= high) or (kind is float and not math.isfinite(value)):
        raise SettingsError(allowed)
    return value


# The bundled photos (data/): beside imgserve/ in a checkout and in the Bento (bentofile.yaml).
DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Photo files that import's checks read from a folder (--photos, --examples), by their ending.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# --- The default model: EfficientNet-Lite0, ImageNet, installed offline from PyPI.
DEFAULT_MODEL_NAME = "efficientnet-lite0"
DEFAULT_ARCH = "efficientnet-lite0"
# Measured on 5 real photos (bench/preprocessing_check.py -> bench/results/): TF's
# (x - 127) / 128 scaling gives the highest median top-1 probability (0.43, vs 0.34 with
# ImageNet mean/std and 0.37 with raw [0, 1]; espresso 0.95 vs 0.83), and resize 256 +
# centre crop 224, bilinear, beats bicubic (0.40) and a plain 224 resize (0.40).
DEFAULT_MODEL_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
DEFAULT_MODEL_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

# --- Preprocessing defaults for user models: torchvision's ImageNet recipe.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224
DEFAULT_INTERPOLATION = "bilinear"
# A crop given without a resize keeps ImageNet's proportion (224 of 256): --crop 128 resizes to 146.
DEFAULT_CROP_RATIO = DEFAULT_CROP / DEFAULT_RESIZE
# torchvision's classes built for another input side than 224, the default for them: Inception v3
# "expects tensors with a size of N x 3 x 299 x 299" (its docs; its weights: Resize(342), CenterCrop(299)),
# and fine-tuning it at 299 is the rule (PyTorch's fine-tuning tutorial). At 224 it runs, answering otherwise.
ARCH_INPUT_SIDE = {"Inception3": 299}
# The largest model input side the import takes: 8 times ImageNet's 224 x 224 in pixels and beyond what
# image classifiers are trained at (224 to 1024). A side of 20000 had the import's first run of the model
# killed for memory; a batch of 8 at 2048 x 2048 is 400 MB of input alone.
MAX_INPUT_SIDE = 2048
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft) while both sides stay at least twice the
# resized size and at least this: libjpeg's reduced decode is no antialiasing filter, and below ~512 a side
# its error reaches the model (28 px: a mean 0.4 grey levels from the full decode, up to 7; with this floor
# 0.01, up to 2). The default model's 2 x 256 is already 512; a 28 px model's 12 MP photo decodes at 1/4.
DRAFT_MIN_SIDE = 512
# Gray models (1 input channel): PyTorch's own quickstart feeds ToTensor()'s [0, 1] pixels, no Normalize.
GRAY_MEAN = (0.0,)
GRAY_STD = (1.0,)

# --- Import-time verification of the exported artifact against the torch model.
PARITY_MAX_PROB_DIFF = 1e-4  # the bound; ONNX Runtime vs torch is ~1e-6 in practice
ONNX_OPSET = 17  # ONNX Runtime >= 1.14 runs it everywhere; newest ops not needed by CNNs
ONNX_OPSET_DYNAMO = 18  # torch.export's exporter, for what the first cannot convert: its lowest opset
# --- Import-time faithfulness: the served path (our decoding, ONNX) against torch running the
# researcher's own transforms on fully decoded photos (imgserve/importing/faithful.py). The default model
# agrees on 10 of 10 benchmark photos, largest difference 0.019 (JPEG draft decoding, uint8
# resampling); a wrong normalisation moved a probability by 0.45 and a top-1 in 6 photos.
FAITHFUL_MIN_TOP1_AGREEMENT = 0.9  # of the photos, top-1 the same; with fewer than 10, all of them
FAITHFUL_MAX_PROB_DIFF = 0.1  # largest difference of any class probability on any photo
# Two classes the reference scores within this of each other are a tie: either as the served top-1 is the
# same answer (a 0.5001 / 0.4999 binary model on a photo of data/ from outside its domain flips on rounding).
FAITHFUL_TIE = 0.01
FAITHFUL_MAX_PHOTOS = 200  # of --photos DIR: enough to measure, bounded in time (~0.1 s each)

# --- Which models the service serves.
ENV_MODELS = "CLASSIFIER_MODELS"  # model-store tags, comma-separated, the default first
ENV_MODEL = "CLASSIFIER_MODEL"  # one model-store tag, e.g. "flowers:latest" (before several were served)
DEFAULT_MODEL_TAG = f"{DEFAULT_MODEL_NAME}:latest"
MODEL_FIELD = "model"  # the /classify form field that picks a served model (its name or name:version)


class ModelListError(ValueError):
    """The configured model list cannot be served; the message says how to write it."""


def model_tags() -> list[str]:
    """The tags to serve, the default first: $CLASSIFIER_MODELS, else $CLASSIFIER_MODEL, else the
    default model's latest version. Checked for shape here; imgserve/serving/registry.py checks the store,
    and that a $CLASSIFIER_MODEL set beside the list names its first model (`default_also_named`)."""
    many = os.environ.get(ENV_MODELS, "").strip()
    one = os.environ.get(ENV_MODEL, "").strip()
    if not many:
        return [one or DEFAULT_MODEL_TAG]
    example = f'e.g. {ENV_MODELS}="{DEFAULT_MODEL_TAG},flowers:latest"'
    tags = [t.strip() for t in many.split(",")]
    if "" in tags:
        raise ModelListError(
            f"{ENV_MODELS}={many!r} has an empty entry: write store tags separated by commas, {example}"
        )
    return tags


def default_also_named() -> str:
    """$CLASSIFIER_MODEL when $CLASSIFIER_MODELS is set too (the image sets the list to its models' exact
    tags): it must name the list's first model, in any spelling of it ('name:latest' for 'name:version')."""
    return os.environ.get(ENV_MODEL, "").strip() if os.environ.get(ENV_MODELS, "").strip() else ""


def models_disagree(one: str) -> str:
    many = os.environ.get(ENV_MODELS, "").strip()
    return f"{ENV_MODEL}={one!r} and {ENV_MODELS}={many!r} disagree: set only {ENV_MODELS} (its first is the default)"


def model_tag() -> str:
    """The default model's tag: the first of model_tags()."""
    return model_tags()[0]


MAX_PORT = 65535  # TCP's: a port is 16 bits (`bentoml serve --port`, client.py's --url)

# --- The API's route (service.py) and the paths the guard treats as work (imgserve/serving/guard.py).
CLASSIFY_PATH = "/classify"
MODELS_PATH = "/models"  # GET: the served models (imgserve/serving/registry.py)
# Every endpoint at an exact path, ours and BentoML's (probes, metrics, the OpenAPI document): each has
# its own label in /metrics, and a trailing slash on one (`/classify/`) is read as without (guard.py).
ENDPOINT_PATHS = (CLASSIFY_PATH, MODELS_PATH, "/docs.json", "/livez", "/readyz", "/healthz", "/metrics")

# --- Access: when set, every endpoint but /livez and /readyz needs "Authorization: Bearer <key>".
ENV_API_KEY = "CLASSIFIER_API_KEY"


def api_key(environ: Mapping[str, str] = os.environ) -> str:
    """$CLASSIFIER_API_KEY as clients can send it: without the spaces and newline around it (a Kubernetes
    Secret made --from-file, a key pasted into a hosting form), which no header carries and client.py strips;
    kept, they locked every client out. A key of blanks alone, or with characters a header cannot carry
    (non-ASCII, control), stops the server: no client could ever send it."""
    raw = environ.get(ENV_API_KEY, "")
    key = raw.strip()
    if raw and not key:
        raise SettingsError(f"{ENV_API_KEY}={raw!r}: blank; set a long random string, or unset it to serve openly")
    if not (key.isascii() and key.isprintable()):
        raise SettingsError(f"{ENV_API_KEY} holds characters an HTTP header cannot carry: set the key alone (ASCII)")
    return key


# --- Request limits, checked at the boundary before anything reaches the batch.
DEFAULT_TOP_K = 5
ENV_MAX_IMAGES = "CLASSIFIER_MAX_IMAGES_PER_REQUEST"
# MAX_IMAGES_PER_REQUEST: Settings.max_images_per_request  # one page of a folder
# Past the limit, image parts are counted for the refusal's message up to this many, then it says "more than":
# counting is parsing, and 100 MB of empty parts (1.4 million) held the event loop for ~20 s.
MAX_IMAGES_COUNTED = 1000
ENV_MAX_PIXELS = "CLASSIFIER_MAX_IMAGE_PIXELS"
# 50 MP admits every phone photo in common use (48 MP sensors) and refuses
# decompression bombs from the header, before a byte of pixel data is decoded.
# MAX_IMAGE_PIXELS: Settings.max_image_pixels
ENV_MAX_REQUEST_BYTES = "CLASSIFIER_MAX_REQUEST_BYTES"
# A whole request body: 32 phone photos of 2-5 MB each fit. Bigger bodies get 413 from the
# Content-Length header, or the moment a streamed body passes the limit.
# MAX_REQUEST_BYTES: Settings.max_request_bytes
# Formats a camera, phone or microscope exports; detected from the bytes, never the name.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# --- The HTTP contract under careless and hostile clients (imgserve/serving/guard.py).
ENV_BODY_TIMEOUT_S = "CLASSIFIER_BODY_TIMEOUT_S"
# Seconds a request body may go without a single byte before it gets 408. A phone on a bad
# link stalls for a few seconds at most; a stalled or lying client frees its connection this soon.
# BODY_TIMEOUT_S: Settings.body_timeout_s
ENV_MAX_UPLOADS = "CLASSIFIER_MAX_UPLOADS"
# Requests still sending their body, a separate bound from the requests at work: stalled and slow
# uploads never take the place of work, and each costs only a connection (bodies stream to disk),
# so the bound is large; well under the 1024 open files a process is commonly allowed.
# MAX_UPLOADS: Settings.max_uploads
# All request headers together; past it: 431. A browser's cookies and the API key fit many times
# over (nginx's default header buffers are 8 kB each); the HTTP server itself has no limit.
MAX_HEADER_BYTES = 16 * 1024
# One text form field's value (top_k): a number, a few bytes. Longer is not a number.
MAX_FIELD_BYTES = 1000
# What a client sent, quoted in an error message, is cut here: a name in a URL or a header may be kilobytes.
MAX_QUOTED_CHARS = 100
# The rest of a refused body read and dropped before the answer (a 413, a malformed form): a server that
# closes with a body unread resets the connection, and the client's TCP stack drops the refusal unread
# (httpx: ReadError), which a client that retries dropped connections takes for a lost server. A 1 MB
# batch to a server with a 300 kB limit was retried for 5 minutes. Past this much, the connection is closed.
DRAIN_BYTES = 16 * 1024 * 1024

# --- Serving knobs (service.py reads these; README "Configuration" explains them).
# Batch times of EfficientNet-Lite0 on the 2-core machine, ONNX Runtime, 2 threads
# (bench/batch_times.py; README "Batching"): 7.7 ms at 1 image, 13.6 at 2, 27.5 at 4,
# 54.8 at 8, 113 at 16: ~146 img/s from 2 images on, no better past 8; VGG-11: 12 img/s
# alone, 15 in batches of 8. Batches stop at 8: a request never waits behind more than
# ~55 ms of someone else's EfficientNet-Lite0 batch.
# $CLASSIFIER_MAX_BATCH_SIZE=1 switches batching off (the benchmark's "unbatched" server).
ENV_MAX_BATCH_SIZE = "CLASSIFIER_MAX_BATCH_SIZE"
# MAX_BATCH_SIZE: Settings.max_batch_size
# A request whose predicted wait in the model queue (images queued x measured seconds per
# image) passes this is refused at once with 503 (imgserve/serving/batcher.py). Under full load the
# model gets about half the CPU (decoding has the rest): ~20 ms per EfficientNet-Lite0 image,
# so 2 s lets ~100 images queue, more than 64 clients send at once. For a model much slower
# per image, raise it, or accept more 503s: VGG-11 (~65 ms per image) sheds past ~30 images.
ENV_MAX_LATENCY_MS = "CLASSIFIER_MAX_LATENCY_MS"
# MAX_LATENCY_MS: Settings.max_latency_ms  # 0: shed whenever anything waits
# ONNX Runtime intra-op threads: one per available core (the CPU quota counts); more oversubscribes.
ENV_MODEL_THREADS = "CLASSIFIER_MODEL_THREADS"
# MODEL_THREADS: Settings.model_threads
ENV_REQUEST_TIMEOUT_S = "CLASSIFIER_REQUEST_TIMEOUT_S"
# A whole request, 32 large photos on a busy 2-core machine included; past it: 504.
# REQUEST_TIMEOUT_S: Settings.request_timeout_s
# In-flight /classify requests the service holds before answering 503: bounds the
# memory of decoded pixels (32 images x 150 kB x 96 = 460 MB at worst) while letting the
# 64 concurrent clients of the soak test in without a single 503.
ENV_MAX_CONCURRENT = "CLASSIFIER_MAX_CONCURRENT_REQUESTS"
# MAX_CONCURRENT_REQUESTS: Settings.max_concurrent_requests
# Decoding threads: Pillow releases the GIL while decoding and resizing, so two threads per
# core keep both cores busy while a thread waits on I/O; more only adds memory. (Measured at
# 8 clients: 2, 3 and 4 threads within 3% of each other.) Counted from the available cores.
ENV_DECODE_THREADS = "CLASSIFIER_DECODE_THREADS"
# DECODE_THREADS: Settings.decode_threads


@dataclass(frozen=True)
class Settings:
    """The knobs an operator may set, one field each: its variable, default and range (the reasons are
    with their names above). Read and checked at once, at import: a bad value stops the server as it
    starts, every bad variable named with its range, instead of a traceback later or a silent clamp."""

    max_images_per_request: int = knob(ENV_MAX_IMAGES, 32, 1, 10_000)  # one page of a folder
    max_image_pixels: int = knob(ENV_MAX_PIXELS, 50_000_000, 1, 1_000_000_000)
    max_request_bytes: int = knob(ENV_MAX_REQUEST_BYTES, 100 * 1024 * 1024, 1024, 2**40)
    body_timeout_s: float = knob(ENV_BODY_TIMEOUT_S, 10.0, 0.1, 3600, float)
    max_uploads: int = knob(ENV_MAX_UPLOADS, 512, 1, 100_000)
    max_batch_size: int = knob(ENV_MAX_BATCH_SIZE, 8, 1, 1024)
    max_latency_ms: int = knob(ENV_MAX_LATENCY_MS, 2000, 0, 3_600_000)  # 0: shed whenever anything waits
    model_threads: int = knob(ENV_MODEL_THREADS, CPUS, 1, 1024)
    request_timeout_s: float = knob(ENV_REQUEST_TIMEOUT_S, 60.0, 0.1, 86_400, float)
    max_concurrent_requests: int = knob(ENV_MAX_CONCURRENT, 96, 1, 100_000)
    decode_threads: int = knob(ENV_DECODE_THREADS, 2 * CPUS, 1, 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            raw = environ.get(f.metadata["env"], "").strip()
            if not raw:
                continue
            try:
                values[f.name] = parse_knob(
                    f.metadata["env"], raw, f.metadata["low"], f.metadata["high"], f.metadata["kind"]
                )
            except SettingsError as e:
                problems.append(str(e))
        if problems:
            raise SettingsError("; ".join(problems))
        return cls(**values)


SETTINGS = Settings.from_env()
# The settings under the names the code reads them by.
MAX_IMAGES_PER_REQUEST = SETTINGS.max_images_per_request
MAX_IMAGE_PIXELS = SETTINGS.max_image_pixels
MAX_REQUEST_BYTES = SETTINGS.max_request_bytes
BODY_TIMEOUT_S = SETTINGS.body_timeout_s
MAX_UPLOADS = SETTINGS.max_uploads
MAX_BATCH_SIZE = SETTINGS.max_batch_size
MAX_LATENCY_MS = SETTINGS.max_latency_ms
MODEL_THREADS = SETTINGS.model_threads
REQUEST_TIMEOUT_S = SETTINGS.request_timeout_s
MAX_CONCURRENT_REQUESTS = SETTINGS.max_concurrent_requests
DECODE_THREADS = SETTINGS.decode_threads
RETRY_AFTER_S = 1  # what 429/503 answers tell clients: about one second of queue
# Prometheus histograms at /metrics (service.py): images and seconds per model call.
METRIC_BATCH_SIZE = "classifier_batch_size"
METRIC_BATCH_SECONDS = "classifier_batch_seconds"
METRIC_MODEL_LABEL = "model"  # each histogram per served model, by its exact tag

# --- The web page (imgserve/serving/ui.py): Gradio, served by the same process. The root URL sends
# browsers to it (imgserve/serving/docs.py): the URL a researcher shares opens the page for people.
UI_PATH = "/ui"
# The API docs (Swagger UI, imgserve/serving/docs.py); the OpenAPI document stays BentoML's /docs.json.
DOCS_PATH = "/docs"
# The page's one API endpoint for programs: POST /ui/gradio_api/call/classify (gradio_client's api_name="/classify").
UI_API_NAME = "classify"
# The slider's top: past 10 bars the page is a wall of near-zero scores; /classify gives any top_k.
UI_MAX_TOP_K = 10
# Page classifications in progress at once: two model batches' worth, so concurrent page users
# share batches; the rest wait in Gradio's queue, which shows them their place in it.
UI_CONCURRENCY = 2 * MAX_BATCH_SIZE
# Uploaded photos are deleted from the server's temp folder after an hour (checked as often):
# a public page should not keep people's photos.
UI_UPLOAD_TTL_S = 3600
# Example photos stored with a model (`import_model.py --examples DIR`), shown on its page: a
# handful, each the size of a photo saved for the web. They travel in every image that packs
# the model, so at most 6 x 1 MB: a page's worth of thumbnails, not a data set.
MAX_EXAMPLES = 6
MAX_EXAMPLE_BYTES = 1024 * 1024

# --- Tracing.
# OpenTelemetry spans for these paths cost ~5% of the images/s at 8 clients (measured) and go
# nowhere unless a tracing exporter is configured; with one, remove them here to trace them.
UNTRACED_PATHS = (CLASSIFY_PATH, UI_PATH)

# --- int8 at import (`import_model.py --quantize int8`, imgserve/importing/quantize.py).
QUANT_SUFFIX = "-int8"  # stored beside the fp32 model: CLASSIFIER_MODEL=NAME-int8:latest serves it
# The gate, as issue 16 words it: top-1 the same as the fp32 model's on this share of all the held-back
# views, else nothing is stored. (Measured on EfficientNet-Lite0: the whole graph in int8 agrees on 94%
# with its biases corrected, 83% without; fp32 itself, given the same views with +-1 grey level of
# noise, on 78%. README "An int8 model".)
QUANT_MIN_AGREEMENT = 0.99
# Distinct photos needed: half calibrate, half are held back. 8 held-back scenes is the fewest on
# which one lucky scene cannot carry the gate.
QUANT_MIN_PHOTOS = 16
# Of a --photos folder, at most this many (spread evenly over it): 2,400 views, 360 MB of 224 x 224 pixels.
QUANT_MAX_PHOTOS = 100
# Views (crops, mirror images) of each photo: 24 x 8 held-back photos = 192 views at the fewest,
# where 99% allows one disagreement.
QUANT_VIEWS_PER_PHOTO = 24
# Draws of one grey level of noise that a held-back view's fp32 top-1 must survive to count as decided:
# reported beside the gate, which is on all views. Default model: 224 of 288 views survive 1 draw, 216 survive 8.
QUANT_NOISE_DRAWS = 8
