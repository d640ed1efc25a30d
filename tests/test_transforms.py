"""Transform lists as researchers write them: read safely, served exactly, refused with what to write instead."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import v2

from imgserve.importing import faithful
from imgserve.importing.transforms import TransformsRefused, parse, to_preprocessing
from imgserve.serving.preprocess import Preprocessing, preprocess
from tests.helpers import DATA


def prep_of(text: str, channels: int | None = 3) -> Preprocessing:
    return to_preprocessing(parse(text), channels)


@pytest.mark.parametrize(
    ("text", "channels", "expected"),
    [
        (
            "Resize(256), CenterCrop(224), ToTensor(), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])",
            3,
            Preprocessing(),
        ),
        (
            "transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor()])",
            3,
            Preprocessing(resize=(224, 224), crop=(224, 224), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "[T.Resize(28), T.CenterCrop(28), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]",
            1,
            Preprocessing(resize=28, crop=28, mean=(0.1307,), std=(0.3081,), channels=1),
        ),
        (
            "Grayscale(num_output_channels=3), Resize(160, interpolation=InterpolationMode.BICUBIC), CenterCrop(144), "
            "ToTensor(), Normalize(mean=0.5, std=0.25)",
            3,
            Preprocessing(160, 144, (0.5,) * 3, (0.25,) * 3, "bicubic", channels=3, grayscale=True),
        ),
        (
            "v2.ToImage(), v2.Resize(size=(96, 128), antialias=True), v2.ToDtype(torch.float32, scale=True)",
            3,
            Preprocessing(resize=(96, 128), crop=(96, 128), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "Resize(64), CenterCrop(64), PILToTensor(), ConvertImageDtype(torch.float)",
            None,
            Preprocessing(resize=64, crop=64, mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "v2.Compose([v2.ToImage(), v2.ToDtype(torch.uint8, scale=True), v2.Resize(256), v2.CenterCrop(224), "
            "v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])",
            3,
            Preprocessing(),
        ),
        (
            "Resize(256, interpolation=3), CenterCrop(224), ToTensor()",
            3,
            Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), interpolation="bicubic"),
        ),
        (
            """
            val_transform = transforms.Compose([
                transforms.Resize(size=256),  # shorter side
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ])
            """,
            3,
            Preprocessing(),
        ),
        (
            """data_transforms = {
                'train': transforms.Compose([transforms.RandomResizedCrop(224), transforms.ToTensor()]),
                'val': transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                           transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
            }""",
            3,
            Preprocessing(),
        ),
        (
            "'val': transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]),",
            3,
            Preprocessing(resize=(32, 32), crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "Resize((64, 64)), ToTensor(), v2.ToDtype(torch.float32)",
            3,
            Preprocessing(resize=(64, 64), crop=(64, 64), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "Resize(256), CenterCrop(224), ToTensor(), Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)",
            3,
            Preprocessing(),
        ),
        (
            "Resize(248), CenterCrop(224), ToTensor(), "
            "Normalize(mean=timm.data.IMAGENET_INCEPTION_MEAN, std=timm.data.IMAGENET_INCEPTION_STD)",
            3,
            Preprocessing(resize=248, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ),
        (
            "Resize(32, interpolation=InterpolationMode.NEAREST_EXACT), CenterCrop(32), ToTensor()",
            3,
            Preprocessing(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest"),
        ),
        (
            """transforms.Compose([
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
            ])  # the validation transforms, as in train.py""",
            3,
            Preprocessing(mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "'val': transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]),  # eval\r\n",
            3,
            Preprocessing(resize=(32, 32), crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "transform=transforms.Compose(transforms=[transforms.Resize((32, 32)), transforms.ToTensor()]),",
            3,
            Preprocessing(resize=(32, 32), crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        (
            "torch.nn.Sequential(T.Resize(256), T.CenterCrop(224), T.ToTensor(), "
            "T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))",
            3,
            Preprocessing(),
        ),
        (
            """
            normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406],
                                             std=[0.229, 0.224, 0.225])
            val_transforms = transforms.Compose([
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                normalize,
            ])
            """,
            3,
            Preprocessing(),
        ),
        (
            """from torchvision import transforms as T
            IMG_SIZE = 28
            mean, std = (0.1307,), (0.3081,)
            train_tf = T.Compose([T.RandomRotation(10), T.Resize(IMG_SIZE), T.ToTensor(), T.Normalize(mean, std)])
            test_tf = T.Compose([T.Resize(IMG_SIZE), T.CenterCrop(IMG_SIZE), T.ToTensor(), T.Normalize(mean, std)])
            """,
            1,
            Preprocessing(resize=28, crop=28, mean=(0.1307,), std=(0.3081,), channels=1),
        ),
        (
            "v2.RGB(), v2.Resize(256), v2.CenterCrop(224), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), "
            "v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])",
            3,
            Preprocessing(),
        ),
        (
            "v2.Grayscale(), v2.RGB(), v2.Resize((32, 32)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)",
            3,
            Preprocessing(resize=(32, 32), crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), grayscale=True),
        ),
    ],
    ids=[
        "imagenet",
        "compose with prefixes",
        "gray mnist",
        "keywords and constants",
        "v2",
        "pil to tensor",
        "v2 as its docs write it",
        "PIL's number for bicubic",
        "the app's assignment, on several lines with comments",
        "the transfer-learning tutorial's dict: its 'val' list",
        "one entry of that dict",
        "float to float converts nothing",
        "timm's named constants",
        "timm's constants under their module",
        "nearest-exact: Pillow's nearest on a PIL image",
        "a comment after the list, on its last line",
        "a dict's entry with a comment, copied with a Windows line end",
        "a dataset's transform= argument, its list a keyword of Compose",
        "nn.Sequential, as torchvision's docs write scriptable transforms",
        "pytorch/examples' ImageNet lines: normalize named on a line of its own",
        "a script's lines: sizes and statistics named, a train list and a test list",
        "v2's RGB(): what the server makes of every photo",
        "v2's RGB() after Grayscale(): three grey channels",
    ],
)
def test_a_transform_list_reads_into_the_preprocessing_it_means(text, channels, expected):
    assert prep_of(text, channels) == expected


