"""The README's module table lists exactly the package's top-level modules and sub-packages."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_module_table_matches_the_tree():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`dhmlib\.(\w+)`", "\n".join(l for l in text.splitlines() if l.startswith("| `dhmlib."))))
    pkg = ROOT / "dhmlib"
    tree = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    tree |= {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    assert listed == tree, f"README lists {sorted(listed - tree)} not in the tree; misses {sorted(tree - listed)}"
