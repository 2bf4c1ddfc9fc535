"""Typed results of the commands that write JSON: :class:`CompressReport` (``ltc compress --report``),
:class:`InspectReport` (``ltc inspect --json``) and :class:`BenchReport` (``ltc bench --json``).

Each is a dataclass whose fields are the document's top-level keys, with a versioned JSON Schema
(``SCHEMA``, a file inside the package): :meth:`Report.from_dict` and :meth:`Report.load` validate
against it, :meth:`Report.to_dict` gives the document back exactly (keys absent from a loaded file stay
absent; keys a newer writer added are kept). A report is also a read-only mapping of its document, so
``report["before"]["macs"]`` works as it did when the commands returned plain dicts.

No heavy imports (jsonschema is imported to validate).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ltc.errors import LtcError, first_line
from ltc.fileio import check_input_file, out_of_memory, write_json_atomic

PACKAGE = Path(__file__).parent
SCHEMAS = {  # kind -> (schema file inside the package, what writes such a file)
    "bench": ("benchmarks/bench-schema.json", "ltc bench --json"),
    "compress": ("passes/compress-schema.json", "ltc compress --report"),
    "inspect": ("passes/inspect-schema.json", "ltc inspect --json"),
    "ticket-search summary": ("compressor/summary-schema.json", "ltc ticket (summary.json of a run folder)"),
}
MAX_JSON_BYTES = 256 << 20


def schema(kind: str) -> dict:
    return json.loads((PACKAGE / SCHEMAS[kind][0]).read_text())


def schema_problem(doc: Any, kind: str) -> str | None:
    """The first thing in ``doc`` that its schema refuses (where, then what), or None."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema(kind)).iter_errors(doc))
    if error is None:
        return _consistency_problem(doc) if kind == "bench" else None
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    return f"{where}: {error.message[:160]}"


def _consistency_problem(doc: dict) -> str | None:
    """What ties a bench report's parts together wrongly (the schema checks each field alone)."""
    for run in doc["runs"]:
        unknown = sorted(set(run["models"]) - set(doc["models"]))
        if unknown:
            return f"runs name model(s) {unknown} that 'models' does not list"
        problem = _per_layer_problem(run)
        if problem:
            return f"per_layer: {problem}"
    return None


def _per_layer_problem(run: dict) -> str | None:
    pl = run.get("per_layer")
    if pl is None:
        return None
    names = set(run["models"])
    if set(pl["models"]) != names or pl["baseline"] not in names:
        return f"models {sorted(pl['models'])} and baseline {pl['baseline']!r} are not the run's models {sorted(names)}"
    for row in pl["layers"]:
        for key, want in (("median_ms", names), ("macs", names), ("kernels", names),
                          ("vs_first", names - {pl["baseline"]})):
            if set(row[key]) != want:
                return f"layer {row['layer']!r}: {key} names {sorted(row[key])}, not {sorted(want)}"
    return None


def load_report_json(path: str | Path, kind: str) -> dict:
    """Read a JSON file ltc wrote and validate it against its schema; a one-line error names the first
    wrong field and what writes a valid file."""
    writer = SCHEMAS[kind][1]
    path = check_input_file(path, f"{kind} JSON", f"pass a file written by {writer}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise LtcError(f"{path}: {path.stat().st_size:,} bytes is too large for a {kind} JSON; pass a file "
                       f"written by {writer}")
    try:
        doc = json.loads(path.read_bytes())
    except MemoryError:
        raise out_of_memory(path, f"{kind} JSON") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise LtcError(f"{path}: not a readable {kind} JSON ({first_line(exc)}); pass a file written by "
                       f"{writer}") from None
    problem = schema_problem(doc, kind)
    if problem:
        raise LtcError(f"{path}: not a valid {kind} JSON ({problem}); pass a file written by {writer}")
    return doc


def to_json(o: Any) -> Any:
    """``json.dumps`` default for what ltc's results hold: reports, numpy scalars."""
    if isinstance(o, Report):
        return o.to_dict()
    if type(o).__module__ == "numpy" and hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


