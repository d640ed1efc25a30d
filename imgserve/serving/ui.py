"""The web page at /ui: upload, drop, paste or photograph an image and see its top classes.

A Gradio page mounted into the service's own process. It classifies with the code of
`/classify` itself, called in-process, so its images are decoded by the same checks, sent to
the same batched model (they share batches with API traffic) and refused with the same
messages. Title, description, model tag, labels and example photos come from the model's card
in the store; an "About this model" area says what the model is and how to cite it.
When the server serves several models, a chooser above the photo picks one; the page's
title, description, examples, About area and slider follow the choice. With one model there is no chooser.

Gradio is imported only when the page is built, in the serving worker: `bentoml serve`'s own
process imports service.py too, and does not need it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.routing import Mount

from imgserve import config
from imgserve.serving import gradio_compat
from imgserve.serving.errors import ClientError
from imgserve.serving.store import ModelCard

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("bentoml.service")

# ImageClassifier.classify_images: (images=[bytes or Path], top_k=int, model=tag) -> one answer per image.
Classify = Callable[..., Awaitable[list[Any]]]

# The About area's long words (a SHA-256, a transform list) break at the screen's edge: on a phone they
# would run past it, cut off, and a visitor would copy or cite what they cannot see. So do a class name's
# (a strain or specimen name with underscores for spaces): unbroken, the top class was cut off at both
# ends and its bar's percentage pushed out of the answer's box, on any screen.
CSS = (
    "#about code { overflow-wrap: anywhere; }\n"
    "#answer [data-testid=label-output-value], #answer dt { overflow-wrap: anywhere; min-width: 0; }"
)


# A refusal's message stays until the next classification starts (CLOSE_MESSAGES), not Gradio's 10 s: after
# those, the answer's box shows a bare "Error", and a visitor who looked away no longer learns why.
REFUSED: dict[str, Any] = {"duration": None, "print_exception": False}
# In the browser, before each classification: close the messages of the last one, which is over.
CLOSE_MESSAGES = (
    "(...args) => { document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click()); return args; }"
)


def asgi_app() -> Starlette:
    """What service.py mounts at /ui, while importing: empty until `mount` puts the page in it.

    A bare Starlette app (already loaded by BentoML) rather than FastAPI: Gradio needs only its
    router and `mount`, and BentoML enters a mounted Starlette app's lifespan, which starts
    Gradio's queue.
    """
    return Starlette()


def mount(app: Starlette, cards: list[ModelCard], classify: Classify) -> None:
    """Build the page for these models (the default first) and put it in `app`; call before the server starts."""
    started = time.monotonic()
    import gradio as gr

    blocks = page(cards, classify)
    gr.mount_gradio_app(
        app,  # Gradio uses only what Starlette has (see asgi_app)
        blocks,
        path="",
        # Where service.py mounts it. Gradio works its root out of each request, but answers that are not
        # queued (showing an example) would lose the prefix: the photo's preview URL then 404s.
        root_path=config.UI_PATH,
        show_error=False,  # only gr.Error messages reach the page; anything else stays in the log
        max_file_size=config.MAX_REQUEST_BYTES,  # the browser refuses what the server would (413)
        footer_links=["gradio"],
        run_history=False,  # people's photos are not kept, not even in their own browser
        css=CSS,
    )
    # Gradio 6.31 checks that a file named in an API call lies in its upload folder only in an app
    # that was launched (processing_utils._check_allowed); a mounted one never is, and would then read
    # and classify any path on the server that a request names.
    blocks.has_launched = True
    [route] = [route for route in app.routes if isinstance(route, Mount)]
    gradio_app = cast(Any, route.app)  # Gradio's App, a FastAPI
    gradio_compat.end_heartbeats_on_stop(app, gradio_app.stop_event)
    gradio_compat.answer_unknown_api_names(gradio_app)
    defaults = [min(config.DEFAULT_TOP_K, max_top_k(cards[0])), cards[0].tag]  # the slider's and the chooser's
    route.app = gradio_compat.FillTheApisDefaults(gradio_compat.EndStreamsThatFindNothing(gradio_app), defaults)
    tags = ", ".join(c.tag for c in cards)
    log.info("web page for %s built in %.1f s (Gradio %s)", tags, time.monotonic() - started, gr.__version__)


def max_top_k(card: ModelCard) -> int:
    return min(config.UI_MAX_TOP_K, len(card.labels))


def heading(card: ModelCard) -> str:
    """The page's heading for a model: its title and description."""
    return f"# {card.title}\n\n{card.description}"


