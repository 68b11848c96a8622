"""The pure rules behind the bulk commands and the config reload: which workers a word selects,
what a new procguard.toml changes, how a signal is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from procguard.cli.stack import parse_signal
from procguard.config import parse_config
from procguard.errors import UsageError
from procguard.supervisor.reconfig import plan_reload
from procguard.supervisor.selection import is_pattern, select

KNOWN = ["api", "collector", "coll2", "worker"]


@pytest.mark.parametrize(("words", "expected"), [
    (["all"], KNOWN),
    (["coll*"], ["collector", "coll2"]),
    (["worker", "api"], ["api", "worker"]),  # the config's order, whatever the words' order
    (["api", "a*", "all"], KNOWN),  # each worker once
    (["coll?"], ["coll2"]),
    (["[aw]*"], ["api", "worker"]),
])
def test_words_select_workers_in_config_order(words: list[str], expected: list[str]) -> None:
    assert select(words, KNOWN) == expected


@pytest.mark.parametrize(("words", "message"), [
    (["nope"], "unknown worker 'nope' (use one of: api, collector, coll2, worker)"),
    (["api", "zz*"], "no worker matches 'zz*' (use one of: api, collector, coll2, worker)"),
    (["API"], "unknown worker 'API'"),  # names are case-sensitive, patterns too
    (["bad name"], "worker 'bad name' is not a valid name or pattern"),
    (["x" * 300], "is not a valid name or pattern"),
])
def test_a_word_that_selects_nothing_is_one_line_naming_it(words: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        select(words, KNOWN)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_patterns_are_told_from_names() -> None:
    assert [is_pattern(w) for w in ("all", "a*", "w?", "[ab]x", "api", "my-worker_2")] == [
        True, True, True, True, False, False]


def test_a_reload_plan_names_added_removed_changed_and_unchanged(tmp_path: Path) -> None:
    old = parse_config(
        '[project]\nname = "s"\n'
        '[workers.keep]\ncommand = "sleep 1"\n'
        '[workers.chg]\ncommand = "sleep 1"\nmemory_limit = "200MB"\nenv = { TOKEN = "secret1" }\n'
        '[workers.gone]\ncommand = "sleep 1"\n',
        path=tmp_path / "procguard.toml",
    )
    new = parse_config(
        '[project]\nname = "s"\n'
        '[workers.keep]\ncommand = "sleep 1"\n'
        '[workers.chg]\ncommand = "sleep 2"\nmemory_limit = "300MB"\nenv = { TOKEN = "secret2", X = "1" }\n'
        '[workers.new]\ncommand = "sleep 1"\ndepends_on = ["keep"]\n',
        path=tmp_path / "procguard.toml",
    )
    plan = plan_reload(old, new)
    assert plan.added == ["new"] and plan.removed == ["gone"] and plan.unchanged == ["keep"]
    changes = [str(c) for c in plan.changed["chg"]]
    assert "memory_limit 200MB -> 300MB" in changes
    assert "command sleep 1 -> sleep 2" in changes
    env = [c for c in plan.changed["chg"] if c.key == "env"]
    assert env and str(env[0]) == "env set X; changed TOKEN"  # names only: values may be secrets
    assert plan_reload(old, old).empty


@pytest.mark.parametrize(("key", "before", "after"), [
    ("name", '"s"', '"t"'), ("status_port", "0", "45123"), ("status_host", '"127.0.0.1"', '"0.0.0.0"'),
])
def test_a_setting_fixed_while_the_stack_runs_is_refused_by_name(tmp_path: Path, key: str, before: str,
                                                                 after: str) -> None:
    base = '[workers.a]\ncommand = "sleep 1"\n'
    name = "" if key == "name" else 'name = "s"\n'
    old = parse_config(f'[project]\n{name}{key} = {before}\n{base}', path=tmp_path / "procguard.toml")
    new = parse_config(f'[project]\n{name}{key} = {after}\n{base}[workers.b]\ncommand = "x"\n',
                       path=tmp_path / "procguard.toml")
    with pytest.raises(UsageError) as caught:
        plan_reload(old, new)
    assert f"project.{key} changed" in str(caught.value) and "nothing was applied" in str(caught.value)


def test_a_status_port_set_by_flag_may_change_in_the_file(tmp_path: Path) -> None:
    base = '[workers.a]\ncommand = "sleep 1"\n'
    old = parse_config(f'[project]\nname = "s"\nstatus_port = 0\n{base}', path=tmp_path / "p.toml")
    new = parse_config(f'[project]\nname = "s"\nstatus_port = 45124\n{base}', path=tmp_path / "p.toml")
    assert plan_reload(old, new, keep=["status_port"]).unchanged == ["a"]


@pytest.mark.parametrize(("text", "number"), [("HUP", 1), ("SIGHUP", 1), ("hup", 1), ("1", 1),
                                              ("USR1", 10), ("sigterm", 15), ("10", 10)])
def test_signals_are_read_by_name_or_number(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "0", "999", "-1", ""])
def test_a_bad_signal_is_one_line_with_examples(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_signal(text)
    assert "is not a signal (use a name or number such as HUP, SIGUSR1" in str(caught.value)
