"""`lawchatd.testing` ships in the wheel for the benchmarks, but the daemon never runs it."""

from __future__ import annotations

from tests.test_layout import import_graph


def test_no_daemon_module_imports_the_test_machinery() -> None:
    graph = import_graph()
    users = {
        module
        for module, imports in graph.items()
        if not module.startswith("lawchatd.testing")
        and any(name.startswith("lawchatd.testing") for name in imports)
    }
    assert users == set()
