"""The package shows its architecture: wings by stage, imports running one way, small modules, a map that names them."""
import ast
import re

from conftest import REPO

PACKAGE = REPO / "mtkd_utils"
BASE = {"config", "presets", "runs", "io", "progress", "seeds"}       # top-level modules every wing may import
ENTRY_POINTS = {"batch", "bench", "readme", "plateau", "cam_choice", "decoding_choice", "lab"}   # `python -m mtkd_utils.X` shims
# wing -> the wings it must not import (data <- train <- analysis; grid and tools on top)
FORBIDDEN = {"data": {"train", "analysis", "grid", "tools"}, "train": {"analysis", "grid", "tools"},
             "analysis": {"grid", "tools"}, "grid": {"tools"}, "tools": set()}
MAX_LINES = 420


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path) -> set[str]:
    """Every mtkd_utils module `path` imports, at the top or inside a function, made absolute."""
    name, found = module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)   # `from mtkd_utils import runs` imports a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == "mtkd_utils"}


def wing_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FORBIDDEN else None


def test_the_package_is_wings_base_modules_and_entry_points():
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    wings = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert wings == set(FORBIDDEN)
    assert top == BASE | ENTRY_POINTS
    for wing in wings:                       # each wing says what it holds and what it may import
        assert "May import" in (PACKAGE / wing / "__init__.py").read_text() or wing == "tools"


def test_imports_run_one_way():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        here = wing_of(name)
        for target in imported_modules(path):
            there = wing_of(target)
            if here is None and name.split(".")[-1] in BASE and there is not None:
                bad.append(f"{name} (a base module) imports {target}")
            elif here and there in FORBIDDEN[here]:
                bad.append(f"{name} imports {target}")
    assert bad == []


def test_no_import_circle_between_modules():
    graph = {module_name(p): {t for t in imported_modules(p)} for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in deps if t in graph and t != m and not m.startswith(t + ".")} for m, deps in graph.items()}
    # a package's __init__ re-exports its modules: an edge into the package's own modules is no circle
    seen, stack, circles = set(), [], []

    def visit(m):
        if m in stack:
            circles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph[m]):
            if not t.startswith(m + "."):
                visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert circles == []


def test_no_module_is_long():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_architecture_names_every_module_and_only_real_ones():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"mtkd_utils/[\w/]+\.py", text))
    assert [p for p in named if not (REPO / p).exists()] == []
    wings = {str(p.relative_to(REPO)) for p in PACKAGE.glob("*/*.py") if p.name != "__init__.py"}
    assert sorted(wings - named) == []


def test_the_documented_data_functions_import_from_the_wing():
    from mtkd_utils.data import FundusData, from_csv, from_folder, from_odir_folder, load_data, prepare_image
    from mtkd_utils.data.csv_folder import from_csv as direct
    assert from_csv is direct and callable(from_folder) and callable(from_odir_folder) and callable(prepare_image)
    assert FundusData.__module__ == load_data.__module__ == "mtkd_utils.data.dataset"
