"""OpenTelemetry tracing of a ProcessManager worker, against a real OTLP/HTTP receiver on 127.0.0.1.

Every worker here is a real child process (tests/manager_workers/traced.py,
or ``procguard run module:function``) exporting with the real SDK and OTLP
exporter to :mod:`tests.otlp_receiver`, which decodes the protobuf requests.
The spans are asserted as soon as the worker has exited: what a graceful
stop must have sent by then.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procguard.reasons import ExitStatus
from procguard.tracing import flush_timeout, resource_attributes, wanted

from .helpers import PROCGUARD, PYTHON, python_env, wait_for
from .otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from .supervisor_workers.stackkit import Stack, write_config

WORKER = Path(__file__).parent / "manager_workers" / "traced.py"
FAST = {"max_runtime_hours": 0, "memory_limit_mb": 0, "cpu_limit_percent": 0, "sample_interval_s": 0.05}


def clean_env(**extra: str) -> dict[str, str]:
    """The child's environment without any OTEL_* the shell running the suite may have."""
    env = {k: v for k, v in python_env().items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as r:
        yield r


def run_worker(spawn: Any, tmp_path: Path, env: dict[str, str], timeout: float = 60, **config: Any) -> dict[str, Any]:
    """Run the traced worker to its end; its result line, with ``log`` (its stderr) added."""
    out = tmp_path / f"result-{time.monotonic_ns()}.json"
    config["kwargs"] = {**FAST, **config.get("kwargs", {})}
    proc = spawn([PYTHON, str(WORKER), json.dumps({"out": str(out), **config})], env=env)
    stdout, stderr = proc.communicate(timeout=timeout)
    log = stderr.decode(errors="replace")
    assert out.exists(), f"worker ended with {proc.returncode} without a result:\n{log}"
    result = json.loads(out.read_text())
    assert result["status"] == proc.returncode, log
    return {**result, "log": log, "stdout": stdout.decode(errors="replace")}


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def iteration_spans(receiver: Receiver) -> list[ReceivedSpan]:
    return sorted(receiver.spans("procguard.iteration"), key=lambda s: s.attributes["procguard.iteration"])


def the_shutdown_span(receiver: Receiver) -> ReceivedSpan:
    shutdowns = receiver.spans("procguard.shutdown")
    assert len(shutdowns) == 1, receiver.describe()
    return shutdowns[0]


def stopping_detail(log: str, reason: str) -> str:
    """The detail of the manager's "stopping" log line: the outcome as the log shows it."""
    match = re.search(rf"stopping: {reason} \((.*)\) after \d+ iterations", log)
    assert match, log
    return match.group(1)


# -- a ProcessManager loop ---------------------------------------------------------


def test_one_span_per_iteration_with_the_programs_span_nested(spawn, state_dir, tmp_path, receiver):
    result = run_worker(
        spawn, tmp_path, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
        kwargs={"name": "tw", "max_iterations": 5}, user_span=True, fail_at=3, sleep_s=0.01,
    )
    assert result["status"] == ExitStatus.MAX_ITERATIONS, result["log"]
    iterations = iteration_spans(receiver)
    assert len(iterations) == result["iterations"] == 5, receiver.describe()
    assert [s.attributes["procguard.iteration"] for s in iterations] == [1, 2, 3, 4, 5]
    assert len({s.trace_id for s in iterations}) == 5  # each iteration is a trace of its own
    for span in iterations:
        assert span.parent_span_id == ""
        assert span.attributes["procguard.worker"] == "tw"
        assert span.attributes["procguard.duration_s"] == pytest.approx((span.end_ns - span.start_ns) / 1e9)
    assert [s.attributes["procguard.outcome"] for s in iterations] == ["ok", "ok", "error", "ok", "ok"]
    failed = iterations[2]
    assert failed.status_code == 2  # ERROR
    exception = failed.event("exception")
    assert exception is not None and exception.attributes["exception.message"] == "iteration 3 failed on purpose"

    # The program's own span in each iteration is a child of that iteration's span.
    parents = by_id(iterations)
    user = receiver.spans("user.work")
    assert len(user) == 5
    for span in user:
        parent = parents[span.parent_span_id]
        assert parent.trace_id == span.trace_id
        assert parent.attributes["procguard.iteration"] == span.attributes["user.iteration"]
        assert parent.start_ns <= span.start_ns <= span.end_ns <= parent.end_ns

    # Who sent them: the worker's name is the service, the instance marker and the worker are there.
    resource = iterations[0].resource
    assert resource["service.name"] == "tw"
    assert resource["procguard.worker"] == "tw"
    assert resource["procguard.instance"] == result["marker"] and result["marker"].startswith("tw:")
    assert "procguard.stack" not in resource

    # The stop: one event, the manager's outcome, on the shutdown's span linked to the last iteration.
    shutdown = the_shutdown_span(receiver)
    stop = shutdown.event("procguard.stop")
    assert stop is not None
    assert stop.attributes == {
        "procguard.reason": "max_iterations",
        "procguard.detail": stopping_detail(result["log"], "max_iterations"),
        "procguard.by": "procguard",
        "procguard.exit_status": int(ExitStatus.MAX_ITERATIONS),
    }
    assert shutdown.links == [iterations[-1].span_id]
    assert shutdown.attributes["procguard.iterations"] == 5
    assert shutdown.start_ns >= iterations[-1].end_ns


def test_a_memory_recycle_sends_the_last_iteration_and_the_stop_event(spawn, state_dir, tmp_path, receiver):
    # Nothing is sent before the stop (a batch delay of a minute): whatever arrives, the stop flushed.
    env = clean_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/v1/traces",
                    OTEL_BSP_SCHEDULE_DELAY="60000")
    result = run_worker(
        spawn, tmp_path, env,
        kwargs={"name": "leaker", "memory_limit_mb": 150, "memory_hard_limit_mb": 1000, "memory_strikes": 2},
        leak_mb=3, iteration_s=0.02,
    )
    assert result["status"] == ExitStatus.MEMORY_LIMIT, result["log"]
    iterations = iteration_spans(receiver)
    count = result["iterations"]
    assert count > 5
    assert [s.attributes["procguard.iteration"] for s in iterations] == list(range(1, count + 1)), receiver.describe()
    assert iterations[-1].attributes["procguard.outcome"] == "ok"
    stop = the_shutdown_span(receiver).event("procguard.stop")
    assert stop is not None
    assert stop.attributes["procguard.reason"] == "memory_limit"
    assert stop.attributes["procguard.detail"] == stopping_detail(result["log"], "memory_limit")
    assert stop.attributes["procguard.exit_status"] == int(ExitStatus.MEMORY_LIMIT)
    assert stop.attributes["procguard.figure.memory_limit_bytes"] == 150 * 1024 * 1024
    assert stop.attributes["procguard.figure.memory_bytes"] > 150 * 1024 * 1024


