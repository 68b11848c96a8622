"""The rules of copies (``instances = N``), pure: names, addresses, ports, counts, scale plans,
the supervisor's marker pattern, the stale sweep's names and the merged logs of copies."""

from __future__ import annotations

import subprocess

import pytest

from procguard.config import parse_config, port_clash
from procguard.copies import Address, copy_environment, copy_name, copy_port, parse_address, parse_count
from procguard.errors import ConfigError, UsageError
from procguard.instances.marker import MARKER_ENV, new_marker, new_run, run_pattern
from procguard.supervisor.scale import ScalePlan, plan_scale
from procguard.supervisor.startup import stack_instance_names

NS = "0123abcd"


def test_addresses() -> None:
    assert parse_address("api") == Address("api")
    assert parse_address("api:2") == Address("api", 2)
    assert str(parse_address("api:64")) == "api:64"
    for bad in ("api:0", "api:65", "api:x", "api:", ":2", "api:1:2"):
        with pytest.raises(UsageError, match="is not a worker or a copy of one"):
            parse_address(bad)


def test_names_ports_and_environment() -> None:
    assert copy_name("api", 1, plain_first=True) == "api"  # a worker declared with one copy keeps its name
    assert copy_name("api", 2, plain_first=True) == "api:2"  # a copy `scale` added to it
    assert copy_name("api", 1, plain_first=False) == "api:1"
    assert [copy_port(9000, k) for k in (1, 2, 3)] == [9000, 9001, 9002]
    assert copy_port(None, 3) is None
    assert copy_environment(2, 3) == {"PROCGUARD_INSTANCE_INDEX": "2", "PROCGUARD_INSTANCES": "3"}


@pytest.mark.parametrize("value", [0, 65, -1, True, 2.5, "3x", "", None])
def test_counts_outside_1_to_64_are_refused(value: object) -> None:
    with pytest.raises(UsageError, match=r"is not a number of copies \(use a whole number from 1 to 64\)"):
        parse_count(value)
    assert parse_count(64) == 64 and parse_count(" 3 ") == 3


def test_instances_in_procguard_toml() -> None:
    config = parse_config("[workers.a]\ncommand = 'x'\ninstances = 3\n[workers.b]\nrun = 'm:f'\n")
    assert config.workers["a"].instances == 3 and config.workers["b"].instances == 1
    bad = {
        "[workers.a]\ncommand = 'x'\ninstances = 0\n": "workers.a.instances: 0 is not a number of copies",
        "[workers.a]\ncommand = 'x'\ninstances = 65\n": "workers.a.instances: 65 is not a number of copies",
        "[workers.a]\ncommand = 'x'\ninstances = 'two'\n": "workers.a.instances: 'two' is not a number",
        "[defaults]\ninstances = 2\n[workers.a]\ncommand = 'x'\n":
            "defaults.instances: applies to one worker only (put it in [workers.NAME])",
        "[workers.a]\ncommand = 'x'\ninstances = 3\nhealth_port = 65534\n":
            "workers.a.health_port (copy 3 of 3): port 65536 is past 65535",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError) as info:
            parse_config(text, path="p.toml")
        assert str(info.value).startswith(f"p.toml: {message}"), str(info.value)
        assert "\n" not in str(info.value)


def test_port_overlaps_name_both_owners() -> None:
    text = "[project]\nstatus_port = 9101\n[workers.a]\ncommand = 'x'\ninstances = 3\nhealth_port = 9099\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="p.toml")
    assert str(info.value) == ("p.toml: workers.a.health_port (copy 3 of 3): port 9101 is already used by "
                               "project.status_port (use a free port or fewer instances)")
    config = parse_config("[workers.a]\ncommand = 'x'\ninstances = 2\nhealth_port = 9000\n"
                          "[workers.b]\ncommand = 'y'\nhealth_port = 9003\n")
    assert port_clash(config.project, config.workers) is None
    # what `procguard scale a 4` checks: copy 4 would take b's port
    assert port_clash(config.project, config.workers, counts={"a": 4}) == (
        "workers.b.health_port: port 9003 is already used by workers.a.health_port (copy 4 of 4) "
        "(use a free port or fewer instances)")
    assert port_clash(config.project, config.workers, counts={"a": 3}) is None


def test_scale_plans_add_after_the_last_and_take_the_newest_first() -> None:
    assert plan_scale([1, 2, 3], 1) == ScalePlan((), (3, 2))
    assert plan_scale([1], 3) == ScalePlan((2, 3), ())
    assert plan_scale([1, 2], 2) == ScalePlan((), ())
    assert plan_scale([3, 1, 2], 2) == ScalePlan((), (3,))


def _grep(pattern: str, marker: str) -> bool:
    entry = f"{MARKER_ENV}={marker}\n".encode()
    return subprocess.run(["grep", "-q", pattern], input=entry, check=False).returncode == 0


def test_the_supervisors_marker_pattern_finds_every_copy() -> None:
    """The watchdog of a SIGKILLed supervisor finds a copy's process by its marker (``PROJECT.X:K``)."""
    run = new_run()
    pattern = run_pattern("shop", NS, run)
    assert _grep(pattern, new_marker("shop.api", NS, run=run))
    assert _grep(pattern, new_marker("shop.api:2", NS, run=run))
    assert _grep(pattern, new_marker("shop.api:64", NS, run=run))
    assert not _grep(pattern, new_marker("shop.api:2", NS, run=new_run() + "0"))  # another supervisor's run
    assert not _grep(pattern, new_marker("shopx.api:2", NS, run=run))  # another stack
    assert not _grep(pattern, new_marker("shop.api:2", "fedc3210", run=run))  # another state directory


def test_the_stale_sweep_covers_every_copy_an_earlier_supervisor_ran() -> None:
    config = parse_config("[project]\nname = 'shop'\n[workers.api]\ncommand = 'x'\ninstances = 2\n"
                          "[workers.db]\ncommand = 'y'\n")
    known = ["shop.api:1", "shop.api:7", "shop.db:2", "shop.apix:1", "other.api:1", "shop.api:x", "shop.db"]
    assert stack_instance_names(config, known) == {
        "shop.api", "shop.db", "shop.api:1", "shop.api:7", "shop.db:2"}
