"""Row 8: every hostile value through every generator; what the engine accepts reads back exactly.

For each hostile value of tests/hostile_deploy.py (the deploy tests' own
list) two stacks are written, one with the value as the worker's argument
and one as an environment value, plus one stack with the edgiest worker
names; each goes through ``procguard deploy systemd|supervisor|kubernetes``.
A try is one (stack, engine). It passes when either

- deploy refused it: exit 2, one line on stderr, no traceback, nothing
  written; or
- deploy wrote it and the engine reads back exactly the configured argv
  and environment, adding nothing: systemd (``systemd-analyze verify`` is
  silent; ``systemd --test`` shows one ExecStart= with the expected words
  and exactly the expected Environment= entries), supervisord (a real run:
  each program dumps the argv and environment it got; its runner's command
  line is the expected one), Kubernetes (``kubernetes-validate --strict``
  passes; the YAML read back with the kubelet's ``$(NAME)`` expansion
  gives the expected command and env; nothing trips Go's YAML reader).

Anything else -- a value that changed meaning, an added directive, a file
the engine refuses, a traceback -- is a failed try.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml
from tests.helpers import python_env
from tests.hostile_deploy import (
    CONTROL,
    EDGE_NAME,
    GO_YAML_TROUBLE,
    HOSTILE,
    KUBERNETES_VALIDATE,
    LONG_NAME,
    SETPRIV,
    SUPERVISORD,
    SYSTEMD,
    SYSTEMD_ANALYZE,
    deploy,
    exec_start_words,
    expected_argv,
    hostile_stack,
    kubelet_expand,
    supervisord_conf,
    systemd_dump,
    unit_block,
)

from procguard.deploy import local_procguard

from .harness import RowResult, Tally, family_of, kill_all, one_line

ENGINES = ("systemd", "supervisor", "kubernetes")
IMAGE = "registry.example/evil:1"
#: Programs per supervisord run (each is a procguard run with its watchdog and the dumping program).
SUPERVISORD_BATCH = 30
VALUES = [*HOSTILE, *CONTROL]


@dataclass(frozen=True)
class Case:
    """One stack: a value as the worker's argument or environment value, or the edge names."""

    key: str
    directory: Path
    config: Path
    args: tuple[str, ...]
    env: dict[str, str]

    @property
    def project(self) -> str:
        return self.key

    @property
    def worker(self) -> str:
        """The worker that carries the value."""
        return "w" if self.key == "names" else self.key

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self.dumps)

    @property
    def dumps(self) -> dict[str, tuple[Path, list[str]]]:
        """Each worker's dump file and the arguments it must receive (see ``hostile_stack``)."""
        out = self.directory / "out"
        found = {self.worker: (out / f"{self.worker}.json", list(self.args))}
        if self.key == "names":
            found[EDGE_NAME] = (out / "edge.json", ["%(here)s", "-"])
            found[LONG_NAME] = (out / "long.json", [])
        return found


def make_cases(work: Path, every: int = 1) -> list[Case]:
    """A stack for each value (every ``every``-th) as an argument and as an env value, and the names stack."""
    cases = []
    for index, value in list(enumerate(VALUES))[::every]:
        for place in ("a", "e"):  # argument, environment
            key = f"v{index}{place}"
            args, env = ([value], {"A": "1"}) if place == "a" else ([], {"V": value})
            directory = work / key
            directory.mkdir(parents=True)
            # a worker name of its own: the generated files of every stack share one state directory
            config = hostile_stack(directory, args, env, project=key, worker=key, edge_workers=False)
            cases.append(Case(key, directory, config, tuple(args), env))
    directory = work / "names"
    directory.mkdir(parents=True)
    config = hostile_stack(directory, ["%(here)s", "-"], {"A": "1"}, project="names", edge_workers=True)
    cases.append(Case("names", directory, config, ("%(here)s", "-"), {"A": "1"}))
    return cases


@dataclass
class EngineCount:
    accepted: int = 0
    refused: int = 0
    failed: int = 0


def _deploy(case: Case, engine: str, out: Path) -> tuple[bool, list[str]]:
    """(written, problems): run deploy; a refusal must be one clean line with exit 2 and nothing written."""
    flags = ["--image", IMAGE] if engine == "kubernetes" else []
    result = deploy(engine, case.config, out, *flags)
    if result.returncode == 0:
        return True, []
    if result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr \
            and not out.exists():
        return False, []
    return False, [f"{case.key} {engine}: deploy exited {result.returncode}, stderr {one_line(result.stderr)!r}, "
                   f"output {'written' if out.exists() else 'not written'}"]


# -- systemd ------------------------------------------------------------------------------------

