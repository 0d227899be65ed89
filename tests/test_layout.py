"""The README's folder layout names every module of the package, and nothing that is not there."""
import re

from conftest import REPO


def readme_modules() -> set[str]:
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    block = layout.split("mtkd_utils/", 1)[1].split("data/README.md", 1)[0]
    block = re.sub(r"\([^)]*\)", "", block)                       # drop the explanations in brackets
    return {name.strip() for name in block.replace("\n", " ").split("·") if name.strip()}


def package_modules() -> set[str]:
    package = REPO / "mtkd_utils"
    files = {p.stem for p in package.glob("*.py") if not p.stem.startswith("__")}
    return files | {p.name for p in package.iterdir() if (p / "__init__.py").exists()}


def test_readme_layout_names_every_module():
    assert readme_modules() == package_modules()
