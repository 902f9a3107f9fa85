"""MQTT topic templates: check, subscribe, match and fill.

A template is an MQTT topic name in which some levels are placeholders, such as
``plant/{line}/{asset}/vibration``. Each placeholder is a whole topic level. So the
subscription filter puts the single-level wildcard ``+`` in place of each
placeholder, and a received topic maps back to the placeholder values level by level.
"""

from __future__ import annotations

import re
import string

SINGLE_LEVEL_WILDCARD = "+"
MULTI_LEVEL_WILDCARD = "#"

# MQTT 3.1.1 and 5 encode a topic as a UTF-8 string with a 16-bit length prefix.
MAX_TOPIC_BYTES = 65535

_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def template_placeholders(template: str) -> tuple[str, ...]:
    """Check a topic template and return its placeholder names in level order.

    Raises `ValueError` with a plain message for an invalid template: empty, too
    long, with an MQTT wildcard or a NUL character, or starting with '$' (reserved
    for the broker). Unbalanced braces are invalid too, and so is a placeholder that
    is not a whole level or a name, carries a format spec, or appears twice.
    """
    if not template:
        raise ValueError("must not be empty")
    if len(template.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise ValueError(f"must be at most {MAX_TOPIC_BYTES} bytes in UTF-8")
    if "\x00" in template:
        raise ValueError("must not contain a NUL character")
    if template.startswith("$"):
        raise ValueError(f"must not start with '$' (reserved for broker topics), got {template!r}")
    for wildcard in (SINGLE_LEVEL_WILDCARD, MULTI_LEVEL_WILDCARD):
        if wildcard in template:
            raise ValueError(
                f"must not contain the MQTT wildcard {wildcard!r}; write a placeholder "
                f"such as {{asset}} for a varying level, got {template!r}"
            )

    names: list[str] = []
    for level in template.split("/"):
        name = _level_placeholder(level, template)
        if name is None:
            continue
        if name in names:
            raise ValueError(f"placeholder {{{name}}} appears twice in {template!r}")
        names.append(name)
    return tuple(names)


def _level_placeholder(level: str, template: str) -> str | None:
    """Return the placeholder name if `level` is one, None if it is literal text."""
    try:
        parts = list(string.Formatter().parse(level))
    except ValueError as exc:
        raise ValueError(f"has unbalanced braces in level {level!r} of {template!r}") from exc

    fields = [part for part in parts if part[1] is not None]
    if not fields:
        # Doubled braces are escapes for str.format. A literal brace in a topic is
        # far more likely a typo than intended, so reject it.
        if "{" in level or "}" in level:
            raise ValueError(f"has a stray brace in level {level!r} of {template!r}")
        return None

    literal, name, spec, conversion = fields[0]
    if len(parts) != 1 or literal:
        raise ValueError(
            f"placeholder must fill a whole topic level, got level {level!r} in {template!r}"
        )
    assert name is not None
    if not _PLACEHOLDER_NAME.fullmatch(name):
        raise ValueError(
            f"placeholder {{{name}}} in {template!r} must be a name of letters, digits "
            "and '_' such as {asset}"
        )
    if spec or conversion:
        raise ValueError(f"placeholder {{{name}}} in {template!r} must not carry a format spec")
    return name


def _is_placeholder(level: str) -> bool:
    return level.startswith("{") and level.endswith("}")


def topic_filter(template: str, **fixed: str) -> str:
    """Return the subscription filter of `template`.

    Placeholders named in `fixed` take that value, every other placeholder becomes
    the single-level wildcard '+': ``plant/{line}/{asset}/vibration`` gives
    ``plant/+/+/vibration``.
    """
    template_placeholders(template)
    levels = []
    for level in template.split("/"):
        if not _is_placeholder(level):
            levels.append(level)
        elif level[1:-1] in fixed:
            levels.append(_checked_value(level[1:-1], fixed[level[1:-1]]))
        else:
            levels.append(SINGLE_LEVEL_WILDCARD)
    return "/".join(levels)


def parse_topic(template: str, topic: str) -> dict[str, str] | None:
    """Return the placeholder values of a concrete `topic`, or None if it does not match.

    Literal levels must be equal and each placeholder level must be non-empty:
    ``parse_topic("plant/{line}/{asset}/vibration", "plant/L1/pump-3/vibration")``
    returns ``{"line": "L1", "asset": "pump-3"}``.
    """
    template_placeholders(template)
    template_levels = template.split("/")
    topic_levels = topic.split("/")
    if len(template_levels) != len(topic_levels):
        return None

    values: dict[str, str] = {}
    for pattern, level in zip(template_levels, topic_levels):
        if _is_placeholder(pattern):
            if not level:
                return None
            values[pattern[1:-1]] = level
        elif pattern != level:
            return None
    return values


def format_topic(template: str, **values: str) -> str:
    """Fill every placeholder of `template` from `values` and return the topic name.

    Values for names the template does not use are ignored, so one set of values
    (line, asset, agent_id) can fill any template. Raises `ValueError` when a
    placeholder has no value, or a value is empty or contains '/', '+', '#' or NUL,
    because such a value would change the topic's levels or make it a filter.
    """
    template_placeholders(template)
    levels = []
    for level in template.split("/"):
        if not _is_placeholder(level):
            levels.append(level)
            continue
        name = level[1:-1]
        if name not in values:
            raise ValueError(f"no value for placeholder {{{name}}} of topic template {template!r}")
        levels.append(_checked_value(name, values[name]))
    return "/".join(levels)


def _checked_value(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"value for {{{name}}} must be a non-empty string, got {value!r}")
    for forbidden in ("/", SINGLE_LEVEL_WILDCARD, MULTI_LEVEL_WILDCARD, "\x00"):
        if forbidden in value:
            raise ValueError(
                f"value for {{{name}}} must be a single topic level without "
                f"'/', '+', '#' or NUL, got {value!r}"
            )
    return value


def templates_overlap(first: str, second: str) -> bool:
    """Return True if some concrete topic matches both templates.

    That is the case when both have the same number of levels and, level by
    level, the literals are equal or at least one side is a placeholder.
    """
    template_placeholders(first)
    template_placeholders(second)
    first_levels = first.split("/")
    second_levels = second.split("/")
    if len(first_levels) != len(second_levels):
        return False
    return all(
        a == b or _is_placeholder(a) or _is_placeholder(b)
        for a, b in zip(first_levels, second_levels)
    )
