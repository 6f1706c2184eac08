"""The operators an uploaded torch.export program may call: pure tensor maths, named one by one.

    check_target(name)   raise ModelRejected(UNSAFE_OPERATOR) unless `name` is an allowed call target
    target_name(fn)      the serialised name ("torch.ops.aten.add.Tensor") of a loaded graph's call target

Why an allow-list and not a deny-list: the aten namespace alone holds over 3,000 operator overloads and
every PyTorch release adds more. Some read or write files (aten.from_file, with shared=True and fill_ an
in-place overwrite of any file the worker can open; aten.save writes one), others reach storages,
processes, devices or uninitialised memory. A deny-list has to know them all, today and in every future release, and one
miss is arbitrary file access; an allow-list fails safe: an operator nobody reviewed is refused with
its name, and adding it is a one-word, reviewed change.

The list is what torch.export emits for the project's sample models (workers/samples/: C3DSmall, and
TConvSmall's grid_sampler) and every zoo architecture (workers/samples/zoo/, exported dynamic and at batch
1: 54 distinct targets in all), widened to the neighbours a CNN or video transformer plausibly uses (2-D/1-D
variants, other activations, norms, reductions, views, indexing, attention, interpolation, padding). Every
entry computes tensors from tensors: none takes a file name, a storage, a process or a device handle. Any
overload of an allowed operator is allowed (overloads differ in argument types: add.Tensor, add.Scalar,
add.out), except the few overloads below that take a Storage. Left out on purpose: empty* (uninitialised
memory may hold what the worker freed), _unsafe_index* (no bounds checks), _copy_from, set_, from_file, save.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from workers.errors import ModelRejected

# aten / prims operators by overload packet name (torch.ops.aten.<name>.<overload>).
ATEN: frozenset[str] = frozenset(
    """
    _assert_async _assert_scalar _assert_tensor_metadata _functional_assert_async _functional_assert_scalar
    sym_constrain_range sym_constrain_range_for_size _local_scalar_dense
    sym_size sym_stride sym_numel sym_storage_offset size stride numel dim

    convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution
    linear addmm mm bmm matmul baddbmm addbmm addmv mv dot einsum t

    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d

    batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    native_batch_norm cudnn_batch_norm instance_norm layer_norm native_layer_norm group_norm native_group_norm
    rms_norm _fused_rms_norm

    relu relu_ relu6 leaky_relu leaky_relu_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardtanh hardtanh_
    hardswish hardswish_ hardsigmoid hardsigmoid_ elu elu_ selu celu mish softplus softshrink hardshrink prelu
    _prelu_kernel glu log_sigmoid_forward threshold threshold_ clamp clamp_ clamp_min clamp_max clip

    add add_ sub sub_ rsub mul mul_ div div_ true_divide floor_divide remainder fmod pow pow_ neg abs sign
    sqrt rsqrt exp exp2 expm1 log log2 log10 log1p reciprocal square erf erfc erfinv sin cos tan asin acos atan
    atan2 sinh cosh asinh acosh atanh floor ceil round trunc frac lerp addcmul addcdiv where maximum minimum fmax fmin
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not bitwise_xor
    isnan isinf isfinite nan_to_num scalar_tensor

    sum mean amax amin max min argmax argmin prod var std var_mean std_mean norm linalg_vector_norm
    logsumexp cumsum cumprod any all softmax _softmax log_softmax _log_softmax _safe_softmax topk sort argsort

    view _unsafe_view reshape permute transpose transpose_ expand expand_as squeeze squeeze_ unsqueeze unsqueeze_
    flatten unflatten contiguous clone alias detach lift_fresh_copy lift_fresh view_as movedim moveaxis
    select slice narrow split split_with_sizes tensor_split chunk unbind cat concat concatenate stack hstack vstack
    repeat repeat_interleave tile flip roll as_strided as_strided_scatter slice_scatter select_scatter
    diagonal diag_embed triu tril _to_copy to type_as copy copy_ fill fill_ zero_ masked_fill masked_fill_
    zeros zeros_like ones ones_like full full_like new_zeros new_ones new_full arange linspace rand_like randn_like

    index index_select index_put index_put_ index_add gather scatter scatter_add take_along_dim masked_select
    embedding one_hot

    scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_efficient_attention
    _scaled_dot_product_flash_attention _scaled_dot_product_cudnn_attention _scaled_dot_product_attention_math
    _native_multi_head_attention

    upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d upsample_bilinear2d
    upsample_trilinear3d upsample_bicubic2d _upsample_nearest_exact1d _upsample_nearest_exact2d
    _upsample_nearest_exact3d _upsample_bilinear2d_aa grid_sampler grid_sampler_2d grid_sampler_3d affine_grid_generator
    pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d
    replication_pad3d pixel_shuffle pixel_unshuffle channel_shuffle im2col col2im unfold

    dropout dropout_ feature_dropout alpha_dropout native_dropout
    """.split()
)

# torch.ops.higher_order.*: control flow and grad/autocast scopes torch.export emits. Their bodies are
# subgraphs, checked node by node like the top graph (the JSON walk and the loaded-graph walk recurse).
HIGHER_ORDER: frozenset[str] = frozenset(
    "cond while_loop map_impl scan wrap_with_set_grad_enabled wrap_with_autocast".split()
)

# Python-level call targets in an exported graph: operator.*, symbolic-int helpers, math.*.
PYTHON: frozenset[str] = frozenset(
    ["_operator." + n for n in (
        "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert "
        "lshift rshift matmul truth".split()
    )]
    + ["torch." + n for n in "sym_not sym_float sym_int sym_max sym_min sym_ite sym_sqrt sym_sum _sym_sqrt".split()]
    + ["math." + n for n in "ceil floor trunc sqrt exp log log2 pow fabs isnan isinf".split()]
)

# Overloads of allowed operators that take a Storage (or a file) rather than tensors.
_STORAGE_OVERLOADS: frozenset[str] = frozenset({"source_Storage", "source_Storage_storage_offset"})

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_OPS = re.compile(rf"^torch\.ops\.({_IDENT})\.({_IDENT})(?:\.({_IDENT}))?$")


def allowed(target: str) -> bool:
    """Whether the serialised call target `target` is on the list."""
    if target in PYTHON:
        return True
    match = _OPS.match(target)
    if not match:
        return False
    namespace, name, overload = match.groups()
    if overload in _STORAGE_OVERLOADS:
        return False
    if namespace in ("aten", "prims"):
        return name in ATEN
    if namespace == "higher_order":
        return name in HIGHER_ORDER and overload is None
    return False


def check_target(target: str) -> None:
    """Raise ModelRejected(UNSAFE_OPERATOR) naming `target` unless it is allowed."""
    if not allowed(target):
        raise unsafe(target)


def unsafe(target: str) -> ModelRejected:
    shown = target if len(target) <= 120 else target[:120] + "..."
    return ModelRejected(
        f"the exported program calls {shown!r}, which is not on kernelscope's list of pure tensor operators "
        "(no file, storage or process operator is loaded); nothing was loaded",
        reason="UNSAFE_OPERATOR",
    )


def target_name(target: Any) -> str:
    """The name a loaded FX node's call target serialises to, in the program JSON's spelling."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"torch.ops.{target._qualified_op_name.replace('::', '.')}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"torch.ops.{target.namespace}.{target.name()}"
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None)
    if module in ("_operator", "operator") and getattr(operator, str(name), None) is target:
        return f"_operator.{name}"
    if target is getattr(math, str(name), None):
        return f"math.{name}"
    return f"{module}.{name}" if module and name else repr(target)