def about(card: ModelCard) -> str:
    """What the model is, from its metadata (for an int8 model, how it agrees with its fp32 model); what to
    write down to cite a result; the API."""
    prep, meta = card.preprocessing, card.metadata
    (height, width), colour = prep.input_size, "gray" if prep.channels == 1 else "RGB"
    rows = [
        ("Model", f"`{card.tag}`"),
        ("Classes", f"{len(card.labels)}"),
        ("Input", f"{height}×{width} pixels, {colour}: `{prep.transforms()}`"),
    ]
    if meta.get("arch"):
        rows.append(("Architecture", f"`{meta['arch']}`"))
    if meta.get("source_file"):
        rows.append(("Weights", f"`{meta['source_file']}`, SHA-256 `{meta.get('source_sha256', '?')}`"))
    if card.quantization:  # an int8 model: how its answers agree with its fp32 model's
        rows.append(("int8", card.quantization))
    facts = "".join(f"- **{k}:** {v}\n" for k, v in rows)
    cite = (
        f"**How to cite:** *{card.title}*, with its exact version (Model above: a name and a version that "
        "never changes), and the work that trained it."
    )
    api = (
        "Programs use the same model through `POST /classify`, a folder at a time with `client.py`: "
        f"see the [API docs]({config.DOCS_PATH}/)."
    )
    return "\n\n".join((facts, cite, api))


