"""What users type, read with bounds: YAML values whose expansion is capped, and short quotes of values in messages.

A YAML alias bomb ("billion laughs": aliases of aliases of aliases) is a few hundred bytes that PyYAML turns into a
structure of shared references that expands to billions of values as soon as it is walked or printed. Override
values (``--set key=value``) have no use for aliases, so they are refused there; a config file's aliases may expand
to at most :data:`MAX_YAML_NODES` values. Messages quote what a user wrote through :func:`short`, so that a long
value never floods a terminal. Torch-free.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

__all__ = ["MAX_YAML_NODES", "clip", "parse_yaml", "short"]

#: The most YAML nodes a document may expand to (an alias counts its nodes at every use).
MAX_YAML_NODES = 100_000
_MAX_YAML_DEPTH = 50

_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 4, 40, 40


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (nested values and long strings abbreviated)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _yaml_size(node: yaml.Node, seen: dict[int, int], depth: int, aliases: bool) -> int:
    """Nodes of ``node`` with every alias expanded; raises on aliases (unless allowed), cycles and deep nesting."""
    if id(node) in seen:  # the composer gives an alias the very node of its anchor
        if not aliases:
            raise ValueError("YAML aliases (*name) are not allowed here")
        if seen[id(node)] < 0:
            raise ValueError("a YAML alias refers to itself (a recursive value)")
        return seen[id(node)]
    if depth > _MAX_YAML_DEPTH:
        raise ValueError(f"YAML nested more than {_MAX_YAML_DEPTH} levels deep")
    seen[id(node)] = -1  # in progress
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node)
        children = [n for pair in node.value for n in pair]
    size = 1 + sum(_yaml_size(c, seen, depth + 1, aliases) for c in children)
    if size > MAX_YAML_NODES:
        raise ValueError(f"YAML expands to more than {MAX_YAML_NODES} values (aliases of aliases?)")
    seen[id(node)] = size
    return size


def _no_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise on a key written twice in one mapping (PyYAML keeps the last without a word)."""
    seen: set[str] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":  # (a merge key may repeat)
            if key.value in seen:
                raise ValueError(
                    f"key {short(key.value)} appears twice in one mapping (again at line {key.start_mark.line + 1}): "
                    "the second would replace the first without a word"
                )
            seen.add(key.value)


def parse_yaml(text: str, where: str, aliases: bool = True) -> Any:
    """``yaml.safe_load(text)`` with its expansion bounded by :data:`MAX_YAML_NODES` and, unless ``aliases``,
    aliases refused.

    Args:
        text: one YAML document.
        where: what the text is (a file name, ``override train.lr``), for messages.
        aliases: allow aliases (``*name``) that refer to anchors (``&name``).

    Raises:
        ValueError: not valid YAML, aliases where they are not allowed, too large when expanded, nested more than
            50 levels, or a key written twice in one mapping (the message starts with ``where``).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _yaml_size(node, {}, 0, aliases)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML: {clip(str(e), 300)}") from e
    except RecursionError as e:
        raise ValueError(f"{where}: YAML nested too deeply") from e
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    finally:
        loader.dispose()
