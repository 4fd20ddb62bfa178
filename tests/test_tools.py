"""course.llm.tools: JSON Schemas from Python signatures, argument checks, the toolbox, the offline
tool-calling adapter, and notebook 11's check of the learner's tool_schema (it passes the reference
and fails the stub and plausible wrong variants). Everything is exact: no tolerances."""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
import sys
import typing
from typing import Annotated, Literal, Optional, TypedDict

import pytest

from course import llm
from course.checks import autogen as check
from course.checks.core import RESULTS
from course.llm import tools
from course.llm.policies import autogen as tasks

# --- tool_schema -----------------------------------------------------------------------------------


def test_schema_maps_python_types_to_json_schema_names():
    def f(s: str, i: int, x: float, b: bool, xs: list[int], d: dict, names: list[str]) -> None:
        """All the plain types."""

    props = tools.tool_schema(f)["function"]["parameters"]["properties"]
    assert props == {"s": {"type": "string"}, "i": {"type": "integer"}, "x": {"type": "number"},
                     "b": {"type": "boolean"}, "xs": {"type": "array", "items": {"type": "integer"}},
                     "d": {"type": "object"}, "names": {"type": "array", "items": {"type": "string"}}}


def test_schema_has_name_description_required_defaults_and_no_extra_properties():
    spec = tools.tool_schema(tools.search_notes)
    assert spec["type"] == "function"
    function = spec["function"]
    assert function["name"] == "search_notes" and function["description"] == "Search the notes for a phrase."
    params = function["parameters"]
    assert params["type"] == "object" and params["required"] == ["query"] and params["additionalProperties"] is False
    assert params["properties"]["limit"] == {"type": "integer", "description": "how many notes to return at most.",
                                             "default": 5}
    assert params["properties"]["exact"]["default"] is False
    json.dumps(spec)  # a spec is JSON


def test_schema_of_literal_optional_and_annotated():
    def f(mode: Literal["fast", "exact"], k: Optional[int] = None, pick: Literal[1, 2] | None = None,
          note: Annotated[str, "what to remember"] = "") -> None:
        """Literal, Optional and Annotated."""

    props = tools.tool_schema(f)["function"]["parameters"]["properties"]
    assert props["mode"] == {"type": "string", "enum": ["fast", "exact"]}
    assert props["k"] == {"type": ["integer", "null"], "default": None}
    assert props["pick"] == {"type": ["integer", "null"], "enum": [1, 2, None], "default": None}
    assert props["note"] == {"type": "string", "description": "what to remember", "default": ""}


def test_schema_refuses_what_a_model_could_not_call_and_says_why():
    def star(*args: int) -> None:
        """Varargs."""

    def bare_list(xs: list) -> None:
        """A list of what?"""

    def union(x: int | str) -> None:
        """Two types."""

    def odd_default(x: int = object()) -> None:  # noqa: B008
        """A default that is not JSON."""

    for fn, words in [(tools.untyped, "no type annotation"), (tools.undocumented, "no docstring"),
                      (star, "named arguments"), (bare_list, "list\\[int\\]"), (union, "Optional"),
                      (odd_default, "not a JSON value")]:
        with pytest.raises((TypeError, ValueError), match=words):
            tools.tool_schema(fn)
    assert tools.tool_schema(tools.undocumented, description="Return x.")["function"]["description"] == "Return x."


# --- validate_arguments ----------------------------------------------------------------------------


SPEC = tools.tool_schema(tools.set_thermostat)


def test_valid_arguments_pass_and_safe_coercions_are_made():
    got = tools.validate_arguments(SPEC, {"celsius": 20, "room": "office", "schedule": [7, 8.0]})
    assert got == {"celsius": 20.0, "room": "office", "schedule": [7, 8]}
    assert isinstance(got["celsius"], float) and all(isinstance(h, int) for h in got["schedule"])


