"""A minimal client for OpenAI-compatible ``/v1/chat/completions`` endpoints (standard library only).

Used to draft a system (``twentyq system prompt --llm``) and to propose alternative prompt
templates for one group (:func:`propose_templates`, for the refinement loop). The engine never
needs it. Every failure is an :class:`LLMError` with a one-line message naming cause and fix.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.authoring.draft import strip_json_extras
from systems.format import Group
from systems.validate import check_template, show

DEFAULT_TIMEOUT = 120.0
MAX_REPLY_BYTES = 16 * 1024 * 1024
SYSTEM_MESSAGE = ("You design attribute systems for zero-shot image classification with CLIP-style "
                  "models. Reply with JSON only.")


class LLMError(OSError):
    """The LLM endpoint could not be used; the message names the cause and the fix."""


@dataclass(frozen=True)
class Reply:
    """The assistant's text, why it stopped (``"length"`` means cut off) and the model that answered."""

    text: str
    finish_reason: str | None = None
    model: str | None = None


def endpoint(url: str) -> str:
    """The chat-completions URL for a server root, a ``.../v1`` base or the full endpoint."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LLMError(f"--llm-url {url!r} is not an http(s) URL (e.g. http://localhost:8000/v1)")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def api_key_from_env(name: str | None) -> str | None:
    """The API key held in environment variable ``name`` (None when no name is given)."""
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise LLMError(f"environment variable {name} is not set or empty; export the API key in it "
                       "or drop --llm-key-env")
    return key


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout: float) -> bytes:
    """POST JSON, return the raw reply body; transport failures become one-line LLMErrors."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        hint = {401: "check the API key (--llm-key-env)", 403: "check the API key (--llm-key-env)",
                404: "check --llm-url and --llm-model"}.get(e.code, "check --llm-url, --llm-model and the server's log")
        raise LLMError(f"LLM at {url} answered HTTP {e.code} {e.reason}: {show(detail)}; {hint}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise LLMError(f"cannot reach the LLM at {url}: connection refused; is the server running? "
                           "check --llm-url") from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise _timeout(url, timeout) from None
        raise LLMError(f"cannot reach the LLM at {url}: {reason}; check --llm-url") from None
    except (socket.timeout, TimeoutError):
        raise _timeout(url, timeout) from None
    except OSError as e:  # e.g. connection reset mid-reply
        raise LLMError(f"cannot talk to the LLM at {url}: {e}; check the server") from None
    if len(raw) > MAX_REPLY_BYTES:
        raise LLMError(f"LLM reply from {url} is over {MAX_REPLY_BYTES} bytes; not a chat completion")
    return raw


def _timeout(url: str, timeout: float) -> LLMError:
    return LLMError(f"no answer from the LLM at {url} within {timeout:g} s; raise --llm-timeout "
                    "or use a faster model")


def complete(prompt: str, url: str, model: str, api_key: str | None = None,
             timeout: float = DEFAULT_TIMEOUT, temperature: float | None = None,
             system_message: str = SYSTEM_MESSAGE) -> Reply:
    """Send one user message to an OpenAI-compatible chat endpoint and return the reply.

    ``url`` may be the server root, its ``/v1`` base or the full ``/v1/chat/completions`` URL.
    ``temperature`` is left to the server when None (some models accept no other value).
    """
    url = endpoint(url)
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": "system", "content": system_message}, {"role": "user", "content": prompt}]}
    if temperature is not None:
        body["temperature"] = temperature
    raw = _post(url, body, api_key, timeout)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LLMError(f"LLM reply from {url} is not JSON ({show(raw[:80].decode('utf-8', 'replace'))}); "
                       "is it an OpenAI-compatible /v1/chat/completions endpoint?") from None
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError(f"LLM reply from {url} has no choices[0].message.content ({show(data)}); "
                       "is it an OpenAI-compatible /v1/chat/completions endpoint?") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMError(f"LLM at {url} sent an empty message (finish_reason "
                       f"{choice.get('finish_reason')!r}); try again or use another --llm-model")
    return Reply(text=text, finish_reason=choice.get("finish_reason"), model=data.get("model"))


# ----- candidate templates for one group --------------------------------------------------------

_TEMPLATE_PROMPT = """\
An image classifier built on a CLIP-style embedding model asks one question about each image by
comparing the image with sentences made from a template and its options.

Question "{name}", current template: {template}
Options (each replaces the {{}} in the template): {options}
Classes it helps tell apart: {classes}

Propose {n} alternative templates for this question that a CLIP-style model would match well
against images: short, plain, visual captions. Each must contain exactly one "{{}}" where an
option goes and no other braces, and must read naturally with every option.

Reply with a JSON array of {n} strings and nothing else, e.g. ["A photo of something {{}}.", "..."]
"""


def template_prompt(group: Group, classes: Sequence[str], n: int = 3) -> str:
    """The prompt asking for ``n`` alternative templates for ``group``."""
    return _TEMPLATE_PROMPT.format(name=group.name, template=json.dumps(group.template, ensure_ascii=False),
                                   options=json.dumps(list(group.options), ensure_ascii=False),
                                   classes=", ".join(classes), n=n)


def parse_templates(text: str, current: str | None = None, n: int | None = None) -> list[str]:
    """Valid templates from an LLM's reply: a JSON array of strings (or ``{"templates": [...]}``),
    possibly fenced or commented. Keeps those with exactly one ``{}`` and no other braces, without
    duplicates or the current template, in the reply's order; at most ``n``.

    Raises LLMError when the reply is not such a JSON array at all.
    """
    body = text.strip()
    if body.startswith("```"):  # a fenced reply: drop the fence lines
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    lo, hi = body.find("["), body.rfind("]")
    chunk = body.strip() if body.lstrip().startswith("{") or hi < lo else body[lo:hi + 1]
    chars = list(chunk)
    strip_json_extras(chars, chunk, [])
    try:
        data = json.loads("".join(chars))
    except (json.JSONDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        data = data.get("templates")
    if not isinstance(data, list):
        raise LLMError(f"LLM reply is not a JSON array of templates ({show(text[:80])}); "
                       "try again or use another model")
    out: list[str] = []
    for t in data:
        if isinstance(t, str) and check_template(t.strip(), "template", []):
            t = t.strip()
            if t != current and t not in out:
                out.append(t)
    return out[:n] if n is not None else out


def propose_templates(group: Group, classes: Sequence[str], url: str, model: str, n: int = 3, *,
                      api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                      temperature: float | None = None) -> list[str]:
    """Ask the LLM for up to ``n`` alternative prompt templates for one group.

    Every template returned contains exactly one ``{}`` (and no other braces) and differs from the
    group's current template; invalid ones in the reply are dropped, so the list may be shorter
    than ``n`` (even empty). Transport and format failures raise :class:`LLMError`.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    reply = complete(template_prompt(group, classes, n), url, model, api_key=api_key,
                     timeout=timeout, temperature=temperature)
    return parse_templates(reply.text, current=group.template, n=n)
