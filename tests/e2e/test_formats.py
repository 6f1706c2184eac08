"""Every accepted format through the service: upload, describe, an activation task and a weight task.
Hostile and broken files through the service: a clear error with the right status, and the worker keeps
serving the next job."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import sdk

SPEC = {"mean": [0.5] * 3, "std": [0.25] * 3}
ACTIVATION = {"kernel_viz": {"layers": ["conv1"], "channels": [0, 1], "steps": 8, "seed": 0}}
WEIGHT = {"tconv_stats": {"layers": ["conv1"], "restarts": 0, "fit_steps": 10}}


def Net() -> nn.Sequential:  # noqa: N802 - reads as the model's name
    """A plain nn.Sequential, so that TorchScript keeps a module tree the worker can hook."""
    from collections import OrderedDict

    torch.manual_seed(0)
    layers = [("conv1", nn.Conv3d(3, 4, 3, padding=1)), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool3d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(4, 3))]
    return nn.Sequential(OrderedDict(layers))


EXAMPLE = torch.zeros(1, 3, 4, 12, 12)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from workers.samples.models import C3DSmall

    root = tmp_path_factory.mktemp("formats")
    net = Net().eval()
    out = {"pt2": root / "net.pt2", "onnx": root / "net.onnx", "torchscript": root / "net.pt"}
    torch.export.save(torch.export.export(net, (EXAMPLE,)), out["pt2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (EXAMPLE,), str(out["onnx"]), dynamo=False, input_names=["x"])
        torch.jit.script(net).save(str(out["torchscript"]))
        # PyTorch's default ONNX export (dynamo): the weights go to a data file beside the model, net.onnx.data
        (root / "dynamo").mkdir()
        out["onnx_external_data"] = root / "dynamo" / "net.onnx"
        torch.onnx.export(net, (EXAMPLE,), str(out["onnx_external_data"]))
    c3d = C3DSmall().eval()
    out["state_dict"] = root / "c3d_state.pt"
    torch.save(c3d.state_dict(), out["state_dict"])
    from safetensors.torch import save_file

    out["safetensors"] = root / "c3d.safetensors"
    save_file({k: v.contiguous() for k, v in c3d.state_dict().items()}, out["safetensors"])
    return out


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "onnx_external_data"])
def test_runnable_formats_describe_and_run_both_kinds_of_task(client: sdk.Client, files: dict[str, Path], fmt: str) -> None:
    spec = dict(SPEC, shape=list(EXAMPLE.shape[1:]))
    model = client.upload_model(files[fmt], input_spec=spec)
    description = client.describe(model.id)
    kinds = {layer.name: layer.kind for layer in description.layers}
    assert kinds.get("conv1") == "Conv3d", kinds
    assert {"kernel_viz", "tconv_stats"} <= set(description.supported_tasks)
    result = client.analyze(model.id, tasks=[ACTIVATION, WEIGHT], progress=False, timeout=240)
    viz = result["kernel_viz"]["layers"][0]
    assert viz["name"] == "conv1" and [c["index"] for c in viz["channels"]] == [0, 1]
    assert result["tconv_stats"]
    assert any(a.name.endswith(".png") for a in result.artifacts)


def test_torchscript_is_refused_by_default_and_the_user_is_told_how_to_export(client: sdk.Client, files: dict[str, Path]) -> None:
    """TorchScript is code: a worker without KERNELSCOPE_ALLOW_TORCHSCRIPT=1 refuses it, and the SDK shows why."""
    model = client.upload_model(files["torchscript"], input_spec=dict(SPEC, shape=list(EXAMPLE.shape[1:])))
    with pytest.raises(sdk.FailedPrecondition, match="torch.export.export") as err:
        client.describe(model.id)
    assert "KERNELSCOPE_ALLOW_TORCHSCRIPT" in str(err.value)


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_weights_only_checkpoints(client: sdk.Client, files: dict[str, Path], fmt: str) -> None:
    bare = client.upload_model(files[fmt], name=f"bare-{fmt}")
    assert client.analyze(bare.id, tasks=[WEIGHT], progress=False, timeout=240)["tconv_stats"]
    with pytest.raises(sdk.FailedPrecondition, match="(?i)runnable|weights|activations"):
        client.analyze(bare.id, tasks=[ACTIVATION], progress=False)
    # the same weights in a registered architecture run every task
    with_arch = client.upload_model(files[fmt].read_bytes(), format=fmt, architecture="c3d_small", name=f"arch-{fmt}")
    assert with_arch.id == bare.id or with_arch.architecture == "c3d_small"


def _canary_pickle(path: Path) -> bytes:
    class Canary:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, (f"open({str(path)!r}, 'w').write('pwned')",))

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1), "payload": Canary()}, buffer)
    return buffer.getvalue()


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}))
        z.writestr("archive/data/0", b"\0" * (64 << 20))
    return buffer.getvalue()


def _unsupported_op() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Det", ["x"], ["y"], name="the_det")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _escaping_bundle(files: dict[str, Path]) -> bytes:
    """An ONNX bundle whose weights point at ../../etc/passwd instead of its own data file."""
    from kernelscope import formats

    pair = files["onnx_external_data"]
    model = pair.read_bytes()
    assert b"net.onnx.data" in model
    buffer = io.BytesIO()
    formats.onnx_bundle(buffer, "net.onnx", model.replace(b"\x12\x0dnet.onnx.data", b"\x12\x0d../etc/passwd"),
                        {"net.onnx.data": (pair.parent / "net.onnx.data").read_bytes()})
    return buffer.getvalue()


def _from_file_pt2(tmp_path: Path, victim: Path) -> bytes:
    """A .pt2 whose graph maps `victim` with aten.from_file(shared=True) and fills it: an in-place overwrite."""
    import json

    class Zeros(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.zeros(4, dtype=torch.uint8)
            t.fill_(65)
            return x + t.float().sum()

    clean = tmp_path / "zeros.pt2"
    torch.export.save(torch.export.export(Zeros(), (torch.zeros(1, 2),)), clean)
    buffer = io.BytesIO()
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".json") and "/models/" in info.filename:
                program = json.loads(data)
                node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.zeros.default")
                node["target"] = "torch.ops.aten.from_file.default"
                node["inputs"] = [
                    {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
                    {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                    {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                    {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
                ]
                data = json.dumps(program).encode()
            zout.writestr(info.filename, data)
    return buffer.getvalue()


def test_hostile_and_broken_models_fail_cleanly_and_the_worker_keeps_serving(
    client: sdk.Client, files: dict[str, Path], tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"secret, do not touch")
    cases = {
        "aten.from_file": (_from_file_pt2(tmp_path, victim), "pt2", {"UNSAFE_OPERATOR"}),
        "canary pickle": (_canary_pickle(canary), "state_dict", {"PICKLED_MODULE", "UNSAFE_PICKLE", "MODEL_REJECTED"}),
        "zip bomb": (_zip_bomb(), "state_dict", {"ARCHIVE_UNSAFE"}),
        "truncated pt2": (files["pt2"].read_bytes()[:2000], "pt2", {"TRUNCATED", "ARCHIVE_UNSAFE", "WRONG_FORMAT"}),
        "unsupported op": (_unsupported_op(), "onnx", {"UNSUPPORTED_OP"}),
        "external data outside the upload": (_escaping_bundle(files), "onnx", {"EXTERNAL_DATA_OUTSIDE_UPLOAD"}),
    }
    for label, (data, fmt, reasons) in cases.items():
        try:
            model = client.upload_model(data, format=fmt, name=label)
        except sdk.InvalidArgument as refused:  # refused at the door is fine too, if it says why
            assert refused.reason, label
            continue
        with pytest.raises(sdk.JobFailed) as failed:
            client.analyze(model.id, tasks=[WEIGHT], progress=False, timeout=120)
        assert failed.value.code == "FAILED_PRECONDITION", (label, failed.value)
        assert failed.value.reason in reasons, (label, failed.value.reason, str(failed.value))
    assert not canary.exists(), "the canary pickle ran"
    assert victim.read_bytes() == b"secret, do not touch"
    healthy = client.analyze(files["pt2"], tasks=[WEIGHT], input_spec=SPEC, progress=False, timeout=120)
    assert healthy.ok


def test_a_file_with_the_wrong_format_is_refused_at_upload(client: sdk.Client, files: dict[str, Path]) -> None:
    onnx_bytes = files["onnx"].read_bytes()
    with pytest.raises(sdk.InvalidArgument) as refused:  # fresh bytes: not deduplicated against the real upload
        client.upload_model(onnx_bytes + b"\0" * 7, format="pt2", name="net.pt2")
    assert refused.value.reason == "WRONG_FORMAT"


def test_the_default_onnx_export_goes_up_with_its_data_file(client: sdk.Client, stack, files: dict[str, Path], tmp_path: Path) -> None:  # noqa: ANN001
    """The SDK and the CLI send net.onnx and net.onnx.data together; without the data file the SDK says so."""
    import subprocess
    import sys

    pair = files["onnx_external_data"]
    model = client.upload_model(pair, input_spec=SPEC)
    assert model.format == sdk_format("ONNX") and model.name == "net.onnx"
    described = subprocess.run(
        [sys.executable, "-m", "sdk.cli", "--target", stack.target, "describe", str(pair)], capture_output=True, text=True, timeout=240
    )
    assert described.returncode == 0, described.stderr
    assert "conv1" in described.stdout and "Conv3d" in described.stdout
    lonely = tmp_path / "net.onnx"
    lonely.write_bytes(pair.read_bytes())
    with pytest.raises(sdk.ModelSourceError, match=r"net\.onnx\.data.*must be uploaded with the model"):
        client.upload_model(lonely)


def sdk_format(name: str) -> int:
    from kernelscope.v1 import models_pb2

    return models_pb2.ModelFormat.Value(name)
