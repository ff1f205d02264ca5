"""Tests of the Memory Manager output parser (memr1.memory.ops): hand cases, round trip, fuzzing."""

from __future__ import annotations

import dataclasses
import json
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memr1.errors import OperationError
from memr1.memory import ops as ops_mod
from memr1.memory.entry import MemoryEntry, Operation, OpKind
from memr1.memory.ops import ParseResult, RejectKind, parse_operations, remap_ids, render_operations

MAP = {"0": "mem-a", "1": "mem-b", "2": "mem-c", "3": "mem-d"}


def out(*items: object) -> str:
    return json.dumps({"memory": list(items)})


def kinds(res: ParseResult) -> list[tuple[str, str | None, str | None]]:
    return [(op.kind.value, op.entry_id, op.text) for op in res.ops]


# --------------------------------------------------------------------------- remap_ids


def test_remap_ids_small_ids_and_map_back():
    entries = [
        MemoryEntry("uuid-9", "Likes tea", "Ann", "t"),
        MemoryEntry("uuid-3", "Has a cat", "Ann", "t"),
        MemoryEntry("uuid-9", "Likes tea", "Ann", "t"),
    ]  # retrieved twice: shown once
    view, id_map = remap_ids(entries)
    assert view == [{"id": "0", "text": "Likes tea"}, {"id": "1", "text": "Has a cat"}]
    assert id_map == {"0": "uuid-9", "1": "uuid-3"}
    assert remap_ids([]) == ([], {})


# --------------------------------------------------------------------------- extraction


UPD0 = {"id": "0", "text": "Loves tea", "event": "UPDATE"}


@pytest.mark.parametrize(
    "raw",
    [
        out(UPD0),
        f"```json\n{out(UPD0)}\n```",
        f"```\n{out(UPD0)}```",
        f"Sure! Here is the result:\n```JSON\n{out(UPD0)}\n```\nLet me know.",
        f"I think {{this}} is it: {out(UPD0)} -- done {{",
        f'{{"note": 1}} then {out(UPD0)}',  # an earlier dict without `memory` loses
        f'{{"answer": {out(UPD0)}}}',  # nested under another key
        "\n  " + out(UPD0) + "  \n",
        out(UPD0).encode(),  # bytes are decoded as utf-8
    ],
)
def test_extraction_from_fences_and_prose(raw):
    res = parse_operations(raw, MAP)
    assert res.ok and kinds(res) == [("UPDATE", "mem-a", "Loves tea")]


def test_fenced_block_wins_over_prose():
    raw = f'The format is {{"memory": []}}; my answer:\n```json\n{out(UPD0)}\n```'
    assert kinds(parse_operations(raw, MAP)) == [("UPDATE", "mem-a", "Loves tea")]


def test_first_dict_without_memory_is_bad_schema():
    res = parse_operations('Result: {"facts": ["x"]} and {"other": 2}', MAP)
    assert res.rejections == {RejectKind.bad_schema: 1}
    assert res.messages == ("output: expected a 'memory' list, got no 'memory' key",)


def test_empty_memory_list_is_ok_and_empty():
    res = parse_operations('{"memory": []}', MAP)
    assert res.ok and res.ops == () and res.messages == () and res.n_rejected == 0


# --------------------------------------------------------------------------- ids and events


def test_int_and_str_ids_are_the_same():
    res = parse_operations(
        out({"id": 1, "event": "DELETE"}, {"id": " 2 ", "event": "NONE"}, {"id": "3", "event": "DELETE"}), MAP
    )
    assert res.ok
    assert kinds(res) == [("DELETE", "mem-b", None), ("NOOP", "mem-c", None), ("DELETE", "mem-d", None)]


@pytest.mark.parametrize(
    "event,kind",
    [
        ("add", "ADD"),
        ("Add", "ADD"),
        ("uPdAtE", "UPDATE"),
        (" delete ", "DELETE"),
        ("none", "NOOP"),
        ("NONE", "NOOP"),
        ("noop", "NOOP"),
        ("NoOp", "NOOP"),
    ],
)
def test_events_case_insensitive_and_noop_alias(event, kind):
    res = parse_operations(out({"id": "0", "text": "t", "event": event}), MAP)
    assert res.ok and res.ops[0].kind == OpKind(kind)


