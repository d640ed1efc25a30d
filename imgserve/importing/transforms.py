"""A torchvision transform list, as written in a researcher's training or app code, read into a Preprocessing.

    Resize(256), CenterCrop(224), ToTensor(), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

The text is parsed with `ast`, never evaluated: transform names (`transforms.`, `T.` or `v2.` in front
are fine, and a `Compose([...])` around them), numbers, lists, tuples, keywords and the few constants
these transforms take (InterpolationMode.BICUBIC, torch.float32). Training-time augmentation is refused
with the deterministic transform to use instead, and the server needs a fixed input size.

`reference` rebuilds the same list with torchvision itself, so the import can compare the served path
with the researcher's own transforms (imgserve/importing/faithful.py). Import side only: the server never reads it.
"""

from __future__ import annotations

import ast
import copy
import textwrap
from dataclasses import dataclass, field

from imgserve import config
from imgserve.serving.preprocess import INTERPOLATIONS, Preprocessing

# Drop-in deterministic replacements for training-only transforms, as the torchvision references do.
INSTEAD = {
    "RandomResizedCrop": "Resize({resize}), CenterCrop({size})",
    "RandomCrop": "CenterCrop({size})",
    "RandomSizedCrop": "Resize({resize}), CenterCrop({size})",
}
AUGMENTATIONS = {
    "ColorJitter",
    "GaussianBlur",
    "GaussianNoise",
    "ElasticTransform",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "AugMix",
    "RandomErasing",
}
MULTI_CROP = {"FiveCrop", "TenCrop"}
# Transforms applied to a share p of the photos, p their first argument: at p=1 they are not random at all.
APPLIED_WITH_P = {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomInvert", "RandomGrayscale", "RandomEqualize",
                  "RandomAutocontrast"}  # fmt: skip
# The keys a dict of transform lists gives its inference list under, in the order looked for.
INFERENCE_SPLITS = ("val", "valid", "validation", "test", "eval", "inference")
SUPPORTED = ("Resize", "CenterCrop", "Grayscale", "RGB", "ToTensor", "PILToTensor", "ConvertImageDtype", "ToImage",
             "ToDtype", "Normalize")  # fmt: skip
FLOAT_DTYPES = {"float", "float32", "float16", "float64", "double", "half"}
# PIL's numbers for its filters, which torchvision's Resize still reads (PIL.Image.Resampling).
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Interpolations torchvision runs on a PIL image as Pillow's filter of another name (its pil_modes_mapping).
SAME_ON_PIL = {"nearest_exact": "nearest"}
# How a value is written in place of a name of the researcher's code, for the refusal.
VALUE_EXAMPLES = {"Normalize": "Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])", "Resize": "Resize(256)",
                  "CenterCrop": "CenterCrop(224)"}  # fmt: skip
# Names code built on timm writes for its normalisation (timm.data.constants), with their values.
NAMED_VALUES: dict[str, tuple[float, ...]] = {
    "IMAGENET_DEFAULT_MEAN": (0.485, 0.456, 0.406),
    "IMAGENET_DEFAULT_STD": (0.229, 0.224, 0.225),
    "IMAGENET_INCEPTION_MEAN": (0.5, 0.5, 0.5),
    "IMAGENET_INCEPTION_STD": (0.5, 0.5, 0.5),
    "IMAGENET_DPN_MEAN": (124 / 255, 117 / 255, 104 / 255),
    "IMAGENET_DPN_STD": (1 / (0.0167 * 255),) * 3,
    "OPENAI_CLIP_MEAN": (0.48145466, 0.4578275, 0.40821073),
    "OPENAI_CLIP_STD": (0.26862954, 0.26130258, 0.27577711),
}


class TransformsRefused(ValueError):
    """The transform list cannot be served as written; the message says what to write instead."""


