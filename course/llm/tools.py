"""Tool calling as the field does it: JSON Schemas from Python signatures, checked arguments.

A model is offered tools as OpenAI-style specs::

    {"type": "function",
     "function": {"name": "run_python", "description": "Run a Python program and return its output.",
                  "parameters": {"type": "object",
                                 "properties": {"code": {"type": "string"},
                                                "timeout_s": {"type": "number", "default": 2.0}},
                                 "required": ["code"], "additionalProperties": False}}}

:func:`tool_schema` writes that spec from a typed Python function with a docstring (what AutoGen's
``register_for_llm`` and most agent frameworks do). The model answers with tool calls whose
arguments are a JSON string it wrote; nothing guarantees they fit the schema, so
:func:`validate_arguments` checks them and says, in a sentence the model can act on, what is wrong
(a wrong type, a missing required argument, an unknown one, a value outside an enum). It converts
only where no information changes: an integer where a number is expected, and a float with an
integral value (``3.0``) where an integer is. It never turns text into numbers or numbers into
text. :class:`Toolbox` puts both together: specs for ``chat(tools=...)`` and a ``run(call)`` that
answers every call with a ``tool`` message (the result, or the error) and never raises.

Types understood: ``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict`` (any object),
``Literal[...]`` (an enum), ``Optional[T]`` / ``T | None`` (null allowed), ``Annotated[T,
"description"]``, and nested objects: a dataclass or a ``TypedDict`` becomes an object schema with
its own ``properties``, ``required`` and ``additionalProperties: false`` (so ``list[Item]`` is an
array of such objects). A parameter (or field) with a default is optional and its default is
written into the schema. A nested argument that does not fit is named by its path, e.g.
``argument 'items[2].qty' should be integer (int), got string "2"``; :class:`Toolbox` turns the
checked dicts back into the dataclasses the function was written for. :func:`validate_value`
checks any JSON value against a schema the same way (a reply asked for with ``response_format``). Parameter descriptions come from ``Annotated`` or from a Google-style ``Args:`` section of
the docstring; the tool's description is the docstring's first paragraph.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

from .chat import Message, ToolCall, tool_result

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
# TypedDict key markers (Python 3.11+; the course runs 3.11, the package allows 3.10, which has none)
_REQUIRED, _NOT_REQUIRED = getattr(typing, "Required", object()), getattr(typing, "NotRequired", object())
_PY_NAMES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
             "object": "dict", "null": "None"}
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")


class ToolArgumentError(ValueError):
    """A tool call's arguments do not fit the tool's schema; the message lists every problem."""


# --- schema from a signature ---------------------------------------------------------------------


def _docstring_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """(first paragraph of the docstring as one line, {parameter: description} from ``Args:``)."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    paragraph = []
    for line in doc.splitlines():
        if not line.strip() or _SECTION.match(line.strip()):
            break
        paragraph.append(line.strip())
    described: dict[str, str] = {}
    section, current = None, None
    for line in doc.splitlines():
        stripped = line.strip()
        heading = _SECTION.match(stripped)
        if heading:
            section, current = heading.group(1), None
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        entry = re.match(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
        if entry and line.startswith((" " * 4, "\t")) and not line.startswith((" " * 8, "\t\t")):
            current = entry.group(1).lstrip("*")
            described[current] = entry.group(3)
        elif current:
            described[current] = (described[current] + " " + stripped).strip()
    return " ".join(paragraph), described


def _is_none(t: Any) -> bool:
    return t is None or t is type(None)


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _own_docstring(cls: type) -> str:
    """A class's docstring, first paragraph, unless it is the signature a dataclass writes for itself."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if not doc or doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _json_default(value: Any, where: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: its default {value!r} is not a JSON value") from None
    return value


def _object_schema(cls: type, where: str, seen: tuple[type, ...]) -> dict:
    """A dataclass's or TypedDict's object schema: each field's schema, the required ones, nothing else."""
    if cls in seen:
        raise TypeError(f"{where}: {cls.__name__} contains itself; a recursive type needs $ref, which "
                        "tool schemas here do not write")
    hints = typing.get_type_hints(cls, include_extras=True)
    properties, required = {}, []
    if _is_dataclass_type(cls):
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            schema = _type_schema(hints[f.name], f"{where}.{f.name}", seen + (cls,))
            if f.default is not dataclasses.MISSING:
                schema["default"] = _json_default(f.default, f"{where}.{f.name}")
            elif f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            properties[f.name] = schema
    else:  # a TypedDict: the markers decide, then total=... (__required_keys__ misses markers in string annotations)
        for key, hint in hints.items():
            properties[key] = _type_schema(hint, f"{where}.{key}", seen + (cls,))
            marker = typing.get_origin(hint)
            if marker is _REQUIRED or (marker is not _NOT_REQUIRED and key in cls.__required_keys__):
                required.append(key)
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    description = _own_docstring(cls)
    return {**schema, "description": description} if description else schema


def _type_schema(annotation: Any, where: str, seen: tuple[type, ...] = ()) -> dict:
    """The JSON Schema of one Python annotation (see the module docstring for what is understood)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = _type_schema(args[0], where, seen)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {**schema, "description": " ".join(notes)} if notes else schema
    if origin in (_REQUIRED, _NOT_REQUIRED):  # a TypedDict key's marker; whether it is required is read elsewhere
        return _type_schema(args[0], where, seen)
    if _is_dataclass_type(annotation) or typing.is_typeddict(annotation):
        return _object_schema(annotation, where, seen)
    if annotation in JSON_TYPES:
        return {"type": JSON_TYPES[annotation]}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    if annotation is list:
        raise TypeError(f"{where}: say what the list holds, e.g. list[int], so the schema can give 'items'")
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], f"{where}[]", seen)}
    if origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or next(iter(kinds)) not in JSON_TYPES:
            raise TypeError(f"{where}: a Literal's values must all be str, or all int, float or bool; got {args}")
        return {"type": JSON_TYPES[next(iter(kinds))], "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if not _is_none(a)]
        if len(rest) == 1 and len(args) == 2:
            schema = dict(_type_schema(rest[0], where, seen))
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
            return schema
        raise TypeError(f"{where}: only Optional[T] (T | None) unions are supported, got {annotation}")
    raise TypeError(f"{where}: cannot write a JSON Schema for the annotation {annotation!r}; use str, int, "
                    "float, bool, list[T], dict, Literal[...], Optional[T], a dataclass or a TypedDict")


def tool_schema(fn: Callable, *, name: str | None = None, description: str | None = None) -> dict:
    """The OpenAI tool spec of ``fn``: name, description and a JSON Schema of its parameters.

    Every parameter needs a type annotation and must be passable by keyword; ``fn`` needs a
    docstring (its first paragraph is the description a model reads) unless ``description`` is given.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    name = name or getattr(fn, "__name__", None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError(f"a tool's name must be 1-64 letters, digits, _ or -, got {name!r}")
    summary, described = _docstring_parts(fn)
    description = description if description is not None else summary
    if not description:
        raise ValueError(f"{name} has no docstring: its first paragraph is the description the model reads")
    hints = typing.get_type_hints(fn, include_extras=True)
    properties, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        where = f"{name}({p.name})"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"{where}: a tool is called with named arguments, so *args, **kwargs and "
                            "positional-only parameters cannot be offered")
        if p.name not in hints:
            raise TypeError(f"{where} has no type annotation; the model needs a type to send")
        schema = _type_schema(hints[p.name], where)
        if p.name in described and "description" not in schema:
            schema["description"] = described[p.name]
        if p.default is p.empty:
            required.append(p.name)
        else:
            schema["default"] = _json_default(p.default, where)
        properties[p.name] = schema
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# --- checking a model's arguments ----------------------------------------------------------------


def _parameters(spec_or_schema: Mapping) -> tuple[str, dict]:
    """(tool name, parameters schema) from a tool spec, a spec's "function" part, or a bare schema."""
    if not isinstance(spec_or_schema, Mapping):
        raise TypeError(f"expected a tool spec or a JSON Schema dict, got {type(spec_or_schema).__name__}")
    function = spec_or_schema.get("function", spec_or_schema)
    if "parameters" in function:
        return str(function.get("name", "tool")), function["parameters"]
    return "tool", dict(spec_or_schema)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:60]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _label(path: str) -> str:
    return f"argument {path!r}" if path else "the value"


