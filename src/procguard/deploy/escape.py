"""Escaping filters, one per target format, so every engine reads back exactly the value given.

Every string that reaches a generated file goes through one of these. Each
filter either returns text that the engine reads back as exactly the
original value, or raises :class:`~procguard.errors.UsageError` naming the
key (``what``), the value, the engine and why the format cannot carry it —
a file the engine would misread (or reject) is never written. The rules each
filter follows are the engine's own parsing steps, listed above its
section; the test suite runs every engine on hostile values to hold them to
it.

One limit holds for every engine, since all of them end in ``execve``:
Linux refuses a single argument or ``NAME=value`` string longer than
:data:`MAX_EXEC_STRING_BYTES`.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from ..errors import UsageError, shown

#: Linux's MAX_ARG_STRLEN (32 pages): the longest single argument or
#: environment string ``execve`` accepts, its terminating NUL included.
MAX_EXEC_STRING_BYTES = 32 * 4096


def _refuse(what: str, value: str, engine: str, why: str) -> NoReturn:
    msg = f"{what}: {shown(value)} cannot be written for {engine} ({why})"
    raise UsageError(msg)


def check_exec_string(text: str, what: str, engine: str, *, name: str = "") -> None:
    """Refuse an argument (or the value of variable ``name``) that no engine can pass to a program.

    NUL ends a C string, so the program would see less than was configured;
    Linux refuses strings (``NAME=value`` for a variable) longer than
    :data:`MAX_EXEC_STRING_BYTES`.
    """
    if "\x00" in text:
        _refuse(what, text, engine, "it contains a NUL character, which no program can receive")
    size = len((f"{name}={text}" if name else text).encode("utf-8", "surrogateescape")) + 1
    if size > MAX_EXEC_STRING_BYTES:
        _refuse(
            what,
            text,
            engine,
            f"{size} bytes; Linux passes at most {MAX_EXEC_STRING_BYTES} to a program in one argument"
            " or variable, so put it in a file the worker reads",
        )


# --- systemd ----------------------------------------------------------------
#
# How systemd reads a unit (systemd.syntax(7), systemd.service(5)):
# 1. one line per directive (a line may be at most LONG_LINE_MAX = 1 MiB);
# 2. '%' specifiers are resolved in the whole value first ('%%' is '%');
# 3. ExecStart= and Environment= are split into words: whitespace separates,
#    "..." quotes with C escapes inside; in ExecStart= an unquoted ';' word
#    separates commands;
# 4. at exec time, ExecStart= expands $NAME and ${NAME} ('$$' is '$');
#    Environment= does not.

_SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@-]+\Z")

#: systemd's LONG_LINE_MAX: a longer line makes the unit fail to load.
SYSTEMD_LINE_MAX = 1 << 20


def _c_escape(text: str) -> str:
    """Backslash-escape for the inside of a systemd double-quoted word."""
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _systemd_word(text: str) -> str:
    """``text`` as one systemd word: bare when safe, else ``"..."`` with C escapes."""
    return text if _SYSTEMD_SAFE.match(text) else f'"{_c_escape(text)}"'


def systemd_specifiers(text: str) -> str:
    """Escape systemd's ``%`` specifiers (``%n``, ``%h``...): ``%`` -> ``%%``."""
    return text.replace("%", "%%")


def systemd_exec_word(word: str, what: str = "command") -> str:
    """One word of ``ExecStart=``: specifiers, ``$`` expansion and quoting escaped.

    A word with anything beyond a safe set is double-quoted, so a ``;`` word
    is an argument, never a command separator.
    """
    check_exec_string(word, what, "systemd")
    return _systemd_word(systemd_specifiers(word).replace("$", "$$"))


def systemd_exec_line(argv: list[str], what: str = "command") -> str:
    """A whole ``ExecStart=`` value; ``argv[0]`` must be an absolute path."""
    if not argv or not argv[0].startswith("/"):
        first = shown(argv[0]) if argv else "nothing"
        msg = f"systemd needs an absolute path to the program, got {first} (use --venv PATH)"
        raise UsageError(msg)
    return " ".join(systemd_exec_word(word, what) for word in argv)


def systemd_environment(name: str, value: str, what: str = "env") -> str:
    """One ``Environment=`` value: ``"NAME=value"`` with quotes, C escapes and ``%%``."""
    check_exec_string(value, f"{what}.{name}", "systemd", name=name)
    return f'"{_c_escape(systemd_specifiers(f"{name}={value}"))}"'


