"""The storage layer's structure: one SQL repository with a dialect per database, row types in ``model.py``,
and a package whose modules import one another without a cycle."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from exporter.storage import model
from exporter.storage.model import StateFilter
from exporter.storage.postgres_repo import POSTGRES, PostgresRepository
from exporter.storage.sql_repo import SqlRepository
from exporter.storage.sqlite_repo import SQLITE, SqliteRepository

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def _imports() -> dict[str, set[str]]:
    """Module (dotted, under ``exporter``) -> the modules of the package it imports, at the top or inside a
    function."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if not base.startswith("exporter"):
                continue
            for alias in node.names:  # ``from pkg import module`` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = found & modules - {name, package}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done or module not in graph:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_wire_modules_and_model_import_no_storage_module():
    graph = _imports()
    storage = {m for m in graph if m.startswith("exporter.storage.") and m != "exporter.storage.model"}
    storage.add("exporter.fmgr.tracking")
    for wire in ("exporter.vendor.cdn", "exporter.fmgr.wire", "exporter.storage.model"):
        assert not graph[wire] & storage, wire
    assert graph["exporter.storage.model"] == set()
    assert "exporter.storage.model" in graph["exporter.vendor.cdn"]


def test_the_backends_write_no_query_of_their_own():
    """Every query of the repository interface is written once, in sql_repo.py."""
    shared = {name for name, value in vars(SqlRepository).items() if callable(value) and not name.startswith("_")}
    assert {"cdn_edge_rows", "cdn_rows", "fmgr_due", "fmgr_task_rows_for_api", "prune_fmgr"} <= shared
    for backend in (SqliteRepository, PostgresRepository):
        assert not shared & set(vars(backend)), backend.__name__


def test_postgres_placeholders():
    assert POSTGRES.sql("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'")
    assert SQLITE.sql("SELECT a FROM t WHERE b = ?") == "SELECT a FROM t WHERE b = ?"


@pytest.mark.parametrize(("values", "negate", "sqlite", "postgres"), [
    ((1, 2), False, ("code IN (?,?)", [1, 2]), ("code = ANY(?::bigint[])", [[1, 2]])),
    ((1, 2), True, ("code NOT IN (?,?)", [1, 2]), ("code <> ALL(?::bigint[])", [[1, 2]])),
    ((), False, ("code IN ()", []), ("code = ANY(?::bigint[])", [[]])),
])
def test_among(values, negate, sqlite, postgres):
    assert SQLITE.among("code", values, negate=negate, array_type="bigint") == sqlite
    assert POSTGRES.among("code", values, negate=negate, array_type="bigint") == postgres


def test_flag_conditions_are_written_as_the_partial_indexes_define_them():
    for dialect in (SQLITE, POSTGRES):
        schema = dialect.schema()
        assert f"WHERE {dialect.pending};" in schema
        assert f"WHERE {dialect.due};" in schema
    assert SQLITE.pending == "final_seen IS NULL AND abandoned = 0"
    assert POSTGRES.due == "(final_seen IS NULL OR NOT confirmed) AND NOT abandoned"


def test_both_schemas_have_the_same_tables_and_columns():
    def tables(ddl: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for statement in ddl.split(";"):
            text = " ".join(line.split("--")[0] for line in statement.splitlines()).strip()
            if text.startswith("CREATE TABLE"):
                name, _, body = text.removeprefix("CREATE TABLE IF NOT EXISTS ").partition(" (")
                out[name] = [part.split()[0] for part in body.split(", ") if not part.startswith("PRIMARY KEY")]
        return out

    sqlite, postgres = tables(SQLITE.schema()), tables(POSTGRES.schema())
    assert {t: sqlite[t] for t in sqlite} == {t: postgres[t] for t in sqlite}
    assert set(postgres) - set(sqlite) == {"leases", "changes"}


def test_sqlite_schema_creates(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.executescript(SQLITE.schema())
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"cdn_tasks_window", "fmgr_tasks_window", "fmgr_tasks_due", "fmgr_tasks_pending"} <= indexes


def test_api_state_filter_on_sqlite(tmp_path):
    repo = SqliteRepository(tmp_path / "s.db")
    with repo.transaction() as tx:
        tx.fmgr_insert("a", 10.0, "api", 1, 11.0, True, 12.0, None, 20.0)
        tx.fmgr_insert("b", 11.0, "api", None, None, False, 12.0, None, 20.0)
    ids = [r.id for r in repo.fmgr_task_rows_for_api(StateFilter(abandoned=False, codes_not_in=(2,)), 10, None)]
    assert ids == ["a"]
    assert [r.id for r in repo.fmgr_task_rows_for_api(StateFilter(pending=True), 10, None)] == ["b"]
    assert repo.fmgr_task_rows_for_api(StateFilter(nothing=True), 10, None) == []
    repo.close()


def test_model_holds_the_row_types():
    assert {"CdnTask", "FmgrTaskRow", "FmgrItemRow", "FmgrApiRow", "StateFilter", "Loaded"} <= set(vars(model))