def test_add_id_ignored_and_old_memory_only_for_update():
    res = parse_operations(
        out(
            {"id": "999", "text": "a", "event": "ADD", "old_memory": "x"},
            {"id": [1], "text": "b", "event": "ADD"},
            {"text": " c ", "event": "ADD"},
            {"id": "1", "text": "d", "event": "UPDATE", "old_memory": "was d"},
            {"id": "2", "text": "e", "event": "DELETE", "old_memory": "e"},
        ),
        MAP,
    )
    assert res.ok
    assert res.ops == (
        Operation(OpKind.ADD, None, "a"),
        Operation(OpKind.ADD, None, "b"),
        Operation(OpKind.ADD, None, "c"),
        Operation(OpKind.UPDATE, "mem-b", "d", "was d"),
        Operation(OpKind.DELETE, "mem-c"),
    )
    assert res.counts_by_kind() == {OpKind.ADD: 3, OpKind.UPDATE: 1, OpKind.DELETE: 1, OpKind.NOOP: 0}


# --------------------------------------------------------------------------- every RejectKind

R = RejectKind
MJ, BS, UI, UE = R.malformed_json, R.bad_schema, R.unknown_id, R.unknown_event
MT, ET, TL, DI = R.missing_text, R.empty_text, R.text_too_long, R.duplicate_id

CASES = [  # (raw output, kind, expected messages)
    ("", MJ, ["output: no JSON object or operation line in 0 chars"]),
    ("I have nothing to add.", MJ, ["output: no JSON object or operation line in 22 chars"]),
    ('{"memory": [', MJ, ["output: no JSON object or operation line in 12 chars"]),
    ("[1, 2]", MJ, ["output: no JSON object or operation line in 6 chars"]),
    (None, MJ, ["output: expected a str, got NoneType"]),
    (42, MJ, ["output: expected a str, got int"]),
    (b"\xff\xfe{", MJ, ["output: no JSON object or operation line in 3 chars"]),
    ('{"memories": []}', BS, ["output: expected a 'memory' list, got no 'memory' key"]),
    ('{"memory": {"id": "0"}}', BS, ["output: expected a 'memory' list, got dict"]),
    (
        out(1, "x", None),
        BS,
        [
            "item 0: expected an object, got int",
            "item 1: expected an object, got str",
            "item 2: expected an object, got NoneType",
        ],
    ),
    (out({"id": "0", "text": "t"}), BS, ["item 0: 'event' must be a string, got NoneType"]),
    (out({"id": "0", "text": "t", "event": 1}), BS, ["item 0: 'event' must be a string, got int"]),
    (out({"id": "0", "text": 5, "event": "ADD"}), BS, ["item 0: 'text' must be a string, got int"]),
    (
        out({"id": "0", "text": "t", "event": "UPDATE", "old_memory": ["x"]}),
        BS,
        ["item 0: 'old_memory' must be a string, got list"],
    ),
    (
        out({"id": 1.0, "event": "DELETE"}, {"id": True, "event": "NONE"}, {"event": "UPDATE", "text": "t"}),
        BS,
        [
            "item 0: 'id' must be a string or integer, got float",
            "item 1: 'id' must be a string or integer, got bool",
            "item 2: 'id' must be a string or integer, got NoneType",
        ],
    ),
    ('{"memory": [{"id": "0", "text": NaN, "event": "ADD"}]}', BS, ["item 0: 'text' must be a string, got float"]),
    (
        out(
            {"id": "0", "event": "NONE"},
            {"id": "1", "event": "NONE"},
            {"id": "7", "event": "DELETE"},
            {"id": -1, "text": "t", "event": "update"},
            {"id": "mem-a", "event": "DELETE"},
        ),
        UI,
        [
            "item 2: unknown id '7' (known: 0..3)",
            "item 3: unknown id '-1' (known: 0..3)",
            "item 4: unknown id 'mem-a' (known: 0..3)",
        ],
    ),
    (
        out({"id": "0", "text": "t", "event": "MERGE"}, {"id": "0", "event": ""}),
        UE,
        [
            "item 0: unknown event 'MERGE' (use ADD, UPDATE, DELETE or NONE)",
            "item 1: unknown event '' (use ADD, UPDATE, DELETE or NONE)",
        ],
    ),
    (
        out({"id": "0", "event": "ADD"}, {"id": "1", "text": None, "event": "UPDATE"}),
        MT,
        ["item 0: ADD needs a 'text'", "item 1: UPDATE needs a 'text'"],
    ),
    (
        out({"text": "", "event": "ADD"}, {"id": "1", "text": " \n\t ", "event": "UPDATE"}),
        ET,
        ["item 0: ADD text is blank", "item 1: UPDATE text is blank"],
    ),
    (
        out({"text": "x" * 501, "event": "ADD"}, {"id": 0, "text": " " + "y" * 600, "event": "UPDATE"}),
        TL,
        ["item 0: text too long (501 > 500 chars)", "item 1: text too long (600 > 500 chars)"],
    ),
    (
        out({"id": "0", "text": "t", "event": "UPDATE"}, {"id": 0, "event": "DELETE"}),
        DI,
        ["item 0: duplicate id '0' (items 0, 1)", "item 1: duplicate id '0' (items 0, 1)"],
    ),
    (
        out(
            {"id": "2", "event": "DELETE"},
            {"id": "1", "event": "NONE"},
            {"id": "2", "event": "DELETE"},
            {"id": " 2", "text": "t", "event": "UPDATE"},
        ),
        DI,
        [
            "item 0: duplicate id '2' (items 0, 2, 3)",
            "item 2: duplicate id '2' (items 0, 2, 3)",
            "item 3: duplicate id '2' (items 0, 2, 3)",
        ],
    ),
]


