"""Every touch of BentoML's private parts, in one place, written for one BentoML version.

BentoML's private modules (`_bentoml_impl`, `bentoml._internal`) change without notice. The project
pins BentoML (requirements/serve.txt); this file is where a BentoML upgrade is checked: it says at start
when the running version is not the one these touches were written for, and each touch fails loudly,
naming this file, if what it patches is gone. Tests and the benchmark import the private values they
need from here too.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml

WRITTEN_FOR = "1.4.39"

log = logging.getLogger("bentoml.service")


class BentoMLChanged(RuntimeError):
    """A private part of BentoML that this file touches is not where it was."""


def check_version() -> None:
    if bentoml.__version__ != WRITTEN_FOR:
        log.warning(
            "BentoML %s: imgserve/serving/bentoml_compat.py was written for %s; check its touches",
            bentoml.__version__,
            WRITTEN_FOR,
        )


def _changed(what: str) -> BentoMLChanged:
    return BentoMLChanged(
        f"BentoML {bentoml.__version__} has no {what}; imgserve/serving/bentoml_compat.py was written for {WRITTEN_FOR}"
    )


def refuse_text_for_files() -> None:
    """Make a text field where a file is expected a 400, not a fetch.

    BentoML 1.4 reads a multipart text field in a file-typed parameter as a URL and downloads it from
    the server (`_bentoml_impl.serde.MultipartSerde.ensure_file`): a server-side request forgery on a
    public service. Uploaded files are the only input we take.
    """
    try:
        from _bentoml_impl.serde import MultipartSerde
    except ImportError as e:
        raise _changed("_bentoml_impl.serde.MultipartSerde") from e
    if not hasattr(MultipartSerde, "ensure_file"):
        raise _changed("MultipartSerde.ensure_file")
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    async def ensure_file(obj: object) -> UploadFile:
        if not isinstance(obj, UploadFile):
            raise BadInput("images must be uploaded files (curl -F images=@photo.jpg), not text or URLs")
        return obj

    MultipartSerde.ensure_file = staticmethod(ensure_file)


def quiet_client_errors() -> None:
    """Drop BentoML's ERROR traceback for a client's mistake: the guard logs it as one INFO line.

    BentoML 1.4 logs every exception of an API call with its traceback (logger
    `bentoml._internal.server.http_app`), a wrong top_k as loudly as a bug. Kept: anything
    unexpected (a 500 keeps its traceback).
    """
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    def expected(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError | ClientDisconnect):
            return True
        return isinstance(error, BentoMLException) and error.error_code != HTTPStatus.INTERNAL_SERVER_ERROR

    logging.getLogger("bentoml._internal.server.http_app").addFilter(lambda record: not expected(record))
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # warns of each malformed form


def answer_as_json(api: Any) -> None:
    """Tell an API's output spec that its answers are JSON.

    BentoML finds a response's media type by rebuilding the output's JSON schema for every response
    (`output_spec.media_type`, unset): 1.5 ms of CPU per /classify answer (README "Performance").
    """
    if not hasattr(api, "output_spec"):
        raise _changed("APIMethod.output_spec")
    api.output_spec.media_type = "application/json"


def model_store_dir() -> Path:
    """Where the model store is: the benchmark links it into each server's own BentoML home."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def serving_port() -> int:
    """The port `bentoml serve` listens on in the image (its Dockerfile EXPOSEs it)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return int(BentoMLContainer.http.port.get())


def bento_uid() -> int:
    """The non-root user BentoML's generated Dockerfile creates and runs as."""
    from bentoml._internal.container.generate import DEFAULT_BENTO_ENVS

    uid: int = DEFAULT_BENTO_ENVS["uid_gid"]  # type: ignore[assignment]  # a dict of mixed values
    return uid