@dataclass(eq=False)
class Report(Mapping):
    """Base of the typed reports: ``KIND`` is the ``ltc_report`` value, ``VERSION_KEY`` the key that
    holds the schema version. Subclasses list the document's keys as fields, required ones first."""

    KIND: ClassVar[str] = ""
    VERSION_KEY: ClassVar[str] = "version"
    _absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False, kw_only=True)
    _extra: dict = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    @classmethod
    def keys_(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    def to_dict(self) -> dict:
        doc = {"ltc_report": self.KIND}
        for k in sorted(self.keys_(), key=lambda k: k != self.VERSION_KEY):  # the version first
            if k not in self._absent:
                doc[k] = getattr(self, k)
        doc.update(self._extra)
        return doc

    def validate(self) -> Report:
        """Check the document against the schema; :class:`~ltc.errors.InternalError` if ltc wrote a
        report its own schema refuses. Returns self."""
        from ltc.errors import InternalError

        problem = schema_problem(json.loads(json.dumps(self.to_dict(), default=to_json)), self.KIND)
        if problem:
            raise InternalError(f"the {self.KIND} report does not match its schema ({problem})")
        return self

    @classmethod
    def from_dict(cls, doc: Any, where: str = "report") -> Report:
        """A report from its JSON document, validated (:class:`~ltc.errors.LtcError` names the first
        wrong field)."""
        problem = schema_problem(doc, cls.KIND)
        if problem:
            raise LtcError(f"{where}: not a valid {cls.KIND} JSON ({problem}); pass a file written by "
                           f"{SCHEMAS[cls.KIND][1]}")
        return cls._build(doc)

    @classmethod
    def _build(cls, doc: dict) -> Report:
        names = cls.keys_()
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING}
        absent = frozenset(n for n in names if n not in doc)
        missing = absent - optional
        if missing:  # the schema requires every field without a default: a mismatch is ltc's bug
            from ltc.errors import InternalError

            raise InternalError(f"{cls.__name__} needs {sorted(missing)} that its schema does not require")
        extra = {k: v for k, v in doc.items() if k not in names and k != "ltc_report"}
        return cls(**{n: doc[n] for n in names if n in doc}, _absent=absent, _extra=extra)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read and validate a file the command wrote."""
        return cls._build(load_report_json(path, cls.KIND))

    def write(self, path: str | Path) -> None:
        """The JSON document, written atomically."""
        write_json_atomic(path, self.to_dict(), default=to_json)

    # the read-only mapping of the document
    def __getitem__(self, key: str) -> Any:
        if key == "ltc_report":
            return self.KIND
        if key in self._extra:
            return self._extra[key]
        if key in self._absent or key not in self.keys_():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=False)
class CompressReport(Report):
    """What ``ltc compress`` did: per-layer channels, model statistics before and after, verification,
    the Regroup pass, file sizes (schema ``passes/compress-schema.json``)."""

    KIND: ClassVar[str] = "compress"
    input: str
    output: str
    mask: dict
    options: dict
    layers: list[dict]
    before: dict  # parameters, macs, ... of the (masked) input
    after: dict
    verification: dict | None  # None with --no-verify
    lossy: bool
    notes: list[str]
    frozen: dict[str, int]
    version: int = 1
    regroup: dict | None = None
    seconds: float | None = None
    file_size: dict | None = None
    seconds_total: float | None = None

    @property
    def verified(self) -> bool:
        """Verification ran and passed."""
        return bool(self.verification and self.verification["passed"])


@dataclass(eq=False)
class InspectReport(Report):
    """What ``ltc inspect`` found: channel classes, what is removable and what freezes the rest
    (schema ``passes/inspect-schema.json``)."""

    KIND: ClassVar[str] = "inspect"
    input: str
    mask: dict | None
    layers: list[dict]
    classes: int
    frozen_classes: int
    removable_classes: int
    frozen_by: dict[str, int]
    dead_filters: dict
    ops_not_in_rule_table: list[str]
    stats: dict
    notes: list[str]
    version: int = 1


@dataclass(eq=False)
class BenchReport(Report):
    """Latency of models interleaved per provider and batch, ratios to the first model with bootstrap
    confidence intervals (schema ``benchmarks/bench-schema.json``, version 2; version 1 files load)."""

    KIND: ClassVar[str] = "bench"
    VERSION_KEY: ClassVar[str] = "schema_version"
    schema_version: int
    created: str
    environment: dict
    options: dict
    models: dict[str, dict]
    runs: list[dict]
    skipped: list[dict]


REPORTS: dict[str, type[Report]] = {cls.KIND: cls for cls in (CompressReport, InspectReport, BenchReport)}
