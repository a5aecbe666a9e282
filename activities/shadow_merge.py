"""Merge one device shadow from a source region into a target region, leaf by leaf (pure, no I/O).

A shadow lives only in the region its device talks to, so moving or mirroring devices means
carrying shadows across regions without clobbering what a device already wrote in the target.
The rules, applied separately to `state.desired` and `state.reported`:

- **Leaf by leaf, newest wins.** Objects are walked key by key; everything else (numbers,
  strings, booleans, arrays) is a leaf. A leaf's time is its `metadata` timestamp (for an array
  or a subtree: the newest timestamp inside it). The source value replaces the target's only when
  its timestamp is strictly newer.
- **Arrays are values**: compared and replaced whole, never merged element by element.
- **Nulls are deletions**: a `null` leaf in the source (a tombstone, as in an update document)
  deletes the target's leaf when the tombstone is newer. A leaf merely *absent* from the source is
  not a deletion (GetThingShadow does not report deletions), so the target keeps it.
- **Ties keep the target.** Timestamps are whole seconds, so two writes in the same second
  cannot be ordered; the sync only overwrites what is provably older. A missing timestamp counts
  as older than any real one. The outcome is the same whatever order keys are visited in.
- **Only changes are written**: the payload holds just the leaves that change (plus `null`s for
  leaves to delete); an unchanged shadow yields no payload at all.

The target stamps what the sync writes with the time of the write (AWS does not let a client set
metadata), so a later sync in the other direction sees the copy as newer than the original; values
are equal then, and equal values are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SECTIONS = ("desired", "reported")
_MISSING: Any = object()

Outcome = Literal["copied", "merged", "unchanged"]


@dataclass(frozen=True)
class StaleLeaf:
    """A leaf the target held older (or lacked) than the source: its path and the source's time."""

    path: str
    source_timestamp: float | None


@dataclass
class ShadowMerge:
    """What syncing one shadow needs: the update payload (None: nothing to write) and why."""

    payload: dict | None
    outcome: Outcome
    stale: list[StaleLeaf] = field(default_factory=list)


def merge_shadow(source: dict | None, target: dict | None) -> ShadowMerge:
    """Merge the source shadow document into the target's; either may be None (no such shadow).

    Returns the UpdateThingShadow payload `{"state": {...}}` (without `version`; the caller adds
    the target's version it read) or None when the target already holds everything, and the
    leaves where the target was stale.
    """
    if not source:
        return ShadowMerge(None, "unchanged")
    state: dict[str, Any] = {}
    stale: list[StaleLeaf] = []
    for section in SECTIONS:
        s_state = (source.get("state") or {}).get(section, _MISSING)
        t_state = ((target or {}).get("state") or {}).get(section, _MISSING)
        s_meta = (source.get("metadata") or {}).get(section)
        t_meta = ((target or {}).get("metadata") or {}).get(section)
        fragment = _merge(s_state, s_meta, t_state, t_meta, section, stale)
        if fragment is not _MISSING:
            state[section] = fragment
    if not state:
        return ShadowMerge(None, "unchanged")
    return ShadowMerge({"state": state}, "copied" if target is None else "merged", stale)


def newest_timestamp(meta: Any) -> float | None:
    """The newest metadata timestamp in a leaf's or subtree's metadata (None when there is none)."""
    if isinstance(meta, dict):
        ts = meta.get("timestamp")
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            return float(ts)
        found = [t for t in map(newest_timestamp, meta.values()) if t is not None]
        return max(found) if found else None
    if isinstance(meta, list):
        found = [t for t in map(newest_timestamp, meta) if t is not None]
        return max(found) if found else None
    return None


def _child_meta(meta: Any, key: str) -> Any:
    """The metadata of `key` under an object's metadata; a leaf's metadata covers its children."""
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("timestamp"), int | float) and not isinstance(meta.get("timestamp"), bool):
        return meta
    return meta.get(key)


def _newer(s_meta: Any, t_meta: Any) -> bool:
    s, t = newest_timestamp(s_meta), newest_timestamp(t_meta)
    return s is not None and (t is None or s > t)


def _merge(s: Any, s_meta: Any, t: Any, t_meta: Any, path: str, stale: list[StaleLeaf]) -> Any:
    """The update fragment turning target node `t` into the merged node, or _MISSING for none."""
    if s is _MISSING:
        return _MISSING
    if isinstance(s, dict) and isinstance(t, dict):
        out = {}
        for key in sorted(s):
            frag = _merge(
                s[key],
                _child_meta(s_meta, key),
                t.get(key, _MISSING),
                _child_meta(t_meta, key),
                f"{path}.{key}",
                stale,
            )
            if frag is not _MISSING:
                out[key] = frag
        return out or _MISSING
    if s is None:  # a tombstone: delete the target's leaf if the deletion is newer
        if t is _MISSING or t is None or not _newer(s_meta, t_meta):
            return _MISSING
        stale.append(StaleLeaf(path, newest_timestamp(s_meta)))
        return None
    if t is _MISSING or (t != s and _newer(s_meta, t_meta)):
        value = _without_nulls(s)
        if value is _MISSING:
            return _MISSING
        stale.extend(_leaves(value, s_meta, path))
        return value
    return _MISSING


def _without_nulls(value: Any) -> Any:
    """A copy of a source subtree without its tombstones (_MISSING when nothing is left)."""
    if not isinstance(value, dict):
        return _MISSING if value is None else value
    out = {k: v for k, v in ((k, _without_nulls(v)) for k, v in value.items()) if v is not _MISSING}
    return out or _MISSING


def _leaves(value: Any, meta: Any, path: str) -> list[StaleLeaf]:
    if isinstance(value, dict):
        return [
            leaf
            for key in sorted(value)
            for leaf in _leaves(value[key], _child_meta(meta, key), f"{path}.{key}")
        ]
    return [StaleLeaf(path, newest_timestamp(meta))]
