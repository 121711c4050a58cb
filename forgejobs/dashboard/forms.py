"""The enqueue form: fields generated from a job type's JSON Schema, the payload validated by its model.

Each payload property becomes one input: text (password for `SecretStr` fields), number, checkbox,
a select for enums and literals, or a JSON text area for anything nested. What comes back is handed
to the job's own Pydantic model through `Client.enqueue_raw`, so the form accepts exactly what
`Job.enqueue` accepts; a field the model refuses shows the model's message next to it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

__all__ = ["FormField", "errors_by_field", "fields_for", "payload_from"]


@dataclass
class FormField:
    name: str  # the payload key (a field's alias when it has one)
    label: str
    kind: str  # text, password, number, integer, checkbox, select, json
    required: bool
    description: str | None = None
    choices: list[tuple[str, Any]] = field(default_factory=list)  # (shown, value)
    value: str = ""
    error: str | None = None


def _resolve(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A property with `$ref` followed and `Optional[...]` unwrapped; and whether it may be null."""
    prop = dict(prop)
    nullable = False
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        if len(options) == 1:
            inner = {k: v for k, v in prop.items() if k != "anyOf"}
            prop = {**options[0], **inner}
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"), {})
        prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop, nullable


def _kind(prop: Mapping[str, Any]) -> str:
    if "enum" in prop or "const" in prop:
        return "select"
    kind = prop.get("type")
    if kind == "string":
        return "password" if prop.get("format") == "password" or prop.get("writeOnly") else "text"
    if kind in ("integer", "number", "boolean"):
        return "checkbox" if kind == "boolean" else kind
    return "json"


def fields_for(schema: Mapping[str, Any], secret: Collection[str] = ()) -> list[FormField]:
    """One `FormField` per property of a payload's JSON Schema (validation mode), in declaration order;
    the `secret` ones (`forgejobs.logs.secret_fields`) as password inputs, never filled in."""
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    out = []
    for name, raw in schema.get("properties", {}).items():
        prop, _ = _resolve(raw, defs)
        kind = "password" if name in secret else _kind(prop)
        f = FormField(name, prop.get("title") or name, kind, name in required, prop.get("description"))
        if kind == "select":
            values = prop.get("enum", [prop.get("const")])
            f.choices = [(str(v), v) for v in values]
        default = prop.get("default")
        if default is not None and kind != "password":
            f.value = json.dumps(default) if kind == "json" else ("on" if default is True else str(default))
        out.append(f)
    return out


def payload_from(fields: list[FormField], form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The payload the form's values make, and errors for values that are not even JSON. An empty field is
    left out (so the model's default, or its "Field required", applies); everything else goes to the model."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        raw = form.get(f.name)
        text = raw if isinstance(raw, str) else ""
        f.value = "" if f.kind == "password" else text
        if f.kind == "checkbox":
            data[f.name] = text in ("on", "true", "1")
            f.value = "on" if data[f.name] else ""
            continue
        if text == "":
            continue
        if f.kind == "json":
            try:
                data[f.name] = json.loads(text)
            except ValueError as exc:
                errors[f.name] = f"not valid JSON: {exc}"
        elif f.kind == "select":
            data[f.name] = next((v for shown, v in f.choices if shown == text), text)
        else:
            data[f.name] = text  # the model parses numbers in strings, and says what is wrong otherwise
    return data, errors


def errors_by_field(exc: ValidationError, fields: list[FormField]) -> tuple[dict[str, str], list[str]]:
    """The model's messages per top-level field, and those that belong to no one field."""
    names = {f.name for f in fields}
    per_field: dict[str, str] = {}
    general: list[str] = []
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        if loc and loc[0] in names:
            where = ".".join(loc[1:])
            text = f"{where}: {message}" if where else message
            per_field[loc[0]] = f"{per_field[loc[0]]}; {text}" if loc[0] in per_field else text
        else:
            general.append(f"{'.'.join(loc) or 'payload'}: {message}")
    return per_field, general
