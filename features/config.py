"""Settings of the feature stage: one frozen dataclass, defaults that run as they are."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")
PROTOCOLS = ("auto", "temporal", "leave-one-out", "predefined")
# Not a flag: the split of the refit for serving (features/split.py), set by training itself.
SERVING_SPLIT = "all"


def setting(default: Any, help: str) -> Any:
    """A settings field with its ``--help`` text: each setting is documented once, here, and
    ``add_config_args`` makes its flag from it."""
    if isinstance(default, list | dict | set):
        raise TypeError("settings are immutable: use a tuple")
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FeatureConfig:
    # Split. "auto": a `split` column -> predefined; timestamps -> temporal; else leave-one-out.
    split: str = setting("auto", "evaluation protocol: auto, temporal, leave-one-out or predefined")
    # Temporal test window in days. None: 14 days, shrunk to a fifth of the data's span for short
    # logs (10 days of data -> 2 test days), so the same default works on short and long logs.
    test_days: float | None = setting(
        None,
        "temporal test window in days (default: 14, or a fifth of a shorter log)")
    valid_days: float | None = setting(
        None,
        "temporal validation window in days (default: the test window)")
    seed: int = setting(0, "seed of the validation hold-out for predefined splits")
    # User histories: the most recent L events feed the user tower, the ranking stack's sparse
    # signals and the service. 200, not 50: on view-heavy logs a shopper's carts and the items
    # they keep coming back to sit more than 50 events back (served Tmall NDCG@10 +13%, Taobao
    # +2%; Toys' own test fold -4%: BENCHMARKS.md, "History length").
    history_len: int = setting(200, "events kept per user history (L)")
    # Item popularity: events in this many days before the cut (all events for data without time).
    popularity_days: float = setting(7.0, "window in days for recent item popularity")
    # Bought together: pairs of cart/purchase events of the same user at most `cooccur_days` apart
    # (and at most `cooccur_neighbors` events apart, which bounds the work), top-M kept per item.
    cooccur_days: float = setting(
        7.0,
        "max days between two cart/purchase events counted as bought together")
    cooccur_neighbors: int = setting(
        10,
        "max events apart for a bought-together pair (bounds the work)")
    cooccur_min_count: int = setting(2, "min shoppers per bought-together pair")
    cooccur_top_m: int = setting(50, "bought-together neighbours kept per item")

    def __post_init__(self) -> None:
        if self.split not in (*PROTOCOLS, SERVING_SPLIT):
            raise ValueError(f"split must be one of {', '.join(PROTOCOLS)}, got {self.split!r}")
        for name in ("test_days", "valid_days"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.history_len < 1 or self.cooccur_top_m < 1 or self.cooccur_neighbors < 1:
            raise ValueError("history_len, cooccur_top_m and cooccur_neighbors must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)




def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """One flag per field, defaults from the dataclass, so --help documents every setting."""
    add_config_args(parser, FeatureConfig, title="features", choices={"split": PROTOCOLS})


def feature_config_from_args(args: argparse.Namespace) -> FeatureConfig:
    return config_from_args(FeatureConfig, args)


# --- flags from any settings dataclass ---------------------------------------------------------

def _flag_type(hint: Any) -> tuple[type, bool]:
    """(element type, is a tuple) of a field's type hint; ``X | None`` reads as ``X``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return (typing.get_args(hint) or (str,))[0], True
    return hint, False


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, title: str,
                    choices: dict[str, Sequence[Any]] | None = None,
                    skip: Iterable[str] = (), flags: dict[str, str] | None = None) -> None:
    """A ``--flag`` per field of the settings dataclass ``cls``, in the --help group ``title``.

    Defaults and help texts come from the dataclass (``setting(default, help)``), so the flags
    cannot drift from it; a field without a help text is an error. ``skip`` leaves out fields
    the caller fills itself (sizes that come from the data);
    ``flags`` renames a flag where two configs share a field name (both have a ``seed``).
    Values land under ``<ClassName>.<field>`` in the namespace, so configs never collide there;
    ``config_from_args`` reads them back. Booleans get ``--x/--no-x``, tuples take several values.
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    choices, flags, skip = choices or {}, flags or {}, set(skip)
    for f in fields(cls):
        if f.name in skip:
            continue
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else \
            f.default if f.default is not MISSING else f.default_factory()
        kind, many = _flag_type(hints[f.name])
        flag = f"--{flags.get(f.name, f.name.replace('_', '-'))}"
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text (use setting(...))")
        text = f.metadata["help"].replace("%", "%%")
        options = {"dest": f"{cls.__name__}.{f.name}", "default": default, "required": required}
        if kind is bool and not many:
            action = group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            action = group.add_argument(flag, type=kind if kind in (int, float, str) else str,
                                        nargs="+" if many else None, choices=choices.get(f.name),
                                        metavar=None if f.name in choices else f.name.upper(),
                                        **options)
        # Set after construction: some Pythons' BooleanOptionalAction append a default of their
        # own. A help text may word its default itself (None -> "14, or a fifth of ...").
        action.help = text if "(default" in text else f"{text} (default: %(default)s)"


def config_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """The ``cls`` settings from ``add_config_args``' flags; ``given`` fills skipped fields."""
    values = dict(given)
    for f in fields(cls):
        dest = f"{cls.__name__}.{f.name}"
        if f.name not in values and hasattr(args, dest):
            value = getattr(args, dest)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def fields_help(cls: type) -> dict[str, str]:
    """Each field's help text (``setting``), for a flag made by hand."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}
