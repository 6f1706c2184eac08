"""A zoo of the video architectures users bring, for tests: faithful layer structure, module names and op
patterns of torchvision's and pytorchvideo's models (and C3D), reduced so CI can export and analyse them.

No torchvision or pytorchvideo: each family is rebuilt in its own module from the reference source
(video_resnet, s3d, x3d, resnet3d, slowfast, c3d, transformers). `build(name)` is deterministic for a seed:
weights are drawn under that seed, every BatchNorm gets random affine parameters and running statistics
measured on random clips (so the exported graphs carry real, non-identity normalisation to fold, and the
activations stay in range however deep the random network is), and the model is returned in eval mode.

`ZOO[name]` says what each model mirrors, its input shape and normalisation, and three module paths the
tests address by name: `stem` (the first conv), `middle` (a layer in the body; a conv except in Swin3D)
and `head` (the classifier). `planted` plants known answers in a model; `export` writes the four exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workers.input_spec import InputSpec
from workers.samples.zoo import c3d, resnet3d, s3d, slowfast, transformers, video_resnet, x3d

TORCHVISION_MEAN = (0.43216, 0.394666, 0.37645)
TORCHVISION_STD = (0.22803, 0.22145, 0.216989)
PYTORCHVIDEO_MEAN = (0.45, 0.45, 0.45)
PYTORCHVIDEO_STD = (0.225, 0.225, 0.225)
DEFAULT_CLASSES = 4
CALIBRATION_CLIPS = 8  # random clips whose statistics become every BatchNorm's running mean and variance


@dataclass(frozen=True)
class ZooModel:
    """One architecture: `make(num_classes)` builds it reduced; `stem`, `middle`, `head` are module paths."""

    name: str
    reference: str
    make: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int, int]
    stem: str
    middle: str
    head: str
    mean: tuple[float, ...] = TORCHVISION_MEAN
    std: tuple[float, ...] = TORCHVISION_STD
    head_norm: str = ""  # a LayerNorm whose output (signed) the head pools, where there is one

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(shape=self.input_shape, value_min=0.0, value_max=1.0, mean=self.mean, std=self.std)

    @property
    def header(self) -> dict[str, object]:
        """The upload header's input_spec (proto field names) a user would send with this model."""
        return {"value_min": 0.0, "value_max": 1.0, "mean": list(self.mean), "std": list(self.std)}


_SMALL = (3, 8, 32, 32)
_PV = {"mean": PYTORCHVIDEO_MEAN, "std": PYTORCHVIDEO_STD}

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("r3d_18", "torchvision.models.video.r3d_18", lambda n: video_resnet.r3d_18(n, width=8), _SMALL,
                 stem="stem.0", middle="layer1.0.conv1.0", head="fc"),
        ZooModel("mc3_18", "torchvision.models.video.mc3_18", lambda n: video_resnet.mc3_18(n, width=8), _SMALL,
                 stem="stem.0", middle="layer2.0.conv1.0", head="fc"),
        ZooModel("r2plus1d_18", "torchvision.models.video.r2plus1d_18", lambda n: video_resnet.r2plus1d_18(n, width=8), _SMALL,
                 stem="stem.0", middle="layer1.0.conv1.0.0", head="fc"),
        ZooModel("s3d", "torchvision.models.video.s3d", lambda n: s3d.s3d(n, div=8), (3, 16, 32, 32),
                 stem="features.0.0.0", middle="features.5.branch1.1.0.0", head="classifier.1"),
        ZooModel("x3d", "pytorchvideo.models.x3d.create_x3d (x3d_xs/x3d_s)", lambda n: x3d.x3d(n), _SMALL,
                 stem="blocks.0.conv.conv_t", middle="blocks.2.res_blocks.0.branch2.conv_b", head="blocks.5.proj", **_PV),
        ZooModel("slow_r50", "pytorchvideo.models.hub.slow_r50",
                 lambda n: resnet3d.slow_r50(n, stem_dim_out=8, stage_depths=(1, 2, 2, 1), head_pool_kernel_size=(8, 1, 1)), _SMALL,
                 stem="blocks.0.conv", middle="blocks.3.res_blocks.0.branch2.conv_a", head="blocks.5.proj", **_PV),
        ZooModel("i3d_r50", "pytorchvideo.models.hub.i3d_r50",
                 lambda n: resnet3d.i3d_r50(n, stem_dim_out=4, stage_depths=(1, 2, 2, 1), head_pool_kernel_size=(4, 1, 1)), _SMALL,
                 stem="blocks.0.conv", middle="blocks.3.res_blocks.0.branch2.conv_a", head="blocks.6.proj", **_PV),
        ZooModel("csn_r50", "pytorchvideo.models.csn.create_csn",
                 lambda n: resnet3d.csn_r50(n, stem_dim_out=8, stage_depths=(1, 2, 2, 1), head_pool_kernel_size=(1, 2, 2)), _SMALL,
                 stem="blocks.0.conv", middle="blocks.1.res_blocks.0.branch2.conv_b", head="blocks.5.proj", **_PV),
        ZooModel("slowfast_r50", "pytorchvideo.models.hub.slowfast_r50",
                 lambda n: slowfast.slowfast_r50(n, stem_dim_out=16, stage_depths=(1, 1, 1, 1), head_pool_kernel_sizes=((2, 1, 1), (8, 1, 1))),
                 _SMALL, stem="blocks.0.multipathway_blocks.1.conv", middle="blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_b",
                 head="blocks.6.proj", **_PV),
        ZooModel("c3d", "C3D (jfzhang95/pytorch-video-recognition C3D_model)", lambda n: c3d.c3d(n, div=8), (3, 16, 32, 32),
                 stem="conv1", middle="conv3a", head="fc8"),
        ZooModel("swin3d", "torchvision.models.video.swin3d_t", lambda n: transformers.swin3d(n), _SMALL,
                 stem="patch_embed.proj", middle="features.0.1.attn.qkv", head="head", head_norm="norm"),
        ZooModel("mvit", "torchvision.models.video.mvit_v2_s", lambda n: transformers.mvit_v2(n), _SMALL,
                 stem="conv_proj", middle="blocks.1.attn.pool_q.pool", head="head.1", head_norm="norm", **_PV),
    ]
}


def names() -> list[str]:
    return list(ZOO)


def build(name: str, num_classes: int = DEFAULT_CLASSES, seed: int = 0) -> nn.Module:
    """The reduced `name` with `num_classes` outputs, its weights and BatchNorm statistics fixed by `seed`, in eval mode."""
    entry = ZOO[name]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.make(num_classes)
        calibrate_norms(model, entry.input_spec, generator)
    return model.eval()


def example(name: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    """n normalised random clips (n, *input shape) for `name`."""
    spec = ZOO[name].input_spec
    return spec.normalize(spec.random(n, torch.Generator().manual_seed(seed)))


@torch.no_grad()
def calibrate_norms(model: nn.Module, spec: InputSpec, generator: torch.Generator) -> None:
    """Random BatchNorm affine parameters, and running statistics measured on random clips (train-mode passes)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=generator))
        bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=generator))
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(2):
        model(spec.normalize(spec.random(CALIBRATION_CLIPS // 2, generator)))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
