"""The README's commands, run as written (against a real server where they need one)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

from imgserve import config
from imgserve.importing import cli as import_model
from imgserve.testing import BENTOML, serve_env
from tests.helpers import CAT_CLASSES, PYTHON, ROOT, imported_tag

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """Command lines of a sh block, comments stripped."""
    lines = (line.split("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_quick_start_is_make_serve_and_make_test_and_ci_runs_make_test():
    assert commands(blocks("sh")[0]) == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_plain_commands_are_what_make_runs():
    makefile = (ROOT / "Makefile").read_text().replace("$(BIN)/", ".venv/bin/").replace("$(VENV)", ".venv")
    makefile = makefile.replace("$(PORT)", "3000").replace("$(PYTHON)", "python3")
    for line in commands(blocks("sh")[1]):
        assert line.replace(".venv/bin/", "").split()[0] in makefile, line
        assert line.split(" --port")[0] in makefile or line.startswith(".venv/bin/pip"), line
    assert ".venv/bin/pip install --quiet --disable-pip-version-check -r requirements/dev.txt" in makefile


@pytest.mark.serve
def test_the_curl_example_answers_as_shown(server):
    [curl] = [c for c in commands(blocks("sh")[2]) if c.startswith("curl")]
    argv = shlex.split(curl.replace("http://localhost:3000", server.url))
    answers = json.loads(subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    shown = json.loads(blocks("json")[0])
    assert [a["predictions"][0]["label"] for a in answers] == [a["predictions"][0]["label"] for a in shown]
    assert answers[0]["predictions"][0]["label"] in CAT_CLASSES
    assert [len(a["predictions"]) for a in answers] == [len(a["predictions"]) for a in shown] == [3, 3]
    assert set(answers[0]) == set(shown[0]) and set(answers[0]["predictions"][0]) == {"label", "score"}


@pytest.mark.serve
def test_the_python_client_example_runs(server, monkeypatch):
    [code] = [b for b in blocks("python") if "SyncHTTPClient" in b]
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace("http://localhost:3000", server.url), {})
    first, second = out.getvalue().splitlines()
    assert first.rsplit(" ", 1)[0] in CAT_CLASSES
    assert second.rsplit(" ", 1)[0] in {"missile", "projectile", "space shuttle"}


@pytest.mark.serve
def test_the_folder_example_writes_the_rows_shown_and_resume_sends_nothing_twice(server, tmp_path):
    """The two commands of "Classify a folder", from the repository root, writing into a temporary folder."""
    block = next(b for b in blocks("sh") if "client.py" in b)
    first, resume = commands(block)
    out = tmp_path / "results.csv"

    def run(line: str) -> subprocess.CompletedProcess:
        argv = shlex.split(line.replace("http://localhost:3000", server.url).replace("results.csv", str(out)))
        assert argv[:2] == [".venv/bin/python", "client.py"]
        return subprocess.run([PYTHON, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)

    result = run(first)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    shown = list(csv.DictReader(io.StringIO(blocks("csv")[0])))
    assert list(rows[0]) == list(shown[0])
    assert [(r["path"], r["label_1"]) for r in rows] == [(r["path"], r["label_1"]) for r in shown]
    assert rows[0]["label_1"] in CAT_CLASSES
    summary = re.search(r"`(\d+ ok, \d+ failed, \d+ skipped) in", README)[1]
    assert summary in result.stderr

    again = run(resume)
    assert again.returncode == 0, again.stderr
    assert "3 images already in" in again.stderr and "0 ok, 0 failed" in again.stderr
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 3


@pytest.mark.model
def test_the_import_examples_run_as_written(tmp_path):
    """The README's file names, with small models of the same kinds standing in for real ones."""
    from tests.researcher_code import Digits, Net

    (tmp_path / "mynet.py").write_text((ROOT / "tests" / "researcher_code.py").read_text())
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "birds_resnet18.pth")
    torch.save(Net(num_classes=4).state_dict(), tmp_path / "cells.pth")
    torch.export.save(
        torch.export.export(Net(num_classes=3).eval(), (torch.randn(1, 3, 96, 96),)), tmp_path / "insects.pt2"
    )
    flowers = torchvision.models.mobilenet_v3_small(num_classes=5)
    flowers.classifier.append(torch.nn.LogSoftmax(dim=1))
    torch.save(flowers, tmp_path / "flowers.pth")
    torch.save(Digits().state_dict(), tmp_path / "digits.pth")
    torch.jit.script(Net(num_classes=4).eval()).save(str(tmp_path / "cells.pt"))
    for name, classes in {"birds": 3, "cells": 4, "insects": 3, "flowers": 5, "digits": 10}.items():
        (tmp_path / f"{name}.txt").write_text("".join(f"{name} {i}\n" for i in range(classes)))
    block = next(b for b in blocks("sh") if "--trust-pickle" in b)
    lines = [c for c in commands(block) if "import_model.py" in c]
    assert len(lines) == 6
    for line in lines:
        argv = shlex.split(line.replace(".venv/bin/python import_model.py", ""))
        result = subprocess.run(
            [PYTHON, str(ROOT / "import_model.py"), *argv], cwd=tmp_path, capture_output=True, text=True
        )
        name = argv[argv.index("--name") + 1]
        assert imported_tag(result).startswith(f"{name}:")


