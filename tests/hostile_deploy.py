"""Hostile values for the generators, and how each engine reads a generated file back.

Shared by tests/test_deploy_hostile.py and the reliability bench: the
values (quotes of both kinds, backslashes, ``%``, ``%(here)s``, ``$``,
``;``, ``#``, unicode, newlines, a leading ``-``, empty and very long
strings), a stack writer that puts them into a worker's arguments and
environment, and the engines' own readings: supervisord's configuration
(run for real by the caller), what ``systemd --test`` parsed from a unit,
and the kubelet's ``$(NAME)`` expansion of a manifest's command and env.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from procguard.config import load_config, worker_argv

from .helpers import PROCGUARD, python_env

#: Mixed hostile characters, long: 100,000 characters (under Linux's 128 KiB per argument).
LONG_ARG = ("'\"%(here)s %% $X ${Y} $(Z) ;# \\ ü😀 " * 4000)[:100_000]
LONG_ENV = ("%(ENV_HOME)s$HOME;#,=ü\\" * 3000)[:50_000]

#: Values every engine can carry (in arguments; supervisord refuses some as env values, see below).
HOSTILE = [
    "it's", 'say "hi"', "both ' and \" kinds", "'", '"', "back\\slash\\", "\\;", "\\",
    "%", "%%", "50%n %i %%", "%(here)s", "x%(here)sy%%(here)s", "%(ENV_HOME)s", "%(program_name)s",
    "$HOME", "${X}", "$$", "$", "$(HOME)", "$$(HOME)", "a$",
    "a b  c", " lead and trail ", "\ttab", ";", "x ;y", "#", "x #y", "a;b#c",
    "=", "A=B", ",", "a,b", "[Service]", "ExecStartPre=/bin/false",
    "ünïcödé ✓ 😀", "\u00a0nbsp\u2028ls\x85nel\u200bzw",
    "-n", "--name=evil", "-", "", LONG_ARG, LONG_ENV,
]  # fmt: skip
#: What supervisord's INI cannot carry at all; systemd and Kubernetes can.
CONTROL = ["line1\nExecStartPre=/bin/false\n[program:evil]\ncommand=/bin/false", "\x1b[31mred", "cr\rlf", "\x01"]
#: Env values supervisord cannot carry (its environment= has no escapes), with the reason it gives.
SUPERVISORD_ENV_REFUSED = [
    ("both-quote-kinds", "both ' and \" kinds", "quotes of both kinds"),
    ("single-quote", "'", "starts or ends with a quote"),
    ("double-quote", '"', "starts or ends with a quote"),
    ("ends-with-quote", 'say "hi"', "starts or ends with a quote"),
    ("long-with-quotes", LONG_ARG, "starts or ends with a quote"),
    ("space-semicolon", "x ;y", "starts a comment"),
    ("space-hash", "x #y", "starts a comment"),
    ("here", "%(here)s", "replaces %(here)s"),
    ("here-escaped", "x%(here)sy%%(here)s", "replaces %(here)s"),
]
SUPERVISORD_ENV = [v for v in HOSTILE if v not in {value for _id, value, _why in SUPERVISORD_ENV_REFUSED}]

#: Names at the edge of what procguard.toml accepts: a leading digit, '-' and '_', 63 characters.
EDGE_NAME = "9_Edge-name_"
LONG_NAME = "n" + "-_x" * 20 + "yz"

#: A program that writes the argv and environment it received to a file (atomically), then sleeps.
DUMP = """
import json, os, sys, time
out = sys.argv[1]
with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}, f)
os.replace(out + ".tmp", out)
time.sleep(3600)
"""


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's, with non-ASCII raw (TOML has no surrogate-pair escapes) and DEL escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def hostile_env(values: list[str]) -> dict[str, str]:
    """``V0``, ``V1``... holding ``values``, plus keys at the edge of what an env key may be."""
    env = {f"V{i}": value for i, value in enumerate(values)}
    env["_"] = "underscore"
    env["lower_case1"] = "$(V0)"
    return env


def hostile_stack(tmp: Path, args: list[str], env: dict[str, str], *, project: str = "evil-stack",
                  worker: str = "w", edge_workers: bool = True, extra: str = "") -> Path:
    """A stack in ``tmp``: ``worker`` dumps what it got (to ``out/WORKER.json``), called with ``args`` and
    ``env`` in the working directory ``work %dir``; with ``edge_workers``, two more workers with the
    edgiest names (dumping to ``out/edge.json`` and ``out/long.json``)."""
    (tmp / "dump.py").write_text(DUMP)
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "work %dir").mkdir(exist_ok=True)
    (tmp / "log%dir").mkdir(exist_ok=True)

    def command(out: str, words: list[str]) -> str:
        argv = [sys.executable, str(tmp / "dump.py"), str(tmp / "out" / out), *words]
        return "[" + ", ".join(toml_string(word) for word in argv) + "]"

    env_table = "{ " + ", ".join(f"{toml_string(k)} = {toml_string(v)}" for k, v in env.items()) + " }"
    edges = f"""
[workers.{EDGE_NAME}]
command = {command("edge.json", ["%(here)s", "-"])}

[workers.{LONG_NAME}]
command = {command("long.json", [])}
""" if edge_workers else ""
    config = tmp / "procguard.toml"
    config.write_text(
        f"""
[project]
name = "{project}"

[defaults]
grace = "2s"
restart = "never"
cpu_limit = 0

