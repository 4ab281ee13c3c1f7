"""JSON documents from untrusted hands (request bodies, znodes others wrote).

:func:`loads` parses with bounded nesting: a document nested deeper than ``max_depth``
levels (or so deep that the parser itself gives up) is an :class:`InvalidRequest` saying so,
never a crash; so is anything that is not JSON.
"""

from __future__ import annotations

import json

from .errors import InvalidRequest

MAX_DEPTH = 64  # a function definition needs 5


def loads(data: bytes | str, what: str = "document", max_depth: int = MAX_DEPTH) -> object:
    """``data`` as JSON; :class:`InvalidRequest` naming ``what`` if it is not, or too deep."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidRequest(f"{what} is nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if depth(value) > max_depth:
        raise InvalidRequest(f"{what} is nested deeper than {max_depth} levels")
    return value


def depth(value: object) -> int:
    """How many arrays and objects deep ``value`` goes (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest
