"""What a notebook records, and how the notebook knows it runs headless.

:func:`record` in a notebook stores JSON-able metrics as an output tagged ``dhmlib_record`` (and in a
file); :func:`read_recorded` reads them back from the executed notebook (the role of scrapbook's
``glue``). :data:`HEADLESS_ENV` is set by the runners (``dhm notebooks``, ``dhm batch``) in the kernel's
environment: live figures are then drawn once at the end (:mod:`dhmlib.viz.training`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

#: environment variable the runners set to "1" in the kernel: no live redrawing of figures
HEADLESS_ENV = "DHM_NOTEBOOK_HEADLESS"

#: metadata key of the outputs :func:`record` displays; :func:`read_recorded` finds them by it
RECORD_KEY = "dhmlib_record"


def record(name: str, data, path=None) -> dict:
    """Record JSON-able ``data`` under ``name`` in the running notebook (what scrapbook's ``glue`` does):
    displayed as an ``application/json`` output with metadata ``{"dhmlib_record": name}``, and also
    written to ``path`` (a JSON file) when given. :func:`read_recorded` reads it back from the
    executed notebook. Returns ``data`` round-tripped through JSON (NaN → None)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    data = json.loads(json.dumps(clean(data)))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    try:     # IPython: the lab extra, deferred so that reading records needs no kernel
        from IPython.display import display
        display({"application/json": data, "text/plain": f"{name}: {json.dumps(data)[:300]}"},
                raw=True, metadata={RECORD_KEY: name})
    except ImportError:
        pass
    return data


def read_recorded(executed_notebook) -> dict:
    """name → data of every :func:`record` output in an executed notebook (the last one per name)."""
    import nbformat     # papermill's (the lab extra), deferred: the rest of this module needs it not

    nb = nbformat.read(str(executed_notebook), as_version=4)
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get(RECORD_KEY)
            if name is not None and "application/json" in o.get("data", {}):
                out[name] = o["data"]["application/json"]
    return out