[workers.{worker}]
command = {command(f"{worker}.json", args)}
env = {env_table}
cwd = "work %dir"
{edges}
[deploy.supervisor]
log_dir = {toml_string(str(tmp / "log%dir"))}
startsecs = 1
{extra}"""
    )
    return config


def deploy(target: str, config: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``procguard deploy TARGET -c CONFIG -o OUT FLAGS...``, output captured."""
    return subprocess.run(
        [*PROCGUARD, "deploy", target, "-c", str(config), "-o", str(out), *flags],
        capture_output=True, text=True, env=python_env(), timeout=120, check=False,
    )  # fmt: skip


def expected_argv(config: Path, worker: str, procguard: list[str]) -> list[str]:
    """The argv procguard means the engine to start ``worker`` with."""
    stack = load_config(config)
    return worker_argv(stack.workers[worker], procguard=procguard, name=worker)


# --- supervisord ----------------------------------------------------------------

SUPERVISORD = Path(sys.executable).parent / "supervisord"


def supervisord_conf(tmp: Path, include: Path | list[Path]) -> Path:
    """A supervisord.conf in ``tmp`` (foreground, logs in ``tmp``) that includes the generated file(s)."""
    files = " ".join(str(path) for path in include) if isinstance(include, list) else str(include)
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"[supervisord]\nnodaemon=true\nlogfile={tmp}/supervisord.log\npidfile={tmp}/supervisord.pid\n"
        f"childlogdir={tmp}\nloglevel=info\n"
        f"[include]\nfiles={files}\n"
    )
    return conf


# --- systemd ----------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
SETPRIV = shutil.which("setpriv")
NOBODY = 65534


class EngineUnavailable(RuntimeError):
    """The engine's own checker cannot run here."""


def systemd_dump(units: Path, unit: str, runtime: Path) -> str:
    """What systemd parsed from the units in ``units``: ``systemd --test --user`` loads them and dumps its state.

    systemd refuses test mode as root, so as root it runs as nobody (``units``
    must then be readable by nobody). Raises :class:`EngineUnavailable` when
    that cannot be done, RuntimeError when systemd refuses the units.
    """
    runtime.mkdir(mode=0o700)
    argv = [SYSTEMD or "systemd", "--test", "--user", f"--unit={unit}", "--no-pager", "--log-target=console"]
    if os.geteuid() == 0:
        if SETPRIV is None:
            msg = "systemd --test refuses root and setpriv is not installed"
            raise EngineUnavailable(msg)
        os.chown(runtime, NOBODY, NOBODY)
        argv = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(runtime),
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_UNIT_PATH": f"{units}:",  # ours first, then the defaults (basic.target...)
    }
    result = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return result.stdout.decode("utf-8")


def unit_block(dump: str, unit: str) -> str:
    """The part of a ``systemd --test`` dump about ``unit``."""
    start = dump.index(f"\t-> Unit {unit}:\n")
    end = dump.find("\n\t-> Unit ", start + 1)
    return dump[start : end if end != -1 else len(dump)]


_DUMP_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11}


def dump_words(line: str) -> list[str]:
    """The words of a dumped ``Command Line:``: systemd writes each as is, or in "..." with C escapes."""
    data = line.encode("utf-8")
    words: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x20:
            i += 1
            continue
        word = bytearray()
        if data[i] == 0x22:  # "
            i += 1
            while data[i] != 0x22:
                if data[i] == 0x5C:  # backslash
                    nxt = chr(data[i + 1])
                    if nxt in "01234567":
                        word.append(int(data[i + 1 : i + 4], 8))
                        i += 4
                    elif nxt == "x":
                        word.append(int(data[i + 2 : i + 4], 16))
                        i += 4
                    else:
                        word.append(_DUMP_ESCAPES.get(nxt, ord(nxt)))
                        i += 2
                    continue
                word.append(data[i])
                i += 1
            i += 1
        else:
            while i < len(data) and data[i] != 0x20:
                word.append(data[i])
                i += 1
        words.append(word.decode("utf-8"))
    return words


def exec_time(word: str) -> str:
    """What systemd passes at exec time: ``$$`` is ``$``; any other ``$`` would be expanded (ValueError)."""
    if not re.fullmatch(r"(?:\$\$|[^$])*", word, re.DOTALL):
        msg = f"unescaped $ in {word[:200]!r}"
        raise ValueError(msg)
    return word.replace("$$", "$")


def exec_start_words(block: str) -> list[str]:
    """The words systemd will exec for the unit's one ExecStart= (ValueError if there is not exactly one)."""
    starts = block.count("\n\t\t-> ExecStart:\n")
    lines = re.findall(r"\n\t\t-> ExecStart:\n\t\t\tCommand Line: (.*)\n", block)
    if starts != 1 or len(lines) != 1:
        msg = f"{starts} ExecStart= entries, {len(lines)} command lines"
        raise ValueError(msg)
    return [exec_time(word) for word in dump_words(lines[0])]


# --- Kubernetes ---------------------------------------------------------------------

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
#: What Go's YAML reader refuses (surrogate-pair escapes) or misreads (raw DEL, C1, U+2028/9, BOM, U+FFFE/F).
GO_YAML_TROUBLE = (re.compile(r"\\ud[89a-f][0-9a-f]{2}", re.IGNORECASE),
                   re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]"))


def kubelet_expand(text: str, lookup: Callable[[str], str]) -> str:
    """The kubelet's $(NAME) expansion of command, args and env values ('$$' is '$')."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
            elif nxt == "(" and (close := text.find(")", i + 2)) != -1:
                out.append(lookup(text[i + 2 : close]))
                i = close + 1
                continue
            else:
                out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)