@pytest.mark.parametrize("raw,kind,messages", CASES, ids=[f"{c[1].value}-{i}" for i, c in enumerate(CASES)])
def test_each_reject_kind_counted_with_messages(raw, kind, messages):
    res = parse_operations(raw, MAP)
    assert res.rejections == {kind: len(messages)}
    assert list(res.messages) == messages
    assert not res.ok and res.n_rejected == len(messages)
    try:
        items = json.loads(raw)["memory"]
    except Exception:
        items = None
    if isinstance(items, list):  # every item is either an op or a rejection
        assert len(res.ops) + res.n_rejected == len(items)


@pytest.mark.parametrize("raw,kind,messages", CASES, ids=[f"{c[1].value}-{i}" for i, c in enumerate(CASES)])
def test_strict_raises_first_rejection(raw, kind, messages):
    with pytest.raises(OperationError) as info:
        parse_operations(raw, MAP, strict=True)
    assert info.value.kind == kind and info.value.kind is kind
    assert info.value.detail == messages[0] and str(info.value) == f"{kind.value}: {messages[0]}"


def test_mixed_output_keeps_valid_ops_in_order_and_counts_the_rest():
    raw = out(
        {"id": "0", "text": "Loves tea", "event": "UPDATE", "old_memory": "Likes tea"},
        {"id": "9", "event": "DELETE"},
        {"id": "x", "text": "New fact", "event": "add"},
        {"id": "1", "text": "", "event": "UPDATE"},
        {"id": "1", "event": "DELETE"},
        {"id": 2, "text": "same", "event": "none"},
        {"id": "3", "event": "remove"},
    )
    res = parse_operations(raw, MAP)
    assert res.ops == (
        Operation(OpKind.UPDATE, "mem-a", "Loves tea", "Likes tea"),
        Operation(OpKind.ADD, None, "New fact"),
        Operation(OpKind.DELETE, "mem-b"),  # the blank UPDATE of "1" is no duplicate
        Operation(OpKind.NOOP, "mem-c"),
    )
    assert res.rejections == {UI: 1, ET: 1, UE: 1}
    assert res.messages == (
        "item 1: unknown id '9' (known: 0..3)",
        "item 3: UPDATE text is blank",
        "item 6: unknown event 'remove' (use ADD, UPDATE, DELETE or NONE)",
    )
    assert res.counts_by_kind() == {OpKind.ADD: 1, OpKind.UPDATE: 1, OpKind.DELETE: 1, OpKind.NOOP: 1}
    with pytest.raises(OperationError) as info:
        parse_operations(raw, MAP, strict=True)
    assert info.value.kind is UI and "item 1:" in info.value.detail


