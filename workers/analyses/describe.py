"""The `describe` task: the layer inventory DescribeModel turns into a ModelDescription (workers.inventory).

Options: DescribeOptions has none. Summary: {"input_spec", "layers", "supported_tasks"}; no files.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.analysis import Analysis, Outcome
from workers.context import TaskContext
from workers.inventory import describe
from workers.options import TaskOptions


@dataclass(frozen=True)
class Options(TaskOptions):
    """DescribeOptions: none."""

    TASK = "describe"


class Describe(Analysis[Options]):
    options = Options

    def run(self, ctx: TaskContext, options: Options) -> Outcome:
        return Outcome(describe(ctx.model, device=ctx.device, progress=ctx.progress))


ANALYSIS = Describe()
