"""The phase table's schema: column names and the validated arrays.

:class:`PhaseColumns` says which frame column plays which part of the schema
(docs/method.md section 2); :class:`PhaseArrays` is the table once
:func:`sklearn_beta.core._validation.check_phases` has validated it, the form
every computation below the public layer reads.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

#: Field metadata of the schema's optional columns (``None`` ignores them).
_OPTIONAL = {"optional": True}


@dataclass(frozen=True)
class PhaseColumns:
    """Names of the phase table's columns, one field per schema column.

    Each field holds the name of the frame column that plays that part. The
    two optional columns, ``n_steps`` (observed step counts) and
    ``instance_id`` (the engine instance of each phase), are used when the
    frame has them under their default names; named otherwise they must be
    present; ``None`` ignores them.

    Parameters
    ----------
    request_id, phase_type, t_start, t_end, prefill_tokens, decode_tokens : str
        Columns of the schema (docs/method.md, "The phase table").
    n_steps : str or None, default="N_steps"
        Observed step counts; when present they replace the inferred ones and
        the token columns are needed only where the partial-chunk correction
        uses them.
    instance_id : str or None, default="instance_id"
        Engine instance of each phase; pressures never mix instances.

    Examples
    --------
    >>> from sklearn_beta import PhaseColumns
    >>> PhaseColumns.coerce({"t_start": "start", "t_end": "end"}).t_end
    'end'
    """

    request_id: str = "request_id"
    phase_type: str = "phase_type"
    t_start: str = "t_start"
    t_end: str = "t_end"
    prefill_tokens: str = "prefill_tokens"
    decode_tokens: str = "decode_tokens"
    n_steps: str | None = field(default="N_steps", metadata=_OPTIONAL)
    instance_id: str | None = field(default="instance_id", metadata=_OPTIONAL)

    def __post_init__(self):
        for item in fields(self):
            name = getattr(self, item.name)
            if name is None and item.metadata.get("optional", False):
                continue
            if name is None or not isinstance(name, Hashable):
                raise TypeError(
                    f"PhaseColumns.{item.name} must be a column name (a string), "
                    f"got {name!r}."
                )

    @classmethod
    def coerce(cls, columns) -> PhaseColumns:
        """The :class:`PhaseColumns` that ``columns`` describes.

        Parameters
        ----------
        columns : None, PhaseColumns or mapping of str to str
            ``None`` gives the default names; a mapping from schema names
            (the fields of this class) to frame columns overrides those
            fields and keeps the defaults of the others.

        Returns
        -------
        columns : PhaseColumns

        Raises
        ------
        ValueError
            If the mapping has a key that is not a schema name.
        TypeError
            If ``columns`` is none of the above.
        """
        if columns is None:
            return cls()
        if isinstance(columns, cls):
            return columns
        if not isinstance(columns, Mapping):
            raise TypeError(
                "columns must be None, a PhaseColumns or a mapping from schema "
                f"names to column names, got {type(columns).__name__}."
            )
        valid = [item.name for item in fields(cls)]
        unknown = [key for key in columns if key not in valid]
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} in columns; the valid keys are {valid}."
            )
        return cls(**columns)


# The field defaults above are the one spelling of the default names.
#: The reference schema's column names, in order (docs/method.md, "The phase table").
PHASE_COLUMNS = tuple(
    item.default for item in fields(PhaseColumns) if not item.metadata.get("optional")
)
#: The optional columns and their default names.
OPTIONAL_COLUMNS = {
    item.name: item.default
    for item in fields(PhaseColumns)
    if item.metadata.get("optional")
}

#: The published functions' keyword for each schema column they name
#: (``t_end_col`` for ``t_end``); ``instance_id`` has none.
COLUMN_KEYWORDS = {name: f"{name}_col" for name in (*PHASE_COLUMNS, "n_steps")}


def with_column_keywords(columns, keywords: Mapping) -> PhaseColumns:
    """``columns`` with the published ``*_col`` keywords applied.

    Parameters
    ----------
    columns : None, PhaseColumns or mapping of str to str
        As :meth:`PhaseColumns.coerce` reads it.
    keywords : mapping of str to str or None
        Schema name (a key of :data:`COLUMN_KEYWORDS`) to the value its
        keyword was given, its default included: a keyword left at its
        default (the field's :class:`PhaseColumns` default) renames nothing.

    Returns
    -------
    columns : PhaseColumns

    Raises
    ------
    ValueError
        If a keyword renames a column that ``columns`` names differently.
    TypeError
        If a keyword of a required column is not a column name.
    """
    merged = PhaseColumns.coerce(columns)
    default = PhaseColumns()
    renamed = {k: v for k, v in keywords.items() if v != getattr(default, k)}
    for name, value in renamed.items():
        if value is None and name not in OPTIONAL_COLUMNS:
            raise TypeError(
                f"{COLUMN_KEYWORDS[name]} must be a column name (a string), got None."
            )
    # What ``columns`` names on purpose: a mapping's keys, a PhaseColumns'
    # fields that differ from the defaults.
    if columns is None:
        given = {}
    elif isinstance(columns, PhaseColumns):
        given = {
            k: getattr(columns, k)
            for k in renamed
            if getattr(columns, k) != getattr(default, k)
        }
    else:
        given = dict(columns)
    conflicts = [
        f"{COLUMN_KEYWORDS[k]}={v!r} but columns names it {given[k]!r}"
        for k, v in renamed.items()
        if k in given and given[k] != v
    ]
    if conflicts:
        raise ValueError(
            "Conflicting column names: "
            + "; ".join(conflicts)
            + ". Name each column once, either with columns= or with its *_col "
            "keyword."
        )
    return replace(merged, **renamed)


@dataclass(frozen=True)
class PhaseArrays:
    """The phase table as validated, aligned 1-D arrays (one entry per phase).

    ``t_start`` and ``t_end`` are already shifted so that each instance's
    earliest time is 0: differences of epoch timestamps (~1.7e9 s) would
    otherwise lose about seven significant digits. A token column the table
    lacks and the method does not need is ``None``.
    """

    request: np.ndarray  # int codes of request_id
    is_prefill: np.ndarray  # bool
    t_start: np.ndarray  # float64, per-instance shifted
    t_end: np.ndarray  # float64, per-instance shifted
    prefill_tokens: np.ndarray | None  # float64, 0 on decode rows
    decode_tokens: np.ndarray | None  # float64, 0 on prefill rows
    n_steps: np.ndarray | None  # float64 (integer valued) or None
    instance: np.ndarray  # int codes, 0 when the trace has one instance
    time_origin: np.ndarray  # float64, the shift applied, one per instance code

    @property
    def n_phases(self) -> int:
        return self.t_start.shape[0]

    @property
    def duration(self) -> np.ndarray:
        return self.t_end - self.t_start


def columns_of(transformer) -> PhaseColumns:
    """The phase-table columns an exposure transformer reads, from its
    public ``columns`` parameter (for the layers above the core, which
    should not call the transformer's private members)."""
    return PhaseColumns.coerce(transformer.get_params()["columns"])