def systemd_path(path: str, what: str) -> str:
    """A path setting (``WorkingDirectory=``): absolute, no control characters, ``%%``.

    The value is taken as is (no quoting), after its surrounding whitespace
    is stripped, so a path ending in whitespace cannot be written.
    """
    if not path.startswith("/"):
        _refuse(what, path, "systemd", "not an absolute path; systemd needs one")
    if not path.isprintable() or path != path.rstrip():
        _refuse(what, path, "systemd", "control characters or trailing whitespace, which systemd drops here")
    return systemd_specifiers(path)


def systemd_path_list(paths: list[str] | tuple[str, ...], what: str) -> str:
    """A list of paths (``ReadWritePaths=``): words, quoted and C-escaped where needed."""
    for path in paths:
        if not path.startswith("/"):
            _refuse(what, path, "systemd", "not an absolute path; systemd needs one")
    return " ".join(_systemd_word(systemd_specifiers(path)) for path in paths)


def systemd_text(text: str) -> str:
    """Free text (``Description=``): one line, specifiers escaped."""
    return systemd_specifiers(" ".join(text.split()))


def check_systemd_lines(text: str, what: str) -> None:
    """Refuse a unit with a line systemd would not load (longer than SYSTEMD_LINE_MAX bytes)."""
    for line in text.split("\n"):  # systemd ends lines at \n only, not at every Unicode line break
        size = len(line.encode("utf-8"))
        if size >= SYSTEMD_LINE_MAX:
            directive = line.split("=", 1)[0]
            msg = (
                f"{what}: {directive}= would be {size} bytes long, and systemd does not load a unit"
                f" with a line of {SYSTEMD_LINE_MAX} bytes or more (shorten the arguments or environment)"
            )
            raise UsageError(msg)


# --- supervisord -------------------------------------------------------------
#
# How supervisord 4 reads a program section (supervisor/options.py and
# datatypes.py, the version the test suite runs):
# 1. configparser: one line per value, surrounding whitespace stripped, and
#    ';' or '#' after any whitespace character starts a comment, also
#    inside quotes (configparser knows no quotes);
# 2. expand_here(): the text '%(here)s' anywhere in any value is replaced
#    by the file's directory, before anything else, so '%%(here)s' is no
#    escape: its '%(here)s' is replaced too;
# 3. '%' interpolation: '%%' is '%'. command=, environment= and directory=
#    are interpolated once; stdout_logfile= and stderr_logfile= twice;
# 4. command= is split with shlex.split (POSIX quoting);
# 5. environment= is split with a non-POSIX shlex: a quoted value is one
#    token with no escapes inside, and quote characters are then stripped
#    from both ends of every value.

_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@%-]+\Z")
_HERE = "%(here)s"
_SUPERVISORD = "supervisord"


def _ini_safe(text: str, what: str) -> None:
    if "\x00" in text:
        _refuse(what, text, _SUPERVISORD, "it contains a NUL character, which no program can receive")
    if any(ord(c) < 0x20 and c != "\t" for c in text):
        why = "a newline or control character; its INI format has no way to write one"
        _refuse(what, text, _SUPERVISORD, why)


def _comment_after_space(text: str) -> bool:
    """True when ``;`` or ``#`` follows a whitespace character (configparser's inline comment)."""
    return any(char in ";#" and text[i - 1].isspace() for i, char in enumerate(text) if i)


def supervisor_percent(text: str) -> str:
    """Escape supervisord's ``%(name)s`` interpolation: ``%`` -> ``%%``."""
    return text.replace("%", "%%")


def _shell_word(word: str) -> str:
    """POSIX-shell quoting that survives configparser and expand_here.

    supervisord splits ``command=`` with ``shlex.split``, but configparser
    first strips inline comments (``;`` or ``#`` after whitespace), so those
    two characters are written outside the single quotes as ``\\;`` / ``\\#``,
    right after a quote character. Inside ``%(here)s`` the quote is closed
    and reopened (``%''(here)s``): the shell reads the same word, and
    expand_here no longer finds its text.
    """
    if word and _SHELL_SAFE.match(word):
        return word
    out: list[str] = []
    for part in re.split(r"([;#])", word):
        if part in (";", "#"):
            out.append("\\" + part)
        elif part:
            quoted = "'" + part.replace("'", "'\"'\"'") + "'"
            out.append(quoted.replace(_HERE, "%''" + _HERE[1:]))
    return "".join(out) or "''"


