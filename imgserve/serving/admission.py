"""How much work the server holds: requests at work and uploads in progress, each bounded; past a bound, 503.

A request counts as work once its whole body has arrived, so clients still uploading (or stalled) never
lock out the ones at work; uploads have their own, larger bound, against running out of open files.
Both are refused with 503 and Retry-After (errors.RETRY_AFTER), before the upload when it is known then.
"""

from __future__ import annotations

from imgserve import config
from imgserve.serving.errors import TOO_MANY_IN_FLIGHT, TOO_MANY_UPLOADS, ClientError

SHED_PATHS = (config.CLASSIFY_PATH, config.UI_PATH)  # work that costs decoding and model time


def costs_work(method: str, path: str) -> bool:
    return method == "POST" and path.startswith(SHED_PATHS)


class Admission:
    def __init__(self, max_in_flight: int, max_uploads: int) -> None:
        self.max_in_flight, self.max_uploads = max_in_flight, max_uploads
        self.in_flight = 0
        self.uploading = 0

    def check_upload(self) -> None:
        """From the headers: refuse a request that could not be held, before its body is sent."""
        if self.in_flight >= self.max_in_flight:
            raise ClientError(503, TOO_MANY_IN_FLIGHT)
        if self.uploading >= self.max_uploads:
            raise ClientError(503, TOO_MANY_UPLOADS)

    def admit(self) -> None:
        """Its body has arrived: it is work now, or refused."""
        if self.in_flight >= self.max_in_flight:
            raise ClientError(503, TOO_MANY_IN_FLIGHT)
        self.in_flight += 1
