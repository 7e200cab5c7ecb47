"""JSON text of HYDRA's records: :func:`to_jsonable` (Decimal, datetime, enums, dataclasses to JSON-ready
values), the journal's compact encoder, and the session document's writer that gives exactly the bytes
of ``json.dump(doc, fh, indent=1)`` faster (issue #24; ``tests/test_persist_exact.py`` holds every piece
against the standard library's output and the code it replaced).
"""
from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

try:   # the C encoder json.dumps itself uses; absent only from pure-Python builds
    from json.encoder import c_make_encoder as _c_make_encoder
except ImportError:  # pragma: no cover
    _c_make_encoder = None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_PLAIN = (str, int, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def to_jsonable(obj: Any) -> Any:
    """Decimal → string (exact), datetime → ISO-8601 UTC, enums → value, dataclasses → dicts."""
    cls = type(obj)
    if cls in _PLAIN:                # exact types only: str/int enums still become their value below
        return obj
    if cls is float:
        return None if obj != obj else obj  # NaN is not JSON
    convert = _CONVERTERS.get(cls)   # the branch below this type took before, found again in one lookup
    if convert is not None:
        return convert(obj)
    if isinstance(obj, Decimal):
        return _learn(cls, _decimal_json, obj)
    if isinstance(obj, datetime):
        return _learn(cls, _datetime_json, obj)
    if isinstance(obj, Enum):
        return _learn(cls, _enum_json, obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        # field by field (what asdict() + recursion gave, without asdict's deep copy of every value)
        return _learn(cls, _dataclass_converter(cls), obj)
    if isinstance(obj, dict):
        return _learn(cls, _dict_json, obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return _learn(cls, _list_json, obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if cls is timedelta:             # (exact type: ``hasattr`` below may depend on the instance)
        return _learn(cls, timedelta.total_seconds, obj)
    if hasattr(obj, "total_seconds"):
        return obj.total_seconds()
    return obj


# type -> the conversion to_jsonable's isinstance chain chose for it. Only branches decided by the type
# alone are kept (not the float-subclass NaN test, nor ``hasattr``, which an instance can answer on its
# own), so a type converts exactly as the chain converts it
_CONVERTERS: dict[type, Any] = {}


def _learn(cls: type, convert, obj: Any) -> Any:
    # not a class passed as a value (is_dataclass answers for it, not for its type), nor an object whose
    # ``__class__`` (what isinstance reads) is not its type
    if obj.__class__ is cls and not isinstance(obj, type):
        _CONVERTERS[cls] = convert
    return convert(obj)


def _decimal_json(obj) -> str:
    return str(obj)


def _datetime_json(obj) -> str:
    return obj.isoformat().replace("+00:00", "Z")


def _enum_json(obj) -> Any:
    return obj.value


def _dict_json(obj) -> dict:
    return {str(k): to_jsonable(v) for k, v in obj.items()}


def _list_json(obj) -> list:
    return [to_jsonable(v) for v in obj]


def _dataclass_converter(cls: type):
    """``{k: to_jsonable(getattr(obj, k)) for k in fields}`` for one dataclass (what asdict() + recursion gave,
    without asdict's deep copy of every value)."""
    names = _field_names(cls)
    return lambda obj: {k: to_jsonable(getattr(obj, k)) for k in names}


def _encoder(item_separator: str, key_separator: str):
    """``json.dumps(obj, separators=(item_separator, key_separator))`` as a function made once: the same C
    encoder ``dumps`` builds on every call (ASCII output, NaN allowed, no key sorting), minus the encoder
    object and the circular-reference bookkeeping each call set up (the journal's cycle reports and the
    summaries are trees). The text is the same."""
    plain = json.JSONEncoder(separators=(item_separator, key_separator), check_circular=False)
    if _c_make_encoder is None:  # pragma: no cover -- a Python without the _json accelerator
        return plain.encode
    encode = _c_make_encoder(None, plain.default, json.encoder.encode_basestring_ascii, None,
                             key_separator, item_separator, False, False, True)
    return lambda obj: "".join(encode(obj, 0))


_compact = _encoder(",", ":")   # json.dumps(obj, separators=(",", ":"))
# a flat summary (scalar values only) with a tab after each separator: JSON all the same (a tab is JSON
# whitespace, and a tab inside a string is always escaped as \t), so json.loads reads the same dict back;
# the raw tabs can only be separators, which is what lets the document writer indent the line by replacing
# them (_tabbed_at_level2)
_tabbed = _encoder(",\t", ":\t")
_SCALARS = frozenset((str, int, float, bool, type(None)))
_STR = frozenset((str,))


def _flat(item: Any) -> bool:
    """A non-empty dict of exact str keys and exact scalar values (str, int, float, bool, None)."""
    return type(item) is dict and bool(item) and _STR.issuperset(map(type, item)) \
        and _SCALARS.issuperset(map(type, item.values()))


def _tabbed_at_level2(line: str) -> str:
    """A flat dict's tabbed JSON (``{"a":\t1,\t"b":\tnull}``) as ``json.dumps(..., indent=1)`` writes it two
    levels deep (an item of a list that is a value of the document): ``{\n   "a": 1,\n   "b": null\n  }``.
    The values' JSON is the same: the C encoder and the indent encoder spell str, int, float, bool and
    null alike, and a raw tab can only be a separator."""
    return "{\n   " + line[1:-1].replace(",\t", ",\n   ").replace(":\t", ": ") + "\n  }"


def _line_at_level2(line: str) -> str:
    """A stored summary line (``_SpilledCycles``) as :func:`_item_at_level2` writes its summary: a tabbed line
    (a flat summary) by its separators alone, any other line parsed and re-encoded."""
    if "\t" in line:
        return _tabbed_at_level2(line)
    return json.dumps(json.loads(line), indent=1).replace("\n", "\n  ")


def _item_at_level2(item: Any) -> str:
    """``json.dumps(item, indent=1)`` as the document holds an item of one of its lists (two levels deep):
    a flat dict (an order, a fill, a closed trade) through the C encoder, anything else through the indent
    encoder with its lines indented two more (a JSON string never holds a raw newline, so every newline in
    that text is indentation)."""
    if _flat(item):
        return _tabbed_at_level2(_tabbed(item))
    return json.dumps(item, indent=1).replace("\n", "\n  ")
