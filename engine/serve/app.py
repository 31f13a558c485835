"""The FastAPI application of ``twentyq serve``: :func:`create_app` builds it from :class:`ServeSettings`.

Endpoints (JSON but the page; every error is ``{"error": {"code", "message", "field"}}``):

- ``GET /``: the page (``engine/serve/static/``) that shows one image's questions step by step;
- ``POST /v1/classify``: images as multipart file parts named ``image`` (settings in the query
  string) or as base64 in a JSON body (``{"images": [...], "budget": 20, ...}``); answers
  ``{"model", "system", "results": [Result.to_dict(), ...], "timings"}`` (``trace=1``: each asked step
  also carries ``top``, the top_k classes after it);
- ``GET /v1/health``: liveness and readiness (the model is loaded before the port opens);
- ``GET /v1/systems``, ``GET /v1/models``: what this server classifies with;
- ``GET /docs`` (Swagger UI) and ``GET /redoc``, their assets served from the installed
  ``fastapi-offline`` package (no CDN), and ``GET /openapi.json``.

Safety: the request body is capped (``max_bytes``, checked on Content-Length and while
reading), images per request (``max_images``) and pixels per image (``max_pixels``,
from the header, before decoding); only bytes are read, never a server-side path; the
optional API key is compared in constant time; remote model code runs only if the
server was started with ``--trust-remote-code``, never per request. An unexpected
exception is a 500 with its traceback logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.core.adaptive import NAME_GROUP, SCORERS
from engine.run.config import RunConfig
from engine.serve.batcher import Batcher
from engine.serve.schemas import (
    ApiError, ClassifyJSON, ClassifyParams, ClassifyResponse, ErrorResponse, Health, ModelsResponse,
    SystemsResponse,
)
from engine.serve.settings import ServeSettings
from engine.serve.uploads import b64_bytes, decode_image

log = logging.getLogger("twentyq.serve")

RUN_FIELDS = ("budget", "tau", "delta", "policy", "scorer", "shortlist", "top_k")
STATIC = Path(__file__).with_name("static")  # the page: plain HTML/CSS/JS, package data, no build step
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 500, 503, 504)}


# --------------------------------------------------------------------------- loading
def load_classifiers(settings: ServeSettings, *, warm: bool = True) -> dict[str, Any]:
    """{system name: Classifier}, one encoder loaded once and shared; prompts embedded up front if ``warm``."""
    from engine.run.classifier import Classifier
    from systems import load_system

    systems = [load_system(s) for s in settings.systems]
    names = [s.name for s in systems]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--system: two systems are named {dup[0]!r}; requests pick a system by name, so "
                         "serve systems with distinct names")
    encoder = settings.encoder.load()
    classifiers = {s.name: Classifier(settings.encoder, s, encoder=encoder) for s in systems}
    if warm:
        warm_up(classifiers)
    return classifiers


def warm_up(classifiers: dict[str, Any]) -> None:
    """Embed every system's prompts and one image, so the first request does not pay for it."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3)
    for clf in classifiers.values():
        emb, good, _ = clf.embed_images([Image.fromarray(ramp)])
        if len(good):
            clf.classify_embedded(emb, RunConfig(mode="full"))


def model_note(encoder: Any) -> str:
    """What the model is, in words (the registry's :func:`model_label`; the offline stand-in and the
    probe say they are not CLIP), else its backend and weights id."""
    from engine.encoders.registry import model_label

    _, _, note = model_label(encoder.name).partition(" — ")
    if note:
        return note
    d = encoder.describe() if hasattr(encoder, "describe") else {}
    return d.get("label") or f"{d.get('backend', type(encoder).__name__)} ({encoder.model_id})"


def model_display(encoder: Any) -> str:
    """The one line the page shows as the model: :func:`model_label` (``offline — ... NOT CLIP``), or the
    name and what it is for a model the registry does not list."""
    from engine.encoders.registry import model_label

    label = model_label(encoder.name)
    return label if " — " in label else f"{encoder.name} — {model_note(encoder)}"


