"""Who may call: when an API key is set, every endpoint but the health probes needs it."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

from imgserve import config
from imgserve.serving.errors import ClientError

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # probes must work without the key
# Pages people open in a browser (the web page, the API docs page): they are asked for the key as a password.
BROWSER_PATHS = (config.UI_PATH, f"{config.DOCS_PATH}/")


def key_matches(authorization: str, key: str) -> bool:
    """`Bearer <key>` for programs, or HTTP Basic with the key as password for browsers."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.strip().encode(), key.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), key.encode())
    return False


def check_key(path: str, headers: Mapping[str, str], key: str) -> None:
    """Raise 401 unless no key is set, the path is open, or the request carries the key."""
    if not key or path in OPEN_PATHS or key_matches(headers.get("authorization", ""), key):
        return
    bearer = f"send 'Authorization: Bearer <{config.ENV_API_KEY}>'"
    if not path.startswith(BROWSER_PATHS):
        raise ClientError(
            401, f"missing or wrong API key: {bearer}", headers={"WWW-Authenticate": 'Bearer realm="imgserve"'}
        )
    # Browsers prompt for a password only when Basic is the challenge. A visitor who cancels the prompt
    # reads this answer: it says what a person does, not only the header a program sends.
    message = (
        "missing or wrong API key: reload the page and enter the key as the password when the browser asks "
        f"(any user name; whoever shared this address has the key); programs {bearer}"
    )
    raise ClientError(401, message, headers={"WWW-Authenticate": 'Basic realm="imgserve"'})
