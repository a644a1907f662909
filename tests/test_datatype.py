"""The record classes' decorator behaves as `dataclasses` for what the package uses: each
case is run with both, and the outcomes compared."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskwatcher.grammar import datatype as lite


def fields_of(cls: type) -> tuple:
    """The fields, asked of whichever module made the class."""
    return lite.fields(cls) if hasattr(cls, lite.FIELDS) else dataclasses.fields(cls)


FLAVOURS = {
    "dataclasses": (dataclasses.dataclass, dataclasses.field, dataclasses.replace),
    "datatype": (lite.datatype, lite.field, lite.replace),
}


def classes(flavour: str) -> dict[str, type]:
    """The same class definitions, made by one decorator or the other."""
    decorate, field, _ = FLAVOURS[flavour]
    seen: list[str] = []

    @decorate(frozen=True)
    class Point:
        x: int
        y: int = 0
        tags: list[str] = field(default_factory=list)
        note: str | None = field(default=None, repr=False)

    @decorate
    class Counter:
        name: str
        counts: dict[str, int] = field(default_factory=dict)
        seen_at: int = field(init=False, repr=False, default=7)

        def __post_init__(self) -> None:
            seen.append(self.name)

    @decorate(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")
            object.__setattr__(self, "value", self.value * 2)

    @decorate(frozen=True)
    class Base:
        a: int

    @decorate(frozen=True)
    class Derived(Base):
        b: str = "b"

    return {
        "Point": Point,
        "Counter": Counter,
        "Checked": Checked,
        "Base": Base,
        "Derived": Derived,
        "seen": seen,
    }


def outcome(action) -> object:
    """What an action gives: its value, or the kind of error it raised."""
    try:
        return ("value", repr(action()))  # records of the two kinds never compare equal
    except (TypeError, ValueError, AttributeError) as error:
        return (
            "error",
            next(kind for kind in type(error).__mro__ if kind.__module__ == "builtins"),
        )


def both(action) -> tuple[object, object]:
    return tuple(outcome(lambda f=f: action(classes(f), FLAVOURS[f])) for f in FLAVOURS)


def test_construction_repr_equality_and_hash_match():
    def make(made, _):
        point = made["Point"](1, y=2, tags=["a"], note="hidden")
        return (
            repr(point),
            point == made["Point"](1, 2, ["a"], "hidden"),
            point == made["Point"](1),
            point != made["Point"](1, 2, ["a"]),
            hash(made["Derived"](3)) == hash(made["Derived"](3, "b")),
            hash(made["Derived"](3)) != hash(made["Derived"](3, "c")),
            point.tags,
            made["Point"](5).tags is not made["Point"](5).tags,
            repr(made["Derived"](1)),
            made["Derived"](1) == made["Base"](1),
            repr(made["Counter"]("c")),
            made["Counter"]("c").seen_at,
            made["Checked"](4).value,
            made["Point"].__match_args__,
        )

    ours, theirs = both(make)
    assert ours == theirs
    assert ours[0] == "value"


@pytest.mark.parametrize(
    "action",
    [
        lambda made, _: made["Point"](),  # missing argument
        lambda made, _: made["Point"](1, 2, [], None, 5),  # too many
        lambda made, _: made["Point"](1, x=1),  # twice
        lambda made, _: made["Point"](1, z=1),  # unknown
        lambda made, _: made["Counter"]("c", seen_at=1),  # not an __init__ field
        lambda made, _: setattr(made["Point"](1), "x", 2),  # frozen
        lambda made, _: delattr(made["Point"](1), "x"),
        lambda made, _: hash(made["Counter"]("c")),  # mutable: unhashable
        lambda made, _: made["Checked"](-1),  # __post_init__ refuses
        lambda made, flavour: flavour[2](made["Counter"]("c"), seen_at=3),
        lambda made, flavour: flavour[2](made["Point"](1), z=3),
        lambda made, flavour: flavour[2](made["Point"](1, tags=["t"]), y=9),
        lambda made, flavour: flavour[2](made["Checked"](2), value=3).value,
    ],
)
def test_errors_and_replace_match(action):
    ours, theirs = both(action)
    assert ours == theirs


def test_mistaken_definitions_are_refused_as_by_dataclasses():
    def mutable_default(_, flavour):
        class Wrong:
            items: list = []  # noqa: RUF012

        return flavour[0](Wrong)

    def default_before_required(_, flavour):
        class Wrong:
            a: int = 1
            b: int

        return flavour[0](Wrong)

    def unhashable_default(made, flavour):
        class Wrong:
            buffer: bytearray = bytearray(b"shared")

        return flavour[0](Wrong)

    def record_as_default(made, flavour):
        class Wrong:
            counter: object = made["Counter"]("shared")  # not frozen: shared, and changed

        return flavour[0](Wrong)

    for action in (mutable_default, default_before_required, unhashable_default, record_as_default):
        ours, theirs = both(action)
        assert ours == theirs
        assert ours[0] == "error"


def test_a_field_annotated_again_keeps_the_default_it_inherits():
    def again(made, flavour):
        @flavour[0](frozen=True)
        class Again(made["Derived"]):
            b: str

        defaults = [item.default for item in fields_of(Again)]
        return repr(Again(1)), [
            default in (lite.MISSING, dataclasses.MISSING) for default in defaults
        ]

    ours, theirs = both(again)
    assert ours == theirs
    assert ours[0] == "value"


def test_post_init_runs_once_per_instance():
    for flavour in FLAVOURS:
        made = classes(flavour)
        made["Counter"]("one")
        made["Counter"]("two")
        assert made["seen"] == ["one", "two"]


def test_fields_name_their_annotations_and_defaults():
    made = classes("datatype")
    described = [(item.name, item.type, item.init) for item in lite.fields(made["Point"](1))]
    assert described == [
        ("x", "int", True),
        ("y", "int", True),
        ("tags", "list[str]", True),
        ("note", "str | None", True),
    ]
    assert [item.default for item in lite.fields(made["Point"])] == [
        lite.MISSING,
        0,
        lite.MISSING,
        None,
    ]
    assert [item.name for item in lite.fields(made["Derived"])] == ["a", "b"]


@given(
    x=st.one_of(st.none(), st.integers()),
    y=st.one_of(st.none(), st.integers()),
    tags=st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=3)),
    by_keyword=st.booleans(),
)
def test_any_call_gives_what_dataclasses_gives(x, y, tags, by_keyword):
    given_values = {
        name: value for name, value in (("x", x), ("y", y), ("tags", tags)) if value is not None
    }

    def call(made, _):
        if by_keyword:
            point = made["Point"](**given_values)
        else:
            point = made["Point"](*given_values.values())
        return repr(point), hash((point.x, point.y)), point == made["Point"](**given_values)

    ours, theirs = both(call)
    assert ours == theirs