def page(cards: list[ModelCard], classify: Classify) -> gr.Blocks:
    """The photo and slider in, the top classes out as labelled bars, example photos below; a model
    chooser on top when there are several models."""
    import gradio as gr

    by_tag = {c.tag: c for c in cards}
    card = cards[0]
    # The slider's range on the API as on /classify: the largest model's (its default, 5, is the first
    # model's); a model with fewer classes answers with all of them, as /classify does.
    most = max(max_top_k(c) for c in cards)

    async def on_image(image: dict | None, top_k: float, tag: str) -> AsyncIterator[dict[str, float] | None]:
        """The image as uploaded (see preprocess=False below) -> {label: probability}, best first.

        The answer on the page is cleared first: a photo that is refused would otherwise sit beside the last
        photo's classes, which outlast the message (a toast, gone after 10 s)."""
        yield None
        if not image:
            return  # cleared: the answer is cleared too
        chosen = by_tag.get(tag)
        if chosen is None:  # a value the chooser never offered (Gradio's API can send anything)
            raise gr.Error(f"unknown model {tag!r}: choose one of {', '.join(by_tag)}", **REFUSED)
        k = int(top_k) if isinstance(top_k, int | float) else 0  # raw: the slider is not preprocessed either
        if not 1 <= k <= most:
            raise gr.Error(f"top_k must be from 1 to {most}, got {top_k!r}", **REFUSED)
        try:
            [answer] = await classify(images=[Path(image["path"])], top_k=k, model=chosen.tag)
        except ClientError as e:  # what /classify answers with a 4xx or 503
            raise gr.Error(str(e), **REFUSED) from None
        except Exception:
            log.exception("the web page failed to classify %s", image.get("orig_name"))
            raise gr.Error("the server failed to classify this image; its log has the details", duration=None) from None
        yield confidences(answer.predictions)

    with gr.Blocks(title=card.title, analytics_enabled=False, delete_cache=(config.UI_UPLOAD_TTL_S,) * 2) as blocks:
        if len(cards) > 1:
            chooser = gr.Dropdown(
                [(f"{c.title} ({c.tag})", c.tag) for c in cards],
                value=card.tag,
                label="Model",
                elem_id="model",
                # Only the served tags in the browser; what Gradio's API sends is checked by on_image, whose
                # inputs are not preprocessed.
                allow_custom_value=False,
            )
        else:
            chooser = gr.State(card.tag)  # one model: no chooser, the page as it always was
        title = gr.Markdown(heading(card))
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "webcam", "clipboard"],
                    label="Photo: choose a file, drop one here, paste one or use the webcam",
                    elem_id="photo",
                )
                top_k = gr.Slider(
                    1, max_top_k(card), value=min(config.DEFAULT_TOP_K, max_top_k(card)), step=1, label="Classes shown"
                )
            answer = gr.Label(label="Top classes", elem_id="answer")
        # The examples of each model that has its own (the default model: the bundle's, if it has none),
        # only the chosen model's shown; a model without examples shows none rather than a cat.
        example_sets = []
        for i, c in enumerate(cards):
            if not c.examples:
                continue
            with gr.Column(visible=c is card) as column:
                examples = gr.Examples(
                    [[str(p)] for p in c.examples],
                    inputs=[image],
                    label="Example photos",
                    elem_id="examples" if c is card else f"examples-{i}",  # the default's: "examples", as ever
                )
            example_sets.append((c.tag, column, examples))
        with gr.Accordion("About this model", open=True, elem_id="about"):
            facts = gr.Markdown(about(card))
        # gr.Image's own preprocessing opens the upload with Pillow before the callback sees it (with
        # its own error for a non-image) and re-saves any image that is not RGB. With preprocess=False
        # the callback gets the uploaded file itself, checked by Gradio to lie in its upload folder (see
        # mount), and /classify's decoder reads the very bytes the person chose.
        run: dict[str, Any] = {
            "fn": on_image,
            "inputs": [image, top_k, chooser],
            "outputs": answer,
            "preprocess": False,
            "concurrency_limit": config.UI_CONCURRENCY,
            "concurrency_id": "classify",  # the three events below share the one limit
            "show_progress": "minimal",
            # A new photo while the last is being classified runs next, it is not dropped ("once"):
            # pasting fires a clearing event and then the photo, close together.
            "trigger_mode": "always_last",
            "js": CLOSE_MESSAGES,
        }
        # Not image.change: Gradio 6.31 fires it twice when a new upload replaces a photo.
        image.input(**run, api_name=config.UI_API_NAME)  # upload, drop, paste, webcam, and clearing
        for _, _, examples in example_sets:
            examples.load_input_event.then(**run, api_visibility="private")  # an example, once shown
        top_k.release(**run, api_visibility="private")
        if len(cards) > 1:

            def on_choice(tag: str, k: float) -> list:
                """The chosen model's heading, About area, slider range and examples; the photo is then classified
                again."""
                chosen = by_tag.get(tag, card)
                top = max_top_k(chosen)
                k = int(k) if isinstance(k, int | float) else config.DEFAULT_TOP_K
                shown = [gr.Column(visible=t == chosen.tag) for t, _, _ in example_sets]
                return [heading(chosen), about(chosen), gr.Slider(maximum=top, value=min(max(k, 1), top)), *shown]

            chooser.input(
                on_choice,
                [chooser, top_k],
                [title, facts, top_k, *(column for _, column, _ in example_sets)],
                api_visibility="private",
                show_progress="hidden",
                # Raw values: Gradio would check the slider against the range it had before this choice.
                preprocess=False,
            ).then(**run, api_visibility="private")
    return blocks


def confidences(predictions: list[Any]) -> dict[str, float]:
    """Top-k as gr.Label wants it; a repeated class name (ImageNet has two "crane"s) stays two bars."""
    out: dict[str, float] = {}
    for p in predictions:
        name, n = p.label, 1
        while name in out:
            n += 1
            name = f"{p.label} ({n})"
        out[name] = p.score
    return out
