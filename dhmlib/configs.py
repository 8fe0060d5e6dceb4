"""What every frozen config dataclass of dhmlib shares: dict round trip and validated ``replace``.

:class:`~dhmlib.network.model.ModelConfig` and :class:`~dhmlib.train.config.TrainConfig` derive from
:class:`ConfigMixin`; they are saved in snapshots as plain dicts (``to_dict``) and rebuilt with
``from_dict``, where an unknown key is an error naming it and the known ones.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class ConfigMixin:
    """Methods for a frozen dataclass: ``to_dict``, ``from_dict``, ``replace``."""

    def to_dict(self) -> dict:
        """Plain str/int/float/bool/None/list values (JSON-able; weights-only loadable)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        known = [f.name for f in dataclasses.fields(cls)]
        for k in keys:
            if k not in known:
                raise ValueError(f"{what}: unknown key {k!r}; known keys: {', '.join(known)}")

    @classmethod
    def from_dict(cls, d: Mapping):
        """The inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: expected a mapping, got {type(d).__name__}")
        cls._check_keys(d, f"{cls.__name__}.from_dict")
        return cls(**d)

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated; unknown keys raise)."""
        self._check_keys(changes, f"{type(self).__name__}.replace")
        return dataclasses.replace(self, **changes)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes: ``a,[1,2],"x,y"`` → ``['a', '[1,2]', '"x,y"']``."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]