def test_an_asyncio_worker_nests_the_programs_spans_too(spawn, state_dir, tmp_path, receiver):
    result = run_worker(
        spawn, tmp_path, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
        mode="async", kwargs={"name": "aw", "max_iterations": 4}, user_span=True, iteration_s=0.01, sleep_s=0.01,
    )
    assert result["status"] == ExitStatus.MAX_ITERATIONS, result["log"]
    iterations = iteration_spans(receiver)
    assert len(iterations) == 4
    parents = by_id(iterations)
    user = receiver.spans("user.work")
    assert len(user) == 4 and all(s.parent_span_id in parents for s in user)
    assert "Failed to detach context" not in result["log"]
    assert the_shutdown_span(receiver).event("procguard.stop") is not None


def test_a_crash_marks_its_iteration_and_the_stop(spawn, state_dir, tmp_path, receiver):
    result = run_worker(
        spawn, tmp_path, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
        mode="raise", kwargs={"name": "crasher"}, raise_at=2,
    )
    assert result["status"] == ExitStatus.ERROR, result["log"]
    iterations = iteration_spans(receiver)
    assert [s.attributes["procguard.outcome"] for s in iterations] == ["ok", "crashed"]
    assert iterations[-1].status_code == 2
    shutdown = the_shutdown_span(receiver)
    stop = shutdown.event("procguard.stop")
    assert stop is not None and stop.attributes["procguard.reason"] == "crashed"
    assert "RuntimeError: the work loop fails on purpose" in stop.attributes["procguard.detail"]
    assert shutdown.status_code == 2  # not an expected stop


