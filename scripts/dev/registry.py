#!/usr/bin/env python3
"""A small Confluent-compatible Schema Registry for development and tests.

This is a development aid: no Confluent Schema Registry or Karapace can be installed on the
project's machines, so `scripts/dev-up` runs this one next to the local broker. In production
Tripline points at a real registry; nothing here is meant to replace one.

    registry.py --port P --data-dir DIR [--host 127.0.0.1] [--pid-file FILE]

`--port 0` picks a free port; the chosen address is logged as `listening on http://HOST:PORT`.

It speaks the subset of the Confluent REST API that Kafka clients and Tripline use, with
Confluent's JSON shapes, status codes and error bodies (`{"error_code": N, "message": "..."}`),
for AVRO schemas only:

    GET    /subjects                                   [?deleted=true]
    GET    /subjects/{s}/versions                      [?deleted=true]
    GET    /subjects/{s}/versions/{v|latest|-1}        {subject, version, id, schema}
    GET    /subjects/{s}/versions/{v}/schema           the schema itself
    GET    /subjects/{s}/versions/{v}/referencedby     ids of schemas that reference it
    POST   /subjects/{s}/versions                      {"schema", "schemaType"?, "references"?} -> {"id"}
    POST   /subjects/{s}                               lookup -> {subject, version, id, schema}
    DELETE /subjects/{s}                               [?permanent=true] -> [versions]
    DELETE /subjects/{s}/versions/{v}                  [?permanent=true] -> version
    GET    /schemas/ids/{id}                           {"schema"}
    GET    /schemas/ids/{id}/schema                    the schema itself
    GET    /schemas/ids/{id}/versions                  [{subject, version}]
    GET    /schemas/ids/{id}/subjects                  [subject]
    GET    /schemas/types                              ["AVRO"]
    GET|PUT|DELETE /config                             {"compatibilityLevel"} / PUT {"compatibility"}
    GET|PUT|DELETE /config/{s}                         GET: [?defaultToGlobal=true]
    POST   /compatibility/subjects/{s}/versions/{v}    {"is_compatible"} [?verbose=true: + "messages"]
    POST   /compatibility/subjects/{s}/versions        against every version the level asks for
    GET    /mode                                       {"mode": "READWRITE"}

Compatibility levels: NONE, BACKWARD (default), BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE,
FULL, FULL_TRANSITIVE. BACKWARD: the new schema can read data written with the latest version;
FORWARD: the latest version can read data written with the new schema; FULL: both; *_TRANSITIVE:
against every live version, not only the latest. The checks are Apache Avro's
`avro.compatibility.ReaderWriterCompatibilityChecker`.

Two schemas are "the same" when their parsed forms are equal (whitespace and key order do not
matter; names, defaults, docs and other attributes do) and their references are equal. The same
schema always gets the same global id, under any subject.

Error codes: 40401 subject not found, 40402 version not found, 40403 schema not found, 40404 and
40405 subject (not) soft-deleted first, 40406 and 40407 the same for a version, 42201 invalid
schema, 42202 invalid version, 42203 invalid compatibility level, 42206 reference exists,
409 incompatible schema, 50001 store error, 415 unsupported content type.

Persistence: the whole store (schemas by id, subjects with their versions and deleted flags, the
compatibility configuration) lives in DIR/store.json, rewritten atomically (temporary file, fsync,
rename, fsync of the directory) after every change and loaded at start. One line per request is
logged to stderr. SIGTERM and SIGINT stop it cleanly.

Needs Python 3.10+ and the `avro` package (scripts/setup installs both into the dev venv).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.name import Names

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_REQUEST_TYPES = {
    "",
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
}
LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
DEFAULT_LEVEL = "BACKWARD"
MAX_VERSION = 2**31 - 1
STORE_FORMAT = 1


class ApiError(Exception):
    """An error answered as Confluent does: HTTP status and {"error_code", "message"}."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject: str) -> ApiError:
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(version) -> ApiError:
    return ApiError(404, 40402, f"Version {version} not found.")


def schema_not_found(what: str = "Schema not found") -> ApiError:
    return ApiError(404, 40403, what)


def invalid_schema(message: str) -> ApiError:
    return ApiError(422, 42201, message)


