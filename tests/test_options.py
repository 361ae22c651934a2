"""Every ``metakit train`` option is declared once, as a ``TrainConfig`` field: the README's option
table, ``metakit train --help`` and the command line's value checks all follow the fields."""

import re
from pathlib import Path

import click
import pytest
from test_cli import invoke, snapshot

from metakit.cli import train
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.training.config import FAMILY_OPTIONS, OPTIONS, choices_of, flag, value_type

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND_OPTIONS = ("--out", "--force", "--resume", "--from", "--quiet")
"""``metakit train`` options that are not training options (no ``TrainConfig`` field)."""
FLAGS = {flag(name): name for name in OPTIONS}
PLAIN_TYPES = (click.types.IntParamType, click.types.FloatParamType, click.types.StringParamType)
METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def option_table() -> list:
    """``[(flags, default cell)]`` for each row of the README's ``metakit train`` option table."""
    section = README.read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n| option | default | meaning |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, line
        rows.append((re.findall(r"`(--[a-z][\w-]*)", cells[0]), cells[1]))
    return rows


def readme_default(name: str) -> str:
    """How the README shows the default of a field without a family default (backticks dropped)."""
    declared = OPTIONS[name]
    if declared.default is None:
        return declared.metadata["default_text"]
    if isinstance(declared.default, bool):
        return "on" if declared.default else "off"
    return str(declared.default)


def test_readme_table_has_a_row_for_every_option_and_none_other():
    rows = option_table()
    listed = [option for flags, _ in rows for option in flags]
    assert all(flags for flags, _ in rows), rows
    assert len(listed) == len(set(listed)), f"a flag in two rows: {listed}"
    assert set(FLAGS) <= set(listed), f"missing from the README: {sorted(set(FLAGS) - set(listed))}"
    assert set(listed) <= set(FLAGS) | set(COMMAND_OPTIONS), sorted(set(listed) - set(FLAGS))


def test_readme_defaults_agree_with_the_fields():
    protocol = FAMILIES.get("sinusoid").protocol  # the README shows sinusoid's values
    for flags, cell in option_table():
        if not set(flags) & set(FLAGS):
            continue  # --out, --force, --quiet
        defaults = cell.split(", ") if len(flags) > 1 else [cell]
        assert len(defaults) == len(flags) and set(flags) <= set(FLAGS), (flags, cell)
        for option, shown in zip(flags, defaults):
            name = FLAGS[option]
            if OPTIONS[name].metadata["family_default"]:
                assert shown.startswith("*family*"), (option, shown)
                value = re.fullmatch(r"\*family\*: (.+)", shown)
                assert value is None or value.group(1) == str(protocol[name]), (option, shown)
            else:
                assert shown.replace("`", "") == readme_default(name), (option, shown)


def test_help_shows_each_generated_option_with_its_choices():
    result = invoke("train", "--help", terminal_width=1000)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for option, name in FLAGS.items():
        meta, kind = OPTIONS[name].metadata, value_type(name)
        if kind is bool:
            assert f"{option} / --no-{option[2:]} " in text
        elif choices_of(name):
            assert f"{option} [{'|'.join(choices_of(name))}] " in text
        else:
            assert f"{option} {METAVARS[kind]} " in text
        assert meta["help"] in text, option
        if meta["family_default"]:
            assert f"{meta['help']} [default: the task family's protocol" in text, option
        if meta["minimum"] is not None:
            low, high = meta["minimum"], meta["maximum"]
            bounds = f"x>={low}" if high is None else f"{low}<=x<={high}"
            assert f"{meta['help']} [default: " in text and f"; {bounds}]" in text, option


def test_click_parses_and_the_config_checks():
    params = {param.name: param for param in train.params}
    assert {p.opts[0] for p in params.values()} == {flag(name) for name in OPTIONS} | set(COMMAND_OPTIONS)
    for name in OPTIONS:
        param = params[name]
        assert param.opts == [flag(name)] and param.default == OPTIONS[name].default, name
        if value_type(name) is bool:
            assert param.secondary_opts == [f"--no-{flag(name)[2:]}"], name
        else:
            assert type(param.type) in PLAIN_TYPES, f"{name}: {param.type!r} checks; leave it to TrainConfig"


def bad_values():
    """``(option, value, expected message)`` for each minimum, maximum and set of choices of a field."""
    cases = []
    for name, declared in OPTIONS.items():
        minimum = declared.metadata["minimum"]
        if minimum is not None:
            cases.append((name, minimum - 1, f"{flag(name)} must be at least {minimum}, got {minimum - 1}"))
        maximum = declared.metadata["maximum"]
        if maximum is not None:
            cases.append((name, maximum + 1, f"{flag(name)} must be at most {maximum}, got {maximum + 1}"))
        if declared.metadata["choices"] is not None:
            cases.append((name, "nope", f"'nope'; choose from {', '.join(choices_of(name))}"))
    return cases


BAD_VALUES = bad_values()


@pytest.mark.parametrize("name, value, message", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_a_value_below_its_minimum_or_outside_its_choices_is_a_one_line_usage_error(
    tmp_path, monkeypatch, name, value, message
):
    monkeypatch.chdir(tmp_path)
    args = [flag(name), value]
    if name in FAMILY_OPTIONS:  # a family that takes the option, so that its value is what is wrong
        args += ["--task", next(task for task in FAMILIES.names() if name in FAMILIES.get(task).options)]
    result = invoke("train", "--iterations", 1, "--quiet", "--out", "new", *args)  # a tiny run if accepted
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("Error: ")
    assert message in result.stderr, result.stderr
    assert snapshot(tmp_path) == {}, "nothing may be written"