@pytest.mark.parametrize("arguments, words", [
    ({"room": "office", "schedule": []}, "missing required argument 'celsius'"),
    ({"celsius": 20, "room": "office", "schedule": [], "fan": True}, "unknown argument 'fan'"),
    ({"celsius": "20", "room": "office", "schedule": []}, "'celsius' should be number \\(float\\), got string \"20\""),
    ({"celsius": True, "room": "office", "schedule": []}, "got boolean true"),
    ({"celsius": 20, "room": "attic", "schedule": []}, "must be one of \\[\"kitchen\", \"office\"\\]"),
    ({"celsius": 20, "room": "office", "schedule": [7.5]}, "'schedule\\[0\\]' should be integer"),
    ({"celsius": 20, "room": "office", "schedule": "7,8"}, "should be array"),
    ([20, "office"], "must be a JSON object"),
])
def test_invalid_arguments_raise_a_message_the_model_can_read(arguments, words):
    with pytest.raises(llm.ToolArgumentError, match=words) as error:
        tools.validate_arguments(SPEC, arguments)
    assert str(error.value).startswith("set_thermostat: ")


def test_every_problem_is_listed_and_numbers_never_become_text():
    with pytest.raises(llm.ToolArgumentError) as error:
        tools.validate_arguments(SPEC, {"celsius": "warm", "extra": 1})
    message = str(error.value)
    assert "'celsius'" in message and "'room', 'schedule'" in message and "'extra'" in message
    name_spec = tools.tool_schema(tools.search_notes)
    with pytest.raises(llm.ToolArgumentError, match="should be string"):
        tools.validate_arguments(name_spec, {"query": 42})


def test_null_is_accepted_only_where_the_schema_allows_it():
    spec = tools.tool_schema(tools.convert)
    assert tools.validate_arguments(spec, {"amount": 1, "unit": None, "precision": None})["unit"] is None
    with pytest.raises(llm.ToolArgumentError, match="'amount' should be number"):
        tools.validate_arguments(spec, {"amount": None})


# --- nested objects: dataclasses, TypedDicts, lists of them -----------------------------------------


@dataclass
class Item:
    """One line of an order."""

    sku: str
    qty: int
    size: Literal["S", "M", "L"] | None = None


class _Street(TypedDict):
    street: str
    city: str


class Address(_Street, total=False):
    floor: int


NotRequired = getattr(typing, "NotRequired", None)  # Python 3.11+


class Parcel(TypedDict):
    weight: float
    note: NotRequired[str]


@dataclass
class Tree:
    value: int
    children: list[Tree] = field(default_factory=list)


def place_order(items: list[Item], ship_to: Address, gift: Optional[Item] = None) -> str:
    """Place an order."""
    return f"{len(items)} lines, {sum(i.qty for i in items)} pieces to {ship_to['city']}" + \
        (f", gift {gift.sku}" if gift else "") + f" ({type(items[0]).__name__})"


ORDER = tools.tool_schema(place_order)


def test_a_dataclass_and_a_typeddict_become_nested_object_schemas():
    props = ORDER["function"]["parameters"]["properties"]
    item = {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"},
                                             "size": {"type": ["string", "null"], "enum": ["S", "M", "L", None],
                                                      "default": None}},
            "required": ["sku", "qty"], "additionalProperties": False, "description": "One line of an order."}
    assert props["items"] == {"type": "array", "items": item}
    assert props["ship_to"] == {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                                 "floor": {"type": "integer"}},
                                "required": ["street", "city"], "additionalProperties": False}
    assert props["gift"] == {**item, "type": ["object", "null"], "default": None}
    json.dumps(ORDER)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.NotRequired is Python 3.11+")
def test_a_typeddict_key_marked_not_required_is_optional_even_in_a_string_annotation():
    def send(parcel: Parcel) -> None:
        """Send a parcel."""

    parcel = tools.tool_schema(send)["function"]["parameters"]["properties"]["parcel"]
    assert parcel["required"] == ["weight"] and parcel["properties"]["note"] == {"type": "string"}


def test_a_recursive_dataclass_is_refused_with_the_reason():
    def plant(tree: Tree) -> None:
        """Plant a tree."""

    with pytest.raises(TypeError, match="Tree contains itself"):
        tools.tool_schema(plant)


