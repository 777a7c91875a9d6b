"""Validation against the official OCPP JSON schemas, fast enough for a fleet's day of traffic.

The schemas are the ones the ``ocpp`` package ships (``ocpp/v16/schemas/X.json`` / ``XResponse.json``,
``ocpp/v201|v21/schemas/XRequest.json`` / ``XResponse.json``; 2.0 uses 2.0.1's). Each is compiled once
(``jsonschema.validators.validator_for``) and cached.

Running ``jsonschema`` on a million payloads would take minutes, so it runs on *classes* instead, in three
steps, all in the lazy plan (Python only ever sees one payload per class):

1. exact duplicates collapse (a hash per payload: Heartbeat ``{}`` is one validation for a million rows);
2. each distinct payload gets a class key: every enum value of every schema and the literals ``true``,
   ``false``, ``null`` are swapped for unique tokens, then every ASCII letter and digit becomes ``a``; the
   object keys are kept exactly beside it (:func:`class_key`). The key keeps every object key, every
   structural character, every string's length, every enum value, the sign and the fraction point of
   numbers; it blurs only the letters and digits of other strings and of numbers. A payload with a number in
   exponent form, an escape or a token character is a class of its own. MeterValues requests are classed
   through the templates of :mod:`.derived` (their cut strings left out where no schema reads them);
3. one representative per class is validated (``jsonschema`` compiled once per schema). The same walk also
   decides whether the blurred characters could matter to *this* schema for *this* shape: a number under a
   bound or at an enum location, a fraction where an integer is wanted, a string at an enum location that is
   not a valid value, a string under a pattern, a digit in an object key, a ``\\u`` escape, an error whose
   line could quote blurred content. Such a class is split back into its distinct payloads, each validated.
   So the verdict is exact, not sampled. ``format`` is not checked (jsonschema's default).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import orjson
import polars as pl

VERSION_DIRS = {"1.6": "v16", "2.0": "v201", "2.0.1": "v201", "2.1": "v21"}
_TIMESTAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"


def schema_name(version_dir: str, action: str, kind: str) -> str:
    """``("v16", "BootNotification", "request") -> "BootNotification"``; 2.x requests end in ``Request``."""
    if kind == "response":
        return f"{action}Response"
    return action if version_dir == "v16" else f"{action}Request"


@cache
def _schema_files() -> dict[tuple[str, str], Any]:
    root = resources.files("ocpp")
    return {
        (d, f.name[: -len(".json")]): f
        for d in sorted(set(VERSION_DIRS.values()))
        for f in (root / d / "schemas").iterdir()
        if f.name.endswith(".json")
    }


@cache
def _schema(version_dir: str, name: str) -> Any:
    """One schema file, parsed once (orjson: half the time of json on the ~400 files)."""
    return orjson.loads(_schema_files()[version_dir, name].read_bytes())


@cache
def validator(version_dir: str, name: str):
    """The compiled validator for one schema, or None when OCPP defines no such message."""
    if (version_dir, name) not in _schema_files():
        return None
    # (imported here: jsonschema takes ~30 ms to import, and the walk of a run waits for the schemas' enum values
    # on another thread, which need no validator)
    from jsonschema import Draft4Validator
    from jsonschema.validators import validator_for

    schema = _schema(version_dir, name)
    return validator_for(schema, default=Draft4Validator)(schema)


_TOKEN = "\ue000"  # starts every token (a private-use character; a payload holding it is its own class)
_ALNUM = [*"0123456789", *"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]
_BLUR = ["a"] * 62
_OBJECT_KEY = r'"[^"\\]*"\s*:'


@cache
def enum_tokens() -> tuple[list[str], list[str]]:
    """(every quoted string enum value of every schema, plus ``true``, ``false``, ``null``; a unique token for
    each: :data:`_TOKEN` and one more private-use character)."""
    values: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            values.update(v for v in o.get("enum", []) if isinstance(v, str) and '"' not in v and "\\" not in v)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for d, n in _schema_files():
        walk(_schema(d, n))
    ordered = sorted((f'"{v}"' for v in values), key=lambda v: (-len(v), v)) + ["false", "null", "true"]
    assert len(ordered) < 0x1000
    return ordered, [_TOKEN + chr(0xE100 + i) for i in range(len(ordered))]


def canonical(payload: pl.Expr) -> pl.Expr:
    """The class key text: every enum value and JSON literal swapped for its token, then every ASCII letter
    and digit an ``a`` (object keys are kept apart by :func:`class_key`)."""
    quoted, tokens = enum_tokens()
    return payload.str.replace_many(quoted, tokens).str.replace_many(_ALNUM, _BLUR)


# a number with an exponent (``1e5`` is a float, ``125`` an integer: blurred alike, they must stay apart)
_EXPONENT = r"[:,\[]\s*-?[0-9]+(?:\.[0-9]+)?[eE]"


def class_key(payload: pl.Expr) -> pl.Expr:
    """A payload's class (a hash): its canonical text and its object keys, exactly.

    Digits and letters blur alike (``"04DE1B"`` and ``"0412A7"`` are the same string to a schema: only enum
    locations look at content, and those classes are split). A payload with a number in exponent form, an
    escape (whose digits decide a string's length) or a token character is a class of its own.
    """
    own = payload.str.contains(f"[\\\\{_TOKEN}]") | payload.str.contains(_EXPONENT)
    key = pl.struct(canonical(payload).alias("c"), payload.str.extract_all(_OBJECT_KEY).alias("k")).hash()
    return pl.when(own).then(pl.struct(payload).hash()).otherwise(key)


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def sensitive(instance: Any, schema: dict, root: dict) -> bool:
    """Could another member of this instance's class get a different verdict? (see the module docstring)

    Only where blurred characters matter to the schema: a number under a bound or at an enum location, a
    fraction where an integer is wanted, a string at an enum location that is not a valid enum value (valid
    ones are tokens, kept exactly), a string under a pattern or const, a digit in an object key.
    """
    schema = _resolve(schema, root)
    if isinstance(instance, bool) or instance is None:
        return False
    if isinstance(instance, int | float):
        if any(
            k in schema
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum", "const")
        ):
            return True
        return isinstance(instance, float) and "integer" in str(schema.get("type"))
    if isinstance(instance, str):
        return ("enum" in schema and instance not in schema["enum"]) or "pattern" in schema or "const" in schema
    if isinstance(instance, list):
        items = schema.get("items")
        return isinstance(items, dict) and any(sensitive(v, items, root) for v in instance)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in instance.items():
            if any(c.isdigit() for c in k):
                return True
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None and sensitive(v, sub, root):
                return True
    return False


def _path(error) -> str:
    return re.sub(r"\[\d+\]", "[*]", error.json_path)


def _json_type(v: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(v), "null")


def describe(error) -> str:
    """One plain line per schema error, without the instance value where it varies (so errors group)."""
    path, kind, limit, inst = _path(error), error.validator, error.validator_value, error.instance
    if kind == "maxLength":
        return f"{path} is longer than {limit} characters ({len(inst)})"
    if kind == "minLength":
        return f"{path} is shorter than {limit} characters ({len(inst)})"
    if kind == "type":
        return f"{path} is a {_json_type(inst)}, the schema wants {limit}"
    if kind == "enum":
        shown = repr(inst) if isinstance(inst, str) and len(inst) <= 40 else f"a {_json_type(inst)}"
        return f"{path} is {shown}, not one of the {len(limit)} allowed values"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{path} breaks {kind} {limit}"
    return f"{path}: {error.message[:200]}"


# errors whose line (describe) holds no blurred character: paths, keys, limits, lengths and types only (an
# enum error quotes its string, but sensitive() splits every class with a string outside its enum)
_CLASS_SAFE_ERRORS = {"maxLength", "minLength", "type", "enum", "required", "additionalProperties", "minimum",
                      "maximum", "exclusiveMinimum", "exclusiveMaximum"}

_VERDICT = pl.Struct({"errors": pl.List(pl.String()), "sensitive": pl.Boolean()})


def _validate_batch(s: pl.Series) -> pl.Series:
    """Validate each distinct representative (a struct of dir, schema, payload).

    Runs once per class, never per message: returns the error lines and whether the class must be split.
    """
    out: list[dict] = []
    for row in s.to_list():
        v = validator(row["dir"], row["schema"])
        try:
            instance = orjson.loads(row["payload"])
        except orjson.JSONDecodeError:
            out.append({"errors": ["payload is not JSON"], "sensitive": True})
            continue
        found = list(v.iter_errors(instance))
        errors = sorted({describe(e) for e in found})
        # a \\u escape's digits decide whether it is one character or half of a surrogate pair (length); an
        # error line that may quote the blurred content (see describe) needs the exact payload
        split = (
            "\\u" in row["payload"]
            or any(e.validator not in _CLASS_SAFE_ERRORS for e in found)
            or sensitive(instance, v.schema, v.schema)
        )
        out.append({"errors": errors, "sensitive": split})
    return pl.Series(out, dtype=_VERDICT)


def _verdict(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(
        v=pl.struct("dir", "schema", "payload").map_batches(_validate_batch, return_dtype=_VERDICT)
    ).unnest("v")


_FREE_KEYWORDS = {"type", "format", "description", "javaType", "comment", "$comment", "title", "default",
                  "additionalProperties"}  # format is not checked; additionalProperties means nothing on a string


_UNKNOWN_KEYWORDS = ("anyOf", "oneOf", "allOf", "not", "if", "patternProperties", "dependencies", "maxItems",
                     "uniqueItems", "const", "contains", "minProperties", "maxProperties")


@cache
def literals_free(version_dir: str, name: str, keys: tuple[str, ...]) -> bool:
    """Whether no string under an object member named one of ``keys`` can change this schema's verdict by its
    content: wherever the schema can place such a member (``properties``, ``additionalProperties``), the
    member's schema says at most its type (no enum, length, pattern, const). Anything the walk does not know
    (combinators, ``patternProperties``, keywords whose error message quotes a whole array or object) answers
    False."""
    v = validator(version_dir, name)
    if v is None:
        return False
    root = v.schema

    def free(sub: Any) -> bool:
        if not isinstance(sub, dict):
            return isinstance(sub, bool)
        sub = _resolve(sub, root)
        return set(sub) <= _FREE_KEYWORDS and (
            "type" not in sub or sub["type"] in ("string", "number", "integer", "boolean", "null", "object", "array")
        )

    def walk(o: Any) -> bool:
        if isinstance(o, dict):
            if any(k in o for k in _UNKNOWN_KEYWORDS) or o.get("minItems", 0) > 1:
                return False  # or an error message could quote an instance holding the strings
            props = o.get("properties")
            if isinstance(props, dict) and not all(free(props[k]) for k in keys if k in props):
                return False
            extra = o.get("additionalProperties")
            if isinstance(extra, dict) and not free(extra):
                return False
            return all(walk(x) for x in o.values())
        if isinstance(o, list):
            return all(walk(x) for x in o)
        return True

    return walk(root)


def _meter_values_keys(rows: pl.LazyFrame, meter_templates: pl.DataFrame) -> pl.LazyFrame:
    """Class keys of MeterValues rows from their templates (see :mod:`.derived`): no text pass over them.

    A payload is its template with its literals (``"key":"escape-free string"``) put back. Every match of
    :func:`canonical` lies within the template or within one quoted literal, so the canonical template and
    the canonical quoted literals together determine the canonical payload: equal pairs, equal class. A
    literal's canonical form is read off cheaply where its shape fixes it: all digits with at most one point
    (length and point position; no enum value has that shape) or a UTC timestamp (length); any other literal
    is keyed by its own hash, a finer class than needed (more validations, never a wrong verdict).
    """
    templates = meter_templates.lazy()
    canonical_templates = (
        templates.group_by("key").agg(pl.col("template").first())
        .select("key", t=class_key(pl.col("template")))
    )
    # Where the schema does not look into these strings (every OCPP MeterValues schema: a sample's value is
    # any string or a number, a timestamp's format is not checked), the canonical template alone is the class.
    from .derived import _CUTS

    dirs = sorted(set(VERSION_DIRS.values()))
    free = [d for d in dirs if literals_free(d, schema_name(d, "MeterValues", "request"), tuple(_CUTS))]
    plain = (
        rows.filter(pl.col("dir").is_in(free))
        .select("dir", "schema", "exact", "idx")
        .join(templates.select("idx", "key"), on="idx")
        .join(canonical_templates, on="key")
        .select("dir", "schema", "exact", "idx", key="t")
        .unique(subset=["dir", "schema", "exact"], keep="first")
    )
    if len(free) == len(dirs):
        return plain
    rows = rows.filter(~pl.col("dir").is_in(free))
    e = pl.element()
    shape = (
        pl.when(e.str.contains(r'^"value":"[0-9]+(?:\.[0-9]+)?"$'))
        .then(e.str.len_bytes().cast(pl.UInt64) * 64 + e.str.find(".", literal=True).fill_null(63).cast(pl.UInt64))
        .when(e.str.contains(r'^"timestamp":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z"$'))
        .then(e.str.len_bytes().cast(pl.UInt64) + 1_000_000)
        .otherwise(e.hash())
    )
    keys = (
        templates.select("idx", "key", lits=pl.concat_list(*[f"_lit_{k}" for k in _CUTS]).list.eval(shape).hash())
        .join(canonical_templates, on="key")
        .select("idx", key=pl.struct("t", "lits").hash())
    )
    return pl.concat([
        plain,
        rows.select("dir", "schema", "exact", "idx")
        .join(keys, on="idx")
        .unique(subset=["dir", "schema", "exact"], keep="first"),
    ])


#: the rows whose payload is checked (if OCPP defines a schema for their action)
_CHECKED = (
    pl.col("message_type").is_in(["CALL", "CALLRESULT"]),
    pl.col("action").is_not_null(),
    pl.col("payload").is_not_null(),
    # not logged (the note is null on most rows: tested as such, not filled with a million "" first: 79 -> 58 ms
    # CPU for the checked rows of 1M messages)
    pl.col("note").is_null() | ~pl.col("note").str.contains("without its payload", literal=True),
)


def _rows(messages: pl.LazyFrame) -> pl.LazyFrame:
    """CALL and CALLRESULT rows with a schema to check: ``kind``, ``dir``, ``schema``, ``exact`` (payload hash).
    Without the compiled walker; with it, :func:`_coded_rows`."""
    kind = pl.when(pl.col("message_type") == "CALL").then(pl.lit("request")).otherwise(pl.lit("response"))
    d = pl.col("ocpp_version").replace_strict(VERSION_DIRS, default=None)
    suffix = (
        pl.when(pl.col("kind") == "response")
        .then(pl.lit("Response"))
        .when(pl.col("dir") == "v16")
        .then(pl.lit(""))
        .otherwise(pl.lit("Request"))
    )
    known = sorted({f"{dd}/{n}" for dd, n in _schema_files()})
    return (
        messages.filter(*_CHECKED)
        .select("idx", "ts", "conn", "charge_point_id", "ocpp_version", "action", "payload", kind=kind, dir=d)
        .with_columns(schema=pl.col("action") + suffix)
        .filter(pl.concat_str("dir", pl.lit("/"), "schema").is_in(known))
        .with_columns(exact=pl.col("payload").hash())
    )


def _classes(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Exact duplicates first (Heartbeat {} is one validation for a million rows), then each distinct payload's
    class: ``dir``, ``schema``, ``exact``, ``idx`` (a representative), ``key``."""
    return (
        rows.group_by("dir", "schema", "exact")
        .agg(pl.col("idx").first(), payload=pl.col("payload").first())
        .select("dir", "schema", "exact", "idx", key=class_key(pl.col("payload")))
    )


def enum_values() -> list[str]:
    """The schemas' string enum values, unquoted (what :func:`.walk.class_keys` keeps exactly)."""
    return [q[1:-1] for q in enum_tokens()[0] if q.startswith('"')]


@cache
def _checked_schemas() -> tuple[pl.Enum, pl.Enum, pl.DataFrame]:
    """(an Enum of every action that names a schema, an Enum of the versions, one row per schema checked:
    ``sid`` (:func:`_schema_id`), ``ocpp_version``, ``action``, ``kind``, ``dir``, ``schema``). Which rows
    :func:`_rows` checks, with integer codes instead of text per row."""
    files = _schema_files()
    actions = sorted(
        {n for d, n in files if d == "v16"}  # (a 1.6 CALL named like a response is checked as one)
        | {n.removesuffix("Response") for _, n in files if n.endswith("Response")}
        | {n.removesuffix("Request") for d, n in files if d != "v16" and n.endswith("Request")}
    )
    table = [
        (_schema_id(a, v, kind == "response"), version, action, kind, d, schema_name(d, action, kind))
        for v, (version, d) in enumerate(VERSION_DIRS.items())
        for a, action in enumerate(actions)
        for kind in ("request", "response")
        if (d, schema_name(d, action, kind)) in files
    ]
    schema = {"sid": pl.UInt32, "ocpp_version": pl.String, "action": pl.String, "kind": pl.String, "dir": pl.String,
              "schema": pl.String}
    return pl.Enum(actions), pl.Enum(list(VERSION_DIRS)), pl.DataFrame(table, schema=schema, orient="row")


def _schema_id(action: Any, version: Any, response: Any) -> Any:
    """A checked row's schema as one number (ints or UInt32 expressions): action, version and kind."""
    return action * 16 + version * 2 + response


def _coded_rows(messages: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`_rows` as ``idx`` and ``sid`` (see :func:`_checked_schemas`) and the payload: the same rows, with no
    text computed per row (a third of the time on a fleet's day; the names join back on the failing rows)."""
    actions, versions, table = _checked_schemas()
    sid = _schema_id(
        pl.col("action").cast(actions, strict=False).to_physical().cast(pl.UInt32),  # (null: no schema)
        pl.col("ocpp_version").cast(versions, strict=False).to_physical().cast(pl.UInt32),
        (pl.col("message_type") == "CALLRESULT").cast(pl.UInt32),
    )
    return (
        messages.filter(*_CHECKED)
        .select("idx", "payload", sid=sid)
        .filter(pl.col("sid").is_in(table["sid"].implode()))
    )


def untemplated_classes(messages: pl.LazyFrame, walked: pl.DataFrame | None = None
                        ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(the checked rows without their payload, the classes of every checked payload but the MeterValues
    requests), for :func:`violations`, which classes those through the templates of :func:`.derived.derive`
    (``meter_templates`` holds every MeterValues CALL). It needs no derived table, so it can be computed while
    they are built.

    With the compiled walker, every payload's keys come from C (:func:`.walk.class_keys`: the same classes
    as :func:`class_key`, whitespace aside): the rows (:func:`_coded_rows`: ``idx``, ``sid``), MeterValues
    requests included, carry their ``key`` and there is no separate frame of classes (None).
    ``walked``: the keys the walker gave already (:meth:`.derived.Walks.class_keys`), so that only the other
    payloads are read here."""
    from .walk import available, class_keys

    if available():
        found = _coded_rows(messages).collect()
        if walked is None:
            keys = class_keys(found["payload"], enum_values())
            return found.drop("payload").hstack(keys), None
        # the payloads the walker keyed already (``walked``: idx, key; null where it was not sure); the
        # compiled class_keys reads the others
        found = found.join(walked, on="idx", how="left", maintain_order="left")
        if found["key"].null_count():
            # the others' payloads in place, the keyed ones masked out (class_keys skips a null): no gather of
            # the payloads to read and scatter of their keys back (47-59 -> 28-34 ms on 1M messages)
            rest = class_keys(found.select(pl.when(pl.col("key").is_null()).then("payload"))["payload"], enum_values())
            found = found.with_columns(key=pl.coalesce("key", rest["key"]))
        return found.drop("payload"), None
    rows = _rows(messages).cache()
    checked, classes = pl.collect_all([
        rows.drop("payload"),
        _classes(rows.filter(~((pl.col("kind") == "request") & (pl.col("action") == "MeterValues")))),
    ])  # fmt: skip
    return checked, classes


def violations(
    messages: pl.LazyFrame, evidence_cap: int = 20, meter_templates: pl.DataFrame | None = None,
    prepared: tuple[pl.DataFrame, pl.DataFrame] | None = None,
) -> pl.LazyFrame:
    """schema-violation findings for CALL and CALLRESULT payloads (see the module docstring).

    ``meter_templates`` (from :func:`.derived.derive`) lets MeterValues payloads be classed without a pass
    over their text; ``prepared``: :func:`untemplated_classes`, computed already (only with the templates).
    """
    rows = _rows(messages) if prepared is None else prepared[0].lazy()
    if prepared is not None and prepared[1] is None:  # every row classed in C already (coded: _coded_rows)
        failing = _keyed_failures(rows, messages.select("idx", "payload"))
        named = failing.join(_checked_schemas()[2].lazy().select("sid", "ocpp_version", "action", "kind", "schema"),
                             on="sid").join(messages.select("idx", "ts", "conn", "charge_point_id"), on="idx")
        return _report(named, evidence_cap)
    if meter_templates is not None:
        templated = _meter_values_keys(rows.filter(pl.col("action") == "MeterValues"), meter_templates)
        if prepared is None:
            rows_left = rows.join(meter_templates.lazy().select("idx"), on="idx", how="anti")
            distinct = _classes(rows_left)
        else:
            distinct = prepared[1].lazy()  # type: ignore[union-attr]
        distinct = pl.concat([distinct, templated], how="vertical_relaxed")
    else:
        distinct = _classes(rows)
    distinct = distinct.cache()  # read three times below: hash and canonicalise each distinct payload once
    # Payloads are fetched back by idx only for what is validated: one representative per class, and the
    # members of the classes that must be split.
    payloads = messages.select("idx", "payload")
    classes = _verdict(
        distinct.group_by("dir", "schema", "key").agg(pl.col("idx").first()).join(payloads, on="idx")
    )
    plain = classes.filter(~pl.col("sensitive"), pl.col("errors").list.len() > 0).select(
        "dir", "schema", "key", "errors"
    )
    split = classes.filter("sensitive").select("dir", "schema", "key")
    failing = pl.concat(
        [
            distinct.join(plain, on=["dir", "schema", "key"]).select("dir", "schema", "exact", "errors"),
            _verdict(distinct.join(split, on=["dir", "schema", "key"]).join(payloads, on="idx"))
            .filter(pl.col("errors").list.len() > 0)
            .select("dir", "schema", "exact", "errors"),
        ]
    )
    return _report(rows.join(failing, on=["dir", "schema", "exact"], how="inner"), evidence_cap)


def _keyed_failures(rows: pl.LazyFrame, payloads: pl.LazyFrame) -> pl.LazyFrame:
    """The failing rows (``idx``, ``sid``, ``errors``) of coded rows (:func:`_coded_rows`) that carry their class
    ``key``: one representative validated per class (a group-by over few integer keys), the rows of a plain
    failing class taken whole, and only the rows of the classes that must be split deduplicated by payload
    (their bytes hashed here: those of no other payload are) and validated."""
    names = _checked_schemas()[2].lazy().select("sid", "dir", "schema")
    on = ["sid", "key"]
    classes = _verdict(
        rows.group_by(on).agg(pl.col("idx").first()).join(payloads, on="idx").join(names, on="sid")
    ).collect()
    plain = classes.filter(~pl.col("sensitive"), pl.col("errors").list.len() > 0).select(*on, "errors")
    split = classes.filter("sensitive").select(on)
    exact = ["sid", "exact"]
    split_rows = (
        rows.join(split.lazy(), on=on, how="semi").join(payloads, on="idx")
        .select("idx", "sid", "payload", exact=pl.col("payload").hash())
    ).cache()  # fmt: skip
    split_failing = (
        _verdict(split_rows.group_by(exact).agg(pl.col("idx").first(), pl.col("payload").first()).join(names, on="sid"))
        .filter(pl.col("errors").list.len() > 0)
        .select(*exact, "errors")
    )  # fmt: skip
    return pl.concat([
        rows.join(plain.lazy(), on=on, how="inner").select("idx", "sid", "errors"),
        split_rows.join(split_failing, on=exact, how="inner").select("idx", "sid", "errors"),
    ])  # fmt: skip


def _report(failing_rows: pl.LazyFrame, evidence_cap: int) -> pl.LazyFrame:
    """Failing rows (one per row and error list) -> one finding per charge point, action, kind and error."""
    return (
        failing_rows.explode("errors")
        .sort("idx")
        .group_by("charge_point_id", "ocpp_version", "action", "kind", "schema", "errors")
        .agg(
            ts=pl.col("ts").first(),
            conn=pl.col("conn").first(),
            n=pl.len(),
            evidence=pl.col("idx").head(evidence_cap),
        )
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            value=pl.col("n").cast(pl.Float64),
            summary=pl.format(
                "{} {} {}(s) on {} break the OCPP {} schema {}.json: {}.",
                "n",
                "action",
                "kind",
                pl.col("charge_point_id").fill_null(pl.col("conn")),
                "ocpp_version",
                "schema",
                "errors",
            ),
        )
    )
