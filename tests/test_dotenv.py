"""The dotenv format of ``env_file``: what is read, and the one line a mistake gets."""

from __future__ import annotations

import pytest

from procguard.dotenv import parse_dotenv
from procguard.errors import UsageError


def test_the_forms_users_write() -> None:
    text = (
        "# comment\n"
        "\n"
        "PLAIN=value\n"
        "  SPACED = around  \n"
        "export EXPORTED=1\n"
        "COMMENTED=kept # dropped\n"
        "HASH=a#b\n"
        "EMPTY=\n"
        "SINGLE='$NOT_EXPANDED \\n kept'  # after\n"
        'DOUBLE="tab\\there \\"quoted\\" \\\\ $NOT_EXPANDED"\n'
        'MULTI="first\n'
        'second"\n'
        "PLAIN=last wins\n"
    )
    assert parse_dotenv(text, where="app.env") == {
        "PLAIN": "last wins",
        "SPACED": "around",
        "EXPORTED": "1",
        "COMMENTED": "kept",
        "HASH": "a#b",
        "EMPTY": "",
        "SINGLE": "$NOT_EXPANDED \\n kept",
        "DOUBLE": 'tab\there "quoted" \\ $NOT_EXPANDED',
        "MULTI": "first\nsecond",
    }


@pytest.mark.parametrize(("text", "expected"), [
    ("JUST_A_NAME\n", "app.env line 1: 'JUST_A_NAME' is not a NAME=value line"),
    ("OK=1\n1BAD=x\n", "app.env line 2: '1BAD=x' is not a NAME=value line"),
    ("A='open\n", "app.env line 1: the single quote is never closed"),
    ('A="open\nstill open\n', "app.env line 1: the double quote is never closed"),
    ('A="closed" trailing\n', "app.env line 1: 'trailing' after the closing quote"),
    ("A=\x00\n", "app.env line 1: the value of A contains a NUL character"),
])
def test_mistakes_are_one_line_naming_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_dotenv(text, where="app.env")
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)
