"""YAML for campaign specs, bounded: a spec is written by people, but a copied or hostile one
must not hang the DAG processor or fill its memory.

:class:`SpecLoader` is PyYAML's SafeLoader (no Python objects) plus four refusals, each a
``yaml.YAMLError`` with the line and column:

* aliases may expand the document to at most :data:`MAX_NODES` nodes. Anchors and aliases
  stay allowed (sharing one channel recipe between channels is a real use), but a "billion
  laughs" document, where a few aliases multiply into millions of nodes, is refused while it is
  being read, long before pydantic or ``json.dumps`` would walk the expansion. An alias to its
  own anchor (a recursive structure) is refused too;
* nesting deeper than :data:`MAX_DEPTH` levels (PyYAML's composer recurses);
* a key given twice in one mapping (PyYAML keeps the last one silently);
* values that cannot be built (an integer of 5,000 digits, a date like 2024-13-45) are a YAML
  error at their line, not a ValueError from deep inside the constructor.

:func:`read_spec_text` refuses files over :data:`MAX_SPEC_BYTES` and text that is not UTF-8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from darkroom.errors import SpecError

#: A real spec is a few kilobytes; a megabyte is far beyond any hand-written campaign.
MAX_SPEC_BYTES = 1024 * 1024
#: Nodes (scalars, lists, mappings) after expanding every alias; real specs have hundreds.
MAX_NODES = 100_000
#: Levels of nested lists and mappings; real specs have fewer than ten.
MAX_DEPTH = 64

MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with bounded alias expansion and depth, and no duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes so far, aliases counted at their full expanded size
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed

    # -- composing: depth and expansion --------------------------------------------------
    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; fix: "
                                    "flatten the structure", event.start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(event, AliasEvent):
            size = self._sizes.get(id(node))
            if size is None:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to the anchor it "
                                    "is inside (a recursive structure); fix: remove the alias",
                                    event.start_mark)
        else:
            size = 1 + sum(self._sizes[id(child)] for child in _children(node))
            self._sizes[id(node)] = size
            size = 1  # its children were counted as they were composed
        self._expanded += size
        if self._expanded > MAX_NODES:
            raise ComposerError(None, None, f"the document expands to more than {MAX_NODES:,} "
                                "values (aliases counted at their full size); fix: use fewer or "
                                "smaller aliases (limit darkroom.yaml_safe.MAX_NODES)",
                                event.start_mark)
        return node

    # -- constructing: duplicate keys, values that cannot be built -------------------------
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue  # `<<: *base` keys may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it with its own message
                if first is not key_node:
                    raise ConstructorError(
                        None, None,
                        f"key {key!r} is given twice (first at line {first.start_mark.line + 1}); "
                        "YAML would keep only the last one silently; fix: keep one of them",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            why = str(exc).split(";")[0]  # Python's int-size message ends in advice for programmers
            raise ConstructorError(None, None, f"cannot read this value: {why}",
                                   node.start_mark) from None


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    assert isinstance(node, ScalarNode)
    return []


def read_spec_text(path: Path) -> str:
    """The spec file's text; :class:`SpecError` when missing, too large or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(str(path), [f"the file is {size:,} bytes, over the {MAX_SPEC_BYTES:,}"
                                        "-byte limit for a spec (darkroom.yaml_safe.MAX_SPEC_BYTES); "
                                        "fix: move product data into products.source"])
        data = path.read_bytes()[: MAX_SPEC_BYTES + 1]  # the file may grow between stat and read
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise SpecError(str(path), ["is a folder, not a spec file"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"the file is over the {MAX_SPEC_BYTES:,}-byte limit"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(str(path), [
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column} "
            "cannot be decoded; fix: save the file as UTF-8 (most editors: 'Save with "
            "encoding' / 'Reopen with encoding', or `iconv -f latin1 -t utf-8`)"]) from None


def parse_yaml(text: str, path: str | Path = "<memory>") -> Any:
    """One YAML document through :class:`SpecLoader`; :class:`SpecError` with the line when
    it is not valid (or breaks a limit)."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # PyYAML splits its own messages in two ("expected a single document in the stream",
        # "but found another document"): both halves, or the reader gets only the second.
        problem = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None))
                           if p) or str(exc)
        raise SpecError(str(path), [f"not valid YAML{where}: {problem}"]) from None


def load_yaml(path: Path) -> Any:
    """Read and parse a spec file with every limit above."""
    return parse_yaml(read_spec_text(path), path)