TWO_LIVES = """
import sys
from opentelemetry import trace
from procguard.manager import ProcessManager

def cleanup():
    with trace.get_tracer("program").start_as_current_span("user.cleanup"):
        pass

for life in (1, 2):  # a program that makes a new manager after the first one stopped
    manager = ProcessManager(name=f"life{life}", max_iterations=2, handle_signals=False)
    manager.add_cleanup(cleanup)
    while manager.should_continue():
        pass
    assert manager.shutdown() == 81
"""


def test_a_second_manager_in_the_same_process_is_traced_too(state_dir, tmp_path, receiver):
    result = subprocess.run([PYTHON, "-c", TWO_LIVES], env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert len(receiver.spans("procguard.iteration")) == 4, receiver.describe()
    shutdowns = by_id(receiver.spans("procguard.shutdown"))
    assert len(shutdowns) == 2
    # The cleanup callbacks run under the shutdown's span.
    cleanups = receiver.spans("user.cleanup")
    assert len(cleanups) == 2 and {s.parent_span_id for s in cleanups} == set(shutdowns)
    assert [s.attributes["procguard.worker"] for s in shutdowns.values()] == ["life1", "life2"]


def test_the_operators_service_name_and_the_stack_are_kept(spawn, state_dir, tmp_path, receiver):
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_RESOURCE_ATTRIBUTES="service.name=billing,deployment.environment=test",
        PROCGUARD_STACK="demo",
    )
    result = run_worker(spawn, tmp_path, env, kwargs={"name": "nw", "max_iterations": 1})
    assert result["status"] == ExitStatus.MAX_ITERATIONS, result["log"]
    resource = iteration_spans(receiver)[0].resource
    assert resource["service.name"] == "billing"
    assert resource["deployment.environment"] == "test"
    assert resource["procguard.stack"] == "demo"
    assert resource["procguard.worker"] == "nw"


