from __future__ import annotations

import pytest

from kernelscope.v1 import tasks_pb2
from sdk.tasks import to_task, to_tasks


def test_a_name_becomes_a_named_task_with_default_options() -> None:
    task = to_task("tconv_stats")
    assert task.name == "tconv_stats"
    assert task.WhichOneof("options") is None


def test_options_become_typed_messages() -> None:
    task = to_task({"kernel_viz": {"steps": 64, "layers": ["conv1"], "objective": "CHANNEL"}})
    assert task.WhichOneof("options") == "kernel_viz"
    assert task.kernel_viz.steps == 64
    assert list(task.kernel_viz.layers) == ["conv1"]
    assert task.kernel_viz.objective == tasks_pb2.KernelVizOptions.CHANNEL
    assert to_task(("class_filters", {"k": 3})).class_filters.k == 3


def test_an_options_message_names_its_task() -> None:
    task = to_task(tasks_pb2.TConvStatsOptions(fit_conv3d=False))
    assert task.name == "tconv_stats" and task.tconv_stats.HasField("fit_conv3d")


def test_unknown_names_are_left_for_the_service_to_refuse() -> None:
    assert to_task("not_a_task").name == "not_a_task"
    assert [t.name for t in to_tasks(["kernel_viz", "tconv_stats"])] == ["kernel_viz", "tconv_stats"]
    assert len(to_tasks("kernel_viz")) == 1


def test_bad_option_names_fail_early() -> None:
    with pytest.raises(Exception, match="no_such_option"):
        to_task({"kernel_viz": {"no_such_option": 1}})


def test_help_defaults_name_every_option_and_agree_with_the_proto() -> None:
    """OPTION_DEFAULTS (what --help shows) lists exactly each options message's fields, and every default the proto
    documents as "unset means X" is the one shown."""
    import re
    from pathlib import Path

    from sdk.tasks import OPTION_DEFAULTS, OPTIONS_BY_TASK

    for task, cls in OPTIONS_BY_TASK.items():
        assert list(OPTION_DEFAULTS[task]) == list(cls.DESCRIPTOR.fields_by_name), task
    proto = (Path(__file__).resolve().parents[2] / "proto" / "kernelscope" / "v1" / "tasks.proto").read_text()
    messages = {"kernel_viz": "KernelVizOptions", "tconv_stats": "TConvStatsOptions", "class_filters": "ClassFiltersOptions"}
    checked = 0
    for task, message in messages.items():
        body = proto.split(f"message {message} {{", 1)[1].split("\n}", 1)[0]
        for match in re.finditer(r"unset means ([\w.]+?)\.?\s*\n\s*(?:optional |repeated )?[\w.]+ (\w+) =", body, re.I):
            default, field = match.groups()
            assert OPTION_DEFAULTS[task][field].split()[0] == default, (task, field)
            checked += 1
    assert checked >= 10
