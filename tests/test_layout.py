"""README stays true to the code: its key table is the one the config generates, and its
architecture section names every module of the package."""
import re
from pathlib import Path

from ddpm_ms.config import DEFAULTS, markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_key_table_is_the_generated_one():
    generated = markdown_table().strip()
    assert generated in README, "README's key table differs from `python -m ddpm_ms.config`; paste its output"
    rows = [line for line in generated.splitlines() if line.startswith("| `")]
    assert len(rows) == len(DEFAULTS)


def _architecture_block():
    section = README.split("## Architecture", 1)[1]
    return section.split("```", 2)[1]


def test_readme_architecture_names_every_module():
    block = _architecture_block()
    missing = []
    for path in sorted((ROOT / "ddpm_ms").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name.startswith("__"):
            continue
        if path.parent.name == "ddpm_ms":
            named = re.search(rf"^{re.escape(str(rel))}\b", block, re.M)
        else:  # a sub-package line names its modules: "ddpm_ms/data/   sources.py (...), ..."
            named = str(rel.parent) + "/" in block and re.search(rf"\b{re.escape(path.name)}\b", block)
        if not named:
            missing.append(str(rel))
    assert not missing, f"README's Architecture section does not mention {missing}"


def test_readme_architecture_names_no_missing_module():
    block = _architecture_block()
    for name in re.findall(r"^(ddpm_ms/[a-z_]+\.py)", block, re.M):
        assert (ROOT / name).is_file(), f"README's Architecture names {name}, which does not exist"
