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

Safety (docs/reliability.md lists each case with its test): the request body is capped
(``max_bytes``, checked on Content-Length and while reading) and must arrive within
``read_timeout_s``; images per request (``max_images``) and pixels per image (``max_pixels``,
from the header, before decoding); decoding shares one memory budget (``max_decode_memory``,
engine/serve/memory.py): a request waits for its share, 503 + Retry-After past ``decode_wait_s``;
a bad image is that image's error, not the request's (unless every image is bad); only bytes are
read, never a server-side path; with an API key everything but ``/v1/health`` (status and version
only) and the page needs the key, compared as UTF-8 bytes in constant time; the page is served with
a Content-Security-Policy and every answer with ``X-Frame-Options: DENY`` and ``nosniff``; remote
model code runs only if the server was started with ``--trust-remote-code``, never per request. An
unexpected exception is a 500 with its traceback logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import reprlib
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.core.adaptive import NAME_GROUP, SCORERS
from engine.core.results import Result
from engine.run.config import RunConfig
from engine.run.provenance import package_version
from engine.serve.batcher import Batcher
from engine.serve.memory import BudgetTimeout, MemoryBudget, kept_cost, request_cost, trim_malloc
from engine.serve.schemas import (
    ApiError, ClassifyJSON, ClassifyParams, ClassifyResponse, ErrorResponse, Health, HealthPublic, ModelsResponse,
    SystemsResponse,
)
from engine.serve.settings import ServeSettings
from engine.serve.uploads import Header, b64_bytes, decode_image, read_header
from policies import list_policies
from systems import load_system

log = logging.getLogger("twentyq.serve")

RUN_FIELDS = ("budget", "tau", "delta", "settle", "target_accuracy", "policy", "scorer", "shortlist", "top_k")
STATIC = Path(__file__).with_name("static")  # the page: plain HTML/CSS/JS, package data, no build step
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 408, 413, 415, 500, 503, 504)}
# The page (``/`` and ``/static/*``) loads only its own script and style, shows the picked file as a
# blob: preview and talks only to this server; no page may frame it.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 3, 60, 60


def is_open_path(path: str) -> bool:
    """The paths that need no API key: the liveness check and the page (it asks the user for the key)."""
    return path in ("/", "/v1/health") or path.startswith("/static/")


def key_matches(headers: list[tuple[bytes, bytes]], key: bytes) -> bool | None:
    """Whether the request's key is ``key`` (UTF-8 bytes, compared in constant time); None if it sends none.

    The key comes as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Every such header sent must
    carry it: a wrong one (or an ``Authorization`` header of another scheme) is never made good by a
    right one beside it.
    """
    given = []
    for name, value in headers:
        if name == b"authorization":
            given.append(value[7:].strip() if value[:7].lower() == b"bearer " else b"")
        elif name == b"x-api-key":
            given.append(value.strip())
    if not any(given):
        return None
    ok = True
    for g in given:  # (no early exit: each header costs the same compare)
        ok &= hmac.compare_digest(g, key)
    return ok


# --------------------------------------------------------------------------- loading
def load_classifiers(settings: ServeSettings, *, warm: bool = True) -> dict[str, Any]:
    """{system name: Classifier}, one encoder loaded once and shared; prompts embedded up front if ``warm``."""
    from engine.run.classifier import Classifier

    systems = [load_system(s) for s in settings.systems]
    names = [s.name for s in systems]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--system: two systems are named {dup[0]!r}; requests pick a system by name, so "
                         "serve systems with distinct names")
    cals = calibrations_by_system(settings.calibrations, names)  # read and matched before the model loads
    encoder = settings.encoder.load()
    classifiers = {s.name: Classifier(settings.encoder, s, encoder=encoder, calibration=cals.get(s.name))
                   for s in systems}
    if warm:
        warm_up(classifiers)
    return classifiers


def calibrations_by_system(calibrations: tuple[str, ...], served: list[str]) -> dict[str, Any]:
    """{served system name: Calibration}: each of ``calibrations`` (files or shipped names) read and given to the
    served system it was made for, by the system name it records. A ValueError (one line, the fix) for one made
    for a system not served, or two for the same system. The Classifier then checks it against that system and
    the model (CalibrationMismatch, also a ValueError)."""
    from engine.run.calibration_file import load_calibration

    out: dict[str, Any] = {}
    for ref in calibrations:
        cal = load_calibration(ref)
        name = cal.system_name
        if name not in served:
            raise ValueError(f"--calibration {ref!r} was made for system {name!r}, which this server does not serve "
                             f"(serving {served}); add --system {name} (its name or JSON file), or drop the calibration")
        if name in out:
            raise ValueError(f"--calibration: two calibrations for system {name!r} ({out[name].where()} and "
                             f"{cal.where()}); a system uses one, so give one of them")
        out[name] = cal
    return out


