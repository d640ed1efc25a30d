"""The body of POST /classify, checked as it streams in, before BentoML parses a byte of it.

A multipart form is parsed as it passes (python-multipart, as Starlette does): a malformed form, an
unknown or repeated field, too many images or a bad text field is refused with a 400 as soon as it is
seen, since BentoML's answers to these are 500s. A raw image body (Content-Type: image/*) is passed
on as the one-image form BentoML parses, top_k from the query string. A url-encoded form, which
cannot carry files, is a 400 that says so; a compressed body (Content-Encoding) or any other type, a 415.
Each answer says how to send.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from imgserve import config
from imgserve.serving.errors import NO_IMAGES, ClientError, quoted, too_many_images

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

HOW_TO_SEND = (
    "send the images as multipart/form-data in the 'images' field (curl -F images=@photo.jpg), "
    "or one image as the raw body with its Content-Type (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg)"
)
RAW_FILENAME = "upload"  # the part a raw image body becomes; names are never used
URLENCODED = "application/x-www-form-urlencoded"  # what a form without files is sent as (BentoML's client too)
IDENTITY = ("", "identity")  # the only Content-Encoding read: images are compressed already
# Content-Transfer-Encoding of a form part (RFC 7578 deprecates it): these leave the bytes as they are.
AS_SENT = (b"", b"binary", b"8bit", b"7bit")
SEND_AS_THEY_ARE = f"send the bytes as they are; {HOW_TO_SEND}"
LF_ALONE = (
    "multipart body with lines that end in LF alone: its boundary and header lines end in CRLF ('\\r\\n'); "
    "let the HTTP library write the form (curl -F images=@photo.jpg)"
)


@dataclass(frozen=True)
class FormRules:
    """What /classify's form may hold: its file field, its text fields (each a check that raises
    ValueError with the message to answer), and how many images."""

    file_field: str = "images"
    field_checks: Mapping[str, Callable[[str], object]] = field(default_factory=dict)
    max_images: int = config.MAX_IMAGES_PER_REQUEST


def refuse(message: str) -> ClientError:
    return ClientError(400, message)


def body_check(scope: Scope, receive: Receive, rules: FormRules) -> tuple[Scope, Receive, FormCheck]:
    """From the headers of POST /classify: the scope and receive BentoML gets, and the body's check."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    if (coding := headers.get("content-encoding", "").strip().lower()) not in IDENTITY:
        # Read as it is, a gzip'ed form or image would be refused as a malformed form or "not an image".
        raise ClientError(
            415,
            f"Content-Encoding {quoted(coding)} is not accepted: send the body uncompressed; {HOW_TO_SEND}",
            headers={"Accept-Encoding": "identity"},  # RFC 7694: the codings the server takes
        )
    raw_kind, options = parse_options_header(headers.get("content-type", ""))
    kind = raw_kind.decode("latin-1").lower()
    if kind == "multipart/form-data":
        if query := parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            name = quoted(next(iter(query)))
            raise refuse(f"query parameter {name} with a form: send it as a form field (curl -F {name[1:-1]}=...)")
        boundary = options.get(b"boundary", b"")
        if not boundary:
            raise refuse(
                f"multipart body without a boundary in its Content-Type: let the HTTP library write it; {HOW_TO_SEND}"
            )
        try:
            check = FormCheck(rules, boundary)
        except ValueError as e:  # python-multipart's FormParserError: a boundary over 256 bytes
            raise refuse(f"multipart boundary refused ({e}): let the HTTP library write it; {HOW_TO_SEND}") from None
        return with_content_type(scope, b'multipart/form-data; boundary="%s"' % boundary), receive, check
    if kind.startswith("image/") or kind == "application/octet-stream":
        return raw_image(scope, receive, kind, rules)
    if kind == URLENCODED:  # BentoML's Python client sends its form so when given no files (images=[])
        raise refuse(f"no images: a url-encoded form ({URLENCODED}) carries no files; {HOW_TO_SEND}")
    if not kind and no_body(headers):  # BentoML's client given images=[] alone; curl -X POST
        raise refuse(f"no images: the request has no body; {HOW_TO_SEND}")
    raise ClientError(415, f"unsupported Content-Type {quoted(kind or 'none')}: {HOW_TO_SEND}")


def no_body(headers: Mapping[str, str]) -> bool:
    """The request says it has no body: Content-Length 0, or neither a length nor a chunked body (RFC 9112)."""
    return headers.get("content-length", "").strip() in ("", "0") and "transfer-encoding" not in headers


def raw_image(scope: Scope, receive: Receive, kind: str, rules: FormRules) -> tuple[Scope, Receive, FormCheck]:
    """A raw image body, passed on as the one-image form BentoML parses; top_k from the query."""
    boundary = secrets.token_hex(16).encode()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    head = b""
    for name, values in query.items():
        if name not in rules.field_checks:
            raise refuse(f"unknown query parameter {quoted(name)}: the fields are {', '.join(rules.field_checks)}")
        if len(values) > 1:
            raise refuse(f"query parameter {name!r} sent {len(values)} times: send it once")
        head += b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
            boundary,
            name.encode(),
            values[0].encode(),
        )
    head += b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\nContent-Type: %s\r\n\r\n' % (
        boundary,
        rules.file_field.encode(),
        RAW_FILENAME.encode(),
        kind.encode(),
    )
    tail = b"\r\n--%s--\r\n" % boundary
    first = True

    async def wrapped() -> Message:
        nonlocal first
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if first:
                body, first = head + body, False
            if not message.get("more_body", False):
                body += tail
            message = {**message, "body": body}
        return message

    form_type = b"multipart/form-data; boundary=" + boundary
    return with_content_type(scope, form_type, drop_length=True), wrapped, FormCheck(rules, boundary)


