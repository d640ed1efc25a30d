"""The int8 model the import's gate refused, served by the benchmark anyway: what int8 would gain.

`import_model.py --quantize int8` stores nothing when the gate refuses. The benchmark then quantizes
the same way (`imgserve.importing.quantize.quantize`: same photos, same graph) and
stores the result in a scratch model store of its own (bench/.cache/int8-refused), which only its
int8 server reads: the model store you serve from never holds a refused model.

    BENTOML_HOME=SCRATCH python -m bench.int8_refused MODEL.onnx METADATA.json   # store it; print tag, file
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imgserve import config

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "bench" / ".cache" / "int8-refused"  # BENTOML_HOME of the scratch store, emptied each run


@dataclass(frozen=True)
class Served:
    """What a server of the int8 model needs (kept out of bench.json: paths of this machine)."""

    tag: str
    onnx: str  # its ONNX file, for the in-process measurements
    env: dict[str, str]  # over the server's environment


def prepare(fp32_tag: str, refusal: str) -> tuple[dict, Served]:
    """Quantize `fp32_tag` as the import did and store it in the scratch store: for bench.json, its
    tag, the import's refusal and its quantization metadata (the agreement the gate refused); and
    what its server needs."""
    from imgserve.importing import quantize

    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = quantize.quantize(fp32_tag, Path(tmp))
        meta = quantized.metadata | {"title": f"{quantized.metadata['title']}, refused by the gate: benchmark only"}
        meta_file = Path(tmp) / "metadata.json"
        meta_file.write_text(json.dumps(meta))
        stored = subprocess.run(
            [sys.executable, "-m", "bench.int8_refused", str(quantized.onnx), str(meta_file)],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(HOME)},
            capture_output=True,
            text=True,
            check=True,
        )
    tag, onnx_file = stored.stdout.split()[-2:]
    return {"tag": tag, "refused": refusal, **meta["quantization"]}, Served(tag, onnx_file, {"BENTOML_HOME": str(HOME)})


def main(argv: list[str]) -> int:
    """Store an ONNX file in the model store of $BENTOML_HOME (the scratch one), as the import would."""
    import bentoml

    from imgserve.serving import store

    if Path(os.environ.get("BENTOML_HOME", "")).resolve() != HOME.resolve():
        raise SystemExit("refusing to store a refused int8 model outside the benchmark's scratch store")
    onnx_file, meta_file = (Path(a) for a in argv)
    metadata = json.loads(meta_file.read_text())
    name = metadata["quantization"]["fp32_model"].split(":")[0] + config.QUANT_SUFFIX
    tag = store.save(name, onnx_file, metadata)
    print(tag, bentoml.models.get(tag).path_of(store.ONNX_FILE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