@dataclass(frozen=True)
class Step:
    """One transform call, e.g. Resize(256, interpolation='bicubic'); constants already read."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def parse(text: str) -> list[Step]:
    """The calls of a transform list, in order; refuses anything that is not a plain call of literals."""
    elements = _elements(text)
    while len(elements) == 1 and (inner := _inner(elements[0])) is not None:
        elements = inner
    if not elements:
        raise TransformsRefused(f"--transforms: expected transforms such as 'Resize(256), ToTensor()', got {text!r}")
    return [step for node in elements for step in (_preset(node) or [_step(node)])]


def _inner(node: ast.expr) -> list[ast.expr] | None:
    """What one element holds when it is a container of the list, not a transform: a dict of lists by
    split, a list or tuple (`transform=Compose([...]),` copied with its comma is a tuple), Compose([...])
    (also `Compose(transforms=[...])`), or the `nn.Sequential(Resize(256), ...)` torchvision's docs
    write for scriptable transforms. None for a transform."""
    if isinstance(node, ast.Dict):
        return [_inference_entry(node)]
    if isinstance(node, ast.List | ast.Tuple):
        return node.elts
    if not isinstance(node, ast.Call):
        return None
    if _name(node) == "Sequential":
        return list(node.args)
    if _name(node) != "Compose":
        return None
    given = [*node.args, *(k.value for k in node.keywords if k.arg == "transforms")]
    if len(given) != 1 or not isinstance(given[0], ast.List | ast.Tuple):
        raise TransformsRefused("Compose(...) takes a list: Compose([Resize(256), CenterCrop(224), ToTensor()])")
    return given[0].elts


def _preset(node: ast.AST) -> list[Step] | None:
    """torchvision's weights preset as its steps: `ResNet50_Weights.IMAGENET1K_V2.transforms()`, as code
    using pretrained torchvision models writes it, or `ImageClassification(crop_size=224, ...)`. Read from
    torchvision's own metadata, nothing of the researcher's code run. None when the node is neither."""
    if not isinstance(node, ast.Call):
        return None
    if _name(node) == "ImageClassification":
        kwargs = {k.arg: _literal(k.value, "ImageClassification") for k in node.keywords if k.arg}
        if node.args or "crop_size" not in kwargs:
            raise TransformsRefused("ImageClassification takes keywords, crop_size first: "
                                    "ImageClassification(crop_size=224, resize_size=256)")  # fmt: skip
        return _preset_steps(**kwargs)
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "transforms" and not node.args):
        return None
    weights = ast.unparse(func.value)
    if not isinstance(func.value, ast.Attribute) or not (_name(func.value.value) or "").endswith("_Weights"):
        raise TransformsRefused(
            f"{weights}.transforms() names the weights by a variable of your code: write them as torchvision "
            "names them, e.g. ResNet50_Weights.IMAGENET1K_V2.transforms()"
        )
    from torchvision import models

    try:
        preset = models.get_weight(".".join(weights.split(".")[-2:])).transforms()
    except (ValueError, KeyError, AttributeError):
        raise TransformsRefused(f"{weights}: torchvision has no such weights (torchvision.models.get_weight)") from None
    if type(preset).__name__ != "ImageClassification":
        raise TransformsRefused(f"{weights}.transforms() is not an image classifier's preset: {type(preset).__name__}")
    return _preset_steps(
        crop_size=preset.crop_size, resize_size=preset.resize_size, mean=preset.mean, std=preset.std,
        interpolation=preset.interpolation.value, antialias=preset.antialias,
    )  # fmt: skip


def _preset_steps(
    crop_size: object,
    resize_size: object = 256,
    mean: object = (0.485, 0.456, 0.406),
    std: object = (0.229, 0.224, 0.225),
    interpolation: object = "bilinear",
    antialias: object = True,
) -> list[Step]:
    """What ImageClassification.forward does: resize and crop the PIL image, then uint8 tensor to floats."""
    del antialias  # on a PIL image torchvision always antialiases
    return [
        Step("Resize", (resize_size,), {"interpolation": str(interpolation).lower()}),
        Step("CenterCrop", (crop_size,)),
        Step("PILToTensor"),
        Step("ConvertImageDtype", ("float",)),
        Step("Normalize", (mean, std)),
    ]


def _elements(text: str) -> list[ast.expr]:
    """The list's elements as written; the line it is assigned on (`transform = transforms.Compose([...])`,
    copied from the app's code) gives its right-hand side."""
    try:  # the closing bracket on a line of its own: a comment at the end of the text ends before it
        tree = ast.parse(f"[{text.strip()}\n]", mode="eval").body
    except SyntaxError as e:
        try:
            statements = _statements(text)
        except SyntaxError:
            try:  # one entry of a dict of lists: 'val': transforms.Compose([...]),
                return [ast.parse(f"{{{text.strip()}\n}}", mode="eval").body]
            except SyntaxError:
                raise TransformsRefused(f"--transforms is not a transform list ({e.msg}): {text!r}") from None
        value = _assigned_list(statements)
        if value is None:
            raise TransformsRefused(f"--transforms is not a transform list ({e.msg}): {text!r}") from None
        return [value]
    assert isinstance(tree, ast.List)
    return tree.elts


def _statements(text: str) -> list[ast.stmt]:
    """Lines of code, indented as in a function or not; the first line copied without its indentation (a
    selection starting at its first letter) and the rest with theirs, too."""
    try:
        return ast.parse(textwrap.dedent(text).strip()).body
    except SyntaxError:
        first, _, rest = text.strip("\n").partition("\n")
        return ast.parse(f"{first.strip()}\n{textwrap.dedent(rest)}".strip()).body


