"""Prompt templates in a bounded Jinja2 sandbox.

Jinja2's sandbox stops a template from reaching Python internals; it does not stop one from
working forever (``{% for a in range(100000) %}{% for b in range(100000) %}``) or filling
memory (``{{ 'x' * 10**9 }}``). Prompt templates need neither, so :class:`PromptSandbox`
bounds the work of one rendered field:

* loop iterations and calls: :data:`MAX_STEPS` (every ``for`` loop's iterable is counted as
  it is consumed, through a filter the code generator wraps it in; every call is counted);
* ``range()``: at most :data:`MAX_RANGE` numbers;
* every value a call, filter or operator makes (and every text or list passed to one):
  :data:`MAX_VALUE` characters or items. The operations that multiply text (``*``, replace,
  join, center/ljust/rjust/zfill, indent, wordwrap, batch, slice, format widths) are sized
  before they run; ``**`` results are at most :data:`MAX_POWER_BITS` bits;
  ``str.translate``/``expandtabs`` are refused;
* the rendered text: :data:`MAX_OUTPUT` characters, counted as it streams out (:func:`render`);
* immutable: lists and dicts cannot be changed, and ``namespace()``, ``cycler()``,
  ``joiner()`` and ``lipsum()`` are not there (no state carried across loop iterations).

Every refusal is a :class:`TemplateLimit` (a ``SecurityError``) saying which limit and its
value; the caller adds the spec field and the product.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import string
from typing import Any

from jinja2 import nodes, pass_eval_context
from jinja2.compiler import CodeGenerator
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

#: Loop iterations plus calls in one rendered field.
MAX_STEPS = 10_000
#: Numbers one ``range()`` may give.
MAX_RANGE = 10_000
#: Characters (or items) of any value a template makes, and of any width or count it asks for.
MAX_VALUE = 100_000
#: Characters of one rendered field (a prompt is rarely over 1,000; CLIP reads 77 tokens).
MAX_OUTPUT = 10_000
#: Bits of a ``**`` result (about 300 decimal digits).
MAX_POWER_BITS = 1_000

LOOP_GUARD = "_darkroom_loop_guard"
REMOVED_GLOBALS = ("namespace", "cycler", "joiner", "lipsum")
#: str methods that multiply text by a table (and are no use in a prompt): refused.
UNSAFE_STR_METHODS = frozenset({"translate", "maketrans", "expandtabs"})
_PRINTF_SIZES = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateLimit(SecurityError):
    """A template went past one of this module's limits."""


def _charge(eval_ctx: EvalContext, steps: int = 1) -> None:
    used = getattr(eval_ctx, "darkroom_steps", 0) + steps
    eval_ctx.darkroom_steps = used  # one EvalContext per render: the budget is per field
    if used > MAX_STEPS:
        raise TemplateLimit(f"the template ran more than {MAX_STEPS:,} loop iterations and calls "
                            "(limit darkroom.sandbox.MAX_STEPS); fix: loop over product values, "
                            "not over large ranges or nested loops")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | range) else 0


def _too_big(size: int, what: str) -> TemplateLimit:
    return TemplateLimit(f"{what} would make a value of about {size:,} characters or items, over "
                         f"the {MAX_VALUE:,} limit (darkroom.sandbox.MAX_VALUE); fix: keep "
                         "template values prompt-sized")


def _check_value(value: Any, what: str) -> Any:
    if _size(value) > MAX_VALUE:
        raise _too_big(_size(value), what)
    return value


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _listed(items: Any, what: str) -> Any:
    """``items`` as a list when it is an iterator (a ``map`` result, say), so it can be sized
    and still be consumed once; at most MAX_VALUE items."""
    if isinstance(items, str | bytes | list | tuple | dict | set | range) or not hasattr(items, "__iter__"):
        return items
    out = list(itertools.islice(items, MAX_VALUE + 1))
    return _check_value(out, what)


