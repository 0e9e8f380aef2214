"""Response bodies: one model per entity, built from its row, encoded once.

An entity's response model (``User``, ``Visit``, ``Consent``...) is its one JSON shape. Its
fields, in order, are the body's keys; each field's column is the field's name in snake_case
(``birthDate`` → ``birth_date``), so the store selects :meth:`Entity.select_list` and hands
the row to :meth:`Entity.from_row`. The model is then encoded by :func:`encode`, once, with
orjson: the bytes that a response carries, an ``Idempotency-Key`` keeps and the read cache
stores. Handlers return models; :func:`reply` (and the route layer of ``shared/contract.py``)
turns one into a response.

A row needs no validation (it was valid when written), so :meth:`Entity.from_row` builds the
model as ``model_construct`` would, minus its per-field bookkeeping: the values go through
as the driver gave them (a jsonb ``address`` stays the dict PostgreSQL returned, in its key
order), and orjson writes them as they are, dates ``YYYY-MM-DD``, instants RFC 3339 in UTC.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

import orjson
from aiohttp import web
from pydantic import BaseModel

# Set by the server, never sent by a client; what an audit event's ``changes`` leaves out.
SERVER_FIELDS = frozenset({"createdAt", "updatedAt", "version"})

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")
_setattr = object.__setattr__


def column_of(field: str) -> str:
    """The column of a camelCase field: ``birthDate`` → ``birth_date``."""
    return _CAMEL_HUMP.sub("_", field).lower()


def _fields_of(value: Any) -> dict[str, Any] | str:
    # orjson's fallback for a type it does not know: a model is its fields, in order; a
    # UUID of another class than uuid.UUID itself (asyncpg's) is its canonical string.
    if isinstance(value, BaseModel):
        return value.__dict__
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(body: BaseModel) -> bytes:
    """The JSON bytes of a response model (nested models included), encoded once."""
    return orjson.dumps(body, default=_fields_of, option=orjson.OPT_UTC_Z)


class OmitsNone(BaseModel):
    """A response model whose ``OMITTED_WHEN_NONE`` fields are no key of the body, rather
    than null, while they have no value (a wire form older than the model, kept).

    :meth:`omitting_none` drops them from the model's ``__dict__`` (what :func:`encode`
    writes); read as attributes, they are still None.
    """

    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def omitting_none(self) -> Self:
        """The model, its ``OMITTED_WHEN_NONE`` fields that are None left out of its body."""
        for name in self.OMITTED_WHEN_NONE:
            if name in self.__dict__ and self.__dict__[name] is None:
                del self.__dict__[name]
                self.__pydantic_fields_set__.discard(name)
        return self

    if not TYPE_CHECKING:  # as pydantic's own __getattr__: invisible to the type checker

        def __getattr__(self, name: str) -> Any:
            if name in type(self).OMITTED_WHEN_NONE:
                return None
            return super().__getattr__(name)


class Entity(BaseModel):
    """The response model of an entity stored as one row.

    ``DERIVED`` names the fields that are no column (:meth:`derive` computes them from the
    row); ``AS_TEXT`` the fields shown as text whose column the driver returns as an object
    (a uuid: ``str`` of it here is cheaper than orjson's fallback at every encoding);
    ``VERSIONED`` entities carry ``ETag: "<version>"``.
    """

    DERIVED: ClassVar[frozenset[str]] = frozenset()
    AS_TEXT: ClassVar[frozenset[str]] = frozenset()
    VERSIONED: ClassVar[bool] = False

    @classmethod
    def columns(cls) -> dict[str, str]:
        """Field → column of every stored field, in the body's order."""
        return {f: column_of(f) for f in cls.model_fields if f not in cls.DERIVED}

    @classmethod
    def select_list(cls) -> str:
        """The SQL select list of the stored fields (a constant: no user input)."""
        return ", ".join(cls.columns().values())

    @classmethod
    def derive(cls, row: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the ``DERIVED`` fields of ``row``."""
        return {}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """The model of a row, unvalidated (it was valid when written)."""
        fields, columns, stored = _layout(cls)
        if cls.DERIVED:
            derived = cls.derive(row)
            values = {f: derived[f] if c is None else row[c] for f, c in zip(fields, columns)}
        else:
            values = dict(zip(fields, map(row.__getitem__, stored)))
        for f in cls.AS_TEXT:
            if (value := values[f]) is not None:
                values[f] = str(value)
        # As BaseModel.model_construct builds a model with every field set, without its loop.
        model = cls.__new__(cls)
        _setattr(model, "__dict__", values)
        _setattr(model, "__pydantic_fields_set__", set(values))
        _setattr(model, "__pydantic_extra__", None)
        _setattr(model, "__pydantic_private__", None)
        return model

    def etag(self) -> str | None:
        """The ``ETag`` of a versioned entity: its version, quoted."""
        return f'"{self.__dict__["version"]}"' if self.VERSIONED else None

    def location(self) -> str | None:
        """Where a new entity is read back (``Location`` of a 201); None: it has no URL."""
        return None

    def client_state(self, into: type[BaseModel]) -> dict[str, Any]:
        """The entity as a client would send it to ``into`` (JSON values, no nulls): what a
        merge patch applies to."""
        keep = {k: v for k, v in self.__dict__.items() if v is not None and k in into.model_fields}
        state: dict[str, Any] = orjson.loads(
            orjson.dumps(keep, default=_fields_of, option=orjson.OPT_UTC_Z)
        )
        return state


@functools.cache
def _layout(
    cls: type[Entity],
) -> tuple[tuple[str, ...], tuple[str | None, ...], tuple[str, ...]]:
    # The fields in the body's order, their columns (None: derived) and the stored columns,
    # once per model.
    fields = tuple(cls.model_fields)
    columns = tuple(None if f in cls.DERIVED else column_of(f) for f in fields)
    return fields, columns, tuple(c for c in columns if c is not None)


def reply(body: BaseModel, status: int = 200) -> web.Response:
    """The response carrying ``body``: its ETag when versioned, its Location when created."""
    headers: dict[str, str] = {}
    if isinstance(body, Entity):
        if (tag := body.etag()) is not None:
            headers["ETag"] = tag
        if status == 201 and (where := body.location()) is not None:
            headers["Location"] = where
    return web.Response(
        body=encode(body), status=status, headers=headers, content_type="application/json"
    )

