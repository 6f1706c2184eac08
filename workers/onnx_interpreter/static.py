"""Which values of a graph depend only on its inputs' shapes, so that they are computed once per input shape.

The legacy exporter writes every size a model reads (`x.shape`, `x.size(0)` under a dynamic batch) as
Shape -> Gather -> Unsqueeze -> Concat chains, and the index grids and masks built from them (Swin's
window masks, MViT's relative positions) as more of the same: of the 6,600 nodes of a Swin3D export,
most compute the same integers on every call. A value is *static* when it is a constant, a Shape or Size
of a tensor whose shape follows from the input shapes, or computed only from static values; its node
then runs on the first call with given input shapes and devices, and later calls reuse the result.

A tensor's shape follows from the input shapes unless an op makes it depend on data: NonZero and the
like always do; ops taking sizes, axes or indices into a sequence (Reshape's shape, Slice's starts, ...)
do when those inputs are not static; an If does unless its condition is static and both branches give
shapes that follow; a Loop unless its trip count and conditions are static and its body's outputs follow
(MViT's legacy export splits tokens in Loops over a sequence: the rest of each block's sizes follow them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# (op type, step inputs, outputs, whether its result may be cached, its subgraphs by attribute name)
Described = tuple[str, tuple[str, ...], tuple[str, ...], bool, dict[str, Any]]

# Ops whose output shape depends on input values, whatever they are.
_DATA_SHAPED = frozenset({"NonZero", "Compress", "Unique"})
# For ops that take shape-like inputs, the positions of those inputs; None = every input.
_SHAPE_ARGUMENTS: dict[str, tuple[int, ...] | None] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Range": None,
    "ConstantOfShape": None, "OneHot": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Split": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "TopK": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceSumSquare": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "SplitToSequence": (1,), "SequenceAt": (1,), "SequenceErase": (1,),
    "SequenceInsert": (2,), "AffineGrid": (1,),
}


def static_outputs(
    nodes: Iterable[Described], constants: Iterable[str], inputs: Iterable[str], describe: Callable[[Any], list[Described]]
) -> set[str]:
    """Names of the static values among `nodes` (in run order); `constants` are the initializers, `inputs` the
    graph inputs (data, of shapes given at each call); `describe` lists a subgraph's nodes the same way."""
    static, _ = _analyse(nodes, set(constants), set(constants) | set(inputs), describe)
    return static


def _analyse(
    nodes: Iterable[Described], static: set[str], shaped: set[str], describe: Callable[[Any], list[Described]]
) -> tuple[set[str], set[str]]:
    """(static values, tensors whose shapes follow from the input shapes), grown from the given sets."""
    for op, step_inputs, outputs, cacheable, graphs in nodes:
        present = [name for name in step_inputs if name]
        if op in _DATA_SHAPED:
            follows = False
        elif op == "Loop" and "body" in graphs:
            follows = _loop_follows(step_inputs, graphs["body"], static, shaped, describe)
        elif op == "If" and graphs:
            follows = bool(present) and present[0] in static and all(n in shaped for n in present) and all(
                _outputs_follow(g, static, shaped, set(), describe) for g in graphs.values()
            )
        else:
            positions = _SHAPE_ARGUMENTS.get(op, ())
            arguments = present if positions is None else [step_inputs[i] for i in positions if i < len(step_inputs) and step_inputs[i]]
            follows = all(n in shaped for n in present) and all(n in static for n in arguments)
        if follows:
            shaped.update(o for o in outputs if o)
        value_static = all(n in static for n in present) or (op in ("Shape", "Size") and bool(present) and present[0] in shaped)
        if cacheable and value_static:
            static.update(o for o in outputs if o)
            shaped.update(o for o in outputs if o)
    return static, shaped


def _loop_follows(
    step_inputs: tuple[str, ...], body: Any, static: set[str], shaped: set[str], describe: Callable[[Any], list[Described]]
) -> bool:
    """A Loop's outputs have shapes that follow from the input shapes (its iterations do not depend on data)."""
    formal = [i.name for i in body.input]
    explicit = step_inputs[: len(formal)]
    trip, cond = (list(explicit) + ["", ""])[:2]
    if (trip and trip not in static) or (cond and cond not in static):
        return False
    if not all(n in shaped for n in step_inputs if n):
        return False
    # Inside the body, the iteration number and the incoming condition are data-independent; carried values
    # have shapes that follow (they start so, and each iteration keeps it so if the body's outputs follow).
    inner_static = set(formal[:2])
    if not _outputs_follow(body, static, shaped | set(formal[2:]), inner_static, describe, static_first=True):
        return False
    return True


def _outputs_follow(
    graph: Any, static: set[str], shaped: set[str], extra_static: set[str], describe: Callable[[Any], list[Described]],
    static_first: bool = False,
) -> bool:
    """Whether every output of a subgraph has a shape that follows (and, with static_first, its first output,
    a Loop body's condition, is static)."""
    own = {t.name for t in graph.initializer}
    inner_static, inner_shaped = _analyse(describe(graph), set(static) | own | extra_static, set(shaped) | own | extra_static, describe)
    names = [o.name for o in graph.output]
    if static_first and (not names or names[0] not in inner_static):
        return False
    return all(n in inner_shaped for n in names)