def _estimate(name: str, obj: Any, args: tuple, kwargs: dict, *, method: bool = False) -> int:
    """The size the text operations that multiply their input would produce, before they run
    (the only ones that can turn prompt-sized values into gigabytes in one step)."""
    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    text = obj if isinstance(obj, str) else ""
    if name == "replace":
        old, new = str(arg(0, "old", "")), str(arg(1, "new", ""))
        count = _int(arg(2, "count", None), -1)
        hits = text.count(old) if old else len(text) + 1
        hits = hits if count < 0 else min(hits, count)
        return len(text) + hits * max(0, len(new) - len(old))
    if name == "join":  # str.join(items), or the filter items|join(sep); items already listed
        items, sep = (arg(0, "iterable", ()), text) if method else (obj, str(arg(0, "d", "")))
        if not isinstance(items, str | list | tuple | dict | set | range):
            return 0
        return sum(len(str(x)) for x in items) + max(len(items) - 1, 0) * len(sep)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(text), _int(arg(0, "width")))
    if name == "indent":
        width = arg(0, "width", 4)
        return len(text) + (text.count("\n") + 1) * (len(width) if isinstance(width, str) else _int(width))
    if name == "wordwrap":
        width, wrap = max(_int(arg(0, "width", 79), 79), 1), arg(2, "wrapstring", None) or "\n"
        return len(text) + (len(text) // width + text.count("\n") + 1) * len(str(wrap))
    if name in ("batch", "slice"):
        return _size(obj) + _int(arg(0, "linecount" if name == "batch" else "slices"))
    return 0


def _check_format(fmt: str, args: tuple = ()) -> None:
    """Refuse printf- and str.format-style widths and precisions over MAX_VALUE."""
    sizes = [s for m in _PRINTF_SIZES.finditer(fmt) for s in m.groups() if s]
    if "*" in sizes:  # a width taken from the arguments
        big = [a for a in args if abs(_int(a)) > MAX_VALUE]
        if big:
            raise _too_big(big[0], "a format width")
    try:
        specs = [spec for _, name, spec, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError:
        specs = []  # not str.format syntax; Python reports it when the format runs
    for spec in specs:
        if spec and "{" in spec:
            raise TemplateLimit(f"format spec {spec!r} takes its width from a value; fix: write "
                                "the width as a number")
        sizes += re.findall(r"\d+", spec or "")
    big = [s for s in sizes if s != "*" and (len(s) > 6 or int(s) > MAX_VALUE)]
    if big:
        raise TemplateLimit(f"a format string asks for a width or precision of {big[0][:12]}, "
                            f"over the {MAX_VALUE:,} limit (darkroom.sandbox.MAX_VALUE)")


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimit(f"range({', '.join(str(a)[:20] for a in args)}) gives "
                            f"{len(numbers):,} numbers, over the {MAX_RANGE:,} limit "
                            "(darkroom.sandbox.MAX_RANGE); fix: use a smaller range")
    return numbers


@pass_eval_context
def _loop_guard(eval_ctx: EvalContext, iterable: Any):
    """What every ``for`` loop iterates over: the iterable, one step charged per item."""
    for item in iterable:
        _charge(eval_ctx)
        yield item


def _power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * abs(left).bit_length() > MAX_POWER_BITS:
            raise TemplateLimit(f"{str(left)[:20]} ** {str(right)[:20]} is over {MAX_POWER_BITS:,} "
                                "bits (darkroom.sandbox.MAX_POWER_BITS)")
    return operator.pow(left, right)


def _repeat(left: Any, right: Any) -> Any:
    seq, n = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(n, int) and _size(seq) * max(n, 0) > MAX_VALUE:
        raise _too_big(_size(seq) * n, "repeating a value")
    return operator.mul(left, right)


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))
    return operator.mod(left, right)


def _guarded_filter(name: str, fn):
    @functools.wraps(fn)  # keeps jinja_pass_arg (pass_context and friends)
    def guarded(*args, **kwargs):
        # Past a leading context or eval context: the filtered value, then its arguments.
        lead = [a for a in args if isinstance(a, EvalContext | Context)]
        rest = [a for a in args if not isinstance(a, EvalContext | Context)]
        if name == "join" and rest:
            rest[0] = _listed(rest[0], "the value given to filter `join`")
            args = (*lead, *rest)
        for v in (*rest, *kwargs.values()):
            _check_value(v, f"the value given to filter `{name}`")
        if rest:
            if _estimate(name, rest[0], tuple(rest[1:]), kwargs) > MAX_VALUE:
                raise _too_big(_estimate(name, rest[0], tuple(rest[1:]), kwargs), f"filter `{name}`")
            if name == "format" and isinstance(rest[0], str):
                _check_format(rest[0], tuple(rest[1:]))
        return _check_value(fn(*args, **kwargs), f"filter `{name}`")

    return guarded


class _GuardedLoops(CodeGenerator):
    """Compiles every ``for`` loop over ``_darkroom_loop_guard(iterable)``."""

    def visit_Template(self, node: nodes.Template, frame=None) -> None:
        for loop in node.find_all(nodes.For):
            guard = nodes.Filter(loop.iter, LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
            loop.iter = guard.set_environment(self.environment)
        super().visit_Template(node, frame)


class PromptSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the bounds in this module's docstring."""

    code_generator_class = _GuardedLoops
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name in REMOVED_GLOBALS:
            self.globals.pop(name, None)
        self.globals["range"] = _bounded_range
        self.filters = {name: _guarded_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[LOOP_GUARD] = _loop_guard
        self.binop_table.update({"**": _power, "*": _repeat, "%": _modulo})

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _charge(__context.eval_ctx)
        what = f"{getattr(__obj, '__name__', type(__obj).__name__)}()"
        for v in (*args, *kwargs.values()):
            _check_value(v, f"the value given to {what}")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if __obj.__name__ == "join" and args:
                args = (_listed(args[0], f"the value given to {what}"), *args[1:])
            size = _estimate(__obj.__name__, owner, args, kwargs, method=True)
            if size > MAX_VALUE:
                raise _too_big(size, what)
        if isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive loop
            args = (_loop_guard(__context.eval_ctx, args[0]), *args[1:])
        return _check_value(super().call(__context, __obj, *args, **kwargs), what)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in UNSAFE_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapped)
        def checked(*args, **kwargs):
            _check_format(fmt, args)
            return wrapped(*args, **kwargs)

        return checked


def render(template, context: dict) -> str:
    """Render ``template`` (from a :class:`PromptSandbox`), refusing output past MAX_OUTPUT
    as it streams, so a loop that prints forever stops at the limit."""
    out, size = [], 0
    for piece in template.generate(context):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise TemplateLimit(f"the rendered text is over {MAX_OUTPUT:,} characters (limit "
                                "darkroom.sandbox.MAX_OUTPUT); fix: shorten the template or "
                                "the product values it repeats")
        out.append(piece)
    return "".join(out)
