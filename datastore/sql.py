"""SQL over the archive with DuckDB (in process, offline): a dataset version, or exported Parquet files.

Views (the kinds the source holds; datastore.parquet describes the columns):

    events        every archived input record, valid or not
    dead_letters  the input records the worker dead-letters: ``invalid_reason`` is the reason code
    predictions   every archived prediction (score, label, model_name, model_version, probabilities_<class>, …)
    labels        archived labels (when an online learner is configured)

Examples (``streamscore data sql "…" --data VERSION``)::

    -- dead-letter reasons per hour
    SELECT date_trunc('hour', timestamp) AS hour, invalid_reason, count(*) AS n
    FROM dead_letters GROUP BY ALL ORDER BY hour, n DESC
    -- score distribution per model version
    SELECT model_name, model_version, count(*) AS n, avg(score) AS mean, quantile_cont(score, 0.5) AS p50,
           quantile_cont(score, 0.99) AS p99 FROM predictions GROUP BY ALL ORDER BY ALL
    -- records per topic and epoch (incarnation)
    SELECT topic, epoch, count(*) FROM events GROUP BY ALL ORDER BY ALL

Extensions are never installed or auto-loaded: Parquet and the functions above are built into DuckDB, and a
query that needs anything else fails at once instead of reaching for the network.

>>> import pyarrow as pa
>>> con = connect({"events": pa.table({"topic": ["a", "a", "b"], "invalid_reason": [None, "not_json", None]})})
>>> con.execute("SELECT topic, count(*) FROM events GROUP BY topic ORDER BY topic").fetchall()
[('a', 2), ('b', 1)]
>>> con.execute("SELECT invalid_reason FROM dead_letters").fetchall()
[('not_json',)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from datastore.dataset import DatasetVersion
from datastore.parquet import TABLE_OF_KIND, default_export_dir, exported_files, tables
from datastore.storage import Storage

_OFFLINE = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class QueryError(ValueError):
    """The SQL does not parse, names an unknown table or column, or fails to run (one line, from DuckDB)."""


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(source: dict[str, pa.Table] | dict[str, list[Path]]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table: Arrow tables, or lists of Parquet files read as one table."""
    con = duckdb.connect(config=_OFFLINE)
    for name, data in source.items():
        if isinstance(data, pa.Table):
            con.register(name, data)
        else:
            files = ", ".join(_literal(p) for p in data)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
    if "events" in source:
        con.execute("CREATE VIEW dead_letters AS SELECT * FROM events WHERE invalid_reason IS NOT NULL")
    return con


def open_source(source: DatasetVersion | str | Path, storage: Storage | None = None) -> duckdb.DuckDBPyConnection:
    """A connection over a dataset version or a directory of exports (``export_version``).

    A version is read from its export in ``<data_dir>/parquet/<id>/`` when one is complete there (a 50k-record
    count: 0.02 s against 2.3 s reading the Avro segments), else from its segments.
    """
    if isinstance(source, DatasetVersion):
        if storage is None:
            raise ValueError("a dataset version needs the storage that holds its segments")
        try:
            cached = exported_files(default_export_dir(storage, source))
        except ValueError:  # no local directory
            cached = {}
        wanted = {TABLE_OF_KIND[t.kind] for t in source.topics.values()}
        if wanted and set(cached) == wanted:
            return connect(cached)
        return connect(tables(storage, source))
    found = exported_files(Path(source))
    if not found:
        raise QueryError(f"{source}: no events/predictions/labels .parquet files under it")
    return connect(found)


def query(source: DatasetVersion | str | Path, sql: str, storage: Storage | None = None,
          ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SQL statement over the source's views; returns (column names, rows)."""
    con = open_source(source, storage)
    try:
        cursor = con.execute(sql)
        if cursor.description is None:  # a statement without result (CREATE, SET, ...)
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from exc
    finally:
        con.close()