def calibration_info(cal: Any) -> dict[str, Any] | None:
    """What ``GET /v1/systems`` says of a system's calibration (None without one): the file's name (not its
    folder), its sha256 prefix, the setting, the few-shot posterior ("gaussian": serves ``settle``; "lr"; None in
    the zero-shot setting) and the auto policy's choice (None: no choice recorded)."""
    if cal is None:
        return None
    from engine.core.gaussian import GaussianPosterior

    post = None if cal.few_shot is None else cal.few_shot.posterior
    kind = None if post is None else "gaussian" if isinstance(post, GaussianPosterior) else "lr"
    return {"name": Path(cal.path).name if cal.path else None, "sha256": (cal.sha256 or "")[:12] or None,
            "setting": cal.setting, "posterior": kind, "auto_policy": cal.auto.get("choice") or None}


def warm_up(classifiers: dict[str, Any]) -> None:
    """Embed every system's prompts and one image, so the first request does not pay for it."""
    ramp = np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3)
    for clf in classifiers.values():
        emb, good, _ = clf.images.embed([Image.fromarray(ramp)])
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
    given = _short_repr.repr(err.get("input"))  # bounded: junk of any size or depth stays one short line
    given = given if len(given) <= 60 else given[:57] + "..."
    return ApiError(400, "invalid_parameter", f"{field} == {given}: {err.get('msg', 'invalid')}", field)


def _field_named(msg: str) -> str | None:
    """The request field an error message is about: its head ("budget == -3, ...", "target accuracy == 2 ..."),
    else the first flag it names that is a request field ("--target-accuracy chooses τ ..." -> target_accuracy)."""
    head = msg.split(" ==", 1)[0].strip()
    head = {"shortlist_size": "shortlist", "target accuracy": "target_accuracy"}.get(head, head)
    if head in RUN_FIELDS:
        return head
    return next((f for f in (m.replace("-", "_") for m in re.findall(r"--([a-z][a-z-]*)", msg)) if f in RUN_FIELDS),
                None)


def _run_config(params: dict[str, Any]) -> RunConfig:
    """RunConfig from the request's settings; its ValueError becomes a 400 naming the field."""
    try:
        return RunConfig(**{k: v for k, v in params.items() if k in RUN_FIELDS and v is not None})
    except ValueError as e:
        msg = str(e)
        field = _field_named(msg)
        code = "unknown_policy" if field == "policy" else "invalid_parameter"
        raise ApiError(400, code, _public(msg, None), field) from None


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


def _checked_stop_rule(clf: Any, config: RunConfig) -> dict[str, Any]:
    """The stop rule the request's images will run with (:func:`_stop_rule`), once what the classifier's
    calibration cannot serve is refused as a 400 before any work (so no batch fails with it): dev-order needs its
    order, a few-shot one the bayes scorer and no shortlist, a target accuracy or settle auto dev paths that
    describe the run (their choices are made here, memoised: the caller runs this off the event loop). Messages
    name the calibration by its file name, not the server's folder."""
    from engine.run.calibration_file import CalibrationError, resolve_policy

    cal = getattr(clf, "calibration", None)
    try:
        resolve_policy(cal, config)
    except CalibrationError as e:
        raise ApiError(400, "invalid_parameter", _public(str(e), cal), "policy") from None
    check = getattr(clf, "check_calibrated", None)
    try:
        if check is not None:
            check(config)
    except CalibrationError as e:
        msg = str(e)
        scoring = "shortlist" if config.shortlist else "scorer"  # the few-shot refusal names both
        field = scoring if "is few-shot" in msg else _field_named(msg) or scoring
        raise ApiError(400, "invalid_parameter", _public(msg, cal), field) from None
    return _stop_rule(clf, config)


