"""Pipeline specs and graph validation: bad input is rejected before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma.dag.branches import Map, Submit, Wait, branch_specs, decode_call, expand_map
from plasma.dag.graph import Graph
from plasma.dag.spec import TaskSpec, decode_pipeline, load_pipeline, task_from_builtins
from plasma.errors import BadRequest

YAML = """
name: demo
tasks:
  - {name: a, cmd: [echo, hi], outputs: [x]}
  - {name: b, call: "mod.sub:fn", inputs: [x], outputs: [y], cpus: 2, policy: single-numa-node,
     numa: 1, membind: true, env: {K: V}, retries: 2, timeout: 1.5, args: {n: 3}}
  - {name: c, cmd: ['true'], after: [a, b]}
"""


def task(
    name: str,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    after: list[str] | None = None,
) -> TaskSpec:
    return TaskSpec(
        name=name, cmd=["true"], inputs=inputs or [], outputs=outputs or [], after=after or []
    )


def test_yaml_json_toml_decode_to_the_same_spec(tmp_path: Path) -> None:
    spec = decode_pipeline(YAML, "yaml")
    assert spec.name == "demo"
    b = spec.tasks[1]
    assert (b.call, b.cpus, b.policy, b.numa, b.membind, b.retries, b.timeout) == (
        "mod.sub:fn",
        2,
        "single-numa-node",
        1,
        True,
        2,
        1.5,
    )
    assert b.env == {"K": "V"} and b.args == {"n": 3}
    as_json = json.dumps(
        {"name": "demo", "tasks": [{"name": "a", "cmd": ["echo", "hi"], "outputs": ["x"]}]}
    )
    (tmp_path / "p.json").write_text(as_json)
    (tmp_path / "p.toml").write_text(
        'name = "demo"\n[[tasks]]\nname = "a"\ncmd = ["echo", "hi"]\noutputs = ["x"]\n'
    )
    assert load_pipeline(tmp_path / "p.json") == load_pipeline(tmp_path / "p.toml")
    assert load_pipeline(tmp_path / "p.json").tasks[0] == spec.tasks[0]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("tasks: [{name: a, cmd: [x], cpus: 0}]", "$.tasks[0].cpus"),
        ("tasks: [{name: a, cmd: [x], cpu: 1}]", "unknown field `cpu`"),
        ("tasks: [{name: a, cmd: [x], policy: fastest}]", "$.tasks[0].policy"),
        ("tasks: [{name: a, cmd: [x], timeout: -1}]", "$.tasks[0].timeout"),
        ("tasks: [{name: a, cmd: [x], retries: -1}]", "$.tasks[0].retries"),
        ("tasks: [{name: a}]", "exactly one of `cmd` or `call`"),
        ("tasks: [{name: a, cmd: [x], call: 'm:f'}]", "exactly one of `cmd` or `call`"),
        ("tasks: [{name: a, cmd: []}]", "`cmd` must not be empty"),
        ("tasks: [{name: a, call: 'no colon'}]", "`call` must look like"),
        ("tasks: [{name: 'a b', cmd: [x]}]", "$.tasks[0].name"),
        ("tasks: [{name: a, cmd: [x], outputs: [o, o]}]", "lists a name twice"),
        ("tasks: []", "$.tasks"),
        ("tasks: [{name: a, cmd: [x]", "not valid yaml"),
    ],
)
def test_bad_specs_name_the_field(doc: str, needle: str) -> None:
    with pytest.raises(BadRequest) as err:
        decode_pipeline(doc, "yaml", "p.yaml")
    assert needle in str(err.value)
    assert str(err.value).startswith("p.yaml: ")


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match=r"end in \.yaml"):
        load_pipeline(tmp_path / "p.txt")
    with pytest.raises(BadRequest, match="cannot read"):
        load_pipeline(tmp_path / "missing.yaml")


def test_graph_dependencies_from_inputs_and_after() -> None:
    graph = Graph.from_specs(decode_pipeline(YAML, "yaml").tasks)
    assert graph.deps == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert graph.producer == {"x": "a", "y": "b"}
    assert graph.descendants("a") == ["b", "c"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([task("a", outputs=["x"]), task("a")], "duplicate task id 'a'"),
        ([task("a", outputs=["x"]), task("b", outputs=["x"])], "output of both 'a' and 'b'"),
        ([task("a", inputs=["nope"])], "input 'nope' is not an output of any task"),
        ([task("a", after=["ghost"])], "unknown task 'ghost'"),
        (
            [task("a", inputs=["y"], outputs=["x"]), task("b", inputs=["x"], outputs=["y"])],
            "dependency cycle: ",
        ),
        ([task("a", inputs=["x"], outputs=["x"])], "dependency cycle: a -> a"),
    ],
)
def test_bad_graphs_are_rejected(tasks: list[TaskSpec], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        Graph.from_specs(tasks)


def test_rejected_batch_leaves_the_graph_unchanged() -> None:
    graph = Graph.from_specs([task("a", outputs=["x"])])
    with pytest.raises(BadRequest):
        graph.add([("b", task("b", outputs=["y"])), ("c", task("c", outputs=["x"]))], parent="a")
    assert list(graph.specs) == ["a"] and graph.producer == {"x": "a"}


def test_available_inputs_need_no_producer() -> None:
    graph = Graph.from_specs([task("a", outputs=["x"])])
    graph.add([("a/m", task("m", inputs=["x", "extra"]))], parent="a", available={"x", "extra"})
    assert graph.deps["a/m"] == set() and graph.parent["a/m"] == "a"


@settings(deadline=None, max_examples=60)
@given(st.integers(2, 40), st.data())
def test_cycle_detection_matches_a_topological_sort(n: int, data: st.DataObject) -> None:
    edges = data.draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))))
    tasks = [
        task(f"t{i}", outputs=[f"o{i}"], after=sorted(f"t{j}" for i2, j in edges if i2 == i))
        for i in range(n)
    ]
    remaining = {i: {j for i2, j in edges if i2 == i} for i in range(n)}
    while True:  # Kahn: peel tasks with no remaining dependencies
        free = [i for i, deps in remaining.items() if not deps]
        if not free:
            break
        for i in free:
            del remaining[i]
        for deps in remaining.values():
            deps.difference_update(free)
    if remaining:
        with pytest.raises(BadRequest, match="dependency cycle"):
            Graph.from_specs(tasks)
    else:
        assert len(Graph.from_specs(tasks).specs) == n


def test_map_expands_one_task_per_input() -> None:
    template = task_from_builtins(
        {"name": "sq", "call": "m:f", "inputs": ["conf"], "outputs": ["out-{i}", "{input}.sq"]}
    )
    specs = expand_map(template, ["p0", "p1"])
    assert [s.name for s in specs] == ["sq-0", "sq-1"]
    assert [s.inputs for s in specs] == [["p0", "conf"], ["p1", "conf"]]
    assert [s.outputs for s in specs] == [["out-0", "p0.sq"], ["out-1", "p1.sq"]]
    with pytest.raises(BadRequest, match="only use"):
        expand_map(msgspec_replace(template, outputs=["{oops}"]), ["p0"])
    with pytest.raises(BadRequest, match="over no inputs"):
        expand_map(template, [])


def msgspec_replace(spec: TaskSpec, **changes: object) -> TaskSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)


def test_branch_calls_decode_and_reject_garbage() -> None:
    call = decode_call(
        {"op": "map", "parent": "p", "task": {"name": "t", "cmd": ["x"]}, "inputs": ["a"]}
    )
    assert isinstance(call, Map) and [s.name for s in branch_specs(call)] == ["t-0"]
    sub = decode_call({"op": "submit", "parent": "p", "tasks": [{"name": "t", "cmd": ["x"]}]})
    assert isinstance(sub, Submit) and branch_specs(sub)[0].cmd == ["x"]
    assert isinstance(decode_call({"op": "wait", "parent": "p", "ids": ["p/t"]}), Wait)
    with pytest.raises(BadRequest, match="invalid dynamic-branch call"):
        decode_call({"op": "explode"})
    bad = Submit(parent="p", tasks=[{"name": "t", "cmd": ["x"], "cpus": "many"}])
    with pytest.raises(BadRequest, match=r"submitted task 0: invalid task.*cpus"):
        branch_specs(bad)