def invalid_level() -> ApiError:
    return ApiError(
        422,
        42203,
        "Invalid compatibility level. Valid values are none, backward, forward, full, "
        "backward_transitive, forward_transitive, and full_transitive",
    )


# --------------------------------------------------------------------------------------------
# Avro helpers


def _default_error(schema, value, path: str):
    """Why `value` (a field default, as JSON) does not fit `schema`, or None if it does."""
    t = schema.type
    if t == "union":
        # A union's default must match its first branch.
        return _default_error(schema.schemas[0], value, path)
    ok = True
    if t == "null":
        ok = value is None
    elif t == "boolean":
        ok = isinstance(value, bool)
    elif t in ("int", "long"):
        bits = 31 if t == "int" else 63
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**bits) <= value < 2**bits
    elif t in ("float", "double"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t in ("string", "bytes"):
        ok = isinstance(value, str)
    elif t == "fixed":
        ok = isinstance(value, str) and len(value) == schema.size
    elif t == "enum":
        ok = isinstance(value, str) and value in schema.symbols
    elif t == "array":
        if not isinstance(value, list):
            ok = False
        else:
            for i, item in enumerate(value):
                err = _default_error(schema.items, item, f"{path}[{i}]")
                if err:
                    return err
    elif t == "map":
        if not isinstance(value, dict):
            ok = False
        else:
            for k, item in value.items():
                err = _default_error(schema.values, item, f"{path}[{k!r}]")
                if err:
                    return err
    elif t in ("record", "error"):
        if not isinstance(value, dict):
            ok = False
        else:
            for field in schema.fields:
                if field.name in value:
                    err = _default_error(field.type, value[field.name], f"{path}.{field.name}")
                    if err:
                        return err
                elif not field.has_default:
                    return f"{path}: missing field '{field.name}' in the default value"
    if not ok:
        return f"{path}: default value {json.dumps(value)} is not a valid {t}"
    return None


def check_defaults(schema) -> None:
    """Rejects field defaults that do not match their types (as Avro for Java does)."""
    seen = set()

    def walk(s):
        t = s.type
        if t in ("record", "error", "enum", "fixed"):
            if id(s) in seen:
                return
            seen.add(id(s))
        if t in ("record", "error"):
            for field in s.fields:
                if field.has_default:
                    err = _default_error(field.type, field.default, f"{s.fullname}.{field.name}")
                    if err:
                        raise avro.errors.SchemaParseException(f"Invalid default for field {err}")
                walk(field.type)
        elif t == "array":
            walk(s.items)
        elif t == "map":
            walk(s.values)
        elif t == "union":
            for branch in s.schemas:
                walk(branch)

    walk(schema)


def identity_key(parsed, references) -> str:
    """What makes two registrations 'the same schema': the parsed form plus the references."""
    refs = [[r["name"], r["subject"], r["version"]] for r in references]
    return json.dumps([parsed.to_json(), refs], sort_keys=True, separators=(",", ":"))


def compatibility_messages(new, olds, level: str) -> list[str]:
    """Empty when `new` may follow `olds` (list of (version, parsed, text), oldest first)."""
    if level == "NONE" or not olds:
        return []
    base = level.replace("_TRANSITIVE", "")
    directions = {"BACKWARD": ("backward",), "FORWARD": ("forward",), "FULL": ("backward", "forward")}[base]
    targets = olds if level.endswith("_TRANSITIVE") else olds[-1:]
    messages = []
    for version, old, old_text in reversed(targets):
        for direction in directions:
            if direction == "backward":
                reader, writer = new, old
                what = f"the new schema cannot read data written with version {version}"
            else:
                reader, writer = old, new
                what = f"version {version} cannot read data written with the new schema"
            try:
                result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
                failed = result.compatibility is SchemaCompatibilityType.incompatible
                types = sorted({i.name.upper() for i in result.incompatibilities}) if failed else []
                details = "; ".join(sorted(result.messages)) if failed else ""
                where = ", ".join(sorted(result.locations)) if failed else ""
            except Exception as e:  # the checker has gaps; report rather than crash
                failed, types, details, where = True, ["CHECK_FAILED"], f"{type(e).__name__}: {e}", "/"
            if failed:
                messages.append(
                    f"{{errorType:'{','.join(types)}', description:'{what}: {details}', location:'{where}'}}"
                )
                messages.append(f"{{oldSchemaVersion: {version}}}")
                messages.append(f"{{oldSchema: '{old_text}'}}")
    if messages:
        messages.append(f"{{compatibility: '{level}'}}")
    return messages


# --------------------------------------------------------------------------------------------
# The store


def empty_state() -> dict:
    return {
        "format": STORE_FORMAT,
        "next_id": 1,
        # id (as a string) -> {"schema": text, "references": [...], "ref_ids": [...], "key": ...}
        "schemas": {},
        # subject -> [{"version": n, "id": id, "deleted": bool}, ...] in version order
        "subjects": {},
        "config": {"global": DEFAULT_LEVEL, "subjects": {}},
    }


class Store:
    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, "store.json")
        self.lock = threading.RLock()
        self.parsed: dict[int, object] = {}
        if os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.state = json.load(f)
            except (OSError, ValueError) as e:
                raise SystemExit(f"registry: cannot load {self.path}: {e}") from None
            if self.state.get("format") != STORE_FORMAT:
                raise SystemExit(f"registry: {self.path}: unknown store format {self.state.get('format')!r}")
        else:
            self.state = empty_state()

    # -- persistence

    def _write(self, state: dict) -> None:
        tmp = self.path + ".tmp"
        data = json.dumps(state, indent=1, sort_keys=True).encode("utf-8")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def mutate(self):
        """Changes a copy of the state; on success writes it and makes it current."""
        with self.lock:
            new_state = copy.deepcopy(self.state)
            yield new_state
            try:
                self._write(new_state)
            except OSError as e:
                raise ApiError(500, 50001, f"Error while storing the schema registry data: {e}") from e
            self.state = new_state

    # -- schemas

    def parse_stored(self, schema_id: int, state: dict | None = None):
        state = state or self.state
        if schema_id not in self.parsed:
            rec = state["schemas"][str(schema_id)]
            self.parsed[schema_id] = parse_schema(rec["schema"], rec.get("ref_ids", []), state)
        return self.parsed[schema_id]