def test_unscaled_floats_and_normalize_fold_into_the_same_arithmetic_as_torchvision():
    """ToDtype without scale keeps 0..255 floats; Normalize then works on those: the model sees the same."""
    text = "Resize((32, 32)), ToImage(), ToDtype(torch.float32), Normalize([100.0, 120.0, 130.0], [50.0, 60.0, 70.0])"
    prep = prep_of(text)
    photo = Image.open(DATA / "coffee.jpg").convert("RGB")
    expected = faithful.reference_transform(parse(text))(photo)
    pixels = torch.from_numpy(T.PILToTensor()(T.Resize((32, 32))(photo)).numpy()).float()
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    assert torch.allclose((pixels / 255 - mean) / std, expected, atol=1e-4)


@pytest.mark.parametrize("after", ["x.float() / 255", "x.float()"])
def test_uint8_pixels_are_refused_with_the_step_that_gives_what_the_code_after_the_list_does(after):
    """PILToTensor() gives 0..255 and the code that runs the list (or the model's forward) makes them floats,
    divided by 255 or not: ToTensor() for both, as was said, would serve the second 255 times too dark."""
    text = "Resize((32, 32)), PILToTensor()"
    with pytest.raises(TransformsRefused) as e:
        prep_of(text)
    told = str(e.value).split(f"({after}), add ")[1].split(" ")[0]
    photo = Image.open(DATA / "cat.jpg").convert("RGB")
    theirs = eval(after, {"x": faithful.reference_transform(parse(text))(photo)})  # the test's own text
    served = faithful.reference_transform(parse(f"{text}, {told}"))(photo)
    assert served.dtype == torch.float32 and torch.equal(served, theirs)
    prep = prep_of(f"{text}, {told}")
    assert prep.mean == (0.0,) * 3 and prep.std == ((1.0,) if "/" in after else (1 / 255,)) * 3