def _stop_rule(clf: Any, config: RunConfig) -> dict[str, Any]:
    """The response's ``stop_rule``: the policy (auto: what it runs), τ (a target's: chosen on the calibration's dev
    images, with whether it reached the target), δ, the budget and the settled stop's threshold (auto: chosen), as
    the classifier's plan uses them (its choices are memoised, so this recomputes nothing)."""
    from engine.run.calibration_file import policy_label

    use = getattr(clf, "calibration_use", None)
    target = use.target_choice(config) if use is not None else None
    settle = use.settle_choice(config) if use is not None else None
    return {"policy": policy_label(getattr(clf, "calibration", None), config),
            "tau": float(target.tau if target is not None else config.tau), "delta": float(config.delta),
            "budget": config.budget,
            "settle": None if config.settle is None else float(config.settle if settle is None else settle.threshold),
            "target": None if target is None else {"target_accuracy": float(target.target), "tau": float(target.tau),
                                                   "reached": bool(target.reached)}}


def _public(msg: str, cal: Any) -> str:
    """``msg`` in a client's words: the calibration's path (as ``Calibration.where`` quotes it) cut to its file
    name, and a command-line flag that is a request field named as the field ("drop --delta, or pass a number to
    --settle" -> "drop delta, or pass a number to settle"); other flags (``--posterior`` of ``twentyq
    calibrate``) stay as they are."""
    path = getattr(cal, "path", None)
    msg = msg.replace(repr(path), repr(Path(path).name)) if path else msg

    def field(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return name if name in RUN_FIELDS else m.group(0)

    return re.sub(r"--([a-z][a-z-]*)", field, msg)


class _Guard:
    """Outermost of the app's middleware, for every HTTP request:

    - the API key, when one is set: every path but :func:`is_open_path` needs it (401 before anything
      else is read);
    - security headers on every answer (nosniff, no framing), and :data:`PAGE_CSP` on the page;
    - the request body: capped at ``max_bytes`` (Content-Length, and counted while read), and it must
      arrive within ``read_timeout_s`` of the headers (408), so a half-sent body does not hold the
      request forever;
    - an unexpected exception becomes the 500 error shape with its traceback logged (never a 4xx).
    """

    def __init__(self, app, settings: ServeSettings):
        self.app, self.settings = app, settings
        self.key = None if settings.api_key is None else settings.api_key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = list(SECURITY_HEADERS)
        if path == "/" or path.startswith("/static/"):
            extra.append((b"content-security-policy", PAGE_CSP.encode()))
        started = False

        async def guarded_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", []))
                           + [(k, v) for k, v in extra if k not in have]}
            await send(message)

        headers = scope.get("headers", [])
        if self.key is not None and not is_open_path(path):
            ok = key_matches(headers, self.key)
            if not ok:
                return await _send_error(guarded_send, ApiError(
                    401, "missing_api_key" if ok is None else "bad_api_key",
                    "this server needs an API key: send the header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
                    if ok is None else "the API key is not valid; check the key you send", "Authorization",
                    headers={"WWW-Authenticate": "Bearer"}))
        max_bytes = self.settings.max_bytes
        too_big = ApiError(413, "body_too_large", f"the request body is over this server's limit of "
                                                  f"{max_bytes:,} bytes (--max-bytes); send fewer or smaller "
                                                  "images per request", None)
        length = dict(headers).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_error(guarded_send, ApiError(400, "bad_request", "Content-Length is not a number"))
            if int(length) > max_bytes:
                return await _send_error(guarded_send, too_big)
        seen, body_done = 0, False
        read_by = time.monotonic() + self.settings.read_timeout_s

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done:  # only a disconnect is left to hear: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, read_by - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(408, "body_timeout", f"the request body did not arrive within "
                                                    f"{self.settings.read_timeout_s:g} s (--read-timeout-s); send "
                                                    "the whole body at once") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise too_big
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:  # noqa: BLE001
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(guarded_send, ApiError(500, "internal", "unexpected server error (logged on "
                                                                          "the server); retry, and report it if "
                                                                          "it persists"))


def _closes(err: ApiError) -> bool:
    """Answers after which the connection is closed: the rest of the body is not read."""
    return err.status in (408, 413)


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in err.headers.items()]
    if _closes(err):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app
