"""The README is the user's manual: every setting, endpoint and command stays in it."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.app import create_app
from exporter.cli import build_parser
from exporter.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`(EXPORTER_[A-Z0-9_]+)`", README))
    settings = {f"EXPORTER_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from the README"
    tests_own = {"EXPORTER_TEST_DATABASE_URL", "EXPORTER_TEST_CHROMIUM",
                 "EXPORTER_TEST_REQUIRE_POSTGRES"}
    assert documented - settings - tests_own == set(), "stale settings"


def test_every_endpoint_is_documented_with_a_curl_line() -> None:
    for path, operations in create_app().openapi()["paths"].items():
        for method in set(operations) - {"head"}:  # HEAD is documented with its GET
            assert f"`{method.upper()} {path}`" in README, f"{method} {path} not in the table"
        # `/files/{name}` is shown with a real name; `/files` needs a line of its own.
        concrete = r"[^/\s'\"?]+".join(map(re.escape, re.split(r"\{[^}]+\}", path)))
        assert re.search(rf"curl .*127\.0\.0\.1:8000{concrete}(?![\w/.-])", README), path


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"exporter {command}" in README


def test_ci_runs_the_readme_test_command() -> None:
    test_command = re.search(r"^(\./scripts/test)\b", README, re.MULTILINE)
    assert test_command, "the README names its test command"
    assert test_command.group(1) in (ROOT / ".ci" / "run").read_text()