def test_the_stored_recipe_reads_back_as_itself():
    for prep in [
        Preprocessing(),
        Preprocessing(
            resize=(120, 80), crop=(100, 64), mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7), interpolation="nearest"
        ),
        Preprocessing(resize=30, crop=28, mean=(0.1307,), std=(0.3081,), channels=1),
        Preprocessing(resize=256, crop=224, channels=3, grayscale=True, interpolation="lanczos"),
    ]:
        assert prep_of(prep.transforms(), prep.channels) == prep, prep.transforms()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RandomResizedCrop(224), ToTensor()", "at inference use Resize(256), CenterCrop(224)"),
        ("RandomResizedCrop((224, 224)), ToTensor()", "at inference use Resize(256), CenterCrop(224)"),
        ("RandomResizedCrop((112, 336)), ToTensor()", "at inference use Resize((128, 384)), CenterCrop((112, 336))"),
        ("Resize(256), RandomCrop(224), ToTensor()", "at inference use CenterCrop(224)"),
        (
            "Resize(256), CenterCrop(224), RandomHorizontalFlip(), ToTensor()",
            "leave it out of the inference transforms",
        ),
        (
            "Resize(256), CenterCrop(224), ColorJitter(0.4, 0.4), ToTensor()",
            "ColorJitter is training-time augmentation",
        ),
        ("Resize(256), Lambda(lambda x: x * 2), ToTensor()", "Lambda runs code the server cannot store"),
        ("Resize(256), TenCrop(224), ToTensor()", "makes several crops per image"),
        ("Resize(256), ToTensor()", "the server needs a fixed size: add CenterCrop(256)"),
        ("CenterCrop(224), ToTensor()", "the server needs a fixed input size, and this list has no Resize"),
        ("ToTensor(), Normalize([0.5], [0.5])", "this list has no Resize"),
        ("Resize(256), CenterCrop(224)", "add ToTensor()"),
        (
            "Resize(256), CenterCrop(224), PILToTensor()",
            "if it divides by 255 (x.float() / 255), add ConvertImageDtype(torch.float) at the end (it scales so); "
            "if it only makes them floats (x.float()), add ToDtype(torch.float32) (0..255 as floats)",
        ),
        ("Resize(256), CenterCrop(224), Normalize([0.5], [0.5]), ToTensor()", "put ToTensor() before it"),
        ("Resize(256), CenterCrop(224), ToTensor(), Normalize([0.5, 0.5], [0.5])", "2 mean values but 1 std values"),
        (
            "Resize(256, max_size=320), CenterCrop(224), ToTensor()",
            "Resize(256, max_size=320) shrinks a photo whose longer side would pass 320 (one longer than 1.25:1) to "
            "320, which the server cannot: drop max_size only if your photos are never that long",
        ),
        (
            "v2.Resize(size=None, max_size=224), v2.CenterCrop(224), v2.ToImage(), "
            "v2.ToDtype(torch.float32, scale=True)",
            "Resize(size=None, max_size=224) makes the longer side 224, so the size the model gets depends on the "
            "photo's shape",
        ),
        ("Resize(size=-3), CenterCrop(224), ToTensor()", "size must be a positive whole number"),
        ("Resize(256), CenterCrop(224), ToTensor(), Pad(4)", "Pad(4) is not a transform the server can apply; a black"),
        ("Resize((28, 28)), Pad(2, fill=255), ToTensor()", "is not a transform the server can apply"),
        ("Resize(256, interpolation=InterpolationMode.MAGIC), CenterCrop(224), ToTensor()", "is not a value"),
        ("ToTensor(), Resize(64, interpolation=InterpolationMode.BOX)", "which torchvision cannot do with"),
        ("Resize(__import__('os').getcwd()), ToTensor()", "is not a value this reader takes"),
        (
            "Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)",
            "'mean' is a name from your code, whose value this text does not have: write the value itself, "
            "e.g. Normalize([0.485",
        ),
        ("Resize(IMG_SIZE), CenterCrop(224), ToTensor()", "'IMG_SIZE' is a name from your code"),
        ("ToPILImage(), Resize(256), CenterCrop(224), ToTensor()", "ToPILImage makes the PIL image the server starts"),
        ("Resize(256", "is not a transform list"),
        ("Resize(224, 224), ToTensor()", "Resize's second argument is the interpolation, not the width"),
        ("transform = None", "is not a transform call"),
        ("{'a': Compose([ToTensor()]), 'b': Compose([ToTensor()])}", "a dict of transform lists ('a', 'b'): give"),
        ("", "expected transforms such as"),
        (
            "a_tf = Compose([Resize((8, 8)), ToTensor()])\nb_tf = Compose([Resize((9, 9)), ToTensor()])",
            "--transforms holds several transform lists (a_tf, b_tf): give the one your app or validation set uses",
        ),
        ("Resize(256), CenterCrop(224), RandomHorizontalFlip(p=0), ToTensor()", "applies to no photo (p=0): leave"),
        ("Resize(256), CenterCrop(224), RandomHorizontalFlip(1.0), ToTensor()", "applies to every photo (p=1)"),
        ("Resize(256), CenterCrop(224), RandomGrayscale(p=1), ToTensor()", "write Grayscale(num_output_channels=3)"),
        (
            "Resize((28, 28)), ToTensor(), Normalize([0.5], [0.5]), Lambda(lambda x: 1.0 - x)",
            "inverts every photo (as for a model trained on white digits on black, MNIST's); the server runs no "
            "code and no inversion of its own: invert the photos before sending them",
        ),
        ("Resize((28, 28)), Lambda('x'), ToTensor()", "Lambda runs code the server cannot store"),
        ("Resize(28), ToTensor(), Normalize([0.5], [0.5]), CenterCrop(32)", "put CenterCrop before Normalize"),
        (
            "ToTensor(), Resize(64, antialias=False), CenterCrop(64)",
            "resizes a tensor (it comes after ToTensor()) without antialiasing",
        ),
        (
            "v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((96, 128), antialias=False)",
            "comes after ToImage()) without antialiasing, so a photo larger than the input aliases",
        ),
        (
            "PILToTensor(), Resize(32, interpolation=InterpolationMode.NEAREST), CenterCrop(32), "
            "ConvertImageDtype(torch.float)",
            "write InterpolationMode.NEAREST_EXACT",
        ),
    ],
)
def test_what_cannot_be_served_as_written_is_refused_with_what_to_write(text, message):
    with pytest.raises(TransformsRefused, match=None) as e:
        prep_of(text)
    assert message in str(e.value)


