"""DAG pipelines (internal subpackage): specs, validation, a sans-I/O scheduler, a runner.

``plasma-coord dag run PIPELINE`` runs a pipeline file; inside a task,
``plasma.task.current()`` gives the task its inputs, outputs and dynamic branches.
"""

from plasma.dag.graph import Graph
from plasma.dag.spec import PipelineSpec, TaskSpec, decode_pipeline, load_pipeline

__all__ = ["Graph", "PipelineSpec", "TaskSpec", "decode_pipeline", "load_pipeline"]