def _value(value: Any, schema: Mapping, path: str, problems: list[str]) -> Any:
    """``value`` at ``path`` (``items[2].qty``) checked against ``schema``, coerced where safe.

    Problems are appended, not raised, so one message can list them all.
    """
    allowed = schema.get("type")
    allowed = [allowed] if isinstance(allowed, str) else list(allowed or [])
    kind = _json_kind(value)
    if allowed and kind not in allowed:
        if kind == "integer" and "number" in allowed:
            value, kind = float(value), "number"  # JSON Schema: every integer is a number
        elif kind == "number" and "integer" in allowed and math.isfinite(value) and value == int(value):
            value, kind = int(value), "integer"  # 3.0 is the integer 3: nothing is lost
        else:
            wanted = " or ".join(f"{t} ({_PY_NAMES.get(t, t)})" for t in allowed)
            problems.append(f"{_label(path)} should be {wanted}, got {kind} {_show(value)}")
            return value
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{_label(path)} must be one of {_show(schema['enum'])}, got {_show(value)}")
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        value = [_value(v, schema["items"], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if kind == "object" and "properties" in schema:
        value = _nested_object(value, schema, path, problems)
    return value


def _nested_object(value: dict, schema: Mapping, path: str, problems: list[str]) -> dict:
    """An object inside the arguments: its keys checked as the top level's are, named by their path."""
    properties = schema.get("properties", {})
    missing = [key for key in schema.get("required", []) if key not in value]
    if missing:
        problems.append(f"{_label(path)} is missing required key{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))} (it needs {', '.join(schema['required'])})")
    out = {}
    for key, item in value.items():
        inner = f"{path}.{key}" if path else key
        if key in properties:
            out[key] = _value(item, properties[key], inner, problems)
        elif schema.get("additionalProperties", True) is False:
            problems.append(f"{_label(path)} has unknown key {key!r} (it takes {', '.join(properties) or 'no keys'})")
        else:
            out[key] = item
    return out


def _object(arguments: dict, schema: Mapping, where: str, problems: list[str]) -> dict:
    properties = schema.get("properties", {})
    out = {}
    missing = [key for key in schema.get("required", []) if key not in arguments]
    if missing:
        problems.append(f"missing required argument{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))} ({where} needs {', '.join(schema['required'])})")
    for key, value in arguments.items():
        if key in properties:
            out[key] = _value(value, properties[key], key, problems)
        elif schema.get("additionalProperties", True) is False:
            problems.append(f"unknown argument {key!r} ({where} takes {', '.join(properties) or 'no arguments'})")
        else:
            out[key] = value
    return out


def validate_arguments(spec_or_schema: Mapping, arguments: Any) -> dict:
    """``arguments`` checked against a tool spec (or its parameters schema), coerced only where safe.

    Returns the arguments to call the tool with. Raises :class:`ToolArgumentError` whose message
    names the tool and lists every problem, written for the model to read and fix.
    """
    name, schema = _parameters(spec_or_schema)
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"{name}: the arguments must be a JSON object, got {_json_kind(arguments)} "
                                f"{_show(arguments)}")
    problems: list[str] = []
    checked = _object(arguments, schema, name, problems)
    if problems:
        raise ToolArgumentError(f"{name}: " + "; ".join(problems))
    return checked


def validate_value(schema: Mapping, value: Any, *, name: str = "value") -> Any:
    """Any JSON ``value`` checked against a JSON Schema (types, enums, arrays, nested objects).

    Returns the value (coerced only where nothing changes); raises :class:`ToolArgumentError`
    naming ``name`` and every problem with its path, e.g. ``answer: argument 'items[0].qty' ...``.
    """
    if not isinstance(schema, Mapping):
        raise TypeError(f"schema must be a JSON Schema dict, got {type(schema).__name__}")
    problems: list[str] = []
    if schema.get("type") == "object" and isinstance(value, dict):
        checked = _object(value, schema, name, problems)
    else:
        checked = _value(value, schema, "", problems)
    if problems:
        raise ToolArgumentError(f"{name}: " + "; ".join(problems))
    return checked


def _build(value: Any, annotation: Any) -> Any:
    """A checked JSON value as the Python type the tool was written for (dataclasses rebuilt, inside lists too)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Annotated, _REQUIRED, _NOT_REQUIRED):
        return _build(value, args[0])
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if not _is_none(a)]
        return _build(value, rest[0]) if len(rest) == 1 else value
    if origin is list and isinstance(value, list):
        return [_build(v, args[0]) for v in value]
    if (_is_dataclass_type(annotation) or typing.is_typeddict(annotation)) and isinstance(value, dict):
        hints = typing.get_type_hints(annotation, include_extras=True)
        fields = {k: _build(v, hints[k]) if k in hints else v for k, v in value.items()}
        return annotation(**fields) if _is_dataclass_type(annotation) else fields
    return value


# --- a set of tools, executed -------------------------------------------------------------------


class Toolbox:
    """Python functions offered as tools: ``specs`` for ``chat(tools=...)``, ``run(call)`` to answer a call.

    ``schema`` writes a function's spec (default :func:`tool_schema`; a notebook passes the
    learner's own). ``run`` never raises: an unknown tool, arguments that are not a JSON object or
    do not fit the schema, and an exception inside the tool all become the text of the ``tool``
    message, so the model can read what went wrong and try again.
    """

    def __init__(self, functions: Sequence[Callable], *, schema: Callable[[Callable], dict] = tool_schema) -> None:
        if isinstance(functions, Mapping) or not isinstance(functions, Sequence) or not functions:
            raise ValueError("functions must be a non-empty list of tool functions")
        self.functions: dict[str, Callable] = {}
        self.specs: list[dict] = []
        for fn in functions:
            spec = schema(fn)
            name = spec["function"]["name"]
            if name in self.functions:
                raise ValueError(f"two tools are called {name!r}")
            self.functions[name] = fn
            self.specs.append(spec)
        self.by_name = {s["function"]["name"]: s for s in self.specs}

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def run(self, call: ToolCall) -> Message:
        """The ``tool`` message answering ``call``: the tool's result as text, or what was wrong."""
        if not isinstance(call, ToolCall):
            raise TypeError(f"call must be a ToolCall (from reply.message.tool_calls), got {type(call).__name__}")
        if call.name not in self.functions:
            return tool_result(call, f"Error: there is no tool {call.name!r}; the tools are {', '.join(self.names)}.")
        if call.raw_arguments is not None:
            return tool_result(call, f"Error: {call.name}: the arguments must be a JSON object, got "
                                     f"{call.raw_arguments[:80]!r}. Send them again as JSON.")
        try:
            arguments = validate_arguments(self.by_name[call.name], call.arguments)
        except ToolArgumentError as error:
            return tool_result(call, f"Error: {error}. Call the tool again with arguments that fit its schema.")
        try:
            fn = self.functions[call.name]
            hints = typing.get_type_hints(fn, include_extras=True)
            result = fn(**{k: _build(v, hints[k]) if k in hints else v for k, v in arguments.items()})
        except Exception as error:  # the tool failed: tell the model, do not crash the agent
            return tool_result(call, f"Error: {call.name} raised {type(error).__name__}: {error}")
        return tool_result(call, result if isinstance(result, str) else json.dumps(result, default=str))


# --- examples (the checks of notebook 11 call the learner's tool_schema on these) --------------


def search_notes(query: str, limit: int = 5, exact: bool = False) -> list:
    """Search the notes for a phrase.

    Args:
        query: the words to look for.
        limit: how many notes to return at most.
        exact: match the whole phrase only.
    """
    return []


def set_thermostat(celsius: float, room: Literal["kitchen", "office"], schedule: list[int]) -> str:
    """Set a room's temperature at the given hours."""
    return "ok"


def convert(amount: float, unit: Optional[Literal["m", "km"]] = None, precision: int | None = None) -> str:
    """Convert a length."""
    return ""


def no_arguments() -> str:
    """Say hello."""
    return "hello"


def untyped(path, lines: int = 10) -> str:
    """Show the first lines of a file."""
    return ""


def undocumented(x: int) -> int:
    return x


SCHEMA_EXAMPLES = (search_notes, set_thermostat, convert, no_arguments, untyped, undocumented)