def test_a_gaussian_blur_of_fixed_sigma_is_not_called_augmentation_and_the_blur_in_the_model_is_the_same():
    """GaussianBlur(5, sigma=1.0) in an eval list blurs every photo alike: leaving it out, as the refusal of a
    random augmentation says, would serve another input. The refusal's blur, run in the model, is the same."""
    text = (
        "Resize(40), CenterCrop(32), GaussianBlur(5, sigma=1.0), ToTensor(), "
        "Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])"
    )
    with pytest.raises(TransformsRefused) as e:
        prep_of(text)
    message = str(e.value)
    assert "GaussianBlur(5, sigma=1.0) blurs every photo alike" in message and "leave it out" not in message
    blur = message.split("starts with x = ")[1].split(" (your weights")[0]
    assert blur == "torchvision.transforms.functional.gaussian_blur(x, 5, 1.0)"
    photo = Image.open(DATA / "cat.jpg").convert("RGB")
    theirs = faithful.reference_transform(parse(text))(photo)
    rest = parse(text.replace("GaussianBlur(5, sigma=1.0), ", ""))
    ours = T.functional.gaussian_blur(faithful.reference_transform(rest)(photo), 5, 1.0)
    assert (ours - theirs).abs().max() <= 1 / 255 / 0.2  # within a grey level: theirs is rounded to 8 bits
    with pytest.raises(TransformsRefused, match="GaussianBlur is training-time augmentation"):
        prep_of("Resize(40), CenterCrop(32), GaussianBlur(5, sigma=(0.1, 2.0)), ToTensor()")


