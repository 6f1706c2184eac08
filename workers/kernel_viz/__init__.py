"""kernel_viz: what spatio-temporal pattern each 3D conv kernel prefers, its texture and its motion.

Stage 1 (renderer) optimises, for all requested channels of a layer at once, a video in the
model's own input space; stage 2 (decomposition) explains each video as a texture moved by
per-frame velocities; motion summarises them; figures draws them; workers.analyses.kernel_viz ties it together as the task.
"""

from workers.kernel_viz.decomposition import Decomposition, decompose, global_translation, warp
from workers.kernel_viz.motion import MotionSummary, direction_selectivity, motion_dependence, summarise
from workers.kernel_viz.objective import Objective, channel_activations
from workers.kernel_viz.parameterization import FourierVideo
from workers.kernel_viz.receptive_field import CanvasPlan, ReceptiveField, measure, plan_canvas
from workers.kernel_viz.renderer import Rendering, evaluate, render
from workers.kernel_viz.target import LayerTarget
from workers.kernel_viz.transforms import Jitter

__all__ = [
    "CanvasPlan",
    "Decomposition",
    "FourierVideo",
    "Jitter",
    "LayerTarget",
    "MotionSummary",
    "Objective",
    "ReceptiveField",
    "Rendering",
    "channel_activations",
    "decompose",
    "direction_selectivity",
    "evaluate",
    "global_translation",
    "measure",
    "motion_dependence",
    "plan_canvas",
    "render",
    "summarise",
    "warp",
]
