"""Prompt-template sets for the class-name baseline's template ensemble.

A template set is a JSON list of strings, each with exactly one ``{}`` (where the class
name goes) and no other braces, e.g. ``["a photo of a {}.", "a drawing of a {}."]``.
Shipped sets (``systems/template_sets/*.json``, loadable by name: :func:`list_template_sets`;
``template_sets/README.md`` says where each comes from): open_clip's ``openai_imagenet`` (OpenAI's
80 ImageNet templates) and ``openai_imagenet_7`` (their 7-template subset), and the project's own
small ``photo``, ``clip8`` and ``art``. Users pass their own as a file, or inline:
:func:`resolve_templates` takes several specs, each a template (it holds ``{}``), a shipped name
or a JSON file, and joins them in order (``--templates "a photo of {}." --templates "art of {}."``).

With an ensemble of T templates over N classes, a class's text embedding is the mean of
its T L2-normalised prompt embeddings, re-normalised (open_clip's
``build_zero_shot_classifier``); that costs N·T prompt embeddings
(:mod:`engine.run.encoder_source`).
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.common.errors import UserInputError
from engine.common.files import read_json_capped
from systems.format import PLACEHOLDER
from systems.validate import check_template

SETS_DIR = Path(__file__).resolve().parent / "template_sets"
MAX_TEMPLATES = 1000


class TemplateError(UserInputError):
    """A template set that cannot be used (one line naming the problem and the fix)."""


def list_template_sets() -> list[str]:
    """Names of the template sets shipped with the package."""
    return sorted(p.stem for p in SETS_DIR.glob("*.json"))


def check_templates(templates: object, source: str = "templates") -> tuple[str, ...]:
    """``templates`` as a tuple of strings, each with exactly one ``{}``; TemplateError otherwise."""
    if not isinstance(templates, (list, tuple)) or isinstance(templates, str):
        raise TemplateError(f"{source}: a template set is a JSON list of strings such as "
                            f'["a photo of a {{}}.", "a drawing of a {{}}."], got {type(templates).__name__}')
    if not templates:
        raise TemplateError(f"{source}: the template list is empty; give at least one template with '{{}}'")
    if len(templates) > MAX_TEMPLATES:
        raise TemplateError(f"{source}: {len(templates)} templates, more than {MAX_TEMPLATES}; use fewer")
    for i, t in enumerate(templates):
        problems: list[str] = []
        if check_template(t, f"{source}[{i}]", problems) and not t.strip(" {}."):
            problems.append(f"{source}[{i}]: template {t!r} has no words around its '{{}}'")
        if problems:
            raise TemplateError(f"{problems[0]}; each template holds the class name once, as '{{}}'")
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise TemplateError(f"{source}: template {dup!r} is listed twice; list each template once")
    return tuple(templates)


def resolve_templates(specs: str | os.PathLike | list | tuple) -> tuple[str, ...]:
    """Templates from one spec or several, joined in order: a spec holding ``{}`` is a template
    itself (``"a photo of {}."``), any other a shipped set's name or a JSON file (:func:`load_templates`).
    The whole is checked once (:func:`check_templates`: a template listed twice is refused)."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[str] = []
    for spec in specs:
        if isinstance(spec, str) and PLACEHOLDER in spec:
            out.append(spec)
        else:
            out += load_templates(spec)
    inline = [s for s in specs if isinstance(s, str) and PLACEHOLDER in s]
    return check_templates(out, "--templates" if inline else "templates")


def load_templates(spec: str | os.PathLike) -> tuple[str, ...]:
    """A template set by shipped name (``"photo"``) or from a JSON file (a list of strings)."""
    path = Path(spec)
    if not path.is_file() and not (path.exists() and not path.is_dir()):  # a FIFO or device: the reader refuses it
        if isinstance(spec, str) and os.sep not in spec and (SETS_DIR / f"{spec}.json").is_file():
            path = SETS_DIR / f"{spec}.json"
        else:
            raise TemplateError(f"template set {str(spec)!r} not found: pass a template with '{{}}' (e.g. "
                                f"\"a photo of a {{}}.\"), a shipped name ({', '.join(list_template_sets())}) "
                                "or a JSON file listing templates")
    data = read_json_capped(path, what="template file", shape="a JSON list of strings", error=TemplateError)
    return check_templates(data, f"template file {str(path)!r}" if path.parent != SETS_DIR else f"template set {path.stem!r}")
