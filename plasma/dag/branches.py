"""Dynamic-branch calls a task sends its run's owner through the coordinator relay.

Payloads are plain MessagePack data: ``{"op": "submit" | "map" | "wait", ...}``. Submit and
map answer a list of handles ``{"id", "outputs"}``; wait answers one
``{"id", "status", "outputs", "error"}`` per handle once all of them have ended.
"""

from __future__ import annotations

from typing import Any

import msgspec

from plasma.dag.spec import TaskSpec, task_from_builtins
from plasma.errors import BadRequest


class Submit(msgspec.Struct, tag_field="op", tag="submit", forbid_unknown_fields=True):
    parent: str
    tasks: list[dict[str, Any]]


class Map(msgspec.Struct, tag_field="op", tag="map", forbid_unknown_fields=True):
    parent: str
    task: dict[str, Any]
    inputs: list[str]


class Wait(msgspec.Struct, tag_field="op", tag="wait", forbid_unknown_fields=True):
    parent: str
    ids: list[str]


Call = Submit | Map | Wait


def decode_call(payload: Any) -> Call:
    """The call in a relayed payload; BadRequest naming the bad field otherwise."""
    try:
        return msgspec.convert(payload, Call)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid dynamic-branch call: {exc}") from None


def branch_specs(call: Submit | Map) -> list[TaskSpec]:
    """The task specs a submit or map call asks for (map: one task per input)."""
    if isinstance(call, Submit):
        return [task_from_builtins(t, f"submitted task {i}") for i, t in enumerate(call.tasks)]
    template = task_from_builtins(call.task, "mapped task")
    return expand_map(template, call.inputs)


def expand_map(template: TaskSpec, inputs: list[str]) -> list[TaskSpec]:
    """One copy of ``template`` per input: task ``{name}-{i}`` reads ``inputs[i]`` first.

    Output names may use ``{i}`` and ``{input}`` so each copy writes its own objects.
    """
    if not inputs:
        raise BadRequest(f"map of task {template.name!r} over no inputs")
    specs = []
    for i, name in enumerate(inputs):
        try:
            outputs = [o.format(i=i, input=name) for o in template.outputs]
        except (KeyError, IndexError, ValueError) as exc:
            raise BadRequest(
                f"mapped task {template.name!r}: output names may only use {{i}} and {{input}}: "
                f"{exc!r}"
            ) from None
        specs.append(
            msgspec.structs.replace(
                template,
                name=f"{template.name}-{i}",
                inputs=[name, *template.inputs],
                outputs=outputs,
            )
        )
    return specs
