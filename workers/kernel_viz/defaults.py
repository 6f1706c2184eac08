"""kernel_viz defaults: each states its unit and why it has this value."""

from __future__ import annotations

# Stage 1 ------------------------------------------------------------------------------------

# Adam updates of each channel's video (the proto's default for `steps`).
STEPS = 256
# Step of each video's spectrum per update, as the RMS of the change (the gradient is normalised
# per video: units of the parameterisation, independent of the network's activation scale).
LEARNING_RATE = 0.01
# Heavy-ball momentum of the normalised gradient ascent.
MOMENTUM = 0.9
# Share of the steps, the first ones, that are jittered; the rest converge on the unit's exact
# optimum (jitter to the end blurs the kernel's preference: a box blur of +-2 px halves a
# 6 px grating and made a planted 1 px/frame kernel render at 1.3 px/frame).
JITTER_SHARE = 0.5
# Standard deviation of the initial Fourier coefficients (Lucent's value: starts near mid-grey).
SPECTRUM_INIT_STD = 0.01
# Jitter margin per axis as a fraction of the receptive field's extent (at least MIN_JITTER).
JITTER_FRACTION = 0.125
# Smallest jitter margin in pixels (frames on the time axis) where the receptive field is tiny.
MIN_JITTER = 1
# Largest jitter margin in pixels: more only slows the optimisation without smoothing it further.
MAX_JITTER = 8
# Scale jitter: a factor drawn uniformly in [1 - SCALE_JITTER, 1 + SCALE_JITTER] about the centre.
SCALE_JITTER = 0.05
# Memory stage 1 may use for one chunk of channels on CPU, in bytes (autograd's saved tensors).
MEMORY_BUDGET_BYTES = 1 << 30
# On CUDA, the share of the currently free device memory one chunk may use.
CUDA_MEMORY_FRACTION = 0.5
# Input samples of the gradient probe that measures a receptive field (their support is united:
# a ReLU or max-pool hides part of the field for any single input).
PROBE_SAMPLES = 4
# A channel is dead when the optimisation raised it above a random input by less than this
# fraction of the layer's largest such gain (or its gradient was exactly zero throughout).
DEAD_GAIN_FRACTION = 1e-3

# Stage 2 ------------------------------------------------------------------------------------

# Weight of the total variation of the velocities (over x, y and t) and, times
# TEXTURE_TV_SHARE, of the texture (the proto's default for `tv_weight`).
TV_WEIGHT = 0.1
# The texture's TV weight as a share of TV_WEIGHT: a strong texture TV would wash out the
# very stripes that carry the motion.
TEXTURE_TV_SHARE = 0.1
# Weight of ||I - V_0||^2, which pins the texture to the first frame.
ANCHOR_WEIGHT = 1.0
# Adam updates per pyramid level.
DECOMPOSITION_STEPS = 100
# Adam learning rates: velocities in pixels per frame, texture in [0, 1] value units.
VELOCITY_LEARNING_RATE = 0.05
TEXTURE_LEARNING_RATE = 0.01
# Coarsest pyramid level is no smaller than this many pixels on its shorter side.
MIN_PYRAMID_SIZE = 8
# Below this speed (pixels per frame) a direction is noise and is reported as None.
MIN_SPEED = 0.05
# Motion is significant when its held-out gain, the smallest 1 - error(v) / error(-v) on frame
# pairs and on window halves the velocity was not fitted on, reaches this (3 or more frame pairs).
# Measured on independent frames (noise, smooth textures; 9x9 and 24x24 windows; 1,200 videos of
# 4-6 frames): none reached it, at most 0.47; optimal videos of planted drifting-grating kernels
# (5 frames): 0.66 and above, translations 0.99.
MOTION_GAIN_MIN = 0.5
# With fewer pairs less is held out and chance passes more often: with 2 pairs (3 frames) 0.5 was
# reached by 1-2.5 % of very smooth independent frames (max 0.79), planted 3-frame kernels 0.73
# and above; with 1 pair only window halves are held out (chance up to 0.77, planted 2-frame
# kernels mostly above 0.9).
MOTION_GAIN_MIN_FEW_PAIRS = {1: 0.8, 2: 0.7}
# Folds of frame pairs for the held-out gain (each fold's pairs judged by a velocity fitted on the rest).
MOTION_FOLDS = 4
# Frames whose mean squared change is below this share of their spatial variance are static: gain 0.
STATIC_CHANGE = 1e-4

# Figures ------------------------------------------------------------------------------------

# Videos and flow maps are upscaled (nearest neighbour) to about this many pixels on a side.
FIGURE_SIZE = 160
# Contact-sheet tiles are upscaled to about this many pixels on a side.
TILE_SIZE = 64
# Milliseconds per GIF frame.
FRAME_MS = 150
# Flow arrows are drawn on a grid of about this many arrows per side.
ARROWS_PER_SIDE = 6