@pytest.mark.model
def test_the_import_summary_shown_is_what_an_import_prints(tmp_path):
    from tests.researcher_code import Digits

    [shown] = [b for b in re.findall(r"```\n(stored .*?)```", README, flags=re.S)]
    (tmp_path / "mynet.py").write_text((ROOT / "tests" / "researcher_code.py").read_text())
    torch.save(Digits().state_dict(), tmp_path / "digits.pth")
    (tmp_path / "digits.txt").write_text("".join(f"{i}\n" for i in range(10)))
    line = next(c for c in commands(next(b for b in blocks("sh") if "--trust-pickle" in b)) if "digits.pth" in c)
    argv = shlex.split(line.replace(".venv/bin/python import_model.py", ""))
    result = subprocess.run(
        [PYTHON, str(ROOT / "import_model.py"), *argv], cwd=tmp_path, capture_output=True, text=True
    )
    printed = result.stderr.splitlines()[-len(shown.splitlines()) :]
    numbers = re.compile(r"[0-9][0-9.e+-]*|digits:\w+|\d+ of \d+")  # versions, times and measurements vary
    assert [numbers.sub("#", p) for p in printed] == [numbers.sub("#", s) for s in shown.splitlines()]


def test_the_options_table_lists_every_import_option():
    table = set(re.findall(r"^\| `(--[a-z-]+)", README, flags=re.M))
    table |= set(re.findall(r"`, `(--[a-z-]+)", README))  # rows naming two options
    parser_options = {
        opt for action in import_model.build_parser()._actions for opt in action.option_strings if opt != "-h"
    }
    assert parser_options - {"--help", "--list-archs"} == table


def test_the_development_layout_names_every_module_and_nothing_that_is_gone():
    layout = re.search(r"## Development\n.*?```\n(.*?)```", README, flags=re.S)
    assert layout, "README 'Development' has no layout block"
    listed = {line.split()[0] for line in layout.group(1).splitlines() if line.strip()}
    missing = [name for name in listed if not (ROOT / name).exists()]
    assert not missing, f"the layout names what is not there: {missing}"
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "imgserve").rglob("*.py") if p.name != "__init__.py"}
    assert modules <= listed, f"modules the layout does not name: {sorted(modules - listed)}"


def test_the_configuration_table_lists_every_environment_variable():
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    in_config = {v for k, v in vars(config).items() if k.startswith("ENV_")}
    assert documented == in_config | {"BENTOML_HOME"}


def test_bentoml_build_packs_every_served_model_and_no_torch(default_model, colour_model):
    env = {**os.environ, **serve_env([default_model, f"{colour_model.split(':')[0]}:latest"])}
    subprocess.run([BENTOML, "build"], cwd=ROOT, env=env, check=True, capture_output=True)
    import bentoml

    bento = bentoml.get("image-classifier:latest")
    assert {str(m.tag) for m in bento.info.all_models} == {default_model, colour_model}
    src = Path(bento.path_of("src"))
    assert (src / "service.py").is_file() and (src / "imgserve" / "serving" / "preprocess.py").is_file()
    packed = {p.name for p in (src / "imgserve").iterdir()}
    assert packed == {"__init__.py", "config.py", "serving"}, packed  # no importing/ (torch), client/, testing.py
    assert not (src / "tests").exists() and not (src / "bench").exists()
    for name in ("requirements.txt", "requirements.lock.txt"):  # what the image installs: no torch package
        lines = Path(bento.path_of(f"env/python/{name}")).read_text().splitlines()
        packages = {re.split(r"[=<>~\[ ]", line.strip(), maxsplit=1)[0].lower() for line in lines}
        assert not {p for p in packages if p.startswith("torch")}, name
        assert "onnxruntime" in packages, name


@pytest.mark.serve
def test_the_models_listing_shown_has_the_fields_the_server_gives(two_model_server, default_model):
    [shown] = [json.loads(b) for b in blocks("json") if '"default"' in b]
    with two_model_server.client() as c:
        served = c.get(config.MODELS_PATH).json()
    assert [set(m) for m in shown] == [set(m) for m in served]
    assert [set(m["preprocessing"]) for m in shown] == [set(m["preprocessing"]) for m in served]
    first, real = shown[0], served[0]
    assert {k: first[k] for k in ("name", "classes", "title", "description", "default")} == {
        k: real[k] for k in ("name", "classes", "title", "description", "default")
    }
    for key, value in real["preprocessing"].items():  # shown rounded
        assert first["preprocessing"][key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-3))
    assert real["tag"] == default_model and first["tag"].startswith(f"{first['name']}:")
