"""The shadow merge rules, on documents shaped like GetThingShadow's."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from activities.shadow_merge import merge_shadow, newest_timestamp


def meta_of(state: Any, ts: float) -> Any:
    """Metadata as AWS builds it: every leaf stamped, arrays element by element."""
    if isinstance(state, dict):
        return {k: meta_of(v, ts) for k, v in state.items()}
    if isinstance(state, list):
        return [meta_of(v, ts) for v in state]
    return {"timestamp": ts}


def doc(desired: dict | None = None, reported: dict | None = None, ts: float = 100, version: int = 1) -> dict:
    state, metadata = {}, {}
    for name, section in (("desired", desired), ("reported", reported)):
        if section is not None:
            state[name] = section
            metadata[name] = meta_of(section, ts)
    return {"state": state, "metadata": metadata, "version": version, "timestamp": ts}


def apply(target: dict | None, payload: dict | None) -> dict:
    """What UpdateThingShadow does to the state: merge objects, replace leaves, drop nulls."""

    def merge(into: dict, update: dict) -> None:
        for k, v in update.items():
            if v is None:
                into.pop(k, None)
            elif isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = json.loads(json.dumps(v))

    state = json.loads(json.dumps((target or {}).get("state", {})))
    for section, update in ((payload or {}).get("state") or {}).items():
        state.setdefault(section, {})
        merge(state[section], update)
    return state


def test_no_source_shadow_changes_nothing() -> None:
    m = merge_shadow(None, doc(reported={"a": 1}))
    assert (m.payload, m.outcome, m.stale) == (None, "unchanged", [])


def test_missing_target_is_copied_whole() -> None:
    src = doc(desired={"mode": "eco"}, reported={"temp": 21, "fw": {"version": "1.2"}})
    m = merge_shadow(src, None)
    assert m.outcome == "copied"
    assert m.payload == {
        "state": {"desired": {"mode": "eco"}, "reported": {"fw": {"version": "1.2"}, "temp": 21}}
    }
    assert sorted(s.path for s in m.stale) == ["desired.mode", "reported.fw.version", "reported.temp"]
    assert all(s.source_timestamp == 100 for s in m.stale)


def test_identical_shadows_are_unchanged() -> None:
    src = doc(reported={"a": 1, "b": {"c": [1, 2]}}, ts=100)
    tgt = doc(reported={"a": 1, "b": {"c": [1, 2]}}, ts=50)
    assert merge_shadow(src, tgt).payload is None
    assert merge_shadow(src, tgt).outcome == "unchanged"


def test_newer_source_leaf_wins_older_target_leaf_kept() -> None:
    src = doc(reported={"a": 2, "b": 1})
    src["metadata"]["reported"]["b"] = {"timestamp": 10}
    tgt = doc(reported={"a": 1, "b": 9}, ts=50)
    m = merge_shadow(src, tgt)
    assert m.outcome == "merged"
    assert m.payload == {"state": {"reported": {"a": 2}}}
    assert [s.path for s in m.stale] == ["reported.a"]


def test_device_that_already_reported_in_target_is_not_clobbered() -> None:
    src = doc(reported={"connectivity": {"region": "us-east-1", "epoch": 1}, "temp": 20}, ts=100)
    tgt = doc(reported={"connectivity": {"region": "us-west-2", "epoch": 2}}, ts=200)
    m = merge_shadow(src, tgt)
    assert m.payload == {"state": {"reported": {"temp": 20}}}
    assert apply(tgt, m.payload)["reported"]["connectivity"] == {"region": "us-west-2", "epoch": 2}


def test_nested_objects_merge_key_by_key() -> None:
    src = doc(desired={"cfg": {"a": 1, "b": {"x": 1}}}, ts=100)
    src["metadata"]["desired"]["cfg"]["a"] = {"timestamp": 300}
    tgt = doc(desired={"cfg": {"a": 0, "b": {"x": 2, "y": 3}, "only_target": True}}, ts=200)
    m = merge_shadow(src, tgt)
    assert m.payload == {"state": {"desired": {"cfg": {"a": 1}}}}
    merged = apply(tgt, m.payload)["desired"]
    assert merged == {"cfg": {"a": 1, "b": {"x": 2, "y": 3}, "only_target": True}}


def test_arrays_are_values_replaced_whole() -> None:
    src = doc(reported={"tags": ["a"]}, ts=200)
    tgt = doc(reported={"tags": ["a", "b", "c"]}, ts=100)
    m = merge_shadow(src, tgt)
    assert m.payload == {"state": {"reported": {"tags": ["a"]}}}
    assert [s.path for s in m.stale] == ["reported.tags"]
    # an older array does not replace a newer one, even a longer one
    assert merge_shadow(doc(reported={"tags": [1, 2, 3]}, ts=50), tgt).payload is None


def test_array_timestamp_is_its_newest_element() -> None:
    assert newest_timestamp([{"timestamp": 5}, {"timestamp": 9}]) == 9
    assert newest_timestamp([]) is None
    # an object whose key is literally "timestamp" is not a leaf's metadata
    assert newest_timestamp({"timestamp": {"timestamp": 7}, "x": {"timestamp": 3}}) == 7


def test_newer_null_leaf_deletes_older_one() -> None:
    src = {
        "state": {"reported": {"gone": None, "kept": 1}},
        "metadata": {"reported": {"gone": {"timestamp": 300}, "kept": {"timestamp": 300}}},
    }
    tgt = doc(reported={"gone": "x", "kept": 1}, ts=200)
    m = merge_shadow(src, tgt)
    assert m.payload == {"state": {"reported": {"gone": None}}}
    assert apply(tgt, m.payload)["reported"] == {"kept": 1}
    assert [s.path for s in m.stale] == ["reported.gone"]


def test_older_null_leaf_does_not_delete_newer_one() -> None:
    src = {"state": {"reported": {"gone": None}}, "metadata": {"reported": {"gone": {"timestamp": 100}}}}
    assert merge_shadow(src, doc(reported={"gone": "x"}, ts=200)).payload is None


def test_null_for_a_leaf_the_target_lacks_is_nothing_to_do() -> None:
    src = {
        "state": {"desired": {"a": None, "b": {"c": None}}},
        "metadata": {"desired": {"a": {"timestamp": 9}}},
    }
    assert merge_shadow(src, doc(reported={"x": 1})).payload is None
    assert merge_shadow(src, None).payload is None


def test_nulls_inside_a_copied_subtree_are_dropped() -> None:
    src = doc(reported={"net": {"ip": "10.0.0.1", "old": None}}, ts=300)
    m = merge_shadow(src, doc(reported={"other": 1}, ts=100))
    assert m.payload == {"state": {"reported": {"net": {"ip": "10.0.0.1"}}}}
    assert [s.path for s in m.stale] == ["reported.net.ip"]


def test_absent_leaf_in_source_is_not_a_deletion() -> None:
    m = merge_shadow(doc(reported={"a": 1}, ts=300), doc(reported={"a": 1, "b": 2}, ts=100))
    assert m.payload is None


def test_clock_tie_keeps_the_target() -> None:
    src, tgt = doc(reported={"a": "source"}, ts=100), doc(reported={"a": "target"}, ts=100)
    assert merge_shadow(src, tgt).payload is None
    # and the rule does not depend on which side has which value
    assert merge_shadow(tgt, src).payload is None


def test_missing_timestamps_never_beat_a_real_one() -> None:
    src = {"state": {"reported": {"a": 2}}}
    assert merge_shadow(src, doc(reported={"a": 1})).payload is None
    # ... but still fill leaves the target lacks
    assert merge_shadow(src, doc(reported={"b": 1})).payload == {"state": {"reported": {"a": 2}}}


def test_type_changes_replace_whole_subtrees_by_newest_time() -> None:
    tgt = doc(reported={"pos": 5}, ts=100)
    m = merge_shadow(doc(reported={"pos": {"lat": 1, "lon": 2}}, ts=200), tgt)
    assert m.payload == {"state": {"reported": {"pos": {"lat": 1, "lon": 2}}}}
    assert sorted(s.path for s in m.stale) == ["reported.pos.lat", "reported.pos.lon"]
    m = merge_shadow(doc(reported={"pos": 7}, ts=300), doc(reported={"pos": {"lat": 1}}, ts=200))
    assert m.payload == {"state": {"reported": {"pos": 7}}}


def test_desired_and_reported_merge_independently() -> None:
    src = doc(desired={"mode": "eco"}, reported={"temp": 20}, ts=200)
    tgt = doc(desired={"mode": "max"}, ts=300)
    m = merge_shadow(src, tgt)
    assert m.payload == {"state": {"reported": {"temp": 20}}}


def test_merge_is_idempotent_and_deterministic() -> None:
    """Applying the payload then merging again changes nothing; key order never matters."""
    src = doc(desired={"z": 1, "a": {"c": 2, "b": [1]}}, reported={"t": 1, "s": None}, ts=300)
    src["metadata"]["reported"]["s"] = {"timestamp": 300}
    tgt = doc(desired={"a": {"c": 0, "d": 4}}, reported={"s": 9, "u": 1}, ts=100)
    m = merge_shadow(src, tgt)
    merged = {
        "state": apply(tgt, m.payload),
        "metadata": {
            "desired": meta_of(apply(tgt, m.payload)["desired"], 400),
            "reported": meta_of(apply(tgt, m.payload)["reported"], 400),
        },
    }
    assert merge_shadow(src, merged).payload is None
    for perm in itertools.permutations(["z", "a"]):
        shuffled = {
            "state": {
                "desired": {k: src["state"]["desired"][k] for k in perm},
                "reported": src["state"]["reported"],
            },
            "metadata": src["metadata"],
        }
        assert merge_shadow(shuffled, tgt).payload == m.payload
    assert [s.path for s in m.stale] == [
        "desired.a.b",
        "desired.a.c",
        "desired.z",
        "reported.s",
        "reported.t",
    ]


# --- properties of the documented rules, over generated shadows (hypothesis) ----------------------
#
# A generated section is a tree of objects whose leaves are scalars or arrays; every leaf has its
# own metadata timestamp from a handful of whole seconds (so ties are common), or none at all.
# Source documents may hold tombstones (null leaves); targets never do (GetThingShadow drops them).

Path = tuple[str, ...]
KEYS = st.sampled_from(["a", "b", "c", "timestamp"])  # "timestamp" as a key must not fool the merge
SCALARS = st.integers(-2, 2) | st.sampled_from(["x", "y"]) | st.booleans()
STAMPS = st.none() | st.integers(1, 4)  # None: the leaf has no metadata


def _leaf(value: Any, ts: int | None) -> tuple[Any, Any]:
    if ts is None:
        return value, None
    return value, ([{"timestamp": ts}] * len(value) if isinstance(value, list) else {"timestamp": ts})


def _object(children: dict[str, tuple[Any, Any]]) -> tuple[dict, dict]:
    state = {k: v for k, (v, _) in children.items()}
    meta = {k: m for k, (_, m) in children.items() if m is not None}
    return state, meta


def _trees(tombstones: bool) -> st.SearchStrategy[tuple[dict, dict]]:
    values = SCALARS | st.lists(SCALARS, max_size=2) | (st.none() if tombstones else st.nothing())
    leaves = st.builds(_leaf, values, STAMPS)
    nodes = st.recursive(
        leaves, lambda kids: st.dictionaries(KEYS, kids, min_size=1, max_size=3).map(_object), max_leaves=6
    )
    return st.dictionaries(KEYS, nodes, min_size=1, max_size=3).map(_object)


def _docs(tombstones: bool) -> st.SearchStrategy[dict]:
    sections = st.fixed_dictionaries(
        {}, optional={"desired": _trees(tombstones), "reported": _trees(tombstones)}
    )
    return sections.map(
        lambda s: {"state": {k: v[0] for k, v in s.items()}, "metadata": {k: v[1] for k, v in s.items()}}
    )


def _leaves(state: Any, meta: Any, path: Path = ()) -> dict[Path, tuple[Any, int | None]]:
    """Every leaf by path: its value and its own timestamp (an array: its newest element's)."""
    if isinstance(state, dict):
        out: dict[Path, tuple[Any, int | None]] = {}
        for k, v in state.items():
            out |= _leaves(v, meta.get(k) if isinstance(meta, dict) else None, (*path, k))
        return out
    if isinstance(meta, list):
        return {path: (state, max((m["timestamp"] for m in meta), default=None))}
    return {path: (state, meta["timestamp"] if isinstance(meta, dict) else None)}


def _doc_leaves(doc_: dict | None) -> dict[Path, tuple[Any, int | None]]:
    doc_ = doc_ or {}
    return {
        (section, *p): leaf
        for section, state in doc_.get("state", {}).items()
        for p, leaf in _leaves(state, doc_.get("metadata", {}).get(section)).items()
    }


def _node(doc_: dict | None, path: Path) -> Any:
    node: Any = (doc_ or {}).get("state", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _ABSENT
        node = node[key]
    return node


_ABSENT = object()


def _write(target: dict | None, payload: dict | None, now: int) -> dict:
    """UpdateThingShadow: the payload merged into the target, every written leaf stamped `now`."""
    out = json.loads(json.dumps(target or {"state": {}, "metadata": {}}))

    def stamp(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stamp(v) for k, v in value.items()}
        return [{"timestamp": now}] * len(value) if isinstance(value, list) else {"timestamp": now}

    def merge(state: dict, meta: dict, update: dict) -> None:
        for k, v in update.items():
            if v is None:
                state.pop(k, None)
                meta.pop(k, None)
            elif isinstance(v, dict) and isinstance(state.get(k), dict):
                merge(state[k], meta.setdefault(k, {}), v)
            else:
                state[k], meta[k] = json.loads(json.dumps(v)), stamp(v)

    for section, update in ((payload or {}).get("state") or {}).items():
        merge(out["state"].setdefault(section, {}), out["metadata"].setdefault(section, {}), update)
    return out


def _under_objects(doc_: dict | None, path: Path) -> bool:
    """Every proper prefix of `path` is an object (or absent) in the document: no type conflict."""
    return all(
        (node := _node(doc_, path[:i])) is _ABSENT or isinstance(node, dict) for i in range(1, len(path))
    )


def _newer(s: int | None, t: int | None) -> bool:
    return s is not None and (t is None or s > t)


@settings(max_examples=400, deadline=None)
@given(_docs(tombstones=True), _docs(tombstones=False) | st.none())
def test_property_merging_twice_changes_nothing(source: dict, target: dict | None) -> None:
    first = merge_shadow(source, target)
    merged = _write(target, first.payload, now=10)  # the sync's write is stamped newer than all
    assert merge_shadow(source, merged).payload is None


@settings(max_examples=400, deadline=None)
@given(_docs(tombstones=True), _docs(tombstones=False))
def test_property_no_leaf_of_either_side_is_lost(source: dict, target: dict) -> None:
    merged = _write(target, merge_shadow(source, target).payload, now=10)
    merged_leaves = _doc_leaves(merged)

    def kept(path: Path) -> bool:  # a leaf there, above it (a newer leaf) or below it (a newer object)
        return any(p[: len(path)] == path or path[: len(p)] == p for p in merged_leaves)

    for path, (value, _) in _doc_leaves(source).items():
        if value is not None:
            assert kept(path), path
    tombstones = {p: ts for p, (v, ts) in _doc_leaves(source).items() if v is None}
    for path, (_, ts) in _doc_leaves(target).items():
        deleted = any(path[: len(p)] == p and _newer(s_ts, ts) for p, s_ts in tombstones.items())
        assert kept(path) or deleted, path


@settings(max_examples=400, deadline=None)
@given(_docs(tombstones=True), _docs(tombstones=False))
def test_property_a_newer_source_leaf_wins_and_a_tie_keeps_the_target(source: dict, target: dict) -> None:
    merged = _write(target, merge_shadow(source, target).payload, now=10)
    target_leaves = _doc_leaves(target)
    for path, (value, s_ts) in _doc_leaves(source).items():
        if path not in target_leaves or not _under_objects(source, path) or not _under_objects(target, path):
            continue
        t_value, t_ts = target_leaves[path]
        if _newer(s_ts, t_ts):
            assert _node(merged, path) == (_ABSENT if value is None else value), path
        else:  # a tie, an older source or a source without a timestamp: the target's value stays
            assert _node(merged, path) == t_value, path


@settings(max_examples=300, deadline=None)
@given(_docs(tombstones=True), _docs(tombstones=False) | st.none())
def test_property_only_changes_are_written_whatever_the_key_order(source: dict, target: dict | None) -> None:
    m = merge_shadow(source, target)
    target_leaves = _doc_leaves(target)
    for path, (value, _) in _doc_leaves(m.payload and {**m.payload, "metadata": {}}).items():
        assert value is None or target_leaves.get(path, (_ABSENT,))[0] != value, path

    def reverse(node: Any) -> Any:
        return {k: reverse(node[k]) for k in reversed(list(node))} if isinstance(node, dict) else node

    assert merge_shadow(reverse(source), reverse(target)).payload == m.payload


@settings(max_examples=200, deadline=None)
@given(_docs(tombstones=False))
def test_property_a_shadow_merged_into_itself_writes_nothing(shadow: dict) -> None:
    assert merge_shadow(shadow, json.loads(json.dumps(shadow))).payload is None