def test_the_example_of_the_tracing_page_runs_as_written(spawn, state_dir, tmp_path, receiver):
    page = (Path(__file__).resolve().parent.parent / "docs" / "TRACING.md").read_text()
    example = re.search(r"`worker.py`:\n\n```python\n(.*?)```", page, re.S)
    assert example, "docs/TRACING.md lost its worker.py example"
    (tmp_path / "worker.py").write_text(example.group(1))
    proc = spawn([PYTHON, "worker.py"], cwd=tmp_path, env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.MAX_ITERATIONS, err.decode()
    iterations = by_id(iteration_spans(receiver))
    fetches = receiver.spans("fetch")
    assert len(iterations) == len(fetches) == 3
    assert all(s.parent_span_id in iterations for s in fetches)
    assert next(iter(iterations.values())).resource["service.name"] == "collector"


def test_console_and_otlp_together_and_a_grpc_protocol_setting(spawn, state_dir, tmp_path, receiver):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_TRACES_EXPORTER="otlp,console",
                    OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    result = run_worker(spawn, tmp_path, env, kwargs={"name": "both", "max_iterations": 2})
    assert result["status"] == ExitStatus.MAX_ITERATIONS, result["log"]
    # One warning for the protocol procguard does not speak; the spans still go over HTTP.
    warnings = [line for line in result["log"].splitlines() if "exports over http/protobuf only" in line]
    assert len(warnings) == 1 and "'grpc'" in warnings[0], result["log"]
    assert len(receiver.spans("procguard.iteration")) == 2
    assert result["stdout"].count('"name": "procguard.iteration"') == 2  # and on the console


# -- procguard run module:function -----------------------------------------------

TARGET = '''
from opentelemetry import trace

def fetch():
    with trace.get_tracer("target").start_as_current_span("user.fetch"):
        pass
'''


def test_procguard_run_traces_each_call_of_the_function(spawn, state_dir, tmp_path, receiver):
    (tmp_path / "traced_target.py").write_text(textwrap.dedent(TARGET))
    proc = spawn(
        [*PROCGUARD, "run", "traced_target:fetch", "--name", "fetcher", "--interval", "0.2s",
         "--max-iterations", "3"],
        cwd=tmp_path, env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.MAX_ITERATIONS, err.decode()
    iterations = iteration_spans(receiver)
    assert len(iterations) == 3, receiver.describe()
    assert iterations[0].resource["service.name"] == "fetcher"
    assert iterations[0].resource["procguard.instance"].startswith("fetcher:")
    parents = by_id(iterations)
    assert sorted(parents[s.parent_span_id].attributes["procguard.iteration"]
                  for s in receiver.spans("user.fetch")) == [1, 2, 3]
    # An iteration is the call: the interval's sleep lies between the spans, not in them.
    for before, after in itertools.pairwise(iterations):
        assert after.start_ns - before.end_ns >= 0.18e9
    assert the_shutdown_span(receiver).event("procguard.stop").attributes["procguard.reason"] == "max_iterations"


def test_under_procguard_up_each_life_of_a_worker_is_traced(spawn, state_dir, tmp_path, receiver):
    (tmp_path / "traced_target.py").write_text(textwrap.dedent(TARGET))
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    config = write_config(tmp_path, {
        "fetch": {"run": "traced_target:fetch", "interval": "0.1s", "max_iterations": 2, "env": env},
    }, project="tracedstack")
    up = Stack(config, state_dir, spawn, project="tracedstack")
    up.up()
    wait_for(lambda: len(receiver.spans("procguard.shutdown")) >= 2,
             message=lambda: f"two lives of the worker traced: {receiver.describe()}\n{up.output()[-2000:]}")
    assert up.cli("down").returncode == 0
    assert up.proc is not None and up.proc.wait(timeout=30) == 0
    lives = receiver.spans("procguard.shutdown")[:2]
    for life in lives:
        assert life.resource["service.name"] == "fetch"  # the worker's name in the stack, not the instance's
        assert life.resource["procguard.stack"] == "tracedstack"
        assert life.event("procguard.stop").attributes["procguard.reason"] == "max_iterations"
    assert lives[0].resource["procguard.instance"] != lives[1].resource["procguard.instance"]  # one per start


# -- what a kill loses ------------------------------------------------------------------


def test_after_a_sigkill_what_was_sent_stays_and_no_stop_comes(spawn, state_dir, tmp_path, receiver):
    out = tmp_path / "result.json"
    config = {"out": str(out), "kwargs": {**FAST, "name": "killed"}, "sleep_s": 0.02}
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    proc = spawn([PYTHON, str(WORKER), json.dumps(config)], env=env)
    wait_for(lambda: len(receiver.spans("procguard.iteration")) >= 3, message=receiver.describe)
    proc.kill()
    proc.wait(timeout=10)
    sent = [s.attributes["procguard.iteration"] for s in iteration_spans(receiver)]
    # What was sent before the kill stays; no stop event ever comes (nothing ran after the kill).
    assert sent == list(range(1, len(sent) + 1))
    assert receiver.spans("procguard.shutdown") == []
    assert not out.exists()


# -- off: nothing imported ------------------------------------------------------------


def test_without_the_environment_nothing_opentelemetry_is_imported(spawn, state_dir, tmp_path, receiver):
    # The extra is installed here: only the missing environment keeps it out.
    result = run_worker(spawn, tmp_path, clean_env(), kwargs={"name": "plain", "max_iterations": 3})
    assert result["status"] == ExitStatus.MAX_ITERATIONS
    assert result["otel_modules"] == []
    # otel=False wins over the environment; so does the operator's OTEL_SDK_DISABLED.
    for kwargs, extra in (({"otel": False}, {}), ({"otel": True}, {"OTEL_SDK_DISABLED": "true"})):
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, **extra)
        result = run_worker(spawn, tmp_path, env, kwargs={"name": "off", "max_iterations": 3, **kwargs})
        assert result["otel_modules"] == [], kwargs
    assert receiver.requests == 0


def _imported_by_run(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """The modules ``python -X importtime -m procguard run ... --once`` imported (its stderr)."""
    (tmp_path / "plain_target.py").write_text("def work():\n    pass\n")
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "procguard", "run", "plain_target:work", "--once",
         "--name", "importtime"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]


def test_importtime_of_procguard_run_shows_no_opentelemetry_without_the_environment(state_dir, tmp_path, receiver):
    assert not [m for m in _imported_by_run(tmp_path, clean_env()) if "opentelemetry" in m]
    # The same probe sees them when the environment asks for traces (so it can fail).
    traced = _imported_by_run(tmp_path, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
    assert "opentelemetry.sdk.trace" in traced


MISSING_EXTRA = """
import logging, sys
sys.modules["opentelemetry"] = None  # as if the procguard[otel] extra were not installed
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from procguard.errors import UsageError
from procguard.manager import ProcessManager
m = ProcessManager(max_iterations=2, handle_signals=False, otel={otel})
try:
    while m.should_continue():
        pass
except UsageError as error:
    print("usage:", error)
    sys.exit(2)
sys.exit(m.shutdown())
"""


def test_without_the_extra(state_dir, tmp_path):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    asked = subprocess.run([PYTHON, "-c", MISSING_EXTRA.format(otel=True)], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert asked.returncode == 2, asked.stderr
    assert asked.stdout.count("\n") == 1 and "Traceback" not in asked.stderr
    assert "otel: OpenTelemetry is not installed" in asked.stdout and "pip install 'procguard[otel]'" in asked.stdout
    # Asked by the environment only: one warning, and the worker runs untraced.
    by_env = subprocess.run([PYTHON, "-c", MISSING_EXTRA.format(otel=None)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert by_env.returncode == ExitStatus.MAX_ITERATIONS, by_env.stderr
    warnings = [line for line in by_env.stderr.splitlines() if "not installed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING"), by_env.stderr


# -- the flush at the stop is bounded ---------------------------------------------------


def test_a_collector_that_never_answers_does_not_hold_the_stop(spawn, state_dir, tmp_path):
    # A port that takes connections into its backlog and never answers: the export hangs.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        started = time.monotonic()
        result = run_worker(
            spawn, tmp_path, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint),
            kwargs={"name": "hang", "max_iterations": 3, "grace_s": 2},
        )
        took = time.monotonic() - started
    assert result["status"] == ExitStatus.MAX_ITERATIONS, result["log"]
    # Inside the grace (2 s) and far from the SDK's own waits (30 s shutdown, 10 s export timeout).
    waited = re.search(r"spans not sent within (\d+\.\d)s", result["log"])
    assert waited and float(waited.group(1)) <= 1.75, result["log"]
    assert took < 8, (took, result["log"])


# -- pure rules --------------------------------------------------------------------------


def test_when_tracing_is_wanted():
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not wanted(None, {})
    assert wanted(None, endpoint)
    assert wanted(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert wanted(None, {"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "})
    assert wanted(True, {})
    assert not wanted(False, endpoint)
    assert not wanted(True, {**endpoint, "OTEL_SDK_DISABLED": "TRUE"})
    assert not wanted(None, {**endpoint, "OTEL_TRACES_EXPORTER": "none"})


def test_resource_attributes_and_the_service_name():
    marker = "w:0123abcd-ffff"
    ours = resource_attributes("w", "shop", {"PROCGUARD_INSTANCE": marker})
    assert ours == {"procguard.worker": "w", "process.pid": os.getpid(), "procguard.instance": marker,
                    "procguard.stack": "shop", "service.name": "w"}
    assert "service.name" not in resource_attributes("w", None, {"OTEL_SERVICE_NAME": "svc"})
    assert "service.name" not in resource_attributes("w", None, {"OTEL_RESOURCE_ATTRIBUTES": "a=1, service.name=x"})
    assert resource_attributes("w", None, {"OTEL_RESOURCE_ATTRIBUTES": "service.namespace=x"})["service.name"] == "w"


def test_the_flush_fits_in_the_grace_left():
    assert flush_timeout(None) == 5.0
    assert flush_timeout(30.0) == 5.0
    assert flush_timeout(2.0) == pytest.approx(1.75)
    assert flush_timeout(0.1) == 0.0
    assert flush_timeout(-3.0) == 0.0