def create_app(settings: ServeSettings, classifiers: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app. ``classifiers`` ({system name: Classifier} sharing one encoder) defaults to
    :func:`load_classifiers` (the model is loaded here, before the port opens)."""
    classifiers = classifiers if classifiers is not None else load_classifiers(settings)
    batcher = Batcher(classifiers, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1e3)
    encoder = next(iter(classifiers.values())).encoder
    default_system = next(iter(classifiers))
    budget = MemoryBudget(settings.max_decode_memory)

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
    app.state.decode_budget = budget
    app.add_middleware(_Guard, settings=settings)
    if settings.api_key is not None:
        _declare_api_key(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = dict(exc.headers)
        if _closes(exc):
            headers["Connection"] = "close"
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)

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


    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        """The page: pick an image and watch its questions step by step (``static/``; it calls the API
        below, with the API key the user types when the server needs one)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    version = package_version()

    @app.get("/v1/health", response_model=Health if settings.api_key is None else HealthPublic, tags=["server"])
    async def health() -> Any:
        """Liveness and readiness. The model is loaded before the port opens, so an answer means ready.
        Needs no API key; on a server with a key it says only its status and version."""
        if settings.api_key is not None:
            return HealthPublic(status="ok", version=version)
        d = encoder.describe() if hasattr(encoder, "describe") else {}
        return Health(status="ok", version=version, ready=True, model=encoder.name, device=str(encoder.device),
                      dtype=d.get("dtype", str(getattr(encoder, "dtype", ""))), systems=list(classifiers),
                      pending_requests=batcher.pending, batches_run=batcher.batches_run, max_batch=batcher.max_batch,
                      decode_memory_in_use=budget.used, decode_memory_limit=budget.capacity,
                      decode_waiting=budget.waiting)

    @app.get("/v1/systems", response_model=SystemsResponse, responses=_ERRORS, tags=["server"])
    async def systems() -> Any:
        """The systems served (pick one per request with ``system``), the policies and the scorers."""
        out = []
        for name, clf in classifiers.items():
            s = clf.system
            out.append({"name": name, "default": name == default_system, "n_classes": s.n_classes,
                        "n_groups": s.n_groups, "q_total": s.q_total, "classes": list(s.classes),
                        "groups": [g.name for g in s.groups],
                        "has_class_name_group": NAME_GROUP in {g.name for g in s.groups},
                        "calibration": calibration_info(getattr(clf, "calibration", None))})
        return {"systems": out, "policies": list_policies(), "scorers": list(SCORERS)}

    @app.get("/v1/models", response_model=ModelsResponse, responses=_ERRORS, tags=["server"])
    async def models() -> Any:
        """The model this server loaded at start-up (one per server)."""
        d = encoder.describe() if hasattr(encoder, "describe") else {}
        return {"models": [{"model": encoder.name, "note": model_note(encoder), "label": model_display(encoder),
                            "model_id": encoder.model_id,
                            "device": str(encoder.device), "dtype": d.get("dtype", str(encoder.dtype)),
                            "embed_dim": int(encoder.embed_dim), "logit_scale": float(encoder.logit_scale)}]}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=_ERRORS,
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
        stop_rule = await run_in_threadpool(_checked_stop_rule, classifiers[system], config)
        trace = bool(params.get("trace"))

        t0 = time.perf_counter()
        try:
            results, timings = await asyncio.wait_for(_decode_and_classify(request, items, system, config, trace),
                                                      timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the request took over {settings.timeout_s:g} s (--timeout-s); send "
                                           "fewer images per request or retry later") from None
        records = []
        for r, (_, name, _) in zip(results, items):
            r.image = name
            records.append(r.to_dict())
        timings = {**timings, "total_ms": (time.perf_counter() - t0) * 1e3}
        timings = {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()}
        return JSONResponse({"model": encoder.name, "system": system, "stop_rule": stop_rule, "results": records,
                             "timings": timings})

    async def _decode_and_classify(request, items, system, config, trace) -> tuple[list[Result], dict]:
        """Each image's Result (a bad image is its own error, as in ``twentyq classify``) and the timings.

        Headers first (nothing decoded), then the request's decode memory is reserved at once
        (``request_cost``: every kept image plus the largest decode; 503 + Retry-After past
        ``decode_wait_s``), then its images are decoded one at a time, stopping if the client has gone
        or the request was cancelled (its timeout), and the kept images go to the batcher. If every
        image is bad, the first one's error is the answer (400 or 413)."""
        t0 = time.perf_counter()
        headers = await run_in_threadpool(_read_headers, items, settings.max_pixels)
        errors = {k: h for k, h in enumerate(headers) if isinstance(h, ApiError)}
        good = [k for k in range(len(items)) if k not in errors]
        if not good:
            raise errors[0]
        t_wait = time.perf_counter()
        try:
            held = await budget.acquire(request_cost([headers[k][1].cost for k in good]), settings.decode_wait_s)
        except BudgetTimeout as e:
            raise ApiError(503, "busy", f"no decode memory came free within {settings.decode_wait_s:g} s "
                                        f"(--decode-wait-s; the server decodes at most "
                                        f"{settings.max_decode_memory:,} bytes of images at once, "
                                        f"--max-decode-memory); retry after {e.retry_after_s} s",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        wait_ms = (time.perf_counter() - t_wait) * 1e3
        images: dict[int, Any] = {}
        try:
            for k in good:
                if await request.is_disconnected():
                    log.info("client gone: %s %s not decoded further", request.method, request.url.path)
                    raise ApiError(400, "client_disconnected", "the client closed the connection")
                data, header = headers[k]
                headers[k] = None  # the encoded bytes are not needed past this image
                try:
                    images[k] = await _finish_in_thread(decode_image, data, items[k][0], settings.max_pixels)
                except ApiError as e:
                    errors[k] = e
                del data
            decode_ms = (time.perf_counter() - t0) * 1e3
            if not images:
                raise errors[min(errors)]
            # the decode peak is over: keep only what the decoded images hold until the model has them
            kept = min(held, sum(kept_cost(*images[k].size) for k in images))
            budget.release(held - kept)
            held = kept
            order = sorted(images)
            batch = [images.pop(k) for k in order]
            answer = await batcher.submit(batch, system, config, trace=trace)
            del batch
        finally:
            images.clear()
            budget.release(held)
            if budget.used == 0:
                asyncio.get_running_loop().run_in_executor(None, trim_malloc)
        results: list[Result | None] = [None] * len(items)
        for k, r in zip(order, answer.results):
            results[k] = r
        for k, e in errors.items():
            results[k] = Result.failed(e.message)
        return results, {"decode_ms": decode_ms, "memory_wait_ms": wait_ms, **answer.timings}

    return app


async def _finish_in_thread(fn, *args):
    """``fn(*args)`` in the thread pool. If the caller is cancelled meanwhile (its timeout), the thread
    cannot be stopped: wait for it to end (one image at most) before the cancellation goes on, so the
    memory reserved for it is given back only once it is really free."""
    task = asyncio.ensure_future(run_in_threadpool(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: a failed decode of a cancelled request is nobody's error
        raise


def _read_headers(items: list[tuple[str, str, Any]], max_pixels: int) -> list[tuple[bytes, Header] | ApiError]:
    """Each item's bytes and header (nothing decoded), or its ApiError (bad base64, not an image, too large)."""
    out: list[tuple[bytes, Header] | ApiError] = []
    for field, _, data in items:
        try:
            raw = b64_bytes(data, field) if isinstance(data, str) else data
            out.append((raw, read_header(raw, field, max_pixels)))
        except ApiError as e:
            out.append(e)
    return out


def _declare_api_key(app: FastAPI) -> None:
    """The OpenAPI document of a server with a key: its two ways to send the key as security schemes,
    required by every operation but /v1/health (clients and fuzzers see that a key is needed)."""
    schemes = {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
               "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default()
            spec.setdefault("components", {})["securitySchemes"] = schemes
            for path, ops in spec.get("paths", {}).items():
                if is_open_path(path):
                    continue
                for op in ops.values():
                    if isinstance(op, dict):
                        op["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
                        op.setdefault("responses", {}).setdefault(
                            "401", {"description": "no or a wrong API key",
                                    "content": {"application/json": {"schema": {"$ref":
                                                "#/components/schemas/ErrorResponse"}}}})
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


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
    except RecursionError:  # [[[[... nested past the parser's depth: not a request, never a 500
        raise ApiError(400, "bad_json", "the JSON body is nested too deeply to be a request; send "
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
            "type": "object", "required": ["image"], "additionalProperties": False,
            "properties": {"image": {"type": "array", "minItems": 1,
                                     "items": {"type": "string", "format": "binary"},
                                     "description": "image files (repeat the part); settings go in the query"}}}},
        "application/json": {"schema": schema},
    }}