def test_strict_first_rejection_is_by_item_order_duplicates_included():
    raw = out({"id": "0", "event": "DELETE"}, {"id": "9", "event": "DELETE"}, {"id": "0", "event": "DELETE"})
    with pytest.raises(OperationError) as info:
        parse_operations(raw, MAP, strict=True)
    assert info.value.kind is DI and info.value.detail.startswith("item 0:")


def test_not_duplicates():
    # NOOP next to an UPDATE of the same id, several ADDs, several NONEs: all fine
    res = parse_operations(
        out(
            {"id": "0", "event": "NONE"},
            {"id": "0", "text": "t", "event": "UPDATE"},
            {"id": "0", "event": "NONE"},
            {"text": "a", "event": "ADD"},
            {"text": "a", "event": "ADD"},
        ),
        MAP,
    )
    assert res.ok and len(res.ops) == 5
    # two small ids mapped to one real id do clash
    res = parse_operations(
        out({"id": "0", "event": "DELETE"}, {"id": "1", "event": "DELETE"}), {"0": "same", "1": "same"}
    )
    assert res.rejections == {DI: 2} and res.ops == ()


def test_text_cap_is_after_strip_and_configurable():
    assert parse_operations(out({"text": " " + "x" * 500 + " ", "event": "ADD"}), MAP).ok
    res = parse_operations(
        out({"text": "abcd", "event": "ADD"}, {"text": "abc", "event": "ADD"}), MAP, max_text_chars=3
    )
    assert res.rejections == {TL: 1} and res.messages == ("item 0: text too long (4 > 3 chars)",)
    assert kinds(res) == [("ADD", None, "abc")]


@pytest.mark.parametrize(
    "id_map,known",
    [({}, "none"), ({"0": "a"}, "0"), ({"0": "a", "1": "b"}, "0..1"), ({"5": "a", "10": "b", "x": "c"}, "5, 10, x")],
)
def test_unknown_id_message_lists_known_ids(id_map, known):
    res = parse_operations(out({"id": "42", "event": "DELETE"}), id_map)
    assert res.messages == (f"item 0: unknown id '42' (known: {known})",)