def with_content_type(scope: Scope, content_type: bytes, drop_length: bool = False) -> Scope:
    """The scope with its Content-Type as BentoML matches it (exact, lower case; it picks the parser
    by that string), and without Content-Length when the body's length changes."""
    drop = (b"content-type", b"content-length") if drop_length else (b"content-type",)
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
    return {**scope, "headers": [*headers, (b"content-type", content_type)]}


class FormCheck:
    """A multipart body, parsed as it streams past: `feed` each chunk before the app gets it."""

    def __init__(self, rules: FormRules, boundary: bytes) -> None:
        self.rules = rules
        self.boundary = boundary
        self.problem: ClientError | None = None
        self.parts = self.images = 0
        self.seen_fields: dict[str, int] = {}
        self.header_field = self.header_value = b""
        self.disposition = self.transfer_encoding = b""
        self.field: str | None = None  # the text field being read, and its value so far
        self.value = b""
        self.ended = False
        # A form whose lines end in LF alone (written by hand, or by a tool that changed CRLF to LF) is
        # told so: seen at its first boundary line, or at its closing one, in the body's last bytes.
        self.boundary_lf = b"--" + boundary + b"\n"
        self.recent = b""  # the last bytes: "\r\n--BOUNDARY--\r\n" and one before
        callbacks = {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field_data,
            "on_header_value": self.header_value_data,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }
        self.parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]

    @property
    def counting(self) -> bool:
        """Past the image limit: the rest is read only to count, and the app gets none of it."""
        return self.images > self.rules.max_images

    def feed(self, chunk: bytes, final: bool) -> None:
        """Check the next chunk; raise ClientError for a form that must not reach the app."""
        try:
            self.parser.write(chunk)
        except MultipartParseError as e:
            if self.problem is None and str(e).startswith("Maximum header"):  # python-multipart: 4 kB, 8 headers
                fix = "send fewer headers per part" if "count" in str(e) else "shorten the file name"
                raise refuse(f"a form part's headers are too large ({e}): {fix}") from None
            if self.problem is None and (self.recent + chunk[: max(e.offset, 0) + 1]).endswith(self.boundary_lf):
                raise refuse(LF_ALONE) from None  # the parser stopped at a boundary line's LF
            if self.problem is None and not self.parts:
                declared = f"'--{self.boundary.decode('latin-1')}'"
                raise refuse(
                    f"multipart body does not start with the boundary its Content-Type names ({declared})"
                ) from None
            if self.problem is None:
                raise refuse(f"malformed multipart body in part {self.parts} ({e}): {HOW_TO_SEND}") from None
        if self.problem is not None:  # raised inside a callback, which the parser wraps
            raise self.problem
        keep = len(self.boundary) + 9
        self.recent = (self.recent + chunk[-keep:])[-keep:]
        if final:
            if self.counting:
                raise refuse(too_many_images(self.images, self.rules.max_images))
            if not self.ended and self.parts and re.search(rb"(?<!\r)\n--" + re.escape(self.boundary), self.recent):
                raise refuse(LF_ALONE)
            if not self.ended and self.parts:
                raise refuse(f"multipart body ends before its closing boundary '--{self.boundary.decode()}--'")
            if not self.images:
                raise refuse(NO_IMAGES)

    def fail(self, error: str) -> None:
        self.problem = self.problem or refuse(error)
        raise self.problem

    def part_begin(self) -> None:
        self.parts += 1
        self.disposition = self.transfer_encoding = b""

    def header_field_data(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            self.disposition = self.header_value
        elif self.header_field.lower() == b"content-transfer-encoding":
            self.transfer_encoding = self.header_value.strip().lower()
        self.header_field = self.header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        known = [self.rules.file_field, *self.rules.field_checks]
        if not name:
            self.fail(f"a form part without a field name: name each part, e.g. {HOW_TO_SEND}")
        if name not in known:
            fields = ", ".join(repr(k) for k in known)
            self.fail(f"unknown field {quoted(name)}: send the images in the {known[0]!r} field (fields: {fields})")
        if self.transfer_encoding not in AS_SENT:  # a base64 part would be read as its text: "not an image"
            coding = self.transfer_encoding.decode("latin-1")
            self.fail(f"field {name!r} has Content-Transfer-Encoding {coding!r}: {SEND_AS_THEY_ARE}")
        if name == self.rules.file_field:
            self.images += 1
            self.field = None
            if self.images > (counted := max(config.MAX_IMAGES_COUNTED, self.rules.max_images)):
                self.fail(too_many_images(f"more than {counted}", self.rules.max_images))  # parse no further
            return
        self.seen_fields[name] = self.seen_fields.get(name, 0) + 1
        if self.seen_fields[name] > 1:
            self.fail(f"field {name!r} sent {self.seen_fields[name]} times: send it once")
        self.field, self.value = name, b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.field is not None:
            self.value += data[start:end]
            if len(self.value) > config.MAX_FIELD_BYTES:
                self.fail(f"field {self.field!r} too long: more than {config.MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self.field is not None:
            text = self.value.decode("utf-8", "replace")
            try:
                self.rules.field_checks[self.field](text)
            except ValueError as e:
                self.fail(str(e))
            self.field = None

    def end(self) -> None:
        self.ended = True