def check_systemd(case: Case, units: Path) -> list[str]:
    for path in units.iterdir():
        path.chmod(0o644)
    names = sorted(p.name for p in units.iterdir())
    verify = subprocess.run([SYSTEMD_ANALYZE or "systemd-analyze", "verify", *[f"./{n}" for n in names]], cwd=units,
                            capture_output=True, text=True, timeout=120, check=False)
    if verify.returncode != 0 or verify.stdout + verify.stderr:
        return [f"{case.key} systemd: systemd-analyze verify says {one_line(verify.stdout + verify.stderr)!r}"]
    dump = systemd_dump(units, f"{case.project}.target", units.parent / f"{units.name}-runtime")
    problems = []
    procguard = local_procguard(None)
    for worker in case.workers:
        block = unit_block(dump, f"{case.project}-{worker}.service")
        try:
            words = exec_start_words(block)
        except ValueError as error:
            problems.append(f"{case.key} systemd: {worker}: {error}")
            continue
        if words != expected_argv(case.config, worker, procguard):
            problems.append(f"{case.key} systemd: {worker}'s ExecStart= reads back as {str(words)[-200:]}")
    block = unit_block(dump, f"{case.project}-{case.worker}.service")
    for key, value in case.env.items():
        if f"\n\t\tEnvironment: {key}={value}\n" not in block:
            problems.append(f"{case.key} systemd: Environment {key} does not read back")
    # PYTHONUNBUFFERED, PATH, PROCGUARD_STATE_DIR and the two labels, plus the worker's own: nothing added
    entries = block.count("\n\t\tEnvironment: ")
    if entries != 5 + len(case.env):
        problems.append(f"{case.key} systemd: {entries} Environment entries, expected {5 + len(case.env)}")
    return problems


# -- Kubernetes ---------------------------------------------------------------------------------

def check_kubernetes(cases: list[tuple[Case, Path]]) -> dict[str, list[str]]:
    """Validate every written manifest in one run, then read each back."""
    problems: dict[str, list[str]] = {case.key: [] for case, _ in cases}
    paths = {path: case for case, out in cases for path in sorted(out.iterdir())}
    if not paths:
        return problems
    validate = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", *map(str, paths)], capture_output=True,
                              text=True, timeout=600, check=False)
    said = validate.stdout + validate.stderr
    for path, case in paths.items():
        if f"{path} passed" not in said:
            problems[case.key].append(f"{case.key} kubernetes: kubernetes-validate did not pass {path.name}: "
                                      f"{one_line(said)[-200:]!r}")
    if validate.returncode != 0 or "WARN" in said:
        problems[next(iter(paths.values())).key].append(f"kubernetes-validate exited {validate.returncode}")

    def defined(name: str) -> str:
        return f"<expanded {name}>"  # any reference left unescaped would show

    for path, case in paths.items():
        text = path.read_text(encoding="utf-8")
        if any(trouble.search(text) for trouble in GO_YAML_TROUBLE):
            problems[case.key].append(f"{case.key} kubernetes: {path.name} holds what Go's YAML reader misreads")
        pod = yaml.safe_load(text)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        worker = next(w for w in case.workers if w.rstrip("-_") == component)
        command = [kubelet_expand(word, defined) for word in container["command"]]
        expected = expected_argv(case.config, worker, ["procguard"])
        if command[command.index("--"):] != expected[expected.index("--"):]:
            problems[case.key].append(f"{case.key} kubernetes: {worker}'s command reads back as {str(command)[-200:]}")
        if worker == case.worker:
            values = {e["name"]: kubelet_expand(e["value"], defined) for e in container["env"]}
            for key, value in case.env.items():
                if values.get(key) != value:
                    problems[case.key].append(f"{case.key} kubernetes: env {key} reads back as "
                                              f"{str(values.get(key))[:100]!r}")
    return problems


# -- supervisord --------------------------------------------------------------------------------

