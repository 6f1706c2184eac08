"""The task catalogue (kernelscope.catalogue) is read from tasks.proto's Task oneof, and every layer that keeps
a registry of its own per task covers exactly the catalogue's tasks. A task added to the proto without its
TaskInfo, or without one of the files the README's "Adding a task" list names (for the workers, the module
workers/analyses/<name>.py), fails here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from kernelscope import catalogue
from kernelscope.v1 import tasks_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_the_catalogue_is_the_task_oneof_with_its_task_info() -> None:
    fields = tasks_pb2.Task.DESCRIPTOR.oneofs_by_name["options"].fields
    assert catalogue.NAMES == tuple(f.name for f in fields)
    for field in fields:
        entry = catalogue.TASKS[field.name]
        assert field.GetOptions().HasExtension(tasks_pb2.task), f"Task.{field.name} has no (task) option"
        assert entry.options.DESCRIPTOR is field.message_type
        assert entry.title and entry.schema_version >= 1
    # Each oneof field in the .proto source carries the option (the import would fail otherwise, but say where).
    source = (ROOT / "proto" / "kernelscope" / "v1" / "tasks.proto").read_text()
    oneof = re.search(r"oneof options \{(.*?)\n  \}", source, re.S)
    assert oneof is not None
    declared = re.findall(r"^\s+\w+ (\w+) = \d+ \[\(task\) = \{", oneof.group(1), re.M)
    assert tuple(declared) == catalogue.NAMES


def test_the_service_reads_the_catalogue() -> None:
    from service import tasks

    assert tasks.TASK_NAMES == catalogue.NAMES
    assert tasks.NEEDS_DATASET == catalogue.NEEDS_DATASET == {"class_filters"}
    assert tasks.NEEDS_RUNNABLE_MODEL == catalogue.NEEDS_MODULE == {"kernel_viz", "class_filters"}


def test_the_workers_implement_every_task_and_no_other() -> None:
    from workers import tasks
    from workers.analysis import Analysis
    from workers.options import TaskOptions

    assert tasks.NAMES == catalogue.NAMES
    implemented = {path.stem for path in (ROOT / "workers" / "analyses").glob("*.py") if path.stem != "__init__"}
    assert implemented == set(catalogue.NAMES), "workers/analyses/ needs one module per catalogue task, named as the task"
    for name in catalogue.NAMES:
        analysis = tasks.get(name)
        assert isinstance(analysis, Analysis) and analysis.name == name
        assert issubclass(analysis.options, TaskOptions)
        # The typed options are the proto message's fields: a field the worker did not read would be lost.
        fields = {f.name for f in catalogue.TASKS[name].options.DESCRIPTOR.fields}
        assert {f.name for f in dataclasses.fields(analysis.options)} == fields, name


def test_the_sdk_has_a_plugin_for_every_task_and_no_other() -> None:
    from sdk import plugins

    assert tuple(plugins.PLUGINS) == catalogue.NAMES, "every catalogue task needs sdk/plugins/<name>.py"
    for name, plugin in plugins.PLUGINS.items():
        assert plugin.name == name
        assert (ROOT / "sdk" / "plugins" / f"{name}.py").is_file(), f"the {name} plugin is not in sdk/plugins/{name}.py"


def test_a_task_without_its_plugin_module_is_named_with_the_file_to_write() -> None:
    from sdk import plugins

    with pytest.raises(RuntimeError, match=r"task 'no_such_task' of tasks.proto has no SDK plugin: write sdk/plugins/no_such_task.py"):
        plugins._load("no_such_task")


@pytest.mark.parametrize("name", catalogue.NAMES)
def test_the_sdk_has_a_schema_and_options_for_every_task(name: str) -> None:
    from sdk import plugins, schemas, tasks

    entry = catalogue.TASKS[name]
    assert schemas.VERSIONS[name] == entry.schema_version
    assert schemas.load(name)["$id"].endswith(f"/{name}/v{entry.schema_version}.json")
    assert tasks.OPTIONS_BY_TASK[name] is entry.options
    assert tasks.OPTION_DEFAULTS[name] == dict(plugins.get(name).option_defaults)
    if entry.analysis:
        assert set(tasks.OPTION_DEFAULTS[name]) <= {f.name for f in entry.options.DESCRIPTOR.fields}


@pytest.mark.parametrize("name", catalogue.NAMES)
def test_what_help_shows_for_an_unset_option_is_what_the_worker_uses(name: str) -> None:
    # The defaults stand in the worker's TaskOptions (what runs) and in the SDK plugin (what --help shows; the SDK
    # cannot import the worker): every value the help names must be the worker's.
    from sdk import plugins
    from workers import tasks

    shown = plugins.get(name).option_defaults
    for field in dataclasses.fields(tasks.get(name).options):
        if field.default in ((), ""):  # "every convolution layer" and the like: no value to compare
            continue
        expected = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
        assert shown[field.name].split()[0] == expected, (name, field.name)


@pytest.mark.parametrize("name", catalogue.ANALYSES)
def test_every_analysis_has_its_report_section_findings_and_gate_metrics(name: str) -> None:
    from sdk import metrics, plugins, report

    plugin = plugins.get(name)
    assert report.TASK_TITLES[name] == catalogue.TASKS[name].title
    assert plugin.section is not None and plugin.verdicts is not None, f"the {name} plugin has no report section or verdicts"
    assert plugin.figures is not None and plugin.lines is not None, f"the {name} plugin has no findings"
    assert plugin.metrics and all(m.task == name for m in plugin.metrics)
    assert metrics.names(name) == [m.name for m in plugin.metrics], f"no gate metric reads {name}"


def test_the_readme_lists_the_files_a_new_task_touches() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Adding a task", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"`([\w/.<>-]+)`", section)
    for path in ("proto/kernelscope/v1/tasks.proto", "workers/analyses/<name>.py", "sdk/schemas/<name>.v1.json", "sdk/plugins/<name>.py"):
        assert path in listed, f"README's 'Adding a task' does not list {path}"
    # These read the catalogue, the analyses and the plugins now: a new task does not touch them.
    for path in ("workers/tasks.py", "sdk/tasks.py", "sdk/report.py", "sdk/findings.py", "sdk/metrics.py"):
        assert path not in listed, f"README's 'Adding a task' still lists {path}"
    for name in catalogue.NAMES:  # and each listed file does hold every task today
        assert f"{name} = " in (ROOT / "proto/kernelscope/v1/tasks.proto").read_text(), f"tasks.proto has no Task.{name}"
        assert (ROOT / "workers" / "analyses" / f"{name}.py").is_file(), f"workers/analyses/{name}.py is missing"
        assert (ROOT / "sdk" / "schemas" / f"{name}.v1.json").is_file(), f"sdk/schemas/{name}.v1.json is missing"
        assert (ROOT / "sdk" / "plugins" / f"{name}.py").is_file(), f"sdk/plugins/{name}.py is missing"
