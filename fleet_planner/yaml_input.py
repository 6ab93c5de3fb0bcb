"""YAML as every input file of the product is read: safe, and a key given twice is an error.

PyYAML keeps the last of two equal keys in a mapping without a word, so a tenant listed twice in a
policy file, or a planner option set twice in a scenario, would silently lose its first settings.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys (with the line of the second one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` merges keys a mapping may then override: not a repeat
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base loader says so
                break
            if repeated:
                first = seen[key].start_mark.line + 1
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first given at line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The parsed document; bad syntax and duplicate keys raise :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=_StrictLoader)
