"""Registered architectures: what a weights-only checkpoint (state_dict, safetensors) is loaded into.

A weights-only upload names an architecture; the worker builds that module from code it already
trusts and loads the weights into it, so no code ever comes from the upload. Register more with

    register_architecture("my_net", lambda: MyNet(num_classes=10), input_spec=InputSpec((3, 16, 112, 112)))

`factory` is called lazily (each build), so registering costs no import of the model's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from workers.errors import ModelRejected
from workers.input_spec import InputSpec

Factory = Callable[[], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    factory: Factory
    # What the architecture expects when the upload's header gives no input spec (None: no default).
    input_spec: InputSpec | Callable[[], InputSpec] | None = None

    def default_spec(self) -> InputSpec | None:
        spec = self.input_spec
        return spec() if callable(spec) else spec


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(
    name: str, factory: Factory, input_spec: InputSpec | Callable[[], InputSpec] | None = None
) -> None:
    """Make `name` loadable; a later registration under the same name replaces the earlier one."""
    _REGISTRY[name] = Architecture(name=name, factory=factory, input_spec=input_spec)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """The registered architecture, or FAILED_PRECONDITION listing the known names."""
    if name not in _REGISTRY:
        raise ModelRejected(
            f"unknown architecture {name!r}; registered: {', '.join(names()) or 'none'}",
            reason="UNKNOWN_ARCHITECTURE",
        )
    return _REGISTRY[name]


def build(name: str) -> nn.Module:
    """A fresh module of architecture `name`, in eval mode."""
    module = get_architecture(name).factory()
    return module.eval()


def _c3d_small() -> nn.Module:
    from workers.samples.models import C3DSmall

    return C3DSmall()


def _c3d_small_spec() -> InputSpec:
    from workers.samples.models import INPUT_SPEC

    return INPUT_SPEC


register_architecture("c3d_small", _c3d_small, input_spec=_c3d_small_spec)
