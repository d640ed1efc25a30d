"""Class names from a labels file: one per line in the model's output order, or JSON.

Accepted, as researchers keep them:
- one label per line (blank lines and surrounding whitespace ignored); lines that all start or end with
  their own output index, `0,daisy`, `0 daisy` or `daisy,0`, in any order, are put in its order and lose
  it (and a CSV's header row above them, `id,name`); a CSV's quotes around a label are not part of it;
- a JSON list, in output order, or ImageFolder's class_to_idx saved as JSON ({"daisy": 0, ...}); either
  also as Python prints them (print(dataset.classes): ['daisy', 'rose']), read as a literal, never run;
- a JSON object: {"0": "daisy", ...} by output index, or by class name (the flowers tutorials'
  cat_to_name.json, {"1": "pink primrose", ...}, keyed by the ImageFolder folder names), which the
  import puts in output order with the class_to_idx saved with the model (`in_output_order`);
  ImageNet's imagenet_class_index.json, {"0": ["n01440764", "tench"], ...}, gives the names.
"""

from __future__ import annotations

import ast
import codecs
import json
import re
from pathlib import Path

INDEXED_LINE = re.compile(r"(\d+)\s*[,;:\t ]\s*(\S.*)")  # "0,daisy", "0 daisy", "0: daisy"
# "daisy,0", "daisy\t1": class_to_idx written as a CSV, the index last (a space is no separator here:
# "class 0", "class 1" are names)
INDEX_LAST_LINE = re.compile(r"(\S.*?)\s*[,;\t]\s*(\d+)")


def read_labels(path: Path) -> list[str] | dict[str, str]:
    """The labels in output order, or {class name or index: label} from a JSON object."""
    text = _text(path)
    if text.lstrip()[:1] in ("[", "{"):
        return _json_labels(path, text)
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"labels file {path} has no labels")
    for pattern, index, name in ((INDEXED_LINE, 1, 2), (INDEX_LAST_LINE, 2, 1)):
        rows = [pattern.fullmatch(label) for label in labels]
        if all(rows[1:]) and not rows[0] and len(labels) > 1:  # a CSV's header row above: "id,name"
            rows = rows[1:]
        if all(rows) and sorted(int(m.group(index)) for m in rows if m) == list(range(len(rows))):
            by_index = {int(m.group(index)): m.group(name) for m in rows if m}
            return [_unquoted(by_index[i]) for i in range(len(rows))]
    return [_unquoted(label) for label in labels]


def _text(path: Path) -> str:
    """The file's text: UTF-8 (a byte order mark left out), or UTF-16 with its byte order mark, as Windows
    PowerShell's `>` writes it; any other encoding is refused with the line it fails on."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read labels file {path}: {e}") from None
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"labels file {path} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}, in another encoding "
            "such as Latin-1 or Windows-1252): save it as UTF-8 (an editor's 'Save as', encoding UTF-8; or iconv -f "
            "windows-1252 -t utf-8 labels.txt > labels-utf8.txt) and give that file"
        ) from None


def _unquoted(label: str) -> str:
    """A CSV field as written: '"tench, Tinca tinca"' is tench, Tinca tinca."""
    if len(label) >= 2 and label[0] == label[-1] == '"':
        return label[1:-1].replace('""', '"').strip()
    return label.strip()


def _json_labels(path: Path, text: str) -> list[str] | dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        try:  # print(dataset.classes) or print(dataset.class_to_idx) pasted: a Python literal, read, never run
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"labels file {path} starts like JSON but is not JSON ({e})") from None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    if isinstance(value, dict) and value and all(_synset(v) for v in value.values()):
        # imagenet_class_index.json, as Keras and the tutorials keep it: {"0": ["n01440764", "tench"], ...}
        value = {k: v[-1] for k, v in value.items()}
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        return {str(k): v.strip() for k, v in value.items()}
    if isinstance(value, dict) and value and all(type(v) is int for v in value.values()):
        # ImageFolder's class_to_idx saved as JSON, {"daisy": 0, ...}: the names in the order of their index
        by_index = {v: k for k, v in value.items()}
        if set(by_index) == set(range(len(value))):
            return [by_index[i].strip() for i in range(len(value))]
    raise ValueError(
        f'labels file {path} is JSON but neither a list of labels nor an object of labels (e.g. {{"0": "daisy"}})'
    )


def _synset(value: object) -> bool:
    """[WordNet id, name]: ["n01440764", "tench"]."""
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def in_output_order(path: Path, by_key: dict[str, str], class_names: list[str] | None, where: str) -> list[str]:
    """A JSON object of labels in output order: by the class names saved with the model
    (ImageFolder's folder names, in its class_to_idx order) when it has them, else by output index."""
    if class_names and set(class_names) <= by_key.keys():
        return [by_key[name] for name in class_names]
    if by_key.keys() == {str(i) for i in range(len(by_key))}:
        return [by_key[str(i)] for i in range(len(by_key))]
    keys = ", ".join(list(by_key)[:4])
    known = (
        f"the class names {where} ({', '.join(class_names[:4])}, ...) are not its keys"
        if class_names
        else ("the model file saves no class_to_idx to put them in output order")
    )
    raise ValueError(
        f"{path} gives labels by class name ({keys}, ...), but {known}. Give its labels in output order: "
        "a JSON list, or one per line"
    )