@pytest.mark.parametrize(
    ("text", "theirs"),
    [
        (
            "Grayscale(), Resize(40), CenterCrop(32), ToTensor(), Lambda(lambda x: x.repeat(3, 1, 1)), "
            "Normalize([0.5], [0.5])",
            T.Compose(
                [
                    T.Grayscale(),
                    T.Resize(40),
                    T.CenterCrop(32),
                    T.ToTensor(),
                    T.Lambda(lambda x: x.repeat(3, 1, 1)),
                    T.Normalize([0.5], [0.5]),
                ]
            ),
        ),
        (
            "transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Lambda(lambda t: t.expand(3, -1, -1))",
            T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda t: t.expand(3, -1, -1))]),
        ),
        (
            "Resize((32, 32)), ToTensor(), Lambda(lambda x: torch.cat([x, x, x], dim=0))",
            T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda x: torch.cat([x, x, x], dim=0))]),
        ),
        (
            "Lambda(lambda img: img.convert('RGB')), Resize((32, 32)), ToTensor()",
            T.Compose([T.Lambda(lambda img: img.convert("RGB")), T.Resize((32, 32)), T.ToTensor()]),
        ),
        (
            "Resize((32, 32)), ToTensor(), Lambda(lambda x: x.repeat(3, 1, 1) if x.shape[0] == 1 else x)",
            T.Compose(
                [T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda x: x.repeat(3, 1, 1) if x.shape[0] == 1 else x)]
            ),
        ),
    ],
    ids=["Grayscale() and repeat", "expand", "torch.cat", "convert('RGB')", "repeat a gray one only"],
)
def test_a_lambda_making_gray_photos_rgb_is_refused_with_the_list_that_gives_the_same(text, theirs):
    """Gray datasets (MNIST, X-rays) fed to an RGB model: the Lambda that makes 3 channels is code, but the
    refusal's list gives their model the same input, from the gray photos their code read and from colour ones."""
    with pytest.raises(TransformsRefused, match=r"the server runs no code|which the server does to every") as e:
        prep_of(text)
    instead = str(e.value).split("write ")[-1]
    served = faithful.reference_transform(parse(instead))
    gray = Image.open(DATA / "cat.jpg").convert("L")
    assert torch.allclose(served(gray.convert("RGB")), theirs(gray), atol=1e-6)  # the server opens photos as RGB
    assert prep_of(instead).channels == 3
    if "convert" in text or "else x" in text:  # RGB photos stay colour, as in their code
        photo = Image.open(DATA / "cat.jpg").convert("RGB")
        assert torch.allclose(served(photo), theirs(photo), atol=1e-6)


@pytest.mark.parametrize(
    ("text", "invert"),
    [
        ("RandomInvert(p=1.0), Resize(28), CenterCrop(28), ToTensor(), Normalize((0.1307,), (0.3081,))", None),
        ("Resize((28, 28)), ToTensor(), Lambda(lambda x: 1 - x), Normalize([0.5], [0.25])", 2),
        ("v2.Lambda(ImageOps.invert), Resize((28, 28)), ToTensor()", 0),
    ],
    ids=["RandomInvert(p=1.0)", "Lambda 1 - x", "Lambda(ImageOps.invert)"],
)
def test_an_inversion_is_refused_with_the_list_that_computes_the_same(text, invert):
    """MNIST-style models want white digits on black: the refusal's list gives them the same input."""
    with pytest.raises(TransformsRefused, match="inverts every photo") as e:
        prep_of(text, 1)
    instead = str(e.value).split(": write ")[1]
    steps = parse(text)
    if invert is None:
        theirs = faithful.reference_transform(steps)  # torchvision's RandomInvert(p=1.0) inverts every photo
    else:  # their Lambda, as their code runs it
        built = faithful.reference_transform(steps[:invert] + steps[invert + 1 :]).transforms
        built.insert(invert, T.Lambda(ImageOps.invert if invert == 0 else lambda x: 1 - x))
        theirs = T.Compose(built)
    photo = Image.open(DATA / "cat.jpg").convert("L")
    assert torch.allclose(faithful.reference_transform(parse(instead))(photo), theirs(photo), atol=1e-5)
    assert prep_of(instead, 1).std[0] < 0  # and the server serves it