GOOD_ORDER = {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2.0, "size": "M"}],
              "ship_to": {"street": "1 Main St", "city": "Lyon"}}


def test_nested_arguments_that_fit_pass_with_safe_coercions_and_reach_the_tool_as_dataclasses():
    got = tools.validate_arguments(ORDER, GOOD_ORDER)
    assert got["items"][1] == {"sku": "b", "qty": 2, "size": "M"} and isinstance(got["items"][1]["qty"], int)
    answer = llm.Toolbox([place_order]).run(llm.ToolCall("place_order", {**GOOD_ORDER, "gift": {"sku": "g", "qty": 1}},
                                                         "c9"))
    assert answer.content == "2 lines, 3 pieces to Lyon, gift g (Item)"


@pytest.mark.parametrize("change, words", [
    (lambda a: a["items"][1].update(qty="2"), "argument 'items[1].qty' should be integer (int), got string \"2\""),
    (lambda a: a["items"][0].update(size="XL"), "argument 'items[0].size' must be one of"),
    (lambda a: a["items"][0].pop("sku"), "argument 'items[0]' is missing required key 'sku' (it needs sku, qty)"),
    (lambda a: a["ship_to"].update(zip="69001"), "argument 'ship_to' has unknown key 'zip' (it takes street, city, floor)"),
    (lambda a: a["ship_to"].update(floor=2.5), "argument 'ship_to.floor' should be integer"),
    (lambda a: a.update(items={"sku": "a", "qty": 1}), "argument 'items' should be array"),
    (lambda a: a.update(gift=[1]), "argument 'gift' should be object (dict) or null (None), got array"),
])
def test_a_nested_argument_that_does_not_fit_is_named_by_its_path(change, words):
    arguments = copy.deepcopy(GOOD_ORDER)
    change(arguments)
    with pytest.raises(llm.ToolArgumentError) as error:
        tools.validate_arguments(ORDER, arguments)
    assert words in str(error.value) and str(error.value).startswith("place_order: ")


def test_every_nested_problem_is_listed_in_one_message():
    arguments = copy.deepcopy(GOOD_ORDER)
    arguments["items"][0]["qty"] = "one"
    arguments["items"][1]["qty"] = None
    with pytest.raises(llm.ToolArgumentError) as error:
        tools.validate_arguments(ORDER, arguments)
    assert "'items[0].qty'" in str(error.value) and "'items[1].qty'" in str(error.value)


def test_validate_value_checks_any_json_value_and_names_where_it_fails():
    schema = ORDER["function"]["parameters"]["properties"]["items"]
    assert tools.validate_value(schema, [{"sku": "a", "qty": 1.0}]) == [{"sku": "a", "qty": 1}]
    with pytest.raises(llm.ToolArgumentError, match=r"^reply: argument '\[0\]\.qty' should be integer"):
        tools.validate_value(schema, [{"sku": "a", "qty": "1"}], name="reply")
    with pytest.raises(llm.ToolArgumentError, match="^value: the value should be array"):
        tools.validate_value(schema, {"sku": "a"})
    with pytest.raises(TypeError, match="JSON Schema dict"):
        tools.validate_value("array", [])


# --- Toolbox ---------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def test_toolbox_runs_valid_calls_and_answers_with_the_call_id():
    box = llm.Toolbox([add, divide])
    assert [s["function"]["name"] for s in box.specs] == ["add", "divide"]
    answer = box.run(llm.ToolCall("add", {"a": 2, "b": 3}, "call_7"))
    assert answer == llm.Message("tool", "5", "add", (), "call_7")


@pytest.mark.parametrize("call, words", [
    (llm.ToolCall("mul", {"a": 1}, "c1"), "there is no tool 'mul'; the tools are add, divide"),
    (llm.ToolCall("add", {}, "c2", raw_arguments="{a: 1"), "must be a JSON object, got '{a: 1'"),
    (llm.ToolCall("add", {"a": "2", "b": 3}, "c3"), "'a' should be integer"),
    (llm.ToolCall("divide", {"a": 1, "b": 0}, "c4"), "divide raised ZeroDivisionError"),
])
def test_toolbox_never_raises_and_says_what_went_wrong(call, words):
    answer = llm.Toolbox([add, divide]).run(call)
    assert answer.role == "tool" and answer.tool_call_id == call.id
    assert answer.content.startswith("Error: ") and words in answer.content