def _assigned_list(statements: list[ast.stmt]) -> ast.expr | None:
    """The transform list of lines pasted from the app's code, their names read as the lines assign them:
    `normalize = transforms.Normalize(...)` then `transforms.Compose([..., normalize])`, as PyTorch's
    ImageNet example writes it, or `mean, std = [...], [...]`. The list is the value no later line uses
    (of several, the inference one by its name: val_transform, not train_transform). Imports are passed
    over; nothing is run.
    None when the lines are anything else."""
    names: dict[str, ast.expr] = {}
    used: set[str] = set()
    made: list[tuple[list[str], ast.expr]] = []
    for statement in statements:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            continue
        if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None:
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            source = statement.value
        elif isinstance(statement, ast.Expr):
            targets, source = [], statement.value
        else:
            return None
        value = _Substitute(names, used).visit(source)
        bound: list[str] = []
        for target in targets:
            pairs = [(target, value)]
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                pairs = list(zip(target.elts, value.elts, strict=True))  # mean, std = [...], [...]
            for name, part in pairs:
                if not isinstance(name, ast.Name):
                    return None
                names[name.id] = part
                bound.append(name.id)
        made.append((bound, value))
    if not made:
        return None
    lists = [(b, v) for b, v in made if not set(b) & used and any(isinstance(n, ast.Call) for n in ast.walk(v))]
    if len(lists) > 1:
        inference = [(b, v) for b, v in lists if any(s in n.lower() for n in b for s in INFERENCE_SPLITS)]
        if len(inference) != 1:  # train_transform and one other: the other
            inference = [(b, v) for b, v in lists if not any("train" in n.lower() for n in b)]
        if len(inference) != 1:
            said = ", ".join(" = ".join(b) or ast.unparse(v)[:40] for b, v in lists)
            raise TransformsRefused(
                f"--transforms holds several transform lists ({said}): give the one your app or validation set uses"
            )
        lists = inference
    return (lists or made)[-1][1]


class _Substitute(ast.NodeTransformer):
    """A pasted line's names replaced by the values earlier lines gave them (copies), each name noted as used."""

    def __init__(self, names: dict[str, ast.expr], used: set[str]) -> None:
        self.names, self.used = names, used

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and node.id in self.names:
            self.used.add(node.id)
            return copy.deepcopy(self.names[node.id])
        return node


def _inference_entry(node: ast.Dict) -> ast.expr:
    """Of a dict of transform lists by dataset split (PyTorch's transfer-learning tutorial writes
    `data_transforms = {'train': ..., 'val': ...}`), the inference one: its only entry, or the split's."""
    keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
    if len(keys) == 1:
        return node.values[0]
    for split in INFERENCE_SPLITS:
        if split in keys:
            return node.values[keys.index(split)]
    raise TransformsRefused(
        f"--transforms is a dict of transform lists ({', '.join(map(repr, keys))}): give the one your app or "
        "validation set uses"
    )


def _name(node: ast.AST) -> str | None:
    """The transform's name: Resize for Resize(...), transforms.Resize(...), T.Resize, v2.Resize."""
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _step(node: ast.AST) -> Step:
    name = _name(node) if isinstance(node, ast.Call) else None
    if name is None:
        raise TransformsRefused(f"--transforms: {ast.unparse(node)!r} is not a transform call such as Resize(256)")
    assert isinstance(node, ast.Call)
    try:
        args = tuple(_literal(a, name) for a in node.args)
        kwargs = {k.arg: _literal(k.value, name) for k in node.keywords if k.arg}
    except TransformsRefused:
        if name in SUPPORTED:
            raise
        # Refused below by name (Lambda, augmentation); a Lambda keeps its code as text, to tell an inversion.
        args, kwargs = ((ast.unparse(node.args[0]),) if name == "Lambda" and node.args else ()), {}
    if name == "Resize":  # interpolation=3, PIL's number for bicubic, as older code writes it
        args = tuple(_filter_name(a) if i == 1 else a for i, a in enumerate(args))
        kwargs = {k: _filter_name(v) if k == "interpolation" else v for k, v in kwargs.items()}
    return Step(name, args, kwargs)


def _filter_name(value: object) -> object:
    return PIL_FILTERS.get(value, value) if isinstance(value, int) else value


