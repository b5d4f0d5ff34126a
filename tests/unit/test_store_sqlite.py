"""SQLite-specific behaviour beyond the shared store contract."""

from __future__ import annotations


def test_sqlite_second_handle_keeps_other_processes_writes_visible(tmp_path):
    """Opening the same store twice in one process must not drop SQLite's POSIX locks
    (closing any fd of the file would): another process closing its handle would then
    delete the WAL under us, and we would stop seeing writes made by others."""
    import subprocess
    import sys

    from podnet.store.sqlite import SqliteStore

    path = str(tmp_path / "shared.db")
    first = SqliteStore(path)
    first.put("k/0", '"before"')
    second = SqliteStore(path)  # e.g. another service of the same agent
    writer = (
        "import sys; from podnet.store.sqlite import SqliteStore;"
        "s = SqliteStore(sys.argv[1]); s.put(sys.argv[2], '\"x\"'); s.close()"
    )
    for i in range(1, 4):
        subprocess.run([sys.executable, "-c", writer, path, f"k/{i}"], check=True)
    assert [e.key for e in first.list("k/")] == ["k/0", "k/1", "k/2", "k/3"]
    first.put("k/4", '"mine"')
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from podnet.store.sqlite import SqliteStore;"
         "print(len(SqliteStore(sys.argv[1]).list('k/')))", path],
        capture_output=True, text=True, check=True,
    )
    assert check.stdout.strip() == "5"
    second.close()
    first.close()
