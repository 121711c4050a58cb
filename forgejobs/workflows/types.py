"""Does a value of one declared type fit a field of another? The checker's one question about types.

Conservative where it can tell (a `str` never fits an `int` field, a model only fits itself or a base), and
permissive where it cannot (`Any`, an undeclared `perform` return, a type it does not know): a workflow is
refused only for a mismatch it can name.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

NoneType = type(None)


def strip(tp: Any) -> Any:
    """`Annotated[X, ...]` -> X."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def members(tp: Any) -> tuple[Any, ...]:
    """The members of a union (X | Y, Optional[X]); a non-union is its own one member."""
    tp = strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(strip(m) for m in typing.get_args(tp))
    return (tp,)


def optional(tp: Any) -> Any:
    """`tp | None` (unchanged when it already admits None)."""
    if tp is Any or NoneType in members(tp):
        return tp
    return tp | None


def accepts_none(tp: Any) -> bool:
    return tp is Any or any(m is Any or m is NoneType for m in members(tp))


def item_type(tp: Any) -> Any | None:
    """The element type of a list-like type (list[X], tuple[X, ...], Sequence[X]); Any for a bare list;
    None when `tp` is not a list."""
    tp = strip(tp)
    if tp is Any:
        return Any
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type) or issubclass(origin, (str, bytes, Mapping)):
        return None
    if not issubclass(origin, (list, tuple, set, frozenset, Sequence)):
        return None
    args = typing.get_args(tp)
    if not args:
        return Any
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return typing.Union[args] if len(set(args)) > 1 else args[0]  # noqa: UP007 - a runtime-built union
    return args[0]


def field_type(tp: Any, name: str) -> tuple[Any, str | None]:
    """The type of field `name` of `tp`: (type, None), or (Any, problem) when `tp` has no such field."""
    tp = strip(tp)
    if tp is Any:
        return Any, None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = tp.model_fields
        if name not in fields:
            return Any, f"{tp.__name__} has no field {name!r} (fields: {', '.join(fields) or 'none'})"
        return fields[name].annotation, None
    hints = _typed_dict_hints(tp)  # before Mapping: a TypedDict is a dict too, but its keys are known
    if hints is not None:
        if name not in hints:
            return Any, f"{tp.__name__} has no key {name!r} (keys: {', '.join(hints) or 'none'})"
        return hints[name], None
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and issubclass(origin, Mapping):
        args = typing.get_args(tp)
        return (args[1] if len(args) == 2 else Any), None
    if tp is NoneType:
        return Any, f"the output is None (perform returns nothing), so it has no field {name!r}"
    union = members(tp)
    if NoneType in union and len(union) > 1:
        inner = [m for m in union if m is not NoneType]
        found, problem = field_type(inner[0] if len(inner) == 1 else typing.Union[tuple(inner)], name)  # noqa: UP007
        return optional(found), problem
    if len(union) > 1:  # X | Y: the field must be on every member; its type is the union of theirs
        found_types = []
        for member in union:
            found, problem = field_type(member, name)
            if problem is not None:
                return Any, f"{show(tp)}: {problem}"
            found_types.append(found)
        return typing.Union[tuple(found_types)], None  # noqa: UP007 - a runtime-built union
    return Any, f"{show(tp)} has no fields (only a model, TypedDict or mapping does)"


def _typed_dict_hints(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__"):
        return typing.get_type_hints(tp)
    return None


def show(tp: Any) -> str:
    """A type as a reader writes it: `int`, `list[str]`, `SyncResult | None`."""
    tp = strip(tp)
    if tp is NoneType:
        return "None"
    if tp is Any:
        return "Any"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(show(m) for m in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def fits(source: Any, target: Any) -> bool:
    """Whether every value of `source` is valid for a field declared as `target`."""
    source, target = strip(source), strip(target)
    if source is Any or target is Any or target is object:
        return True
    if len(members(source)) > 1:
        return all(fits(m, target) for m in members(source))
    if len(members(target)) > 1:
        return any(fits(source, m) for m in members(target))
    if typing.get_origin(source) is typing.Literal:
        return all(fits(type(v), target) or _literal_in(v, target) for v in typing.get_args(source))
    if typing.get_origin(target) is typing.Literal:
        return False  # a plain type never fits a Literal field: the value is not known here
    if source is NoneType or target is NoneType:
        return source is target
    src_item, dst_item = item_type(source), item_type(target)
    if dst_item is not None:
        return src_item is not None and fits(src_item, dst_item)
    if src_item is not None:
        return False
    s_origin, t_origin = typing.get_origin(source) or source, typing.get_origin(target) or target
    if not (isinstance(s_origin, type) and isinstance(t_origin, type)):
        return True  # a form this checker does not read: not refused
    if t_origin is float and s_origin is int:
        return True
    if s_origin is bool and t_origin is int:
        return False  # a flag is not a count, though Python says it is
    if issubclass(s_origin, Mapping) and issubclass(t_origin, Mapping):
        s_args, t_args = typing.get_args(source), typing.get_args(target)
        return not (s_args and t_args) or all(fits(a, b) for a, b in zip(s_args, t_args, strict=False))
    return issubclass(s_origin, t_origin)


def _literal_in(value: Any, target: Any) -> bool:
    return typing.get_origin(target) is typing.Literal and value in typing.get_args(target)
