"""Systems built from other systems or from plain lists."""

from __future__ import annotations

from .format import PLACEHOLDER, AttributeSystem, Group

BASELINE_GROUP = "class_name"


def baseline_system(system_or_classes: AttributeSystem | list[str], template: str | None = None) -> AttributeSystem:
    """The class-name baseline as a one-group system.

    Its one group's options are the N class names with identity rules, so the
    engine scores the baseline with the same machinery as any other system
    (Q = N). ``template`` defaults to the system's ``baseline_template``.
    """
    if isinstance(system_or_classes, AttributeSystem):
        classes = system_or_classes.classes
        name = f"{system_or_classes.name}:baseline"
        template = template or system_or_classes.baseline_template
    else:
        classes = tuple(system_or_classes)
        name = "baseline"
        template = template or PLACEHOLDER
    group = Group(name=BASELINE_GROUP, template=template, options=tuple(classes))
    return AttributeSystem(
        name=name,
        classes=tuple(classes),
        groups=(group,),
        rules=tuple((frozenset([i]),) for i in range(len(classes))),
        baseline_template=template,
        description="one question whose options are the class names",
    )