def test_result_is_frozen_and_rejections_is_a_counter():
    res = parse_operations("nope", MAP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.ops = ()  # type: ignore[misc]
    assert res.rejections["malformed_json"] == 1 and res.rejections[RejectKind.unknown_id] == 0
    assert str(RejectKind.malformed_json) == "malformed_json"
    assert {k.value for k in RejectKind} == {
        "malformed_json",
        "bad_schema",
        "unknown_id",
        "unknown_event",
        "missing_text",
        "empty_text",
        "text_too_long",
        "duplicate_id",
        "truncated",
    }


# --------------------------------------------------------------------------- render / round trip


def test_render_shape_and_unknown_id():
    ops = (
        Operation(OpKind.UPDATE, "mem-b", "Loves tea", "Likes tea"),
        Operation(OpKind.NOOP, "mem-a"),
        Operation(OpKind.ADD, None, "x"),
        Operation(OpKind.ADD, None, "y"),
    )
    assert json.loads(render_operations(ops, MAP)) == {
        "memory": [
            {"id": "1", "text": "Loves tea", "event": "UPDATE", "old_memory": "Likes tea"},
            {"id": "0", "event": "NONE"},
            {"id": "4", "text": "x", "event": "ADD"},
            {"id": "5", "text": "y", "event": "ADD"},
        ]
    }
    with pytest.raises(OperationError) as info:
        render_operations([Operation(OpKind.DELETE, "nowhere")], MAP)
    assert info.value.kind is UI


@st.composite
def valid_ops(draw: st.DrawFn, id_map: dict[str, str]) -> tuple[Operation, ...]:
    """Ops the parser can produce: stripped texts, at most one UPDATE/DELETE per id, any order."""
    texts = st.text(min_size=1, max_size=60).map(str.strip).filter(bool)
    reals = sorted(set(id_map.values()))
    ops = []
    for real in draw(st.lists(st.sampled_from(reals), unique=True)):
        update = st.builds(Operation, st.just(OpKind.UPDATE), st.just(real), texts, st.none() | st.text())
        ops.append(draw(st.just(Operation(OpKind.DELETE, real)) | update))
    ops += draw(
        st.lists(
            texts.map(lambda t: Operation(OpKind.ADD, None, t))
            | st.sampled_from(reals).map(lambda r: Operation(OpKind.NOOP, r)),
            max_size=6,
        )
    )
    return tuple(draw(st.permutations(ops)))


ROUND_MAP = {str(i): f"uuid-{i:04d}" for i in range(6)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_ops(ROUND_MAP), st.booleans())
def test_round_trip_render_parse(ops, fenced):
    raw = render_operations(ops, ROUND_MAP)
    if fenced:
        raw = f"Here are the operations:\n```json\n{raw}\n```\n"
    res = parse_operations(raw, ROUND_MAP, strict=True)
    assert res.ops == ops and res.ok


# --------------------------------------------------------------------------- fuzzing


def check_invariants(raw: object, id_map: dict[str, str], cap: int, n_items: int | None = None) -> ParseResult:
    """Counting mode never raises and returns only well-formed ops; strict mode agrees with it."""
    res = parse_operations(raw, id_map, max_text_chars=cap)
    reals = set(id_map.values())
    for op in res.ops:
        assert isinstance(op, Operation) and isinstance(op.kind, OpKind)
        if op.kind is OpKind.ADD:
            assert op.entry_id is None
        else:
            assert op.entry_id in reals
        if op.kind in (OpKind.ADD, OpKind.UPDATE):
            assert isinstance(op.text, str) and op.text == op.text.strip() and 0 < len(op.text) <= cap
        else:
            assert op.text is None
        assert op.old_text is None or (op.kind is OpKind.UPDATE and isinstance(op.old_text, str))
    assert all(isinstance(k, RejectKind) and v > 0 for k, v in res.rejections.items())
    assert len(res.messages) == res.n_rejected and res.ok == (res.n_rejected == 0)
    acting = [op.entry_id for op in res.ops if op.kind in (OpKind.UPDATE, OpKind.DELETE)]
    assert len(acting) == len(set(acting))
    if n_items is not None:  # the memory list is known: each item is an op or a rejection
        assert len(res.ops) + res.n_rejected == n_items
    elif not res.ops and res.ok:  # nothing at all only when the found memory list is empty
        text = raw if isinstance(raw, str) else bytes(raw).decode(errors="replace")
        assert ops_mod._find_object(text)["memory"] == []
    return res


def check_strict(raw: object, id_map: dict[str, str], cap: int, res: ParseResult) -> None:
    try:
        strict = parse_operations(raw, id_map, max_text_chars=cap, strict=True)
    except OperationError as err:
        assert not res.ok and err.kind in res.rejections and err.detail == res.messages[0]
    else:
        assert res.ok and strict == res


def random_json(rng: random.Random, depth: int = 0) -> object:
    r = rng.random()
    if depth > 3 or r < 0.45:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                7,
                2**40,
                1.5,
                float("nan"),
                float("inf"),
                "",
                "ADD",
                "none",
                "0",
                "1",
                " 2 ",
                "x" * rng.randint(0, 12),
                "\u00e9\u4e2d\U0001f600",
            ]
        )
    if r < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["memory", "id", "text", "event", "old_memory", "facts", ""]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


IDS = [0, 1, 2, 3, 5, -1, "0", "1", " 2 ", "3", "9", "x", "", None, 1.0, True, [], {}, 10**20, "mem-a"]
TEXTS = [
    "Likes tea",
    " padded ",
    "",
    "   ",
    "\n",
    None,
    7,
    ["t"],
    {"t": 1},
    "x" * 50,
    "x" * 51,
    "\u00e9t\u00e9 \U0001f600",
]
EVENTS = [
    "ADD",
    "add",
    "UPDATE",
    "Update",
    "DELETE",
    "delete",
    "NONE",
    "none",
    "NOOP",
    "noop",
    " ADD ",
    "MERGE",
    "",
    None,
    1,
    ["ADD"],
]