def test_toolbox_validates_its_input():
    with pytest.raises(ValueError, match="non-empty list"):
        llm.Toolbox([])
    with pytest.raises(ValueError, match="two tools"):
        llm.Toolbox([add, add])
    with pytest.raises(TypeError, match="ToolCall"):
        llm.Toolbox([add]).run({"name": "add"})


# --- the offline tool-calling adapter --------------------------------------------------------------


def run_python(code: str) -> str:
    """Run a Python program and return its output."""
    return "exitcode: 0 (ran successfully)\nCode output:\n233168"


def test_code_as_tool_calls_turns_code_blocks_into_calls_and_reads_tool_messages_back():
    policy = llm.code_as_tool_calls(tasks.assistant_policy)
    model = llm.RuleModel(policy)
    box = llm.Toolbox([run_python])
    task = tasks.TASKS_BY_ID["multiples"]
    messages = [llm.system(tasks.SYSTEM_ASSISTANT), llm.user(task.statement)]
    first = model.chat(messages, tools=box.specs)
    assert first.content == "I will compute this with Python." and len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert (call.name, call.id, call.arguments) == ("run_python", "call_1", {"code": task.draft})
    messages += [first.message, box.run(call)]
    second = model.chat(messages, tools=box.specs)
    assert second.tool_calls == () and task.correct(second.content)
    # without tools offered, the same policy answers in text, exactly as the unwrapped one
    text = model.chat(messages[:2]).content
    assert text == tasks.assistant_policy(messages[:2]) and "```python" in text


# --- notebook 11's check of the learner's tool_schema ----------------------------------------------


def passed() -> bool:
    return RESULTS[-1].passed


def stub(fn):
    raise NotImplementedError("Exercise 11.6: write tool_schema")


def test_tool_schema_check_passes_the_reference_and_fails_the_stub():
    check.tool_schema(tools.tool_schema, tools.SCHEMA_EXAMPLES)
    assert passed()
    check.tool_schema(stub, tools.SCHEMA_EXAMPLES)
    assert not passed()


def _variant(change):
    def wrong(fn):
        return change(tools.tool_schema(fn), fn)
    return wrong


def _no_required(spec, fn):
    spec["function"]["parameters"].pop("required")
    return spec


def _python_type_names(spec, fn):
    text = json.dumps(spec).replace('"integer"', '"int"').replace('"number"', '"float"').replace('"string"', '"str"')
    return json.loads(text)


def _bool_as_integer(spec, fn):
    text = json.dumps(spec).replace('"boolean"', '"integer"')
    return json.loads(text)


def _everything_required(spec, fn):
    params = spec["function"]["parameters"]
    params["required"] = list(params["properties"])
    return spec


def _optional_without_null(spec, fn):
    for prop in spec["function"]["parameters"]["properties"].values():
        if isinstance(prop.get("type"), list):
            prop["type"] = prop["type"][0]
            prop.get("enum", [None]).remove(None) if None in prop.get("enum", []) else None
    return spec


def _no_defaults(spec, fn):
    for prop in spec["function"]["parameters"]["properties"].values():
        prop.pop("default", None)
    return spec


def _literal_without_enum(spec, fn):
    for prop in spec["function"]["parameters"]["properties"].values():
        prop.pop("enum", None)
    return spec


def _list_without_items(spec, fn):
    for prop in spec["function"]["parameters"]["properties"].values():
        prop.pop("items", None)
    return spec


def _whole_docstring(spec, fn):
    spec["function"]["description"] = inspect.getdoc(fn)
    return spec


def _no_additional_properties_flag(spec, fn):
    spec["function"]["parameters"].pop("additionalProperties")
    return spec


def _unwrapped(spec, fn):
    return spec["function"]


