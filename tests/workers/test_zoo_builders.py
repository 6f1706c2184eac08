"""The zoo's builders against the real models: at full size (built on the meta device, no memory) each has
the parameter count torchvision and pytorchvideo publish for it and the module names and weight shapes of
their checkpoints; the reduced models keep those names and every conv's kernel and stride, run, and are
deterministic for a seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.samples import zoo
from workers.samples.zoo import c3d, resnet3d, s3d, slowfast, transformers, video_resnet, x3d


def _mvit_v2_s() -> nn.Module:
    """torchvision's mvit_v2_s block table (16 blocks) on the zoo's MViT classes."""
    heads = [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8]
    inputs = [96, 96, 192, 192] + [384] * 11 + [768]
    outputs = [96, 192, 192, 384] + [384] * 10 + [768, 768]
    stride_q = [[1, 1, 1], [1, 2, 2], [1, 1, 1], [1, 2, 2]] + [[1, 1, 1]] * 10 + [[1, 2, 2], [1, 1, 1]]
    stride_kv = [[1, 8, 8], [1, 4, 4], [1, 4, 4]] + [[1, 2, 2]] * 11 + [[1, 1, 1], [1, 1, 1]]
    blocks = [
        transformers.MSBlockConfig(heads[i], inputs[i], outputs[i], [3, 3, 3], [3, 3, 3], stride_q[i], stride_kv[i]) for i in range(16)
    ]
    return transformers.MViT(
        spatial_size=(224, 224), temporal_size=16, block_setting=blocks, residual_pool=True, residual_with_cls_embed=False,
        rel_pos_embed=True, proj_after_attn=True, stochastic_depth_prob=0.2, num_classes=400,
    )


# name: (full-size builder, published parameter count, tolerance, {state_dict key: shape})
FULL = {
    "r3d_18": (lambda: video_resnet.r3d_18(400), 33_371_472, 0, {
        "stem.0.weight": (64, 3, 3, 7, 7), "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1), "layer4.1.conv2.1.running_var": (512,), "fc.weight": (400, 512)}),
    "mc3_18": (lambda: video_resnet.mc3_18(400), 11_695_440, 0, {
        "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3), "layer2.0.conv1.0.weight": (128, 64, 1, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1)}),
    "r2plus1d_18": (lambda: video_resnet.r2plus1d_18(400), 31_505_325, 0, {
        "stem.0.weight": (45, 3, 1, 7, 7), "stem.3.weight": (64, 45, 3, 1, 1),
        "layer1.0.conv1.0.0.weight": (144, 64, 1, 3, 3), "layer1.0.conv1.0.3.weight": (64, 144, 3, 1, 1)}),
    "s3d": (lambda: s3d.S3D(400), 8_320_048, 0, {
        "features.0.0.0.weight": (64, 3, 1, 7, 7), "features.0.1.0.weight": (64, 64, 7, 1, 1),
        "features.5.branch1.1.0.0.weight": (128, 96, 1, 3, 3), "features.15.branch3.1.0.weight": (128, 832, 1, 1, 1),
        "classifier.1.weight": (400, 1024, 1, 1, 1)}),
    "swin3d": (lambda: transformers.swin3d(400, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=(8, 7, 7)), 28_158_070, 0, {
        "patch_embed.proj.weight": (96, 3, 2, 4, 4), "features.0.0.attn.relative_position_bias_table": (15 * 13 * 13, 3),
        "features.0.0.attn.relative_position_index": (392, 392), "features.0.1.mlp.0.weight": (384, 96),
        "features.1.reduction.weight": (192, 384), "head.weight": (400, 768)}),
    "mvit": (_mvit_v2_s, 34_537_744, 0, {
        "conv_proj.weight": (96, 3, 3, 7, 7), "pos_encoding.class_token": (96,), "blocks.0.attn.pool_q.pool.weight": (96, 1, 3, 3, 3),
        "blocks.0.attn.rel_pos_h": (111, 96), "blocks.0.attn.rel_pos_t": (15, 96), "blocks.1.attn.pool_k.norm_act.0.weight": (96,),
        "blocks.1.project.weight": (192, 96), "head.1.weight": (400, 768)}),
    "x3d": (lambda: x3d.create_x3d(input_clip_length=13, input_crop_size=160), 3_790_000, 5_000, {
        "blocks.0.conv.conv_t.weight": (24, 3, 1, 3, 3), "blocks.0.conv.conv_xy.weight": (24, 1, 5, 1, 1),
        "blocks.1.res_blocks.0.branch2.conv_b.weight": (54, 1, 3, 3, 3), "blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight": (8, 54, 1, 1, 1),
        "blocks.5.pool.pre_conv.weight": (432, 192, 1, 1, 1), "blocks.5.pool.post_conv.weight": (2048, 432, 1, 1, 1), "blocks.5.proj.weight": (400, 2048)}),
    "slow_r50": (lambda: resnet3d.slow_r50(400), 32_450_000, 5_000, {
        "blocks.0.conv.weight": (64, 3, 1, 7, 7), "blocks.1.res_blocks.0.branch1_conv.weight": (256, 64, 1, 1, 1),
        "blocks.1.res_blocks.0.branch2.conv_a.weight": (64, 64, 1, 1, 1), "blocks.3.res_blocks.0.branch2.conv_a.weight": (256, 512, 3, 1, 1),
        "blocks.5.proj.weight": (400, 2048)}),
    "i3d_r50": (lambda: resnet3d.i3d_r50(400), 28_040_000, 5_000, {
        "blocks.0.conv.weight": (64, 3, 5, 7, 7), "blocks.3.res_blocks.0.branch2.conv_a.weight": (128, 256, 3, 1, 1),
        "blocks.3.res_blocks.1.branch2.conv_a.weight": (128, 512, 1, 1, 1), "blocks.6.proj.weight": (400, 2048)}),
    "csn_r50": (lambda: resnet3d.create_csn(stage_depths=(3, 4, 23, 3)), 22_210_000, 5_000, {
        "blocks.0.conv.weight": (64, 3, 3, 7, 7), "blocks.1.res_blocks.0.branch2.conv_b.weight": (64, 1, 3, 3, 3),
        "blocks.4.res_blocks.2.branch2.conv_c.weight": (2048, 512, 1, 1, 1), "blocks.5.proj.weight": (400, 2048)}),
    "slowfast_r50": (lambda: slowfast.slowfast_r50(400), 34_570_000, 5_000, {
        "blocks.0.multipathway_blocks.0.conv.weight": (64, 3, 1, 7, 7), "blocks.0.multipathway_blocks.1.conv.weight": (8, 3, 5, 7, 7),
        "blocks.0.multipathway_fusion.conv_fast_to_slow.weight": (16, 8, 7, 1, 1),
        "blocks.1.multipathway_blocks.0.res_blocks.0.branch1_conv.weight": (256, 80, 1, 1, 1),
        "blocks.4.multipathway_blocks.1.res_blocks.2.branch2.conv_c.weight": (256, 64, 1, 1, 1), "blocks.6.proj.weight": (400, 2304)}),
    # C3D publishes no count for this port; 79,991,015 is the sum of its layers for 487 Sports-1M classes.
    "c3d": (lambda: c3d.C3D(487), 79_991_015, 0, {
        "conv1.weight": (64, 3, 3, 3, 3), "conv3b.weight": (256, 256, 3, 3, 3), "fc6.weight": (4096, 8192), "fc8.weight": (487, 4096)}),
}


def _full(name: str) -> nn.Module:
    with torch.device("meta"):
        return FULL[name][0]()


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_matches_the_published_model(name: str) -> None:
    _, published, tolerance, keys = FULL[name]
    model = _full(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) <= tolerance, f"{name}: {count:,} parameters, the real model has {published:,}"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in keys.items():
        assert shapes.get(key) == shape, f"{name}: {key} is {shapes.get(key)}, expected {shape}"


def test_every_architecture_has_a_full_size_reference() -> None:
    assert sorted(FULL) == sorted(zoo.names())


def _convs(model: nn.Module) -> dict[str, tuple]:
    return {n: (m.kernel_size, m.stride, m.groups == m.in_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv3d)}


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "c3d"])
def test_reduced_models_keep_every_layer_kernel_and_stride(name: str) -> None:
    """Reduced in width only: the same module tree, kernels, strides and depthwise convs as the real model."""
    full, small = _full(name), zoo.build(name)
    assert [n for n, _ in full.named_modules()] == [n for n, _ in small.named_modules()]
    assert _convs(full) == _convs(small)


@pytest.mark.parametrize("name", ["x3d", "slow_r50", "i3d_r50", "csn_r50", "slowfast_r50", "swin3d", "mvit"])
def test_reduced_in_depth_too_the_names_are_a_subset(name: str) -> None:
    full_names = {n for n, _ in _full(name).named_modules()}
    small = zoo.build(name)
    assert {n for n, _ in small.named_modules()} <= full_names
    full_convs = _convs(_full(name))
    for layer, (kernel, _stride, depthwise) in _convs(small).items():
        assert (full_convs[layer][0], full_convs[layer][2]) == (kernel, depthwise), layer


@pytest.mark.parametrize("name", zoo.names())
def test_reduced_models_run_with_400_classes_and_are_seeded(name: str) -> None:
    entry = zoo.ZOO[name]
    x = zoo.example(name, 2)
    assert x.shape == (2, *entry.input_shape)
    small = zoo.build(name)
    with torch.no_grad():
        out = small(x)
        again = zoo.build(name)(x)
        other = zoo.build(name, seed=1)(x)
        wide = zoo.build(name, num_classes=400)(x)
    assert out.shape == (2, zoo.DEFAULT_CLASSES) and wide.shape == (2, 400)
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.isfinite(out).all()
    modules = dict(small.named_modules())
    assert isinstance(modules[entry.stem], nn.Conv3d) and isinstance(modules[entry.head], (nn.Linear, nn.Conv3d))
    assert sum(p.numel() for p in small.parameters()) < 1_000_000


def test_torchvision_conv_classes_subclass_conv3d_and_x3d_ends_in_softmax() -> None:
    """The traps of the real models: describe must not match class names, class_filters must not take
    probabilities for logits."""
    r3d, mc3 = zoo.build("r3d_18"), zoo.build("mc3_18")
    assert type(dict(r3d.named_modules())["layer1.0.conv1.0"]) is video_resnet.Conv3DSimple
    assert type(dict(mc3.named_modules())["layer2.0.conv1.0"]) is video_resnet.Conv3DNoTemporal
    assert type(dict(zoo.build("r2plus1d_18").named_modules())["layer1.0.conv1.0"]) is video_resnet.Conv2Plus1D
    with torch.no_grad():
        probabilities = zoo.build("x3d")(zoo.example("x3d", 3))
    torch.testing.assert_close(probabilities.sum(1), torch.ones(3))
