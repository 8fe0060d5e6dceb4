"""The layout's rules, read from the sources by ``tools/import_graph.py`` (every import counts, also one made
inside a function): no cycle between dhmlib's packages or modules, no arrow back up the floors of the data
flow, no flat module beyond the basics."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = graph          # its dataclasses look their module up
_spec.loader.exec_module(graph)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "dhmlib" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_graph_sees_the_imports():
    files, imports, _, _ = graph.read_graph(ROOT)
    seen = {(i.source, i.target, i.deferred) for i in imports}
    assert ("dhmlib.hand.handmodel", "dhmlib.hand.skeleton", False) in seen                  # module level
    assert any(s == "dhmlib.cli.synth" and t == "dhmlib.synth.capture" and d for s, t, d in seen)   # in a function
    assert graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert graph.cycles({"a": {"b"}, "b": set()}) == []


def test_a_loop_through_an_import_inside_a_function_is_a_cycle(tmp_path):
    """The loop issue 16 found (train/recipe → ablation → train/config, hidden in a function) fails the rules."""
    root = write_tree(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/config.py": "X = 1\n",
        "train/recipe.py": "def build():\n    from ..ablation import apply_variant\n    return apply_variant\n",
        "ablation.py": "from .train.config import X\n\ndef apply_variant():\n    return X\n",
    })
    f = graph.facts(root)
    assert f.unit_cycles == [["ablation", "train"]] and f.module_cycles == []
    assert f.deferred_imports == 1 and f.top_level_modules == ["dhmlib.ablation"]


def test_an_import_from_a_lower_floor_to_a_higher_one_runs_back_up(tmp_path):
    root = write_tree(tmp_path, {"__init__.py": "", "hand/__init__.py": "", "train/__init__.py": "X = 1\n",
                                 "hand/layer.py": "def f():\n    from dhmlib.train import X\n    return X\n"})
    assert graph.facts(root).back_arrows == ["dhmlib.hand.layer -> dhmlib.train (dhmlib/hand/layer.py:2, inside a function)"]


@pytest.fixture(scope="module")
def facts():
    return graph.facts(ROOT)


def test_no_cycle_between_packages_or_modules(facts):
    assert facts.unit_cycles == [], facts.unit_cycles
    assert facts.module_cycles == [], facts.module_cycles


def test_no_arrow_runs_back_up_the_data_flow(facts):
    assert facts.unplaced_units == [], f"packages on no floor of tools/import_graph.py LAYERS: {facts.unplaced_units}"
    assert facts.back_arrows == [], "\n".join(facts.back_arrows)


def test_only_the_basics_are_flat_modules(facts):
    assert [m.split(".")[-1] for m in facts.top_level_modules] == ["configs", "memory", "paths", "progress"]


#: the extras' packages (dev, lab, photo): none may be needed to import a dhmlib module (`pip install -e .` alone
#: runs `dhm train`); each module that uses one defers the import to where it is used
OPTIONAL = ("tensorboard", "papermill", "nbformat", "nbclient", "ipywidgets", "pythreejs", "IPython", "ipykernel",
            "jupyterlab", "trimesh", "smplx", "playwright", "kaolin", "mediapipe", "cv2")
#: modules that are the optional part themselves (they fail with a message naming the extra)
NEEDS_AN_EXTRA = {"dhmlib.viz.posing": "pythreejs"}


def test_every_module_imports_without_the_optional_extras():
    import subprocess

    modules = sorted(m for m in graph.read_graph(ROOT)[0] if not m.endswith("__main__") and m not in NEEDS_AN_EXTRA)
    code = ("import importlib, sys\n"
            f"for name in {OPTIONAL!r}:\n    sys.modules[name] = None      # import of it raises ImportError\n"
            "failed = []\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n        failed.append(f'{m}: {e}')\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
