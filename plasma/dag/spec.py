"""Pipeline specs: msgspec Structs decoded from YAML, JSON or TOML.

Decoding errors become :class:`plasma.errors.BadRequest` naming the file and the bad field
(``$.tasks[1].cpus``). Graph-level checks (cycles, unknown inputs) live in ``graph.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from plasma.errors import BadRequest

Policy = Literal["same-numa", "single-numa-node", "best-effort", "none"]
TaskName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", max_length=200)]
ObjectName = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
_CALL = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class TaskSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One task: a command (``cmd`` argv) or a Python function (``call`` = "module:function")."""

    name: TaskName
    cmd: list[str] | None = None
    call: str | None = None
    inputs: list[ObjectName] = []
    outputs: list[ObjectName] = []
    cpus: Annotated[int, msgspec.Meta(ge=1)] = 1
    policy: Policy = "same-numa"
    numa: Annotated[int, msgspec.Meta(ge=0)] | None = None
    membind: bool = False
    cell: bool = False  # run in its own cgroup v2 cell (cpuset = its placement)
    # inputs on another node are moved ("migrate") or copied ("replicate") to the task's
    # node before it starts
    inputs_local: Literal["migrate", "replicate"] | None = None
    env: dict[str, str] = {}
    retries: Annotated[int, msgspec.Meta(ge=0)] = 0
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    after: list[TaskName] = []
    args: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if (self.cmd is None) == (self.call is None):
            raise ValueError(f"task {self.name!r}: give exactly one of `cmd` or `call`")
        if self.cmd is not None and not self.cmd:
            raise ValueError(f"task {self.name!r}: `cmd` must not be empty")
        if self.call is not None and not _CALL.match(self.call):
            raise ValueError(
                f"task {self.name!r}: `call` must look like 'package.module:function', "
                f"got {self.call!r}"
            )
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"task {self.name!r}: `outputs` lists a name twice")


class PipelineSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A pipeline: a name and its static tasks."""

    tasks: Annotated[list[TaskSpec], msgspec.Meta(min_length=1)]
    name: str = "pipeline"


_DECODERS: dict[str, Callable[..., Any]] = {
    ".yaml": msgspec.yaml.decode,
    ".yml": msgspec.yaml.decode,
    ".json": msgspec.json.decode,
    ".toml": msgspec.toml.decode,
}


def decode_pipeline(data: bytes | str, fmt: str, source: str = "<pipeline>") -> PipelineSpec:
    """Decode ``data`` in format ``fmt`` ("yaml", "json" or "toml") into a checked spec."""
    decode = _DECODERS.get("." + fmt.lower())
    if decode is None:
        raise BadRequest(f"{source}: unknown pipeline format {fmt!r} (use yaml, json or toml)")
    try:
        spec: PipelineSpec = decode(data, type=PipelineSpec)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{source}: invalid pipeline: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{source}: not valid {fmt}: {exc}") from None
    return spec


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read and decode a pipeline file; the format comes from its suffix."""
    p = Path(path)
    if p.suffix.lower() not in _DECODERS:
        raise BadRequest(f"{p}: pipeline files end in .yaml, .yml, .json or .toml")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{p}: cannot read pipeline: {exc.strerror}") from None
    return decode_pipeline(data, p.suffix[1:], str(p))


def task_from_builtins(obj: Any, source: str = "task") -> TaskSpec:
    """A :class:`TaskSpec` from plain data (a dynamic branch's payload), checked like a file."""
    try:
        return msgspec.convert(obj, TaskSpec)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{source}: invalid task: {exc}") from None