def check_supervisord(cases: list[tuple[Case, Path]], work: Path) -> dict[str, list[str]]:
    """One real supervisord run for all ``cases``: each program must get exactly its argv and env."""
    problems: dict[str, list[str]] = {case.key: [] for case, _ in cases}
    confs = [path for _, out in cases for path in sorted(out.glob("*.conf"))]
    conf = supervisord_conf(work, confs)
    expected = {path: (case, worker, args) for case, _ in cases for worker, (path, args) in case.dumps.items()}
    with open(work / "supervisord.out", "wb") as log:
        proc = subprocess.Popen([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(work),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60 + 2 * len(cases)
        while time.monotonic() < deadline and proc.poll() is None and not all(p.exists() for p in expected):
            time.sleep(0.1)
        runners = {}
        for child in family_of(proc.pid)[1:]:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "run" in cmdline[:4]:
                runners.update({path: cmdline for path in expected if str(path) in cmdline})
        procguard = local_procguard(None)
        for path, (case, worker, args) in expected.items():
            if not path.exists():
                problems[case.key].append(f"{case.key} supervisor: the program never ran "
                                          f"(supervisord {'exited ' + str(proc.returncode) if proc.poll() is not None else 'running'})")
                continue
            got = json.loads(path.read_text())
            if got["argv"] != args:
                problems[case.key].append(f"{case.key} supervisor: argv reads back as {str(got['argv'])[-200:]}")
            for key, value in case.env.items() if worker == case.worker else ():
                if got["env"].get(key) != value:
                    problems[case.key].append(f"{case.key} supervisor: env {key} reads back as "
                                              f"{str(got['env'].get(key))[:100]!r}")
            if runners.get(path) != expected_argv(case.config, worker, procguard):
                problems[case.key].append(f"{case.key} supervisor: the runner's command line is "
                                          f"{str(runners.get(path))[-200:]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        kill_all(family_of(proc.pid))
        proc.wait(timeout=30)
    return problems


def unavailable() -> dict[str, str]:
    """Engines whose own checker cannot run here, and why."""
    missing = {}
    if SYSTEMD_ANALYZE is None or SYSTEMD is None:
        missing["systemd"] = "systemd is not installed"
    elif os.geteuid() == 0 and SETPRIV is None:
        missing["systemd"] = "systemd --test refuses root and setpriv is not installed"
    if not SUPERVISORD.exists():
        missing["supervisor"] = "supervisord is not installed"
    if not KUBERNETES_VALIDATE.exists():
        missing["kubernetes"] = "kubernetes-validate is not installed"
    return missing


def run_deploy_values(work: Path, *, every: int = 1) -> RowResult:
    started = time.monotonic()
    tally = Tally()
    missing = unavailable()
    engines = [engine for engine in ENGINES if engine not in missing]
    counts = {engine: EngineCount() for engine in engines}
    public = Path(tempfile.mkdtemp(prefix="procguard-units-"))  # systemd --test runs as nobody: it must read them
    public.chmod(0o755)
    try:
        cases = make_cases(work / "cases", every)
        written: dict[str, list[tuple[Case, Path]]] = {engine: [] for engine in ENGINES}
        for case in cases:
            for engine in engines:
                out = public / case.key if engine == "systemd" else case.directory / engine
                done, problems = _deploy(case, engine, out)
                if problems:
                    counts[engine].failed += 1
                    tally.record(problems)
                elif done:
                    written[engine].append((case, out))
                else:
                    counts[engine].refused += 1
                    tally.record([])
        for case, units in written["systemd"]:
            units.chmod(0o755)
            _judge(tally, counts["systemd"], _guarded(lambda case=case, units=units: check_systemd(case, units)))
        for case_problems in check_kubernetes(written["kubernetes"]).values():
            _judge(tally, counts["kubernetes"], case_problems)
        batch_dir = work / "supervisord"
        for start in range(0, len(written["supervisor"]), SUPERVISORD_BATCH):
            directory = batch_dir / str(start)
            directory.mkdir(parents=True)
            batch = written["supervisor"][start:start + SUPERVISORD_BATCH]
            for case_problems in check_supervisord(batch, directory).values():
                _judge(tally, counts["supervisor"], case_problems)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    per_engine = "; ".join(f"{'supervisord' if e == 'supervisor' else e}: {c.accepted} read back exactly, "
                           f"{c.refused} refused in one line" for e, c in counts.items())
    measured = f"{tally.failed} injected, changed or refused by the engine ({per_engine})"
    if missing:
        measured += "; not checked: " + "; ".join(f"{e} ({why})" for e, why in missing.items())
    return RowResult(8, f"{len(VALUES[::every])} hostile values (as an argument, and as an environment value) and the "
                     "edgiest worker names through `procguard deploy systemd|supervisor|kubernetes`, each file "
                     "read back by the engine itself", f"{tally.tried} (stack, engine) pairs", tally.failed,
                     measured, time.monotonic() - started, tally.problems)


def _guarded(check: Callable[[], list[str]]) -> list[str]:
    try:
        return check()
    except Exception as error:  # the engine refused the file outright: a failed try with its words
        return [f"{type(error).__name__}: {one_line(str(error))}"]


def _judge(tally: Tally, count: EngineCount, problems: list[str]) -> None:
    if problems:
        count.failed += 1
    else:
        count.accepted += 1
    tally.record(problems)
