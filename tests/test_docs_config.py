"""docs/config.md is generated from the phases' schemas (scripts/config_docs.py) and must agree with them."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import stagekit.stages
from stagekit.stages import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "config_docs.py"
PAGE = ROOT / "docs" / "config.md"


@functools.cache
def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_docs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def shipped_phases() -> list:
    """Every phase of every pipeline folder of the package, read from the spec modules themselves."""
    found = []
    for info in pkgutil.iter_modules(stagekit.stages.__path__):
        name = f"stagekit.stages.{info.name}.spec"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            found += importlib.import_module(name).PHASES
    return found


def test_page_is_what_the_schemas_give():
    assert PAGE.read_text() == load_script().render(), load_script().STALE


def test_every_key_of_every_phase_is_documented():
    docs = load_script()
    assert {(s.command, s.model) for s in docs.phases()} == {(s.command, s.model) for s in shipped_phases()}
    assert {(s.command, s.model) for s in shipped_phases()} <= {(s.command, s.model) for s in registry.phases()}
    page = PAGE.read_text()
    phase_texts = {part.split("\n", 1)[0]: part for part in page.split("\n## ")[1:]}
    for spec in shipped_phases():
        title = f"{spec.command}: {spec.model}"
        assert title in phase_texts, f"no section for {title}"
        tables = {part.split("\n", 1)[0]: part for part in phase_texts[title].split("\n### ")[1:]}
        for section, keys in spec.schema.items():
            table = tables.get(f"`[{section}]`")
            assert table is not None, f"{title}: no table for [{section}]"
            for key in keys:
                assert f"\n| `{key}` |" in table, f"{title}: {section}.{key} is not documented"


def test_check_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    docs = load_script()
    monkeypatch.delenv(registry.ENVIRONMENT, raising=False)
    stale = tmp_path / "config.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(docs, "PAGE", stale)
    assert docs.main(["--check"]) == 1
    assert capsys.readouterr().err.strip() == "docs/config.md is out of date: run python scripts/config_docs.py"
    assert docs.main([]) == 0 and docs.main(["--check"]) == 0
