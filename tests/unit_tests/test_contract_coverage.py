"""The hook table of docs/backends/writing.md and the contract suite cannot drift: every hook
the table names has contract tests (``tests/contract/hooks.py``), each test named there exists
and runs over every row (it takes ``bench``), and every hook mapped there is in the table or
on the package's contract classes (never a name that is gone).
Read from the files (the page, and the test modules by ``ast``), so this runs in the unit tier
without any peer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.contract.hooks import COVERAGE, DOC, MODULES

ROOT = Path(__file__).resolve().parents[2]
FIRST_NAME = re.compile(r"`(\w+)")


# The sections of the page whose tables name hooks.
SECTIONS = ("## The hooks", "## A model in this process")


def table_hooks(text: str) -> set[str]:
    """Hooks of the page's tables under :data:`SECTIONS` (the first column's name, and the
    async twin named first in the "async twin" column; a table may be indented in a list),
    and the "Class attributes:" paragraph."""
    hooks: set[str] = set()
    for heading in SECTIONS:
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for paragraph in section.split("\n\n"):
            if paragraph.startswith("Class attributes:"):
                hooks |= set(re.findall(r"`(_\w+)`", paragraph))
        hooks |= _hooks_of_tables(section)
    return hooks


def _hooks_of_tables(section: str) -> set[str]:
    hooks: set[str] = set()
    twin_col: int | None = None
    in_hooks = False  # a table whose first column is "hook" (not, e.g., the mixins' table)
    for raw in section.splitlines():
        line = raw.strip()
        if not line.startswith("|"):
            in_hooks = False
            continue
        if line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        if not in_hooks:
            in_hooks = cells[0] == "hook"
            twin_col = next((i for i, c in enumerate(cells) if c.startswith("async twin")), None)
            continue
        name = FIRST_NAME.match(cells[0])
        if name:
            hooks.add(name.group(1))
        if twin_col is not None and twin_col < len(cells):
            twin = FIRST_NAME.match(cells[twin_col])
            if twin and twin.group(1).startswith("_a"):
                hooks.add(twin.group(1))
    return hooks


def row_tests() -> dict[str, set[str]]:
    """Test functions of the contract modules -> their arguments."""
    out: dict[str, set[str]] = {}
    for module in MODULES:
        tree = ast.parse((ROOT / module).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert node.name not in out, f"{node.name} is defined twice"
                out[node.name] = {a.arg for a in node.args.args}
    return out


def test_the_table_is_read() -> None:
    hooks = table_hooks((ROOT / DOC).read_text())
    # One of each table, a twin, a class attribute, a field: the reader sees them all.
    for name in ("_health", "_ahealth", "_llm_type", "_achat_stream", "_headers", "_chat_url",
                 "_abefore_send", "_call_params", "api_key", "_batches_in_engine",
                 "_ameasure_template", "_engine_key", "_start_engine", "_engine_registry"):  # fmt: skip
        assert name in hooks, name
    assert "to_thread" not in hooks and "_generate" not in hooks
    assert not {"mixin", "Seed", "hook"} & hooks  # other tables and the headers are not hooks


def test_every_hook_of_the_table_has_a_contract_test() -> None:
    hooks = table_hooks((ROOT / DOC).read_text())
    missing = sorted(hooks - set(COVERAGE))
    assert not missing, f"hooks of {DOC} with no test in tests/contract/hooks.py: {missing}"
    stale = sorted(h for h in set(COVERAGE) - hooks if not defined(h))
    assert not stale, f"tests/contract/hooks.py maps hooks that are nowhere: {stale}"


def defined(name: str) -> bool:
    """Whether a contract class of the package has ``name`` (a hook mapped before its line
    reaches the table is fine; a hook renamed or gone is not)."""
    from langchain_multillm._base import ModelSurface, MultiLLMChatModel, MultiLLMCompletionModel
    from langchain_multillm._engines import EngineHolder
    from langchain_multillm._http import HTTPConnection
    from langchain_multillm._openai import OpenAIChatOverHTTP

    classes = (ModelSurface, MultiLLMChatModel, MultiLLMCompletionModel, HTTPConnection,
               OpenAIChatOverHTTP, EngineHolder)  # fmt: skip
    return any(hasattr(c, name) or name in c.model_fields for c in classes)


@pytest.mark.parametrize("hook", sorted(COVERAGE))
def test_each_named_test_runs_over_every_row(hook: str) -> None:
    tests = row_tests()
    assert COVERAGE[hook], f"{hook}: no test named"
    for name in COVERAGE[hook]:
        assert name in tests, f"{hook}: {name} is not a test of {MODULES}"
        assert "bench" in tests[name], f"{hook}: {name} does not take bench (not run per row)"


def test_the_reader_catches_a_new_hook() -> None:
    """A row added to the table with no coverage is seen as missing."""
    text = (ROOT / DOC).read_text().replace(
        "| `_model_label()` |", "| `_new_hook()` | no | → `int` | `_anew_hook()`: `to_thread` | x |\n"
        "| `_model_label()` |", 1,
    )  # fmt: skip
    hooks = table_hooks(text)
    assert {"_new_hook", "_anew_hook"} <= hooks
    assert {"_new_hook", "_anew_hook"} - set(COVERAGE) == {"_new_hook", "_anew_hook"}