@pytest.mark.parametrize("pad", ["Pad(2)", "Pad((2, 3))", "Pad(padding=(1, 1, 2, 2))"])
def test_a_black_border_is_refused_with_the_crop_that_gives_it(pad):
    """LeNet-style digits models pad 28 px to 32: CenterCrop larger than the photo does the same, served."""
    text = f"Resize((28, 28)), {pad}, ToTensor(), Normalize((0.1307,), (0.3081,))"
    with pytest.raises(TransformsRefused, match="adds a black border") as e:
        prep_of(text, 1)
    written = str(e.value).split(" write ")[1]
    instead = text.replace(f"Resize((28, 28)), {pad}", written)
    photo = Image.open(DATA / "cat.jpg").convert("L")
    theirs, served = faithful.reference_transform(parse(text)), faithful.reference_transform(parse(instead))
    assert torch.equal(theirs(photo), served(photo))
    assert prep_of(instead, 1).input_size == tuple(theirs(photo).shape[1:])


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("ResNet50_Weights.IMAGENET1K_V2.transforms()", "ResNet50_Weights.IMAGENET1K_V2"),
        (
            "preprocess = torchvision.models.EfficientNet_B3_Weights.DEFAULT.transforms()",
            "EfficientNet_B3_Weights.DEFAULT",
        ),
        ("ImageClassification(crop_size=224, resize_size=232)", "ResNet50_Weights.IMAGENET1K_V2"),
    ],
)
def test_torchvisions_weights_preset_is_read_as_the_steps_it_runs(text, weights):
    """Code on pretrained torchvision models takes its inference transforms from the weights."""
    from torchvision import models

    preset = models.get_weight(weights).transforms()
    steps = parse(text)
    photo = Image.open(DATA / "cat.jpg").convert("RGB")
    assert torch.equal(faithful.reference_transform(steps)(photo), preset(photo))
    prep = to_preprocessing(steps, 3)
    assert (prep.resize, prep.crop, prep.interpolation) == (
        preset.resize_size[0],
        preset.crop_size[0],
        preset.interpolation.value,
    )


def test_weights_held_in_a_variable_are_asked_for_by_name():
    with pytest.raises(TransformsRefused, match="names the weights by a variable of your code: write them"):
        parse("weights.transforms()")
    with pytest.raises(TransformsRefused, match="torchvision has no such weights"):
        parse("ResNet50_Weights.IMAGENET1K_V9.transforms()")


def test_channels_the_list_gives_must_be_what_the_model_takes():
    with pytest.raises(TransformsRefused, match="takes 1; write Grayscale"):
        prep_of("Grayscale(3), Resize(28), CenterCrop(28), ToTensor()", 1)
    with pytest.raises(TransformsRefused, match="3 values per statistic but the model takes 1 channels"):
        prep_of("Resize(28), CenterCrop(28), ToTensor(), Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])", 1)
    gray = prep_of("Resize(28), CenterCrop(28), ToTensor()", 1)  # the model's weights say gray: photos made gray
    # Before the model is loaded, a 4-channel (RGBA, multispectral) list was told "the model takes 3 channels".
    rgba = "Resize(64), CenterCrop(64), ToTensor(), Normalize((0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5))"
    with pytest.raises(TransformsRefused) as refusal:
        prep_of(rgba, None)
    assert str(refusal.value) == (
        "Normalize has 4 values per statistic, one per channel of the model's input; photos give 1 (gray) or 3 "
        "(RGB) channels, and the server serves those"
    )
    assert gray.channels == 1 and gray.grayscale