def random_item(rng: random.Random) -> object:
    if rng.random() < 0.05:
        return random_json(rng)
    item = {
        "id": rng.choice(IDS),
        "text": rng.choice(TEXTS),
        "event": rng.choice(EVENTS),
        "old_memory": rng.choice(TEXTS),
    }
    for key in list(item):
        if rng.random() < 0.2:
            del item[key]
    return item


def wrap(rng: random.Random, payload: str) -> str:
    style = rng.randrange(5)
    if style == 0:
        return payload
    if style == 1:
        return f"```json\n{payload}\n```"
    if style == 2:
        return f"Okay, {{thinking}} here it is:\n{payload}\nHope that helps {{"
    if style == 3:
        return f"```\n{payload}```\ntrailing"
    return "  " + payload + "\n"


def random_map(rng: random.Random) -> dict[str, str]:
    return {str(i): f"mem-{rng.getrandbits(32):08x}" for i in range(rng.randint(0, 5))}


def test_fuzz_seeded_bulk_never_raises():
    rng = random.Random(20250819)
    cap = 50
    counts = {"bytes": 0, "json": 0, "shaped": 0}
    for n in range(3000):  # random bytes, as text and as bytes
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
        if rng.random() < 0.3:  # sprinkle JSON-ish bytes so the scanner has work to do
            blob += rng.choice([b'{"memory": [', b"{", b'"id": 1', b"]}", b"NaN", b"```json\n"])
        id_map = random_map(rng)
        for raw in (blob.decode("latin-1"), blob.decode("utf-8", errors="replace"), blob):
            res = check_invariants(raw, id_map, cap)
            if n % 10 == 0:
                check_strict(raw, id_map, cap, res)
            counts["bytes"] += 1
    for n in range(4000):  # random JSON values, sometimes truncated or under a `memory` key
        value = random_json(rng)
        if rng.random() < 0.5:
            items = [random_json(rng) for _ in range(rng.randint(0, 4))]
            value = {"memory": value if rng.random() < 0.3 else items}
        raw = json.dumps(value)
        if rng.random() < 0.2:
            raw = raw[: rng.randint(0, len(raw))]
        raw, id_map = wrap(rng, raw), random_map(rng)
        res = check_invariants(raw, id_map, cap)
        if n % 5 == 0:
            check_strict(raw, id_map, cap, res)
        counts["json"] += 1
    for n in range(5000):  # valid-shaped outputs with wrong fields, types, ids and events
        items = [random_item(rng) for _ in range(rng.randint(1, 8))]
        raw, id_map = wrap(rng, json.dumps({"memory": items})), random_map(rng)
        res = check_invariants(raw, id_map, cap, n_items=len(items))
        if n % 5 == 0:
            check_strict(raw, id_map, cap, res)
        counts["shaped"] += 1
    assert counts == {"bytes": 9000, "json": 4000, "shaped": 5000}
    assert sum(counts.values()) >= 10_000


PATHOLOGICAL = [
    "[" * 100_000,
    "{" * 100_000,
    '{"a":' * 50_000,
    '{"memory": ' + "[" * 20_000 + "]" * 20_000 + "}",
    '{"memory": [' + "[" * 5000 + "]" * 5000 + "]}",
    "NaN",
    "Infinity",
    '{"memory": [NaN, Infinity, -Infinity]}',
    '{"memory": [{"id": ' + "1" * 5000 + ', "event": "DELETE"}]}',
    "```" * 1000,
    "```json\n" * 500 + "{",
    '{"memory": [{"event": "ADD", "text": "' + "x" * 200_000 + '"}]}',
    '\x00\ud800{"memory": []}',
    '{"memory": "' + "{" * 1000 + '"}',
    "}" * 1000 + "{" * 1000,
    '{"memory": [{"id": "0", "event": "DELETE"}]' * 300,
]