def supervisor_command(argv: list[str], what: str) -> str:
    """A ``command=`` value read back by supervisord as exactly ``argv``."""
    for word in argv:
        check_exec_string(word, what, _SUPERVISORD)
        _ini_safe(word, what)
    return supervisor_percent(" ".join(_shell_word(word) for word in argv))


def supervisor_environment(env: dict[str, str], what: str) -> str:
    """An ``environment=`` value: ``KEY="value",KEY2='value2'``.

    A value is one quoted token with no escapes, so one with quotes of both
    kinds, a quote at either end, ``;``/``#`` after whitespace, or the text
    ``%(here)s`` cannot be written; those are refused naming the variable.
    """
    items: list[str] = []
    for name, value in env.items():
        key = f"{what}.env.{name}"
        check_exec_string(value, key, _SUPERVISORD, name=name)
        _ini_safe(value, key)
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            why = "it starts or ends with a quote, which supervisord strips from every value"
        elif '"' in value and "'" in value:
            why = "it has quotes of both kinds, and supervisord's environment= has no escapes"
        elif _comment_after_space(value):
            why = "';' or '#' after whitespace starts a comment there"
        elif _HERE in value:
            why = "supervisord replaces %(here)s in every value, escaped or not"
        else:
            quote = "'" if '"' in value else '"'
            items.append(f"{name}={quote}{supervisor_percent(value)}{quote}")
            continue
        _refuse(key, value, _SUPERVISORD, f"{why}; put the value in a file the worker reads")
    return ",".join(items)


def supervisor_value(text: str, what: str, *, interpolations: int = 1) -> str:
    """A plain single-line value (a directory, a log file) for supervisord's INI.

    ``interpolations`` is how often supervisord expands ``%`` in this value
    (twice for the log file names), so ``%`` is written as ``%%`` or ``%%%%``.
    """
    _ini_safe(text, what)
    if _comment_after_space(text) or text != text.strip():
        _refuse(what, text, _SUPERVISORD, "surrounding whitespace or a comment character after whitespace")
    if _HERE in text:
        _refuse(what, text, _SUPERVISORD, "supervisord replaces %(here)s in every value, escaped or not")
    return text.replace("%", "%" * (2**interpolations))


# --- Kubernetes -------------------------------------------------------------
#
# The manifest is JSON, which is YAML: no value can add structure. Two rules
# remain:
# 1. the kubelet expands $(NAME) in a container's command, args and env
#    values ('$$' is '$'), so every '$' there is doubled;
# 2. YAML readers refuse some characters JSON writes raw (DEL, C1 controls,
#    U+FFFE) and fold others (NEL, line separators), and Go's YAML reader
#    refuses a UTF-16 surrogate pair escape, which is how JSON escapes an
#    emoji; so non-ASCII is written raw (UTF-8), except the characters that
#    are not printable, which get a \\uXXXX escape (all in the BMP).


def kubernetes_word(word: str, what: str) -> str:
    """A ``command`` word: ``$`` doubled, so the kubelet's ``$(NAME)`` expansion gives it back."""
    check_exec_string(word, what, "Kubernetes")
    return word.replace("$", "$$")


def kubernetes_env(name: str, value: str, what: str) -> dict[str, str]:
    """One ``env`` entry, its value escaped like a command word."""
    check_exec_string(value, f"{what}.env.{name}", "Kubernetes", name=name)
    return {"name": name, "value": value.replace("$", "$$")}


#: Everything past ASCII's printable range; of those, _yaml_char escapes the unprintable.
_NOT_PLAIN_ASCII = re.compile(r"[^\n\x20-\x7e]")


def _yaml_char(match: re.Match[str]) -> str:
    char = match.group()
    if char.isprintable() or ord(char) > 0xFFFF:
        return char
    return f"\\u{ord(char):04x}"


def yaml_json(data: Any) -> str:
    """``data`` as indented JSON that every YAML reader reads back as the same data."""
    return _NOT_PLAIN_ASCII.sub(_yaml_char, json.dumps(data, indent=2, ensure_ascii=False))
