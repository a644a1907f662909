"""Record classes without the cost of `dataclasses`: the subset of it this package uses.

A command run in its own process imports some thirty record classes. `dataclasses` imports
`inspect` (with ast, dis and tokenize) and compiles an `__init__`, `__repr__` and `__eq__`
for each class with `exec`: about a fifth of `twrun -- true`. The methods here are shared,
generic ones that read the class's fields, so defining a class costs next to nothing.

Behaves as `dataclasses.dataclass` for what is used: fields from the class's annotations
(bases' first), defaults and `field(default_factory=..., init=False, repr=False)`,
`__post_init__`, `frozen=True` (immutable and hashable), equality between instances of the
same class, `replace` and `fields`. Not supported: ClassVar and InitVar annotations, order,
slots, keyword-only fields. The tests compare it with `dataclasses` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_: object) -> Callable:
        return lambda decorated: decorated


#: No default: a sentinel, as dataclasses.MISSING.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
FIELDS = "__datatype_fields__"
PLAN = "__datatype_plan__"  # how __init__ fills the fields (_Plan)


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    """One field: its name, its annotation (a string, as the package's modules postpone
    annotations) and how it gets its value."""

    __slots__ = ("default", "default_factory", "init", "name", "repr", "type")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Callable[[], Any] = MISSING,
        init: bool = True,
        repr: bool = True,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name, self.type = "", ""
        self.default, self.default_factory, self.init, self.repr = (
            default,
            default_factory,
            init,
            repr,
        )


def field(**options: Any) -> Any:
    """A field with options (see Field), as dataclasses.field."""
    return Field(**options)


def fields(record: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    return tuple(getattr(record, FIELDS).values())


@dataclass_transform(field_specifiers=(field,))
def datatype(cls: type[T] | None = None, *, frozen: bool = False) -> Any:
    """Make `cls` a record class (as @dataclass, or @dataclass(frozen=True))."""

    def make(cls: type[T]) -> type[T]:
        found: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            found.update(getattr(base, FIELDS, {}))
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  (inspect: the cost avoided)
        for name, annotation in own.items():
            found[name] = _field_of(cls, name, annotation)
        _check_order(cls, found.values())
        setattr(cls, FIELDS, found)
        setattr(cls, PLAN, _Plan(found))
        for name, method in _METHODS.items():
            if name not in cls.__dict__:
                setattr(cls, name, method)
        if cls.__dict__.get("__hash__") is None:
            cls.__hash__ = _hash if frozen else None  # type: ignore[assignment,method-assign]
        if frozen:
            cls.__setattr__ = cls.__delattr__ = _refuse  # type: ignore[assignment,method-assign]
        cls.__match_args__ = getattr(cls, PLAN).names  # type: ignore[attr-defined]
        return cls

    return make if cls is None else make(cls)


def replace(record: T, **changes: Any) -> T:
    """A copy of a record with some fields changed, made through its __init__."""
    for item in fields(record):
        if not item.init:
            if item.name in changes:
                raise ValueError(f"field {item.name} is declared with init=False")
        elif item.name not in changes:
            changes[item.name] = getattr(record, item.name)
    return type(record)(**changes)


def _field_of(cls: type, name: str, annotation: str) -> Field:
    declared = getattr(cls, name, MISSING)  # a base's default too, for a field annotated again
    item = declared if isinstance(declared, Field) else Field(default=declared)
    item.name, item.type = name, annotation
    if item.default is not MISSING and type(item.default).__hash__ is None:  # shared, mutable
        raise ValueError(f"mutable default {type(item.default)} for field {name}")
    if item.default is MISSING:
        if isinstance(declared, Field):
            delattr(cls, name)  # no class attribute stands in for a value never given
    else:
        setattr(cls, name, item.default)
    return item


def _check_order(cls: type, found: Any) -> None:
    defaulted = False
    for item in found:
        if not item.init:
            continue
        if item.default is not MISSING or item.default_factory is not MISSING:
            defaulted = True
        elif defaulted:
            raise TypeError(f"non-default argument {item.name!r} follows default argument")


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    plan: _Plan = getattr(self, PLAN)
    if args:
        if len(args) > len(plan.names):
            raise TypeError(f"{type(self).__qualname__}() takes {len(plan.names)} arguments")
        positional = dict(zip(plan.names, args, strict=False))  # the rest: keywords, defaults
        if twice := positional.keys() & kwargs.keys():
            raise TypeError(f"{type(self).__qualname__}() got multiple values for {min(twice)!r}")
        kwargs.update(positional)
    if not kwargs.keys() <= plan.settable:
        unknown = min(kwargs.keys() - plan.settable)
        raise TypeError(f"{type(self).__qualname__}() got an unexpected argument {unknown!r}")
    if not plan.required <= kwargs.keys():
        missing = min(plan.required - kwargs.keys())
        raise TypeError(f"{type(self).__qualname__}() missing argument {missing!r}")
    state = plan.template.copy()  # every field in order: updating keeps the order
    state.update(kwargs)
    for name, factory in plan.factories:
        if name not in kwargs:
            state[name] = factory()
    for name in plan.unset:
        del state[name]
    self.__dict__.update(state)
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


class _Plan:
    """How __init__ fills a class's fields, worked out once per class: a record is built
    with a few dict operations rather than a loop over its fields."""

    __slots__ = ("factories", "names", "required", "settable", "template", "unset")

    def __init__(self, found: dict[str, Field]) -> None:
        self.names = tuple(name for name, item in found.items() if item.init)
        self.settable = frozenset(self.names)
        self.template = {name: item.default for name, item in found.items()}
        self.factories = tuple(
            (name, item.default_factory)
            for name, item in found.items()
            if item.default_factory is not MISSING
        )
        self.required = frozenset(
            name
            for name, item in found.items()
            if item.init and item.default is MISSING and item.default_factory is MISSING
        )
        self.unset = tuple(
            name
            for name, item in found.items()
            if not item.init and item.default is MISSING and item.default_factory is MISSING
        )


def _values(self: Any) -> tuple:
    return tuple(getattr(self, name) for name in getattr(self, FIELDS))


def _repr(self: Any) -> str:
    shown = (item.name for item in getattr(self, FIELDS).values() if item.repr)
    listed = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
    return f"{type(self).__qualname__}({listed})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse(self: Any, name: str, *value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


_METHODS = {"__init__": _init, "__repr__": _repr, "__eq__": _eq}
