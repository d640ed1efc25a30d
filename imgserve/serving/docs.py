"""The API docs at /docs, and the root URL, for people who open the server in a browser.

BentoML's own page at / is a Swagger UI with BentoML's placeholders (a "None" version, "This is
a Machine Learning Service created with BentoML", badges from img.shields.io and others) and
Google Tag Manager: a public page that tracks its visitors. Here:
- `/` redirects browsers to the web page (`RootToPage`), so the URL a researcher shares opens
  the demo; every other path is left to BentoML;
- `/docs/` is the same Swagger UI, from the copy BentoML ships and serves at /static_content/,
  with the model's title and description, no analytics and no request to any other host.
  It renders BentoML's OpenAPI document, /docs.json, which programs read unchanged.
"""

from __future__ import annotations

import html
import json
from typing import ClassVar

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from imgserve import config
from imgserve.serving.store import ModelCard

# BentoML 1.4.39 serves its bundled Swagger UI here (for its own page at /).
SWAGGER_ASSETS = "/static_content"
OPENAPI_DOCUMENT = "/docs.json"

# Renders the OpenAPI document with the model's own `info`. validatorUrl: null, since Swagger UI
# would otherwise load a badge from validator.swagger.io; BaseLayout has no top bar for URLs.
SCRIPT = """\
window.onload = async () => {
  const page = JSON.parse(document.getElementById("api-info").textContent);
  const spec = await (await fetch(page.spec, {credentials: "same-origin"})).json();
  spec.info = page.info;
  spec.servers = [{url: page.server}];
  window.ui = SwaggerUIBundle({
    spec, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
  });
};
"""


def info(cards: list[ModelCard]) -> dict:
    """OpenAPI `info` for the served models (the default first): its title and description, each model's
    size, and where people go instead."""
    default = cards[0]
    models = "".join(
        f"\n- `{c.tag}`{' (the default)' * (len(cards) > 1 and c is default)}: {len(c.labels)} classes, "
        f"input {c.preprocessing.input_size[0]}×{c.preprocessing.input_size[1]} pixels"
        for c in cards
    )
    description = (
        f"{default.description}\n\n"
        f"Served: {models}\n\n"
        f"People try it in a browser at [{config.UI_PATH}/]({config.UI_PATH}/). "
        f"The OpenAPI document: [{OPENAPI_DOCUMENT}]({OPENAPI_DOCUMENT})."
    )
    return {"title": default.title, "description": description.strip(), "version": default.tag}


def page(cards: list[ModelCard]) -> str:
    data = {"info": info(cards), "spec": OPENAPI_DOCUMENT, "server": "/"}
    # JSON in a <script> element: "</" must not end the element early.
    embedded = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(cards[0].title)}: API</title>
<link rel="icon" type="image/png" href="{SWAGGER_ASSETS}/favicon-light-32x32.png">
<link rel="stylesheet" href="{SWAGGER_ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script id="api-info" type="application/json">{embedded}</script>
<script src="{SWAGGER_ASSETS}/swagger-ui-bundle.js"></script>
<script src="{config.DOCS_PATH}/docs.js"></script>
</body>
</html>
"""


def asgi_app(cards: list[ModelCard]) -> Starlette:
    """What service.py mounts at /docs: the page and its script."""
    body = page(cards)
    return Starlette(
        routes=[
            Route("/", lambda _: HTMLResponse(body)),
            Route("/docs.js", lambda _: Response(SCRIPT, media_type="text/javascript")),
        ]
    )


class RootToPage:
    """ASGI middleware: `GET /` (and HEAD) answers 307 to the web page, `/ui` and `/docs` to the same
    path with a slash, each with the query string it came with; nothing else changes.

    Each Location is a path, so a browser stays on the scheme and host it is on. Starlette's own
    redirect for a mount's missing slash writes the URL it received: behind a proxy that ends HTTPS,
    `https://host/ui` would lead to `http://host/ui/` (or the proxy's internal host:port).
    Added before the API-key guard: the redirects reveal nothing, and the pages they lead to ask
    a browser for the key when one is set.
    """

    REDIRECTS: ClassVar[dict[str, str]] = {
        "/": f"{config.UI_PATH}/",
        config.UI_PATH: f"{config.UI_PATH}/",
        config.DOCS_PATH: f"{config.DOCS_PATH}/",
    }

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        target = self.REDIRECTS.get(scope["path"]) if scope["type"] == "http" else None
        if target and scope["method"] in ("GET", "HEAD"):
            # The query goes along: Gradio reads its own there (`/ui?__theme=dark`, `/?view=api`).
            query = scope.get("query_string", b"")
            location = target.encode() + (b"?" + query if query else b"")
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)