def _untyped_as_string(fn):
    """Accepts a parameter without an annotation, calling it a string."""
    if fn is tools.untyped:
        def untyped(path: str, lines: int = 10) -> str:
            """Show the first lines of a file."""
        return tools.tool_schema(untyped)
    return tools.tool_schema(fn)


def _no_docstring_is_fine(fn):
    """Accepts a function without a docstring, with its name as the description."""
    return tools.tool_schema(fn, description=None if fn.__doc__ else fn.__name__)


WRONG = {"no 'required'": _variant(_no_required), "Python type names": _variant(_python_type_names),
         "bool as integer": _variant(_bool_as_integer), "defaults required": _variant(_everything_required),
         "Optional without null": _variant(_optional_without_null), "no defaults": _variant(_no_defaults),
         "Literal without enum": _variant(_literal_without_enum), "list without items": _variant(_list_without_items),
         "whole docstring": _variant(_whole_docstring),
         "additionalProperties missing": _variant(_no_additional_properties_flag),
         "spec not wrapped": _variant(_unwrapped), "untyped parameter accepted": _untyped_as_string,
         "missing docstring accepted": _no_docstring_is_fine}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_tool_schema_check_fails_plausible_wrong_versions(name):
    check.tool_schema(WRONG[name], tools.SCHEMA_EXAMPLES)
    assert not passed(), f"the check passed a tool_schema with {name}"


def test_tool_schema_check_refuses_examples_that_are_not_the_course_examples():
    check.tool_schema(tools.tool_schema, tools.SCHEMA_EXAMPLES[:2])
    assert not passed() and "examples" in RESULTS[-1].message


def test_tool_schema_check_ignores_parameter_descriptions_it_does_not_ask_for():
    def without_descriptions(fn):
        spec = copy.deepcopy(tools.tool_schema(fn))
        for prop in spec["function"]["parameters"]["properties"].values():
            prop.pop("description", None)
        return spec

    check.tool_schema(without_descriptions, tools.SCHEMA_EXAMPLES)
    assert passed()


# --- response_format on the offline models -----------------------------------------------------------

ANSWER_FORMAT = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER["function"]["parameters"]}}


def test_an_offline_reply_that_fits_the_requested_schema_comes_back_unchanged():
    text = json.dumps(GOOD_ORDER)
    assert llm.ScriptedModel([text]).chat([llm.user("order")], response_format=ANSWER_FORMAT).content == text
    assert llm.RuleModel(lambda messages: '{"a": 1}').chat([llm.user("x")],
                                                          response_format={"type": "json_object"}).content == '{"a": 1}'
    assert llm.ScriptedModel(["plain words"]).chat([llm.user("x")], response_format={"type": "text"}).content \
        == "plain words"


@pytest.mark.parametrize("reply, response_format, words", [
    ("Sure! Here is the order.", ANSWER_FORMAT, "its reply is not JSON"),
    ('["a", "b"]', {"type": "json_object"}, "JSON but not an object"),
    (json.dumps({**GOOD_ORDER, "items": [{"sku": "a", "qty": "2"}]}), ANSWER_FORMAT,
     "does not fit the schema: order: argument 'items[0].qty' should be integer"),
])
def test_an_offline_model_says_it_cannot_constrain_its_output_instead_of_answering_in_another_format(
        reply, response_format, words):
    for model in (llm.ScriptedModel([reply], name="script"), llm.RuleModel(lambda messages: reply, name="script")):
        with pytest.raises(llm.LLMError, match="script: an offline model cannot constrain its output") as error:
            model.chat([llm.user("order")], response_format=response_format)
        assert words in str(error.value).replace("Its", "its")


def test_a_reply_that_only_calls_tools_is_not_held_to_the_response_format():
    call = llm.ToolCall("add", {"a": 1, "b": 2}, "call_1")
    reply = llm.ScriptedModel([llm.assistant("", tool_calls=[call])]).chat(
        [llm.user("add")], tools=[add], response_format={"type": "json_object"})
    assert reply.tool_calls == (call,)
