"""Bounded YAML: what podnet reads from users (`apply -f`, lab topologies, the config).

yaml.safe_load shares an aliased node instead of copying it, so a "billion laughs"
document (9 levels of 9 aliases: 400 bytes, 387 million nodes once walked) loads at
once, then stalls whatever walks it: validation, json.dumps, the store. A valid
NetworkPolicy of 2.6 KB built that way kept `podnet apply` busy for over a minute.
The loader here counts the nodes each document expands to (an alias counts as all it
stands for) and refuses a stream that expands past MAX_NODES, an alias of a node that
is not finished (a recursive structure), nesting deeper than MAX_DEPTH (the composer
recurses: 5000 '[' ended in RecursionError) and input longer than MAX_BYTES. Every
refusal is a YAMLError (YamlLimit), reported where callers report invalid YAML.
"""

from __future__ import annotations

import os
from typing import IO, Any

import yaml

YAMLError = yaml.YAMLError
MAX_BYTES = 4 * 1024 * 1024
# Every node takes at least a byte of text, so a document without aliases always fits:
# only expansion through aliases can trip this bound.
MAX_NODES = MAX_BYTES
MAX_DEPTH = 100


class YamlLimit(yaml.MarkedYAMLError):
    """The input is past one of this module's bounds."""


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts expanded nodes and nesting while it composes."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._weights: dict[int, int] = {}  # id(node) -> its nodes with aliases expanded
        self._depth = 0
        self._expanded = 0  # of the documents before this one

    def compose_document(self) -> yaml.Node:
        try:
            node = super().compose_document()
            self._expanded += self._weights[id(node)]
            return node
        finally:
            self._weights.clear()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchored = self.anchors.get(event.anchor)
            if anchored is not None and id(anchored) not in self._weights:
                raise YamlLimit(None, None, f"a recursive alias *{event.anchor} (its node contains it)",
                                event.start_mark)
            return super().compose_node(parent, index)  # the anchored node: counted by the parent
        mark = self.peek_event().start_mark
        if self._depth >= MAX_DEPTH:
            raise YamlLimit(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        weight = 1 + sum(self._weights[id(child)] for child in _children(node))
        if self._expanded + weight > MAX_NODES:
            raise YamlLimit(None, None, f"through aliases the input expands to more than {MAX_NODES} nodes "
                                        "(a 'billion laughs'); write it out or use fewer aliases", mark)
        self._weights[id(node)] = weight
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_file(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, refused past MAX_BYTES without reading further (OSError as open)."""
    with open(path, "rb") as stream:
        return _bounded(stream.read(MAX_BYTES + 1))


def read_stream(stream: IO[Any]) -> str | bytes:
    """Standard input (or any stream), bounded the same way."""
    return _bounded(getattr(stream, "buffer", stream).read(MAX_BYTES + 1))


def load(data: str | bytes) -> Any:
    """The one document of `data` (yaml.safe_load, bounded)."""
    loader = BoundedLoader(_bounded(data))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_all(data: str | bytes) -> list[Any]:
    """Every document of `data` (yaml.safe_load_all, bounded, read to the end)."""
    loader = BoundedLoader(_bounded(data))
    try:
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()


def _bounded(data: Any) -> Any:
    if len(data) > MAX_BYTES:
        raise YamlLimit(None, None, f"the input is larger than {MAX_BYTES} bytes ({MAX_BYTES // 2**20} MiB)")
    return data