def parse_schema(text: str, ref_ids: list[int], state: dict):
    """Parses an Avro schema, with the named types of its references (schema ids) known."""
    names = Names(validate_names=True)
    loaded = set()

    def load(rid: int, depth: int = 0):
        if rid in loaded:
            return
        if depth > 32:
            raise avro.errors.SchemaParseException("references nest too deeply")
        rec = state["schemas"][str(rid)]
        for sub in rec.get("ref_ids", []):
            load(sub, depth + 1)
        loaded.add(rid)
        avro.schema.make_avsc_object(json.loads(rec["schema"]), names)

    for rid in ref_ids:
        load(rid)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise avro.errors.SchemaParseException(f"Error parsing JSON: {e}") from e
    parsed = avro.schema.make_avsc_object(data, names)
    check_defaults(parsed)
    return parsed


# --------------------------------------------------------------------------------------------
# The API


def parse_version(text: str):
    """'latest' or -1 -> 'latest', else an int in [1, 2^31-1] (42202 otherwise)."""
    if text in ("latest", "-1"):
        return "latest"
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or not 1 <= v <= MAX_VERSION or str(v) != text.lstrip("+"):
        raise ApiError(
            422,
            42202,
            f"The specified version '{text}' is not a valid version id. "
            'Allowed values are between [1, 2^31-1] and the string "latest"',
        )
    return v


def flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() == "true"


