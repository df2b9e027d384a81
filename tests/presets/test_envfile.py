"""Every setting is documented: in .env.example (as generated) and in the README's table."""

from __future__ import annotations

import re

from presets.envfile import MEANINGS, env_names, render
from presets.settings import Settings
from tests.support import ROOT


def test_every_setting_has_a_meaning() -> None:
    missing = [n for n, info in Settings.model_fields.items() if not (info.description or MEANINGS.get(n))]
    assert not missing, f"add a line to presets/envfile.py MEANINGS for {missing}"
    assert not set(MEANINGS) - set(Settings.model_fields), "MEANINGS names a setting that no longer exists"


def test_env_example_is_the_generated_one() -> None:
    written = (ROOT / ".env.example").read_text()
    assert written == render(), "regenerate it: python -m presets envfile > .env.example"
    for name in env_names().values():
        assert re.search(rf"^# {name}=", written, re.MULTILINE), name


def test_readme_configuration_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    documented = set(re.findall(r"`(INFERENCE_[A-Z0-9_]+)`", table))
    expected = set(env_names().values())
    assert not expected - documented, f"missing from the README's configuration table: {sorted(expected - documented)}"
    assert not documented - expected, f"the README documents settings that don't exist: {sorted(documented - expected)}"