# --------------------------------------------------------------------------- errors
def _field(loc: tuple) -> str | None:
    loc = [x for x in loc if x not in ("query", "body")]
    if not loc:
        return None
    return str(loc[0]) + "".join(f"[{x}]" for x in loc[1:])


def _validation_error(errors: list[dict]) -> ApiError:
    # an unknown name first: 'image' for 'images' is better told as a typo than as 'images is missing'
    err = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")[0]
    field = _field(tuple(err.get("loc", ())))
    if err.get("type") == "extra_forbidden":
        known = ", ".join(("images",) + tuple(ClassifyParams.model_fields))
        return ApiError(400, "unknown_parameter", f"unknown parameter {field!r}; the known ones are {known}",
                        field)
    if err.get("type") == "missing":
        return ApiError(400, "missing_field", f"{field} is required", field)
    given = repr(err.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return ApiError(400, "invalid_parameter", f"{field} == {given}: {err.get('msg', 'invalid')}", field)


def _run_config(params: dict[str, Any]) -> RunConfig:
    """RunConfig from the request's settings; its ValueError becomes a 400 naming the field."""
    try:
        return RunConfig(**{k: v for k, v in params.items() if k in RUN_FIELDS and v is not None})
    except ValueError as e:
        msg = str(e)
        head = msg.split(" ==", 1)[0].strip()
        field = {"shortlist_size": "shortlist"}.get(head, head)
        field = field if field in RUN_FIELDS else None
        code = "unknown_policy" if field == "policy" else "invalid_parameter"
        raise ApiError(400, code, msg, field) from None


def _check_shortlist(system: Any, config: RunConfig) -> None:
    """The shortlist question needs a class-name group and the bayes scorer: a 400 before any work."""
    if config.shortlist is None:
        return
    if NAME_GROUP not in {g.name for g in system.groups}:
        raise ApiError(400, "invalid_parameter", f"shortlist: system {system.name!r} has no {NAME_GROUP!r} group "
                                                 "to ask class names with; leave shortlist out for this system",
                       "shortlist")
    if config.scorer != "bayes":
        raise ApiError(400, "invalid_parameter", "shortlist needs scorer=bayes", "shortlist")


def _check_policy(clf: Any, config: RunConfig) -> None:
    """dev-order needs the classifier's calibration (its order): a 400 before any work."""
    from engine.run.calibration_file import CalibrationError, resolve_policy

    try:
        resolve_policy(getattr(clf, "calibration", None), config)
    except CalibrationError as e:
        raise ApiError(400, "invalid_parameter", str(e), "policy") from None


class _Guard:
    """Outermost of the app's middleware: caps the request body, and turns an unexpected exception into
    the 500 error shape with its traceback logged (never a 4xx)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ApiError(413, "body_too_large", f"the request body is over this server's limit of "
                                                  f"{self.max_bytes:,} bytes (--max-bytes); send fewer or smaller "
                                                  "images per request", None)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_error(send, ApiError(400, "bad_request", "Content-Length is not a number"))
            if int(length) > self.max_bytes:
                return await _send_error(send, too_big)
        seen = 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_big
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except Exception:  # noqa: BLE001
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(send, ApiError(500, "internal", "unexpected server error (logged on the "
                                                                  "server); retry, and report it if it persists"))


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app
def create_app(settings: ServeSettings, classifiers: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app. ``classifiers`` ({system name: Classifier} sharing one encoder) defaults to
    :func:`load_classifiers` (the model is loaded here, before the port opens)."""
    from policies import list_policies

    classifiers = classifiers if classifiers is not None else load_classifiers(settings)
    batcher = Batcher(classifiers, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1e3)
    encoder = next(iter(classifiers.values())).encoder
    default_system = next(iter(classifiers))

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        # uvicorn has let every in-flight request finish by now; stop the worker
        await asyncio.to_thread(batcher.close, 30.0)

    app = FastAPIOffline(
        title="twentyq", version="0.1.0", lifespan=lifespan,
        description="Adaptive twenty-questions zero-shot image classification. Model: "
                    f"{encoder.name} ({model_note(encoder)}).",
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.batcher, app.state.classifiers, app.state.settings = batcher, classifiers, settings
    app.add_middleware(_Guard, max_bytes=settings.max_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = _validation_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            err = ApiError(404, "not_found", f"no such endpoint {request.url.path!r}; see /docs for the API")
        elif exc.status_code == 405:
            err = ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path!r}; "
                                                      "see /docs for the API")
        else:
            err = ApiError(exc.status_code, f"http_{exc.status_code}", str(exc.detail))
        return JSONResponse(err.body(), status_code=err.status, headers=getattr(exc, "headers", None))

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            given = request.headers.get("x-api-key")
        if not given:
            raise ApiError(401, "missing_api_key", "this server needs an API key: send the header "
                                                   "'Authorization: Bearer KEY' or 'X-API-Key: KEY'", "Authorization")
        if not hmac.compare_digest(given.encode("utf-8"), settings.api_key.encode("utf-8")):
            raise ApiError(401, "bad_api_key", "the API key is not valid; check the key you send", "Authorization")

    keyed = [Depends(require_key)]

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        """The page: pick an image and watch its questions step by step (``static/``; it calls the API
        below, with the API key the user types when the server needs one)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/health", response_model=Health, tags=["server"])
    async def health() -> Any:
        """Liveness and readiness. The model is loaded before the port opens, so an answer means ready.
        Needs no API key."""
        d = encoder.describe() if hasattr(encoder, "describe") else {}
        return Health(status="ok", ready=True, model=encoder.name, device=str(encoder.device),
                      dtype=d.get("dtype", str(getattr(encoder, "dtype", ""))), systems=list(classifiers),
                      pending_requests=batcher.pending, batches_run=batcher.batches_run, max_batch=batcher.max_batch)

    @app.get("/v1/systems", response_model=SystemsResponse, dependencies=keyed, responses=_ERRORS, tags=["server"])
    async def systems() -> Any:
        """The systems served (pick one per request with ``system``), the policies and the scorers."""
        out = []
        for name, clf in classifiers.items():
            s = clf.system
            out.append({"name": name, "default": name == default_system, "n_classes": s.n_classes,
                        "n_groups": s.n_groups, "q_total": s.q_total, "classes": list(s.classes),
                        "groups": [g.name for g in s.groups],
                        "has_class_name_group": NAME_GROUP in {g.name for g in s.groups}})
        return {"systems": out, "policies": list_policies(), "scorers": list(SCORERS)}

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=keyed, responses=_ERRORS, tags=["server"])
    async def models() -> Any:
        """The model this server loaded at start-up (one per server)."""
        d = encoder.describe() if hasattr(encoder, "describe") else {}
        return {"models": [{"model": encoder.name, "note": model_note(encoder), "label": model_display(encoder),
                            "model_id": encoder.model_id,
                            "device": str(encoder.device), "dtype": d.get("dtype", str(encoder.dtype)),
                            "embed_dim": int(encoder.embed_dim), "logit_scale": float(encoder.logit_scale)}]}

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=keyed, responses=_ERRORS,
              tags=["classify"], openapi_extra={"requestBody": _request_body_doc()})
    async def classify(request: Request, query: Annotated[ClassifyParams, Query()]) -> Any:
        """Classify one or more images, each with its own question budget and stop rule.

        Multipart: file parts named ``image`` (repeat it), settings in the query string
        (``curl -F image=@a.png 'http://127.0.0.1:8000/v1/classify?budget=20'``). JSON: ``{"images":
        ["<base64>", ...], "budget": 20, ...}``. Each record is the one ``twentyq classify --json`` prints.
        """
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        params = query.model_dump(exclude_unset=True)
        if ctype == "multipart/form-data":
            items = await _read_multipart(request, settings.max_images)
        elif ctype == "application/json":
            body_params, images = await _read_json(request, settings.max_images)
            both = sorted(set(params) & set(body_params))
            if both:
                raise ApiError(400, "conflicting_parameter", f"{both[0]} is given both in the query string and "
                                                             "in the JSON body; give it once", both[0])
            params.update(body_params)
            items = [(f"images[{i}]", f"images[{i}]", b64) for i, b64 in enumerate(images)]
        else:
            raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype or 'missing'!r}: send "
                                                          "multipart/form-data (file parts named 'image') or "
                                                          "application/json ({\"images\": [base64, ...]})")
        if not items:
            raise ApiError(400, "no_images", "no images in the request; send file parts named 'image' or a "
                                             "JSON body with \"images\": [base64, ...]", "image")
        system = params.get("system") or default_system
        if system not in classifiers:
            raise ApiError(400, "unknown_system", f"system {system!r} is not served here; choose one of "
                                                  f"{list(classifiers)} (GET /v1/systems)", "system")
        config = _run_config(params)
        _check_shortlist(classifiers[system].system, config)
        _check_policy(classifiers[system], config)
        trace = bool(params.get("trace"))

        t0 = time.perf_counter()
        try:
            answer, decode_ms = await asyncio.wait_for(_decode_and_classify(items, system, config, trace),
                                                       timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the request took over {settings.timeout_s:g} s (--timeout-s); send "
                                           "fewer images per request or retry later") from None
        records = []
        for r, (_, name, _) in zip(answer.results, items):
            r.image = name
            records.append(r.to_dict())
        timings = {"decode_ms": decode_ms, **answer.timings, "total_ms": (time.perf_counter() - t0) * 1e3}
        timings = {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()}
        return JSONResponse({"model": encoder.name, "system": system, "results": records, "timings": timings})

    async def _decode_and_classify(items, system, config, trace):
        t0 = time.perf_counter()
        images = await run_in_threadpool(_decode_all, items, settings.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1e3
        return await batcher.submit(images, system, config, trace=trace), decode_ms

    return app


def _decode_all(items: list[tuple[str, str, Any]], max_pixels: int) -> list[Any]:
    out = []
    for field, _, data in items:
        if isinstance(data, str):
            data = b64_bytes(data, field)
        out.append(decode_image(data, field, max_pixels))
    return out


async def _read_multipart(request: Request, max_images: int) -> list[tuple[str, str, bytes]]:
    """(field, name, bytes) of each ``image`` file part."""
    try:
        form = await request.form(max_files=max_images, max_fields=32, max_part_size=64 * 1024)
    except StarletteHTTPException as e:
        if "too many files" in str(e.detail).lower():
            raise ApiError(413, "too_many_images", f"more than {max_images} images in one request "
                                                   "(--max-images); split them over several requests",
                           "image") from None
        raise ApiError(400, "bad_multipart", f"the multipart body could not be read ({e.detail}); send each "
                                             "image as a file part named 'image' (curl -F image=@a.png)") from None
    try:
        items = []
        for key, value in form.multi_items():
            field = f"image[{len(items)}]"
            if key != "image":
                raise ApiError(400, "unknown_field", f"form field {key!r}: only file parts named 'image' are read; "
                                                     "settings go in the query string (?budget=20)", key)
            if isinstance(value, str):
                raise ApiError(400, "bad_image", f"{field} is a text field, not a file; send the file itself "
                                                 "(curl -F image=@a.png)", field)
            items.append((field, value.filename or field, await value.read()))
        return items
    finally:
        await form.close()


async def _read_json(request: Request, max_images: int) -> tuple[dict[str, Any], list[str]]:
    """The settings given in a JSON body, and its base64 images."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_json", f"the body is not valid JSON ({e}); send "
                                        "{\"images\": [base64, ...], ...}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the JSON body must be an object: {\"images\": [base64, ...], ...}")
    if isinstance(body.get("images"), list) and len(body["images"]) > max_images:
        raise ApiError(413, "too_many_images", f"{len(body['images'])} images in one request, over this server's "
                                               f"limit of {max_images} (--max-images); split them over several "
                                               "requests", "images")
    try:
        parsed = ClassifyJSON.model_validate(body)
    except ValidationError as e:
        raise _validation_error(list(e.errors())) from None
    params = parsed.model_dump(exclude_unset=True)
    return {k: v for k, v in params.items() if k != "images"}, parsed.images


def _request_body_doc() -> dict[str, Any]:
    schema = ClassifyJSON.model_json_schema()
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "image files (repeat the part); settings go in the query"}}}},
        "application/json": {"schema": schema},
    }}