class Registry:
    def __init__(self, store: Store):
        self.store = store

    # -- helpers (call with the lock held)

    def versions_of(self, state, subject, deleted=False):
        return [v for v in state["subjects"].get(subject, []) if deleted or not v["deleted"]]

    def find_version(self, state, subject, version, deleted=False):
        """The version entry, or 40401/40402."""
        entries = self.versions_of(state, subject, deleted)
        if not entries:
            raise subject_not_found(subject)
        if version == "latest":
            return entries[-1]
        for v in entries:
            if v["version"] == version:
                return v
        raise version_not_found(version)

    def version_body(self, state, subject, entry):
        rec = state["schemas"][str(entry["id"])]
        body = {"subject": subject, "version": entry["version"], "id": entry["id"]}
        if rec.get("references"):
            body["references"] = rec["references"]
        body["schema"] = rec["schema"]
        return body

    def level_of(self, state, subject):
        return state["config"]["subjects"].get(subject) or state["config"]["global"]

    def schema_request(self, body, state):
        """Validates a register/lookup/compatibility body: (parsed, text, references, ref_ids)."""
        if not isinstance(body, dict):
            raise invalid_schema("The request body must be a JSON object with a \"schema\" field")
        schema_type = body.get("schemaType") or "AVRO"
        if not isinstance(schema_type, str) or schema_type.upper() != "AVRO":
            raise invalid_schema(
                f"Invalid schema type {schema_type}: this development registry supports only AVRO"
            )
        text = body.get("schema")
        if not isinstance(text, str) or not text.strip():
            raise invalid_schema("Empty schema")
        references = body.get("references") or []
        if not isinstance(references, list):
            raise invalid_schema("Invalid references: must be a list")
        resolved, ref_ids = [], []
        for r in references:
            if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("name", "subject")):
                raise invalid_schema(f"Invalid reference {json.dumps(r)}: needs name, subject and version")
            try:
                version = parse_version(str(r.get("version", "latest")))
                entry = self.find_version(state, r["subject"], version)
            except ApiError:
                raise invalid_schema(
                    f"Invalid schema {text} with refs {json.dumps(references)} of type AVRO, details: "
                    f"reference {r['subject']} version {r.get('version')} not found"
                ) from None
            resolved.append({"name": r["name"], "subject": r["subject"], "version": entry["version"]})
            ref_ids.append(entry["id"])
        try:
            parsed = parse_schema(text, ref_ids, state)
        except Exception as e:
            raise invalid_schema(f"Invalid schema {text}, details: {e}") from None
        try:
            stored_text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            stored_text = text
        return parsed, stored_text, resolved, ref_ids

    def live_history(self, state, subject):
        out = []
        for v in self.versions_of(state, subject):
            rec = state["schemas"][str(v["id"])]
            out.append((v["version"], self.store.parse_stored(v["id"], state), rec["schema"]))
        return out

    # -- subjects

    def list_subjects(self, q):
        with self.store.lock:
            st = self.store.state
            return sorted(s for s in st["subjects"] if self.versions_of(st, s, flag(q, "deleted")))

    def list_versions(self, subject, q):
        with self.store.lock:
            entries = self.versions_of(self.store.state, subject, flag(q, "deleted"))
            if not entries:
                raise subject_not_found(subject)
            return [v["version"] for v in entries]

    def get_version(self, subject, version, q):
        version = parse_version(version)
        with self.store.lock:
            st = self.store.state
            return self.version_body(st, subject, self.find_version(st, subject, version, flag(q, "deleted")))

    def get_version_schema(self, subject, version, q):
        return RawJson(self.get_version(subject, version, q)["schema"])

    def referenced_by(self, subject, version, q):
        version = parse_version(version)
        with self.store.lock:
            st = self.store.state
            entry = self.find_version(st, subject, version)
            return self._referencing_ids(st, subject, entry["version"])

    def _referencing_ids(self, st, subject, version):
        used = {v["id"] for vs in st["subjects"].values() for v in vs}
        ids = []
        for sid, rec in st["schemas"].items():
            if int(sid) in used and any(
                r["subject"] == subject and r["version"] == version for r in rec.get("references", [])
            ):
                ids.append(int(sid))
        return sorted(ids)

    def register(self, subject, body, q):
        with self.store.mutate() as st:
            parsed, text, refs, ref_ids = self.schema_request(body, st)
            key = identity_key(parsed, refs)
            entries = st["subjects"].get(subject, [])
            for v in entries:
                if not v["deleted"] and st["schemas"][str(v["id"])]["key"] == key:
                    return {"id": v["id"]}
            level = self.level_of(st, subject)
            messages = compatibility_messages(parsed, self.live_history(st, subject), level)
            if messages:
                raise ApiError(
                    409,
                    409,
                    f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
                    f"details: [{', '.join(messages)}]",
                )
            schema_id = next((int(i) for i, r in st["schemas"].items() if r["key"] == key), None)
            if schema_id is None:
                schema_id = st["next_id"]
                st["next_id"] += 1
                st["schemas"][str(schema_id)] = {
                    "schema": text,
                    "references": refs,
                    "ref_ids": ref_ids,
                    "key": key,
                }
            version = max((v["version"] for v in entries), default=0) + 1
            st["subjects"].setdefault(subject, []).append({"version": version, "id": schema_id, "deleted": False})
            return {"id": schema_id}

    def lookup(self, subject, body, q):
        with self.store.lock:
            st = self.store.state
            deleted = flag(q, "deleted")
            parsed, _, refs, _ = self.schema_request(body, st)
            entries = self.versions_of(st, subject, deleted)
            if not entries:
                raise subject_not_found(subject)
            key = identity_key(parsed, refs)
            for v in reversed(entries):
                if st["schemas"][str(v["id"])]["key"] == key:
                    return self.version_body(st, subject, v)
            raise schema_not_found()

    def delete_subject(self, subject, q):
        permanent = flag(q, "permanent")
        with self.store.mutate() as st:
            entries = st["subjects"].get(subject)
            if not entries:
                raise subject_not_found(subject)
            live = [v for v in entries if not v["deleted"]]
            if permanent:
                if live:
                    raise ApiError(
                        404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted"
                    )
                self._check_not_referenced(st, subject, [v["version"] for v in entries])
                del st["subjects"][subject]
                st["config"]["subjects"].pop(subject, None)
                return [v["version"] for v in entries]
            if not live:
                raise ApiError(404, 40404, f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently")
            self._check_not_referenced(st, subject, [v["version"] for v in live])
            for v in live:
                v["deleted"] = True
            return [v["version"] for v in live]

    def delete_version(self, subject, version, q):
        permanent = flag(q, "permanent")
        version = parse_version(version)
        with self.store.mutate() as st:
            # An explicit number may name a soft-deleted version (40406 below); "latest" means the
            # latest live version, or the latest of all for a permanent delete.
            entry = self.find_version(st, subject, version, deleted=permanent or version != "latest")
            if permanent:
                if not entry["deleted"]:
                    raise ApiError(
                        404,
                        40407,
                        f"Subject '{subject}' Version {entry['version']} was not deleted first before being "
                        "permanently deleted",
                    )
                self._check_not_referenced(st, subject, [entry["version"]])
                st["subjects"][subject].remove(entry)
                if not st["subjects"][subject]:
                    del st["subjects"][subject]
                return entry["version"]
            if entry["deleted"]:
                raise ApiError(
                    404,
                    40406,
                    f"Subject '{subject}' Version {entry['version']} was soft deleted. Set permanent=true to delete "
                    "permanently",
                )
            self._check_not_referenced(st, subject, [entry["version"]])
            entry["deleted"] = True
            return entry["version"]

    def _check_not_referenced(self, st, subject, versions):
        for version in versions:
            if self._referencing_ids(st, subject, version):
                raise ApiError(
                    422,
                    42206,
                    f"One or more references exist to the schema {{magic=1,keytype=SCHEMA,subject={subject},"
                    f"version={version}}}.",
                )

    # -- schemas by id

    def _schema_rec(self, st, schema_id):
        try:
            sid = int(schema_id)
        except ValueError:
            raise schema_not_found(f"Schema {schema_id} not found") from None
        rec = st["schemas"].get(str(sid))
        if rec is None or not any(v["id"] == sid for vs in st["subjects"].values() for v in vs):
            raise schema_not_found(f"Schema {sid} not found")
        return sid, rec

    def get_schema(self, schema_id, q):
        with self.store.lock:
            _, rec = self._schema_rec(self.store.state, schema_id)
            body = {"schema": rec["schema"]}
            if rec.get("references"):
                body["references"] = rec["references"]
            return body

    def get_schema_raw(self, schema_id, q):
        with self.store.lock:
            return RawJson(self._schema_rec(self.store.state, schema_id)[1]["schema"])

    def get_schema_versions(self, schema_id, q):
        with self.store.lock:
            st = self.store.state
            sid, _ = self._schema_rec(st, schema_id)
            deleted = flag(q, "deleted")
            return [
                {"subject": s, "version": v["version"]}
                for s in sorted(st["subjects"])
                for v in st["subjects"][s]
                if v["id"] == sid and (deleted or not v["deleted"])
            ]

    def get_schema_subjects(self, schema_id, q):
        return sorted({x["subject"] for x in self.get_schema_versions(schema_id, q)})

    # -- config

    def get_config(self, subject, q):
        with self.store.lock:
            cfg = self.store.state["config"]
            if subject is None:
                return {"compatibilityLevel": cfg["global"]}
            level = cfg["subjects"].get(subject)
            if level is None:
                if flag(q, "defaultToGlobal"):
                    return {"compatibilityLevel": cfg["global"]}
                raise subject_not_found(subject)
            return {"compatibilityLevel": level}

    def put_config(self, subject, body, q):
        level = body.get("compatibility") if isinstance(body, dict) else None
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise invalid_level()
        level = level.upper()
        with self.store.mutate() as st:
            if subject is None:
                st["config"]["global"] = level
            else:
                st["config"]["subjects"][subject] = level
        return {"compatibility": level}

    def delete_config(self, subject, q):
        with self.store.mutate() as st:
            cfg = st["config"]
            if subject is None:
                previous = cfg["global"]
                cfg["global"] = DEFAULT_LEVEL
                return {"compatibilityLevel": previous}
            previous = cfg["subjects"].pop(subject, None)
            if previous is None:
                raise subject_not_found(subject)
            return {"compatibilityLevel": previous}

    # -- compatibility

    def check_compatibility(self, subject, version, body, q):
        if version is not None:
            version = parse_version(version)
        with self.store.lock:
            st = self.store.state
            parsed, _, _, _ = self.schema_request(body, st)
            level = self.level_of(st, subject)
            history = self.live_history(st, subject)
            if version is None:
                targets = history
            elif version == "latest":
                targets = history[-1:]
            else:
                entry = self.find_version(st, subject, version)
                targets = [h for h in history if h[0] == entry["version"]]
            # With one explicit target, transitive or not makes no difference.
            messages = compatibility_messages(parsed, targets, level)
            result = {"is_compatible": not messages}
            if flag(q, "verbose"):
                result["messages"] = messages
            return result


class RawJson:
    """A response body that is already JSON text (a schema served as itself)."""

    def __init__(self, text: str):
        self.text = text


# --------------------------------------------------------------------------------------------
# HTTP


def routes(reg: Registry):
    """(pattern, {method: handler}); '*' matches one path segment, passed to the handler."""
    return [
        ((), {"GET": lambda q, b: {}}),
        (("subjects",), {"GET": lambda q, b: reg.list_subjects(q)}),
        (("subjects", "*"), {"POST": lambda q, b, s: reg.lookup(s, b, q), "DELETE": lambda q, b, s: reg.delete_subject(s, q)}),
        (("subjects", "*", "versions"), {"GET": lambda q, b, s: reg.list_versions(s, q), "POST": lambda q, b, s: reg.register(s, b, q)}),
        (("subjects", "*", "versions", "*"), {"GET": lambda q, b, s, v: reg.get_version(s, v, q), "DELETE": lambda q, b, s, v: reg.delete_version(s, v, q)}),
        (("subjects", "*", "versions", "*", "schema"), {"GET": lambda q, b, s, v: reg.get_version_schema(s, v, q)}),
        (("subjects", "*", "versions", "*", "referencedby"), {"GET": lambda q, b, s, v: reg.referenced_by(s, v, q)}),
        (("schemas", "types"), {"GET": lambda q, b: ["AVRO"]}),
        (("schemas", "ids", "*"), {"GET": lambda q, b, i: reg.get_schema(i, q)}),
        (("schemas", "ids", "*", "schema"), {"GET": lambda q, b, i: reg.get_schema_raw(i, q)}),
        (("schemas", "ids", "*", "versions"), {"GET": lambda q, b, i: reg.get_schema_versions(i, q)}),
        (("schemas", "ids", "*", "subjects"), {"GET": lambda q, b, i: reg.get_schema_subjects(i, q)}),
        (("config",), {"GET": lambda q, b: reg.get_config(None, q), "PUT": lambda q, b: reg.put_config(None, b, q), "DELETE": lambda q, b: reg.delete_config(None, q)}),
        (("config", "*"), {"GET": lambda q, b, s: reg.get_config(s, q), "PUT": lambda q, b, s: reg.put_config(s, b, q), "DELETE": lambda q, b, s: reg.delete_config(s, q)}),
        (("compatibility", "subjects", "*", "versions"), {"POST": lambda q, b, s: reg.check_compatibility(s, None, b, q)}),
        (("compatibility", "subjects", "*", "versions", "*"), {"POST": lambda q, b, s, v: reg.check_compatibility(s, v, b, q)}),
        (("mode",), {"GET": lambda q, b: {"mode": "READWRITE"}}),
    ]


def match(route_table, segments):
    for pattern, methods in route_table:
        if len(pattern) != len(segments):
            continue
        args = []
        for p, s in zip(pattern, segments):
            if p == "*":
                args.append(s)
            elif p != s:
                break
        else:
            return methods, args
    return None, None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tripline-dev-registry/1"
    timeout = 120  # idle keep-alive connections are closed after this long
    registry: Registry
    route_table: list

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self, method: str):
        start = time.monotonic()
        status = 500
        try:
            url = urlsplit(self.path)
            segments = [unquote(s) for s in url.path.split("/")[1:]]
            if segments and segments[-1] == "":
                segments.pop()
            query = parse_qs(url.query)
            raw = self.read_body()
            methods, args = match(self.route_table, segments)
            if methods is None:
                raise ApiError(404, 404, "HTTP 404 Not Found")
            if method not in methods:
                raise ApiError(405, 405, "HTTP 405 Method Not Allowed")
            body = None
            if method in ("POST", "PUT"):
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype not in ACCEPTED_REQUEST_TYPES:
                    raise ApiError(415, 415, "HTTP 415 Unsupported Media Type")
                try:
                    body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
                except (ValueError, UnicodeDecodeError) as e:
                    raise ApiError(400, 400, f"Unexpected request body, expected JSON: {e}") from None
            result = methods[method](query, body, *args)
            status = 200
            payload = result.text if isinstance(result, RawJson) else json.dumps(result, separators=(",", ":"))
        except ApiError as e:
            status = e.status
            payload = json.dumps({"error_code": e.code, "message": e.message}, separators=(",", ":"))
        except Exception as e:  # a bug: answer like Confluent's internal error, keep serving
            status = 500
            payload = json.dumps(
                {"error_code": 50001, "message": f"Error in the backend data store: {type(e).__name__}: {e}"},
                separators=(",", ":"),
            )
            import traceback

            traceback.print_exc(file=sys.stderr)
        data = payload.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log(f'{self.client_address[0]} "{method} {self.path}" {status} {len(data)}B {1000 * (time.monotonic() - start):.1f}ms')

    def log_request(self, code="-", size="-"):
        pass  # dispatch logs its own line

    def log_message(self, format, *args):
        log(f"{self.client_address[0]} {format % args}")