def _literal(node: ast.AST, where: str) -> object:
    """Numbers, strings, booleans, None, lists and tuples; InterpolationMode.X and torch.<dtype> as names."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        values = [_literal(e, where) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand, where)
        if isinstance(value, int | float):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Attribute | ast.Name):
        constant = node.attr if isinstance(node, ast.Attribute) else node.id
        if constant.lower() in INTERPOLATIONS.keys() | SAME_ON_PIL or constant.lower() in FLOAT_DTYPES | {"uint8"}:
            return constant.lower()  # InterpolationMode.BICUBIC, Image.BICUBIC, torch.float32 ...
        if constant in NAMED_VALUES:  # timm's IMAGENET_DEFAULT_MEAN, also as timm.data.IMAGENET_DEFAULT_MEAN
            return list(NAMED_VALUES[constant])
        if isinstance(node, ast.Name):  # a variable of the researcher's code: its value is not in the text
            example = VALUE_EXAMPLES.get(where)
            raise TransformsRefused(
                f"--transforms: in {where}(...), {node.id!r} is a name from your code, whose value this text does "
                f"not have: write the value itself{f', e.g. {example}' if example else ''}"
            )
    raise TransformsRefused(
        f"--transforms: in {where}(...), {ast.unparse(node)!r} is not a value this reader takes "
        "(numbers, lists, tuples, InterpolationMode.NAME, torch.float32)"
    )


def to_preprocessing(steps: list[Step], model_channels: int | None) -> Preprocessing:
    """The Preprocessing that serves these steps exactly, for a model taking `model_channels` channels."""
    resize = crop = None
    interpolation = "bilinear"
    gray_out: int | None = None  # Grayscale's num_output_channels
    floats = False
    tensor_by = ""  # the step that made the tensor: a Resize after it resizes the tensor, not the PIL image
    scale = 255.0  # the tensor holds u * scale for u = uint8 / 255: 1 after ToTensor, 255 for unscaled floats
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_after_normalize = False  # then a crop larger than the photo pads with 0 in normalised values
    for step in steps:
        if _inverts(step):
            raise TransformsRefused(_invert_instead(steps, step))
        if step.name == "Lambda" and (rgb := _to_rgb(step)):
            raise TransformsRefused(_to_rgb_instead(steps, step, rgb))
        if step.name == "Pad":
            raise TransformsRefused(_pad_instead(step, resize, crop, mean is not None))
        args = _bind(step)
        match step.name:
            case "Resize":
                if resize is not None:
                    raise TransformsRefused("two Resize steps: write the one the model's input gets")
                if crop is not None:
                    raise TransformsRefused(
                        "CenterCrop before Resize crops a part that depends on the photo's resolution; "
                        "write Resize first, then CenterCrop"
                    )
                if args.get("max_size") is not None:
                    raise TransformsRefused(_max_size_instead(step, args.get("size"), args["max_size"]))
                resize = _size(args["size"], "Resize")
                interpolation = str(args.get("interpolation") or "bilinear")
                if tensor_by:
                    _check_tensor_resize(step, tensor_by, interpolation, args.get("antialias", True))
                interpolation = SAME_ON_PIL.get(interpolation, interpolation)
            case "CenterCrop":
                if crop is not None:
                    raise TransformsRefused("two CenterCrop steps: write the one the model's input gets")
                crop = _size(args["size"], "CenterCrop")
                crop_after_normalize = mean is not None
            case "Grayscale":
                gray_out = int(args.get("num_output_channels", 1))
                if gray_out not in (1, 3):
                    raise TransformsRefused("Grayscale(num_output_channels=...) takes 1 or 3")
            case "RGB":  # v2's: 3 channels, what the server makes of every photo; after Grayscale(), 3 grey ones
                if model_channels == 1:
                    raise TransformsRefused(
                        f"{step} makes 3 channels, but the model's first layer takes 1: leave it out"
                    )
                gray_out = 3 if gray_out else None
            case "ToTensor":
                floats, scale = True, 1.0
                tensor_by = tensor_by or f"{step.name}()"
            case "PILToTensor" | "ToImage":
                tensor_by = tensor_by or f"{step.name}()"
            case "ConvertImageDtype" | "ToDtype":
                dtype = str(args.get("dtype", ""))
                if tensor_by and not floats and dtype == "uint8":
                    continue  # v2's ToDtype(torch.uint8, scale=True) after ToImage: the tensor is uint8 already
                if not tensor_by or dtype not in FLOAT_DTYPES:
                    raise TransformsRefused(
                        f"{step}: the model needs float tensors, e.g. ConvertImageDtype(torch.float)"
                    )
                if floats:
                    continue  # float to float (after ToTensor()): neither converts nor scales the values
                floats = True
                # ConvertImageDtype always scales uint8 to [0, 1]; v2's ToDtype only with scale=True.
                scale = 1.0 if step.name == "ConvertImageDtype" or args.get("scale") else 255.0
            case "Normalize":
                if not floats:
                    raise TransformsRefused("Normalize works on float tensors: put ToTensor() before it")
                if mean is not None:
                    raise TransformsRefused("two Normalize steps: combine them into one")
                mean, std = _floats(args["mean"], "mean"), _floats(args["std"], "std")
                if len(mean) != len(std):
                    raise TransformsRefused(f"Normalize: {len(mean)} mean values but {len(std)} std values")
            case _:
                raise TransformsRefused(_unsupported(step))
    if not floats and tensor_by:  # uint8 pixels: the code after the list, or the model, makes them floats
        raise TransformsRefused(
            f"the list ends in {tensor_by}'s uint8 pixels (0..255), and what the model gets depends on what your "
            "code or model does to them next: if it divides by 255 (x.float() / 255), add "
            "ConvertImageDtype(torch.float) at the end (it scales so); if it only makes them floats (x.float()), add "
            "ToDtype(torch.float32) (0..255 as floats)"
        )
    if not floats:
        raise TransformsRefused("the list never makes a float tensor: add ToTensor() (after Resize/CenterCrop)")
    if resize is None:
        raise TransformsRefused(
            "the server needs a fixed input size, and this list has no Resize: add Resize(N) before "
            "CenterCrop(N), or Resize((H, W)) for an exact size"
            + (" (a CenterCrop alone takes a part that depends on the photo's resolution)" if crop else "")
        )
    if crop is None:
        if isinstance(resize, int):
            raise TransformsRefused(
                f"Resize({resize}) keeps the photo's aspect ratio, so the model's input size would depend on "
                f"the photo; the server needs a fixed size: add CenterCrop({resize}), or write "
                f"Resize(({resize}, {resize})) to squeeze the photo to that size"
            )
        crop = resize
    pads = any(c > r for c, r in zip(_pair(crop), _pair(resize), strict=True))
    if pads and crop_after_normalize:
        raise TransformsRefused(
            f"CenterCrop({crop}) after Normalize pads the photo, larger than Resize({resize}) makes it, with 0 in "
            "normalised values, a grey the server cannot give: put CenterCrop before Normalize (it then pads "
            "with black, as the server does)"
        )

    if model_channels is not None and gray_out is not None and gray_out != model_channels:
        raise TransformsRefused(
            f"Grayscale(num_output_channels={gray_out}) gives {gray_out} channel(s) but the model's first layer "
            f"takes {model_channels}; write Grayscale(num_output_channels={model_channels})"
        )
    channels = model_channels or gray_out or 3
    mean, std = mean or [0.0], std or [1.0]
    if len(mean) not in (1, channels) and model_channels is None and gray_out is None:
        # Checked before the model is loaded, or of a model whose channels its layers do not say: not "3".
        raise TransformsRefused(
            f"Normalize has {len(mean)} values per statistic, one per channel of the model's input; photos give 1 "
            "(gray) or 3 (RGB) channels, and the server serves those"
        )
    if len(mean) not in (1, channels):
        raise TransformsRefused(
            f"Normalize has {len(mean)} values per statistic but the model takes {channels} channels"
        )
    if len(mean) == 1:  # torchvision broadcasts one value over every channel
        mean, std = mean * channels, std * channels
    # The model sees (u * scale - m) / s for u = uint8 / 255, which is (u - m / scale) / (s / scale).
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=tuple(m / scale for m in mean),
        std=tuple(v / scale for v in std),
        interpolation=interpolation,
        channels=channels,
        grayscale=gray_out is not None or channels == 1,
    )


def _max_size_instead(step: Step, size: object, max_size: object) -> str:
    """Resize's max_size caps the longer side: the photos it changes, which its refusal names, are those
    longer than max_size / size; dropping it serves those otherwise (the import's check, on the list without
    it, would not see that)."""
    side = size[0] if isinstance(size, list | tuple) and len(size) == 1 else size
    if not isinstance(side, int) or not isinstance(max_size, int) or max_size <= side:
        return (
            f"{step} makes the longer side {max_size}, so the size the model gets depends on the photo's shape; the "
            f"server needs a fixed size: Resize(({max_size}, {max_size})) to squeeze the photo, or Resize(N), "
            "CenterCrop(N) to crop it, as your model was trained"
        )
    return (
        f"{step} shrinks a photo whose longer side would pass {max_size} (one longer than {max_size / side:.3g}:1) "
        f"to {max_size}, which the server cannot: drop max_size only if your photos are never that long (then it "
        "does nothing); on longer ones the answers would differ from your code's"
    )


def _check_tensor_resize(step: Step, tensor_by: str, interpolation: str, antialias: object) -> None:
    """A Resize after ToTensor()/ToImage() runs on the tensor, by torch's interpolate, not Pillow's resize.
    The server resizes as Pillow does; torch does the same, within a grey level or two, except without
    antialiasing (every photo larger than the input aliases) and in its NEAREST (half a pixel off)."""
    check = "; the import then compares the served answers with that list on your photos (--photos)"
    if interpolation in ("box", "hamming"):
        raise TransformsRefused(
            f"{step} resizes a tensor (it comes after {tensor_by}), which torchvision cannot do with "
            f"InterpolationMode.{interpolation.upper()} (it raises): put Resize before {tensor_by}, where it "
            "resizes the PIL image as the server does"
        )
    if interpolation == "nearest":
        raise TransformsRefused(
            f"{step} resizes a tensor (it comes after {tensor_by}), where InterpolationMode.NEAREST picks pixels "
            "half a pixel off from Pillow's NEAREST, which the server runs: to serve it so, write "
            "InterpolationMode.NEAREST_EXACT (Pillow's NEAREST, on a tensor too)" + check
        )
    if antialias is not True and interpolation in ("bilinear", "bicubic"):
        raise TransformsRefused(
            f"{step} resizes a tensor (it comes after {tensor_by}) without antialiasing, so a photo larger than "
            "the input aliases; the server always antialiases, as Resize does on a PIL image: to serve it so, "
            f"drop antialias={antialias} (torchvision's default is True)" + check
        )


def _bind(step: Step) -> dict:
    """The step's arguments by name, as torchvision's signatures have them."""
    names = {
        "Resize": ("size", "interpolation", "max_size", "antialias"),
        "CenterCrop": ("size",),
        "Grayscale": ("num_output_channels",),
        "ConvertImageDtype": ("dtype",),
        "ToDtype": ("dtype", "scale"),
        "Normalize": ("mean", "std", "inplace"),
    }.get(step.name, ())
    if step.name not in SUPPORTED:
        raise TransformsRefused(_unsupported(step))
    if len(step.args) > len(names):
        raise TransformsRefused(f"{step}: too many arguments for {step.name}")
    bound = dict(zip(names, step.args, strict=False))
    for key, value in step.kwargs.items():
        if key not in names:
            raise TransformsRefused(f"{step}: {step.name} has no argument {key!r}")
        bound[key] = value
    required = {"Resize": ["size"], "CenterCrop": ["size"], "Normalize": ["mean", "std"]}.get(step.name, [])
    for key in required:
        if key not in bound:
            raise TransformsRefused(f"{step}: {step.name} needs {key}")
    if "interpolation" in bound and bound["interpolation"] not in INTERPOLATIONS.keys() | SAME_ON_PIL:
        if isinstance(bound["interpolation"], int) and isinstance(bound.get("size"), int):  # Resize(224, 224)
            size = (bound["size"], bound["interpolation"])
            raise TransformsRefused(
                f"{step}: Resize's second argument is the interpolation, not the width (torchvision refuses it "
                f"too); for a {size[0]} x {size[1]} input write Resize({size})"
            )
        raise TransformsRefused(f"{step}: interpolation must be one of {sorted(INTERPOLATIONS)}")
    return bound


def _pad_instead(step: Step, resize: object, crop: object, normalized: bool) -> str:
    """Pad's refusal. A black border around a photo of fixed size is what CenterCrop larger than the
    photo gives (torchvision's and the server's): when it is that, the list to write."""
    padding = step.kwargs.get("padding", step.args[0] if step.args else None)
    fill = step.kwargs.get("fill", step.args[1] if len(step.args) > 1 else 0)
    mode = step.kwargs.get("padding_mode", step.args[2] if len(step.args) > 2 else "constant")
    refusal = (
        f"{step} is not a transform the server can apply; a black border around a photo of fixed size is "
        "CenterCrop larger than the photo, e.g. Resize((28, 28)), CenterCrop((32, 32)) for Resize((28, 28)), Pad(2)"
    )
    sides = [padding] if isinstance(padding, int) else list(padding) if isinstance(padding, list | tuple) else []
    if not sides or not all(isinstance(v, int) and v >= 0 for v in sides) or len(sides) not in (1, 2, 4):
        return refusal
    left, top, right, bottom = (sides * 4)[:4] if len(sides) == 1 else (sides * 2) if len(sides) == 2 else sides
    size = resize if isinstance(resize, tuple) and crop in (None, resize) else None  # the photo's size before Pad
    if fill != 0 or mode != "constant" or normalized or size is None:
        return refusal
    h, w = size[0] + top + bottom, size[1] + left + right
    # CenterCrop puts the photo at ((w - width) // 2, (h - height) // 2): Pad's border must split so.
    if (left, top) != ((w - size[1]) // 2, (h - size[0]) // 2):
        return refusal
    return (
        f"{step} adds a black border, which the server gives as CenterCrop larger than the photo does (as "
        f"torchvision's does): in place of Resize({size}), {step} write Resize({size}), CenterCrop({(h, w)})"
    )


def _probability(step: Step) -> object:
    """p of a RandomX step that applies X to a share p of the photos (None: not such a step, or not given)."""
    if step.name not in APPLIED_WITH_P:
        return None
    return step.kwargs.get("p", step.args[0] if step.args else None)


def _inverts(step: Step) -> bool:
    """RandomInvert(p=1.0), or a Lambda inverting the photo: `lambda x: 1 - x`, `ImageOps.invert`, TF.invert."""
    if step.name == "RandomInvert":
        return _probability(step) == 1
    if step.name != "Lambda" or not step.args:
        return False
    try:
        code = ast.parse(str(step.args[0]), mode="eval").body
    except SyntaxError:  # Lambda("text"): no code at all
        return False
    if not isinstance(code, ast.Lambda):
        return _name(code) == "invert"  # Lambda(ImageOps.invert)
    body, params = code.body, [a.arg for a in code.args.args]
    if isinstance(body, ast.Call):
        return _name(body) == "invert"
    return (
        isinstance(body, ast.BinOp)
        and isinstance(body.op, ast.Sub)
        and isinstance(body.left, ast.Constant)
        and body.left.value in (1, 255)
        and isinstance(body.right, ast.Name)
        and body.right.id in params
    )


def _to_rgb(step: Step) -> str | None:
    """How a Lambda makes a photo RGB, as code for gray images fed to an RGB model writes it: "repeat" its
    one channel 3 times (`x.repeat(3, 1, 1)`, `x.expand(3, -1, -1)`, `torch.cat([x, x, x])`), "convert" it
    (`img.convert('RGB')`, or a repeat only of a 1-channel tensor). None for any other code."""
    try:
        code = ast.parse(str(step.args[0]), mode="eval").body if step.args else None
    except SyntaxError:
        return None
    if not isinstance(code, ast.Lambda) or len(code.args.args) != 1:
        return None
    param = code.args.args[0].arg

    def kind(body: ast.expr) -> str | None:
        if isinstance(body, ast.IfExp):  # x.repeat(3, 1, 1) if x.shape[0] == 1 else x: gray ones only
            branches = {kind(body.body), kind(body.orelse)}
            return "convert" if branches & {"repeat", "convert"} and branches <= {"repeat", "convert", "same"} else None
        if isinstance(body, ast.Name):
            return "same" if body.id == param else None
        if not isinstance(body, ast.Call):
            return None
        numbers = [a.value if isinstance(a, ast.Constant) else _literal_or_none(a) for a in body.args]
        func = body.func
        method = func.attr if isinstance(func, ast.Attribute) and ast.unparse(func.value) == param else None
        if method in ("repeat", "expand") and numbers[:1] == [3] and len(numbers) == 3:
            return "repeat"
        if method == "convert" and numbers == ["RGB"]:
            return "convert"
        if _name(body) in ("cat", "concat", "concatenate") and body.args and isinstance(body.args[0], ast.List):
            parts = body.args[0].elts
            return "repeat" if len(parts) == 3 and all(ast.unparse(e) == param for e in parts) else None
        return None

    found = kind(code.body)
    return found if found in ("repeat", "convert") else None


def _literal_or_none(node: ast.AST) -> object:
    try:
        return _literal(node, "Lambda")
    except TransformsRefused:
        return None


def _to_rgb_instead(steps: list[Step], lam: Step, how: str) -> str:
    """The refusal of a Lambda making photos RGB, with the list that does it: the server makes every
    photo RGB itself (a gray one as 3 equal channels), and Grayscale(num_output_channels=3) every one gray."""
    said = f"Lambda({lam.args[0]})"
    gray = next((s for s in steps if s.name == "Grayscale"), None)
    if how == "convert" and gray is None:
        rest = [str(s) for s in steps if s is not lam]
        return (
            f"{said} makes a photo RGB, which the server does to every photo itself (a gray one as 3 equal "
            f"channels); it runs no code: leave it out, write {', '.join(rest)}"
        )
    three = Step("Grayscale", (), {"num_output_channels": 3})
    rest = [str(three if s is gray else s) for s in steps if s is not lam]
    return (
        f"{said} repeats a gray photo's one channel 3 times (a colour photo it would make 9 channels: your "
        "photos are gray); the server runs no code, but Grayscale(num_output_channels=3) gives every photo "
        f"so: write {', '.join(rest if gray else [str(three), *rest])}"
    )


def _invert_instead(steps: list[Step], invert: Step) -> str:
    """The refusal of an inversion, with the list that does the same arithmetic: for pixels u in [0, 1],
    Normalize(m, s) of 1 - u is (u - (1 - m)) / -s, which Normalize(1 - m, -s) computes."""
    said = f"{invert.name}(...)" if invert.name == "Lambda" else str(invert)
    message = (
        f"{said} inverts every photo (as for a model trained on white digits on black, MNIST's); the server "
        "runs no code and no inversion of its own"
    )
    normalize = next((s for s in steps if s.name == "Normalize"), None)
    later = normalize is not None and steps.index(normalize) < steps.index(invert)
    unscaled = any(s.name == "ToDtype" and not _bind(s).get("scale") for s in steps)
    if later or unscaled or not any(s.name in ("ToTensor", "ConvertImageDtype", "ToDtype") for s in steps):
        return message + ": invert the photos before sending them, or fold the inversion into the model"
    mean, std = ([0.0], [1.0]) if normalize is None else (_floats(_bind(normalize)["mean"], "mean"),
                                                          _floats(_bind(normalize)["std"], "std"))  # fmt: skip
    folded = f"Normalize({[round(1 - m, 6) for m in mean]}, {[round(-v, 6) for v in std]})"
    rest = [str(s) for s in steps if s is not invert and s is not normalize]
    return (
        f"{message}, but Normalize does the same arithmetic with 1 - mean and a negative std "
        f"(torchvision's Normalize takes it too): write {', '.join([*rest, folded])}"
    )


def _unsupported(step: Step) -> str:
    p = _probability(step)
    if p == 0:
        return f"{step} applies to no photo (p=0): leave it out"
    if p == 1 and step.name == "RandomGrayscale":
        return f"{step} makes every photo gray, in 3 channels: write Grayscale(num_output_channels=3)"
    if p == 1:
        return (
            f"{step} applies to every photo (p=1): not augmentation, but a step the server cannot apply; it "
            f"serves {', '.join(SUPPORTED)}"
        )
    if step.name in INSTEAD:
        size = step.args[0] if step.args else step.kwargs.get("size", 224)
        sides = [size] if isinstance(size, int) else list(size) if isinstance(size, list | tuple) else []
        if len(sides) == 1 or (len(sides) == 2 and sides[0] == sides[1]):  # [224] and (224, 224) are 224
            size, sides = sides[0], sides[:1]
        # An oblong crop gets an oblong resize in proportion: a shorter side alone could be narrower than it.
        resize = tuple(round(v / config.DEFAULT_CROP_RATIO) for v in sides) if len(sides) == 2 else None
        side = size if isinstance(size, int) else 224
        instead = INSTEAD[step.name].format(size=size, resize=resize or round(side / config.DEFAULT_CROP_RATIO))
        return f"{step.name} is training-time augmentation (random); at inference use {instead}"
    if step.name == "GaussianBlur" and (sigma := _fixed_sigma(step)) is not None:
        size = step.kwargs.get("kernel_size", step.args[0] if step.args else 3)
        return (
            f"{step} blurs every photo alike (sigma {sigma} is fixed: no augmentation), which the server cannot, and "
            "leaving it out would change what the model sees: blur in the model instead, a subclass whose forward "
            f"starts with x = torchvision.transforms.functional.gaussian_blur(x, {size}, {sigma}) (your weights, "
            "--arch yourfile.py:Blurred), and leave GaussianBlur out of --transforms: where your list blurs after "
            "Resize and CenterCrop, the model gets the same input (the blur commutes with Normalize)"
        )
    if step.name.startswith("Random") or step.name in AUGMENTATIONS:
        return f"{step.name} is training-time augmentation (random): leave it out of the inference transforms"
    if step.name in MULTI_CROP:
        return f"{step.name} makes several crops per image; the server classifies one: use CenterCrop"
    if step.name == "ToPILImage":
        return "ToPILImage makes the PIL image the server starts from (your app read it as an array): leave it out"
    if step.name == "Lambda":
        return "Lambda runs code the server cannot store; write the transforms it does as transform names"
    return f"{step.name} is not a transform the server can apply; supported: {', '.join(SUPPORTED)}"


def _fixed_sigma(step: Step) -> float | None:
    """GaussianBlur's sigma when it is one value, not a range drawn from (its default (0.1, 2.0) is a range)."""
    sigma = step.kwargs.get("sigma", step.args[1] if len(step.args) > 1 else None)
    if isinstance(sigma, list | tuple) and len(sigma) == 2 and sigma[0] == sigma[1]:
        sigma = sigma[0]
    return float(sigma) if isinstance(sigma, int | float) and not isinstance(sigma, bool) else None


def _size(value: object, where: str) -> int | tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, list | tuple) and len(value) == 1:
        return _size(value[0], where)  # torchvision reads [n] as n
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise TransformsRefused(f"{where}: size must be a positive whole number or (height, width), got {value!r}")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def _floats(value: object, what: str) -> list[float]:
    values = value if isinstance(value, list | tuple) else [value]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values or len(numbers) != len(values):
        raise TransformsRefused(f"Normalize: {what} must be numbers, got {value!r}")
    return [float(v) for v in numbers]
