"""The pydantic models of the HTTP API, and :class:`ApiError`, the one error shape.

Every error answer is ``{"error": {"code": ..., "message": ..., "field": ...}}``: ``code`` a
stable word for programs, ``message`` one line naming the cause and the fix, ``field`` the
request part at fault (``"budget"``, ``"image[1]"``, ``"images[0]"``) or null.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class ApiError(Exception):
    """An answer other than 200, raised anywhere in a request and rendered as the error shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})  # e.g. Retry-After on a 503

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("must be a number, not true/false")
    return v


Whole = Annotated[int, BeforeValidator(_no_bool)]
Number = Annotated[float, BeforeValidator(_no_bool)]


def _number_or_auto(v: Any) -> Any:
    """settle's value: "auto", or a number (RunConfig checks its range); one error naming both."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        return float(_no_bool(v))
    except (TypeError, ValueError):
        raise ValueError("must be a number in (0, 1] or \"auto\"") from None


NumberOrAuto = Annotated[Any, BeforeValidator(_number_or_auto)]


class ClassifyParams(BaseModel):
    """Per-request settings (query parameters, or fields of a JSON body). Absent: the server's default
    (``RunConfig``: policy eig, τ 0.9, δ 0, no budget, bayes scorer, top 5, no shortlist; the first system)."""

    model_config = ConfigDict(extra="forbid")

    system: str | None = Field(None, description="a system name from GET /v1/systems (default: the first served)")
    budget: Whole | None = Field(None, description="at most this many prompts per image (absent: no limit)")
    tau: Number | None = Field(None, description="stop once the top class has this probability, in (0, 1]")
    delta: Number | None = Field(None, description="stop once no unasked question gains this many nats (0: never)")
    settle: NumberOrAuto | None = Field(
        None, description='with a Gaussian few-shot calibration: stop once the label would stay put with this '
                          'probability if every question left were asked; "auto": the one chosen on its dev images')
    target_accuracy: Number | None = Field(
        None, description="with a calibration: stop at the τ its dev images chose so that images stopping on "
                          "confidence are right this often (a number in (0, 1)); instead of tau")
    policy: str | None = Field(None, description="question-choice policy (GET /v1/systems lists them)")
    scorer: str | None = Field(None, description='"bayes" (posterior) or "sum"')
    shortlist: Whole | None = Field(None, description="ask which of the top M class names fits, once few remain")
    top_k: Whole | None = Field(None, description="classes listed per result")
    trace: bool | None = Field(None, description="also give, on each asked step, the top_k classes after that step "
                                                 "(`asked[i].top`) and the prompts spent so far (`asked[i].q_spent`), to replay the path; "
                                                 "off by default")


class ClassifyJSON(ClassifyParams):
    """A JSON request: base64 images (a ``data:image/...;base64,`` prefix is allowed) and the settings."""

    images: list[str] = Field(..., description="base64-encoded image files (PNG, JPEG, GIF, WebP, BMP, TIFF)")


class Asked(BaseModel):
    group: str
    eig: float
    answer: str
    answer_prob: float
    confidence_after: float
    top: list[tuple[str, float]] | None = Field(None, description="only with trace: the top_k classes after this "
                                                                  "step; the last step's equals the record's top")
    q_spent: int | None = Field(None, description="only with trace: prompts spent up to and including this step")


class Record(BaseModel):
    """One image's result: exactly ``Result.to_dict()``, the record ``twentyq classify --json`` prints."""

    model_config = ConfigDict(extra="allow")

    label: str | None
    confidence: float
    top: list[tuple[str, float]]
    asked: list[Asked]
    q_spent: int
    stop: str | None
    image: str | None
    error: str | None


class Timings(BaseModel):
    """Milliseconds, and the model batch this request's images were embedded in."""

    model_config = ConfigDict(extra="allow")

    decode_ms: float = Field(description="reading and decoding this request's images (memory_wait_ms included)")
    memory_wait_ms: float = Field(description="waiting for decode memory (--max-decode-memory)")
    queue_ms: float = Field(description="waiting for the model batch to start")
    embed_ms: float = Field(description="embedding the whole batch (shared by its requests)")
    classify_ms: float = Field(description="questions and scoring for this request's (system, settings) group")
    total_ms: float = Field(description="from the end of the upload to the answer")
    batch_images: int = Field(description="images in the model batch")
    batch_requests: int = Field(description="requests in the model batch")


class TargetInfo(BaseModel):
    target_accuracy: float
    tau: float = Field(description="the τ chosen on the calibration's dev images for the target")
    reached: bool = Field(description="false: no τ reached the target on the dev images, so none stops early (τ 1)")


class StopRuleInfo(BaseModel):
    """What this request's images ran with, after the calibration's choices (policy auto, settle auto,
    target_accuracy)."""

    policy: str = Field(description='the policy asked, and for auto what it ran: "auto (fixed)"')
    tau: float = Field(description="the confidence stop (from target_accuracy when given)")
    delta: float
    budget: int | None
    settle: float | None = Field(description="the settled stop's threshold (settle auto: the one chosen); null: none")
    target: TargetInfo | None = Field(description="the target accuracy's τ choice; null without target_accuracy")


class ClassifyResponse(BaseModel):
    model: str = Field(description="the model string the server loaded (the offline stand-in is not CLIP)")
    system: str
    stop_rule: StopRuleInfo
    results: list[Record]
    timings: Timings


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthPublic(BaseModel):
    """What /v1/health tells anyone when the server needs an API key: nothing about the model or paths."""

    status: str = Field(description='"ok", or "draining" once a shutdown began')
    version: str = Field(description="the twentyq version")


class Health(HealthPublic):
    """/v1/health of a server without an API key (one that only this machine can reach, by default)."""

    ready: bool
    model: str
    device: str
    dtype: str
    systems: list[str]
    pending_requests: int = Field(description="requests received and not yet answered")
    batches_run: int
    max_batch: int
    decode_memory_in_use: int = Field(description="bytes of the decode budget reserved now (--max-decode-memory)")
    decode_memory_limit: int = Field(description="the decode budget in bytes (--max-decode-memory)")
    decode_waiting: int = Field(description="requests waiting for decode memory")


class CalibrationInfo(BaseModel):
    name: str | None = Field(description="the calibration file's name (its folder is not shown)")
    sha256: str | None = Field(description="the first 12 hex digits of the file's sha256")
    setting: str = Field(description='"few-shot" or "zero-shot"')
    posterior: str | None = Field(description='the few-shot posterior: "gaussian" (serves settle), "lr", or null')
    auto_policy: str | None = Field(description="what policy=auto runs (chosen on its dev images); null: none recorded")


class SystemInfo(BaseModel):
    name: str
    default: bool
    n_classes: int
    n_groups: int
    q_total: int
    classes: list[str]
    groups: list[str]
    has_class_name_group: bool
    calibration: CalibrationInfo | None = Field(None, description="the calibration this system's requests use "
                                                                  "(twentyq serve --calibration); null: none")


class SystemsResponse(BaseModel):
    systems: list[SystemInfo]
    policies: list[str]
    scorers: list[str]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    note: str
    label: str = Field(description="the model and what it is, as the page shows it (model_label: the offline "
                                   "stand-in and the probe say they are not CLIP)")
    model_id: str
    device: str
    dtype: str
    embed_dim: int
    logit_scale: float


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