def log(line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    sys.stderr.write(f"{stamp} registry: {line}\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Confluent-compatible Schema Registry subset for development (AVRO only)")
    ap.add_argument("--port", type=int, required=True, help="port to listen on (0: pick a free one)")
    ap.add_argument("--data-dir", required=True, help="where store.json lives (created if missing)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--pid-file", help="write the process id here once listening; removed on a clean stop")
    args = ap.parse_args(argv)

    os.makedirs(args.data_dir, exist_ok=True)
    store = Store(args.data_dir)
    registry = Registry(store)
    handler = type("BoundHandler", (Handler,), {"registry": registry, "route_table": routes(registry)})
    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 resets connections under a burst of clients

    try:
        server = Server((args.host, args.port), handler)
    except OSError as e:
        log(f"cannot listen on {args.host}:{args.port}: {e}")
        return 1

    def stop(signum, _frame):
        log(f"{signal.Signals(signum).name}: stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    n_subjects = len(store.state["subjects"])
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(args.pid_file + ".tmp", args.pid_file)
    log(f"listening on http://{host}:{port} (store {store.path}: {len(store.state['schemas'])} schemas, {n_subjects} subjects)")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with store.lock:  # let a change being written finish before the process ends
            pass
        if args.pid_file:
            with contextlib.suppress(OSError):
                with open(args.pid_file) as f:
                    mine = f.read().strip() == str(os.getpid())
                if mine:
                    os.remove(args.pid_file)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