@pytest.mark.parametrize("raw", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_outputs_never_raise(raw):
    res = check_invariants(raw, MAP, 500)
    check_strict(raw, MAP, 500, res)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["ADD", "update", "NONE", "noop", "DELETE", "0", "1", "3"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["memory", "id", "text", "event", "old_memory"]) | st.text(max_size=5), children, max_size=5
        )
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.booleans(), st.sampled_from(["", "```json\n{}\n```", "Sure: {}", "{} and {{"]))
def test_fuzz_hypothesis_json_values(value, under_memory, template):
    payload = json.dumps({"memory": value} if under_memory else value)
    raw = template.format(payload) if template else payload
    known = under_memory and isinstance(value, list) and "`" not in payload  # no fence can cut the payload
    res = check_invariants(raw, MAP, 30, n_items=len(value) if known else None)
    check_strict(raw, MAP, 30, res)


item_shapes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(-2, 6) | st.sampled_from(["0", " 1", "3 ", "9", "x", ""]) | st.none() | st.floats(),
        "text": st.text(max_size=40) | st.none() | st.integers(),
        "event": st.sampled_from(["ADD", "add", "UPDATE", "DELETE", "delete", "NONE", "NOOP", "noop", "merge"])
        | st.text(max_size=6)
        | st.none()
        | st.integers(),
        "old_memory": st.text(max_size=10) | st.none() | st.booleans(),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(item_shapes | json_values, min_size=1, max_size=10), st.binary(max_size=30))
def test_fuzz_hypothesis_item_shapes(items, noise):
    raw = noise.decode("latin-1").replace("{", "(") + "\n" + json.dumps({"memory": items})
    check_invariants(raw, MAP, 30, n_items=len(items))


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list('{}[]":,0123456789 memoryidtextevent') + list(string.printable)), max_size=200
    )
)
def test_fuzz_hypothesis_jsonish_text(raw):
    res = check_invariants(raw, MAP, 500)
    check_strict(raw, MAP, 500, res)


# ----------------------------------------------------------------------------- line form (small models)


def test_line_form_reads_keyword_and_arrow_lines_and_ignores_prose():
    raw = (
        "Here is what I would do:\n"
        "New facts:\n"  # an echoed header is not an operation
        "- Ann moved to Oslo. => CHANGE 1\n"
        "- Ann has a cat. => NEW\n"
        "ADD Ann likes tea\n"
        "DELETE 2\n"
        "- Ann plays chess. => same 3\n"
    )
    r = parse_operations(raw, MAP)
    assert r.ok, r.messages
    assert [(op.kind, op.entry_id, op.text) for op in r.ops] == [
        (OpKind.UPDATE, "mem-b", "Ann moved to Oslo."),
        (OpKind.ADD, None, "Ann has a cat."),
        (OpKind.ADD, None, "Ann likes tea"),
        (OpKind.DELETE, "mem-c", None),
        (OpKind.NOOP, "mem-d", None),
    ]


@pytest.mark.parametrize(
    "raw, kind",
    [
        ("- Ann left. => REMOVE 7", RejectKind.unknown_id),  # an id that was not shown
        ("UPDATE 0", RejectKind.empty_text),  # no new sentence
        ("- Ann left. => CHANGE 0\n- Ann moved. => CHANGE 0", RejectKind.duplicate_id),
        ("I would keep everything as it is.", RejectKind.malformed_json),
    ],
)
def test_line_form_rejections_are_counted_like_json_items(raw, kind):
    r = parse_operations(raw, MAP)
    assert not r.ops or kind is RejectKind.duplicate_id
    assert kind in r.rejections, r.messages
    with pytest.raises(OperationError):
        parse_operations(raw, MAP, strict=True)


def test_json_wins_over_lines_when_both_are_present():
    raw = 'ADD Ann likes tea\n{"memory": [{"id": "0", "event": "DELETE"}]}'
    assert [(op.kind, op.entry_id) for op in parse_operations(raw, MAP).ops] == [(OpKind.DELETE, "mem-a")]
