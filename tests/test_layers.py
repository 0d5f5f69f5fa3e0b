"""The dependency arrows docs/architecture.md draws, checked on every import statement in the packages.

training → charrnn ← service, the client (charrnn.client) imports neither, nothing imports bench, and the
serving side never imports torch. Inside service/, the gRPC edge and the HTTP edge never import each other:
what both need is in the modules they share (the front, the status table, metrics), which import neither
edge; only the server's wiring imports both. A module imported inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# package (or module prefix) -> top-level modules it must never import
FORBIDDEN = {
    "service": {"torch", "training", "bench"},
    "training": {"service", "bench"},
    "charrnn": {"service", "training", "bench", "torch"},
}


# The service's two edges, by module prefix; everything else in service/ is shared by both, but the wiring.
EDGES = {
    "gRPC": ("service.servicer", "service.interceptors", "service.rpc"),
    "HTTP": ("service.http",),
}
WIRING = ("service.server", "service.cli")  # builds the server from both edges


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "v1" not in p.relative_to(REPO).parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_along_the_arrows(package: str) -> None:
    bad = []
    for path in _modules(package):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_client_needs_only_its_own_package_and_the_protocol() -> None:
    allowed = ("charrnn.client", "charrnn.protocol", "charrnn.settings", "charrnn.v1")
    bad = []
    for path in _modules("charrnn/client"):
        for name in imported_modules(path):
            if name.startswith("charrnn") and not name.startswith(allowed):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_an_edge_never_imports_the_other(edge: str) -> None:
    others = tuple(p for name, prefixes in EDGES.items() if name != edge for p in prefixes)
    bad = []
    for path in _modules("service"):
        if _within(_module_name(path), EDGES[edge]):
            bad += [f"{path.relative_to(REPO)} imports {n}" for n in imported_modules(path) if _within(n, others)]
    assert not bad, "\n".join(bad)


def test_what_the_edges_share_imports_neither_edge() -> None:
    edges = tuple(p for prefixes in EDGES.values() for p in prefixes)
    shared = [p for p in _modules("service") if not _within(_module_name(p), edges + WIRING)]
    assert {"service.front", "service.metrics", "service.status"} <= {_module_name(p) for p in shared}
    bad = [f"{p.relative_to(REPO)} imports {n}" for p in shared for n in imported_modules(p) if _within(n, edges)]
    assert not bad, "\n".join(bad)


def test_the_edge_rule_sees_an_edge_importing_the_other(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("if TYPE_CHECKING:\n    from service.servicer import Runtime\nimport service.http.app\n")
    names = imported_modules(module)
    assert {n for n in names if _within(n, EDGES["gRPC"])} == {"service.servicer"}
    assert {n for n in names if _within(n, EDGES["HTTP"])} == {"service.http.app"}
    assert not _within("service.httpx", EDGES["HTTP"]) and _within("service.http", EDGES["HTTP"])


# The engine side of the service: an engine process's loop, its messages, its policy and batch. It knows nothing
# of the front (the transports, metrics exposition, the process that serves them), so an engine process imports
# neither gRPC nor aiohttp nor Prometheus.
ENGINE = ("service/engine_loop.py", "service/wire.py", "service/core.py", "service/policy.py", "service/batch.py",
          "service/feed.py", "service/sampling.py", "service/observer.py", "service/context.py",
          "service/stream.py")  # fmt: skip
FRONT = ("grpc", "aiohttp", "prometheus_client", "service.servicer", "service.http", "service.metrics",
         "service.interceptors", "service.server", "service.scheduler", "service.engines", "service.registry",
         "service.front")  # fmt: skip


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_side_never_imports_the_front(module: str) -> None:
    bad = [name for name in imported_modules(REPO / module) if name.startswith(FRONT)]
    assert not bad, f"{module} imports {bad}"


def test_the_checker_sees_nested_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import torch\n    from training.model import CharRNN\n")
    assert imported_modules(module) == {"torch", "training.model"}
