"""The checked-in generated modules must be exactly what `python proto/generate.py` produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_not_stale(tmp_path: Path) -> None:
    fresh = _generator().generate(tmp_path)
    assert fresh, "protoc produced nothing"
    checked_in = ROOT / "proto" / "kernelscope" / "v1"
    fresh_names = {p.name for p in fresh}
    present = {p.name for p in checked_in.glob("*_pb2*.py*")}
    assert fresh_names == present, f"generated set differs: missing {fresh_names - present}, extra {present - fresh_names}"
    stale = [p.name for p in fresh if p.read_bytes() != (checked_in / p.name).read_bytes()]
    assert not stale, f"stale generated modules (run `python proto/generate.py`): {stale}"


def test_every_proto_has_a_module() -> None:
    protos = {p.stem for p in (ROOT / "proto" / "kernelscope" / "v1").glob("*.proto")}
    modules = {p.name[: -len("_pb2.py")] for p in (ROOT / "proto" / "kernelscope" / "v1").glob("*_pb2.py")}
    assert protos == modules
