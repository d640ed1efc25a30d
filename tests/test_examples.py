"""A model's own example photos (`import_model.py --examples DIR`): checked, stored with the model, and
which photos a model's page offers when it has none of its own."""

from __future__ import annotations

from pathlib import Path

import bentoml
import pytest

from imgserve import config
from imgserve.serving import store
from tests.helpers import DATA, EXAMPLE_PHOTOS, image_bytes, run_import

pytestmark = pytest.mark.model  # each test imports a real model, in a process of its own


def card_of(tag: str) -> store.ModelCard:
    return store.ModelCard.from_stored(bentoml.models.get(tag))


def test_the_photos_are_stored_in_the_models_entry_byte_for_byte(examples_model, example_photos):
    card = card_of(examples_model)
    assert [p.name for p in card.examples] == sorted(f"{name}.jpg" for name in EXAMPLE_PHOTOS)
    entry = Path(bentoml.models.get(examples_model).path)
    for photo in card.examples:
        assert photo.parent == entry / store.EXAMPLES_FOLDER
        assert photo.read_bytes() == (example_photos / photo.name).read_bytes()


def test_without_examples_the_default_model_has_the_bundled_photos_and_others_none(default_model, colour_model):
    assert card_of(default_model).examples == tuple(sorted(DATA.glob("*.jpg")))
    assert card_of(colour_model).examples == ()  # its own classes, no photos of them: no cat either


def write(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)


def test_too_many_photos_are_refused(tmp_path):
    for i in range(config.MAX_EXAMPLES + 1):
        write(tmp_path / "many", f"{i}.png", image_bytes())
    with pytest.raises(ValueError) as refused:
        store.check_examples(tmp_path / "many")
    assert str(refused.value) == (
        f"--examples: {tmp_path / 'many'} has {config.MAX_EXAMPLES + 1} files; give 1 to {config.MAX_EXAMPLES} photos"
    )


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"has 0 files; give 1 to \d+ photos$"):
        store.check_examples(tmp_path / "none")


def test_a_photo_over_the_size_cap_is_refused(tmp_path):
    big = image_bytes(size=(64, 48), fmt="PNG") + b"\0" * config.MAX_EXAMPLE_BYTES  # a valid PNG, padded
    write(tmp_path / "big", "scan.png", big)
    with pytest.raises(ValueError) as refused:
        store.check_examples(tmp_path / "big")
    assert str(refused.value).startswith(
        f"--examples: scan.png is {len(big):,} bytes, the limit is {config.MAX_EXAMPLE_BYTES:,}"
    )


def test_a_file_the_server_would_refuse_is_refused_with_the_servers_reason(tmp_path):
    write(tmp_path / "notes", "notes.jpg", b"meeting notes, saved with the wrong name\n")
    with pytest.raises(ValueError) as refused:
        store.check_examples(tmp_path / "notes")
    formats = ", ".join(config.ACCEPTED_FORMATS)
    assert str(refused.value) == f"--examples: notes.jpg: not a supported image: accepted formats are {formats}"


def test_a_photo_browsers_cannot_show_is_refused(tmp_path):
    write(tmp_path / "scans", "slide.tif", image_bytes(fmt="TIFF"))
    with pytest.raises(ValueError) as refused:
        store.check_examples(tmp_path / "scans")
    assert str(refused.value) == "--examples: slide.tif is TIFF, which browsers do not show: save it as JPEG or PNG"


def test_import_checks_the_examples_before_loading_the_model(tmp_path):
    """A model file that would fail to load: the examples' error comes first, so it comes fast."""
    model = tmp_path / "broken.pth"
    model.write_bytes(b"not a model")
    result = run_import(model, "--name", "broken", "--examples", tmp_path / "missing")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: --examples: no such folder: {tmp_path / 'missing'}"
    assert "loading" not in result.stderr