@pytest.mark.parametrize(
    "text",
    [
        "Resize(256), CenterCrop(224), ToTensor(), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])",
        "Resize((120, 90)), ToTensor()",
        "Grayscale(), Resize(40), CenterCrop((32, 28)), ToTensor(), Normalize((0.5,), (0.5,))",
        "Resize(64, interpolation=InterpolationMode.BICUBIC), CenterCrop(64), ToTensor()",
        "Resize(32, interpolation=InterpolationMode.NEAREST), CenterCrop(32), ToTensor()",
        "Resize(48, interpolation=InterpolationMode.BOX), CenterCrop(40), ToTensor()",
        "Resize((40, 60), interpolation=5), ToTensor()",  # PIL's number for HAMMING
        "v2.ToImage(), v2.Resize(64, interpolation=InterpolationMode.LANCZOS), v2.CenterCrop(64), "
        "v2.ToDtype(torch.float32, scale=True)",  # v2 resizes a tensor with LANCZOS (v1 raises)
        "Resize(28), CenterCrop(32), ToTensor(), Normalize((0.1307,), (0.3081,))",  # padded with black to 32
        "ToTensor(), Resize(64), CenterCrop(64)",  # a tensor resize: torch's antialiased interpolate
        "Resize(28), CenterCrop(28), ToTensor(), Normalize((0.8693,), (-0.3081,))",  # MNIST's, on inverted photos
        "ToImage(), Resize(32, interpolation=InterpolationMode.NEAREST_EXACT), CenterCrop(32), ToDtype(torch.float32)",
        "v2.Grayscale(), v2.RGB(), v2.Resize(40), v2.CenterCrop(32), v2.ToImage(), v2.ToDtype(torch.float32)",
    ],
)
def test_the_served_pixels_are_torchvisions_on_a_real_photo(text):
    """The server's fast path (draft JPEG decode, one resample of the crop box) against torchvision's own,
    the whole list run (a Resize after ToTensor() resizes the tensor), compared as 0..255 pixels."""
    steps = parse(text)
    prep = to_preprocessing(steps, None)
    data = (DATA / "cat.jpg").read_bytes()
    out = faithful.reference_transform(steps)(Image.open(io.BytesIO(data)).convert("RGB")).double()
    mean, std = (torch.tensor(v, dtype=torch.float64).view(-1, 1, 1) for v in (prep.mean, prep.std))
    expected = (out * std + mean).mul(255).round().numpy().astype(np.int16)  # the model's input, as pixels
    got = preprocess(data, prep).astype(np.int16)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 2.0  # JPEG draft decoding: a level or two at small sizes
    if prep.interpolation == "nearest":  # single pixels of the full decode, which a reduced decode would average
        assert np.array_equal(got, expected)


def test_nearest_exact_is_stored_as_nearest_because_torchvision_runs_it_so_on_a_pil_image():
    """torchvision resizes a PIL image with Pillow's filter for each mode: NEAREST_EXACT is NEAREST there."""
    photo = Image.open(DATA / "cat.jpg").convert("RGB")
    exact, nearest = (
        faithful.reference_transform(parse(f"Resize(64, interpolation=InterpolationMode.{mode}), PILToTensor()"))(photo)
        for mode in ("NEAREST_EXACT", "NEAREST")
    )
    assert torch.equal(exact, nearest)
    assert (
        prep_of("Resize(64, interpolation=InterpolationMode.NEAREST_EXACT), CenterCrop(64), ToTensor()").interpolation
        == "nearest"
    )


def test_v2_only_transforms_are_built_from_torchvision_v2():
    built = faithful.reference_transform(parse("ToImage(), Resize((8, 8)), ToDtype(torch.float32, scale=True)"))
    assert [type(t) for t in built.transforms] == [v2.ToImage, v2.Resize, v2.ToDtype]
    assert [type(t) for t in faithful.reference_transform(parse("Resize(8), ToTensor()")).transforms] == [
        T.Resize,
        T.ToTensor,
    ]
