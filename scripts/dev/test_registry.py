"""Tests of the development schema registry (registry.py), through its HTTP API.

Each test starts registry.py in a fresh temporary directory on a free port and stops it
afterwards. Run with the dev venv's Python (it has `avro`):

    "$TRIPLINE_VENV/bin/python" -m unittest discover -s scripts/dev -p 'test_*.py'
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRY = os.path.join(HERE, "registry.py")
CT = "application/vnd.schemaregistry.v1+json"


def record(name, *fields, namespace="tripline.test"):
    """An Avro record schema as text; each field is (name, type) or (name, type, default)."""
    out = []
    for f in fields:
        d = {"name": f[0], "type": f[1]}
        if len(f) > 2:
            d["default"] = f[2]
        out.append(d)
    return json.dumps({"type": "record", "name": name, "namespace": namespace, "fields": out})


# A history where each step is compatible with the one before, but the third is not compatible
# with the first, for each direction (see test_transitive_*).
BACKWARD_HISTORY = [
    record("R", ("a", "int")),
    record("R", ("a", "int"), ("b", "string", "")),
    record("R", ("a", "int"), ("b", "string")),  # reads v2 data, not v1 data (b has no default)
]
FORWARD_HISTORY = [
    record("R", ("a", "int"), ("b", "string")),
    record("R", ("a", "int"), ("b", "string", "")),
    record("R", ("a", "int")),  # v2 can read its data (default for b), v1 cannot
]
FULL_HISTORY = [
    record("R", ("a", "int"), ("b", "string", "x")),
    record("R", ("a", "int")),
    record("R", ("a", "int"), ("b", "int", 0)),  # b was a string in v1
]


class RegistryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tripline-registry-test-")
        self.data_dir = os.path.join(self.tmp, "data")
        self.proc = None
        self.start()

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- process handling

    def start(self):
        log_path = os.path.join(self.tmp, f"registry-{time.monotonic_ns()}.log")
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, REGISTRY, "--port", "0", "--data-dir", self.data_dir],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(log_path) as f:
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", f.read())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(log_path) as f:
            output = f.read()
        self.stop()
        self.fail(f"registry did not start:\n{output}")

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
            self.log.close()

    def restart(self):
        self.stop()
        self.start()

    # -- HTTP

    def call(self, method, path, body=None, content_type=CT, raw=False):
        """(status, decoded JSON body); errors are returned, not raised."""
        data = None
        headers = {"Accept": CT}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text, ctype = r.status, r.read().decode(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            status, text, ctype = e.code, e.read().decode(), e.headers.get("Content-Type")
        self.assertEqual(ctype, CT, f"{method} {path}")
        return status, (text if raw else json.loads(text))

    def ok(self, method, path, body=None):
        status, out = self.call(method, path, body)
        self.assertEqual(status, 200, f"{method} {path} -> {status} {out}")
        return out

    def error(self, method, path, body, status, code):
        got_status, out = self.call(method, path, body)
        self.assertEqual((got_status, out.get("error_code")), (status, code), f"{method} {path} -> {out}")
        self.assertIsInstance(out.get("message"), str)
        self.assertEqual(set(out), {"error_code", "message"})
        return out["message"]

    def register(self, subject, schema, **extra):
        return self.ok("POST", f"/subjects/{subject}/versions", {"schema": schema, **extra})["id"]

    def set_level(self, level, subject=None):
        path = "/config" if subject is None else f"/config/{subject}"
        self.assertEqual(self.ok("PUT", path, {"compatibility": level}), {"compatibility": level})

    # -- registration and lookup

    def test_register_lookup_and_ids(self):
        self.assertEqual(self.ok("GET", "/subjects"), [])
        v1 = record("User", ("id", "long"))
        id1 = self.register("users-value", v1)
        self.assertEqual(id1, 1)
        # Identical schema, written differently (spacing, key order): same id, no new version.
        same = json.dumps(json.loads(v1), indent=3, sort_keys=True)
        self.assertEqual(self.register("users-value", same), id1)
        self.assertEqual(self.ok("GET", "/subjects/users-value/versions"), [1])
        # The same schema under another subject reuses the global id.
        self.assertEqual(self.register("audit-users-value", v1), id1)
        self.assertEqual(self.ok("GET", "/subjects"), ["audit-users-value", "users-value"])
        # A different schema gets a new id; a default makes it a different schema.
        v2 = record("User", ("id", "long"), ("name", "string", ""))
        id2 = self.register("users-value", v2)
        self.assertEqual(id2, 2)
        self.assertEqual(self.ok("GET", "/subjects/users-value/versions"), [1, 2])
        self.assertNotEqual(self.register("other", record("User", ("id", "long"), ("name", "string", "?"))), id2)

        # Lookup: the version that has this schema.
        found = self.ok("POST", "/subjects/users-value", {"schema": same})
        self.assertEqual(found, {"subject": "users-value", "version": 1, "id": id1, "schema": found["schema"]})
        self.assertEqual(json.loads(found["schema"]), json.loads(v1))
        self.error("POST", "/subjects/users-value", {"schema": record("Nope", ("x", "int"))}, 404, 40403)
        self.error("POST", "/subjects/nobody", {"schema": v1}, 404, 40401)

        # Schema type AVRO is accepted explicitly, with empty references.
        self.assertEqual(self.register("users-value", v2, schemaType="AVRO", references=[]), id2)
        # Types.
        self.assertEqual(self.ok("GET", "/schemas/types"), ["AVRO"])

    def test_versions_latest_and_by_id(self):
        v1 = record("Card", ("card_id", "string"))
        v2 = record("Card", ("card_id", "string"), ("amount", "double", 0.0))
        self.register("cards-value", v1)
        id2 = self.register("cards-value", v2)
        for v in ("latest", "-1", "2"):
            got = self.ok("GET", f"/subjects/cards-value/versions/{v}")
            self.assertEqual(set(got), {"subject", "version", "id", "schema"})  # no schemaType for AVRO
            self.assertEqual((got["subject"], got["version"], got["id"]), ("cards-value", 2, id2))
            self.assertEqual(json.loads(got["schema"]), json.loads(v2))
        self.assertEqual(self.ok("GET", "/subjects/cards-value/versions/1")["version"], 1)
        self.assertEqual(self.ok("GET", "/subjects/cards-value/versions/1/schema"), json.loads(v1))
        self.assertEqual(self.ok("GET", "/subjects/cards-value/versions/latest/schema"), json.loads(v2))
        by_id = self.ok("GET", f"/schemas/ids/{id2}")
        self.assertEqual(set(by_id), {"schema"})
        self.assertEqual(json.loads(by_id["schema"]), json.loads(v2))
        self.assertEqual(self.ok("GET", f"/schemas/ids/{id2}/schema"), json.loads(v2))
        self.assertEqual(self.ok("GET", f"/schemas/ids/{id2}/versions"), [{"subject": "cards-value", "version": 2}])
        # A primitive schema.
        sid = self.register("key", '"string"')
        self.assertEqual(self.ok("GET", f"/schemas/ids/{sid}"), {"schema": '"string"'})

    def test_not_found_and_invalid_version_shapes(self):
        self.register("s", record("A", ("x", "int")))
        self.assertIn("'nobody'", self.error("GET", "/subjects/nobody/versions", None, 404, 40401))
        self.error("GET", "/subjects/nobody/versions/latest", None, 404, 40401)
        self.error("GET", "/subjects/s/versions/7", None, 404, 40402)
        self.error("GET", "/subjects/s/versions/7/schema", None, 404, 40402)
        for bad in ("0", "-2", "abc", "1.5", "2147483648"):
            self.error("GET", f"/subjects/s/versions/{bad}", None, 422, 42202)
        self.error("GET", "/schemas/ids/999", None, 404, 40403)
        self.error("GET", "/schemas/ids/999/schema", None, 404, 40403)
        self.error("GET", "/schemas/ids/x", None, 404, 40403)
        self.error("GET", "/no/such/path", None, 404, 404)
        self.error("PUT", "/subjects", {}, 405, 405)

    def test_invalid_schemas_are_422(self):
        msg = self.error("POST", "/subjects/s/versions", {"schema": '{"type": "recrd", "name": "A"}'}, 422, 42201)
        self.assertIn("Undefined type: recrd", msg)  # the parser's message
        msg = self.error("POST", "/subjects/s/versions", {"schema": "{not json"}, 422, 42201)
        self.assertIn("Error parsing JSON", msg)
        self.error("POST", "/subjects/s/versions", {"schema": '{"type":"record","name":"A","fields":[{"name":"f","type":"nope"}]}'}, 422, 42201)
        self.error("POST", "/subjects/s/versions", {"schema": record("A", ("x", "int", "not an int"))}, 422, 42201)
        self.error("POST", "/subjects/s/versions", {}, 422, 42201)
        msg = self.error("POST", "/subjects/s/versions", {"schema": '{"type":"object"}', "schemaType": "JSON"}, 422, 42201)
        self.assertIn("AVRO", msg)
        self.error("POST", "/subjects/s/versions", {"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}, 422, 42201)
        # Nothing was registered.
        self.assertEqual(self.ok("GET", "/subjects"), [])
        # A body that is not JSON; a content type the API does not take.
        status, out = self.call("POST", "/subjects/s/versions", b"{oops")
        self.assertEqual((status, out["error_code"]), (400, 400))
        status, out = self.call("POST", "/subjects/s/versions", {"schema": '"int"'}, content_type="text/plain")
        self.assertEqual((status, out["error_code"]), (415, 415))
        # Plain application/json is fine.
        status, out = self.call("POST", "/subjects/s/versions", {"schema": '"int"'}, content_type="application/json")
        self.assertEqual((status, out), (200, {"id": 1}))

    # -- compatibility levels

    def test_backward_default(self):
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "BACKWARD"})
        self.register("s", record("R", ("a", "int")))
        # A new field without a default: the new schema cannot read old data.
        msg = self.error("POST", "/subjects/s/versions", {"schema": record("R", ("a", "int"), ("b", "string"))}, 409, 409)
        self.assertIn("incompatible", msg)
        self.assertIn("READER_FIELD_MISSING_DEFAULT_VALUE", msg)
        # With a default it can; removing a field is also backward compatible.
        self.register("s", record("R", ("a", "int"), ("b", "string", "")))
        self.register("s", record("R", ("b", "string", "")))
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2, 3])
        # Type promotion int -> long is readable; long -> int is not.
        self.register("p", record("P", ("n", "int")))
        self.register("p", record("P", ("n", "long")))
        self.register("q", record("P", ("n", "long")))
        self.error("POST", "/subjects/q/versions", {"schema": record("P", ("n", "int"))}, 409, 409)
        # A schema identical to any live version (here version 1 of p) returns its id unchecked.
        self.assertEqual(self.register("p", record("P", ("n", "int"))), self.ok("GET", "/subjects/p/versions/1")["id"])
        self.assertEqual(self.ok("GET", "/subjects/p/versions"), [1, 2])

    def test_forward(self):
        self.set_level("FORWARD")
        self.register("s", record("R", ("a", "int"), ("b", "string")))
        # Removing b: old readers need b and have no default.
        self.error("POST", "/subjects/s/versions", {"schema": record("R", ("a", "int"))}, 409, 409)
        # Adding a required field is fine for old readers (they skip it).
        self.register("s", record("R", ("a", "int"), ("b", "string"), ("c", "long")))

    def test_full(self):
        self.set_level("FULL")
        self.register("s", record("R", ("a", "int")))
        self.error("POST", "/subjects/s/versions", {"schema": record("R", ("a", "int"), ("b", "string"))}, 409, 409)
        self.error("POST", "/subjects/s/versions", {"schema": record("R", ("a", "long"))}, 409, 409)  # not forward
        self.register("s", record("R", ("a", "int"), ("b", "string", "")))

    def test_none(self):
        self.set_level("NONE")
        self.register("s", record("R", ("a", "int")))
        self.register("s", record("R", ("a", "string")))
        self.register("s", '"bytes"')
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2, 3])

    def check_transitive(self, level, history):
        """The third schema passes `level` but fails `level`_TRANSITIVE."""
        for subject, lvl in (("plain", level), ("transitive", level + "_TRANSITIVE")):
            self.set_level(lvl, subject)
            self.register(subject, history[0])
            self.register(subject, history[1])
        body = {"schema": history[2]}
        # Against the latest version only, both pass.
        for subject in ("plain", "transitive"):
            self.assertEqual(
                self.ok("POST", f"/compatibility/subjects/{subject}/versions/latest", body), {"is_compatible": True}
            )
        # The whole history as the level asks: only the transitive subject refuses.
        self.assertEqual(self.ok("POST", "/compatibility/subjects/plain/versions", body), {"is_compatible": True})
        self.assertEqual(self.ok("POST", "/compatibility/subjects/transitive/versions", body), {"is_compatible": False})
        self.assertEqual(self.register("plain", history[2]), self.register("other", history[2]))
        msg = self.error("POST", "/subjects/transitive/versions", body, 409, 409)
        self.assertIn("oldSchemaVersion: 1", msg)
        self.assertEqual(self.ok("GET", "/subjects/plain/versions"), [1, 2, 3])
        self.assertEqual(self.ok("GET", "/subjects/transitive/versions"), [1, 2])

    def test_transitive_backward(self):
        self.check_transitive("BACKWARD", BACKWARD_HISTORY)

    def test_transitive_forward(self):
        self.check_transitive("FORWARD", FORWARD_HISTORY)

    def test_transitive_full(self):
        self.check_transitive("FULL", FULL_HISTORY)

    # -- config

    def test_config_global_and_subject(self):
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "BACKWARD"})
        self.set_level("FULL")
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "FULL"})
        self.assertEqual(self.ok("PUT", "/config", {"compatibility": "none"}), {"compatibility": "NONE"})
        for bad in ({"compatibility": "SIDEWAYS"}, {}, {"compatibilityLevel": "FULL"}):
            self.error("PUT", "/config", bad, 422, 42203)
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "NONE"})

        # A subject without its own level.
        self.error("GET", "/config/s", None, 404, 40401)
        self.assertEqual(self.ok("GET", "/config/s?defaultToGlobal=true"), {"compatibilityLevel": "NONE"})
        self.set_level("FORWARD_TRANSITIVE", "s")
        self.assertEqual(self.ok("GET", "/config/s"), {"compatibilityLevel": "FORWARD_TRANSITIVE"})
        self.assertEqual(self.ok("GET", "/config/s?defaultToGlobal=true"), {"compatibilityLevel": "FORWARD_TRANSITIVE"})
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "NONE"})

        # The subject's level wins over the global one.
        self.set_level("BACKWARD", "strict")
        self.register("strict", record("R", ("a", "int")))
        self.error("POST", "/subjects/strict/versions", {"schema": record("R", ("a", "string"))}, 409, 409)
        self.register("loose", record("R", ("a", "int")))
        self.register("loose", record("R", ("a", "string")))  # global NONE

        # Deleting the subject's level goes back to the global one.
        self.assertEqual(self.ok("DELETE", "/config/strict"), {"compatibilityLevel": "BACKWARD"})
        self.error("GET", "/config/strict", None, 404, 40401)
        self.error("DELETE", "/config/strict", None, 404, 40401)
        self.register("strict", record("R", ("a", "string")))
        # Deleting the global level goes back to BACKWARD.
        self.assertEqual(self.ok("DELETE", "/config"), {"compatibilityLevel": "NONE"})
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "BACKWARD"})

    # -- the compatibility endpoint

    def test_compatibility_endpoint(self):
        v1 = record("R", ("a", "int"))
        self.register("s", v1)
        good = {"schema": record("R", ("a", "int"), ("b", "string", ""))}
        bad = {"schema": record("R", ("a", "int"), ("b", "string"))}
        self.assertEqual(self.ok("POST", "/compatibility/subjects/s/versions/latest", good), {"is_compatible": True})
        self.assertEqual(self.ok("POST", "/compatibility/subjects/s/versions/1", bad), {"is_compatible": False})
        verbose = self.ok("POST", "/compatibility/subjects/s/versions/latest?verbose=true", bad)
        self.assertFalse(verbose["is_compatible"])
        self.assertTrue(any("READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in verbose["messages"]), verbose)
        self.assertEqual(
            self.ok("POST", "/compatibility/subjects/s/versions/latest?verbose=true", good),
            {"is_compatible": True, "messages": []},
        )
        # Nothing was registered by checking.
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1])
        # No subject yet: anything is compatible with "latest"; a given version must exist.
        self.assertEqual(self.ok("POST", "/compatibility/subjects/new/versions/latest", bad), {"is_compatible": True})
        self.error("POST", "/compatibility/subjects/new/versions/1", bad, 404, 40401)
        self.error("POST", "/compatibility/subjects/s/versions/9", bad, 404, 40402)
        self.error("POST", "/compatibility/subjects/s/versions/zero", bad, 422, 42202)
        self.error("POST", "/compatibility/subjects/s/versions/latest", {"schema": "{"}, 422, 42201)
        # Level NONE: everything is compatible.
        self.set_level("NONE", "s")
        self.assertEqual(self.ok("POST", "/compatibility/subjects/s/versions/latest", bad), {"is_compatible": True})

    # -- deletion

    def test_soft_and_permanent_delete(self):
        v1 = record("R", ("a", "int"))
        v2 = record("R", ("a", "int"), ("b", "string", ""))
        id1 = self.register("s", v1)
        id2 = self.register("s", v2)
        self.register("keep", v1)

        # Permanent first is refused; soft delete returns the versions.
        self.error("DELETE", "/subjects/s?permanent=true", None, 404, 40405)
        self.assertEqual(self.ok("DELETE", "/subjects/s"), [1, 2])
        self.error("DELETE", "/subjects/s", None, 404, 40404)
        self.assertEqual(self.ok("GET", "/subjects"), ["keep"])
        self.assertEqual(self.ok("GET", "/subjects?deleted=true"), ["keep", "s"])
        self.error("GET", "/subjects/s/versions", None, 404, 40401)
        self.assertEqual(self.ok("GET", "/subjects/s/versions?deleted=true"), [1, 2])
        self.error("GET", "/subjects/s/versions/latest", None, 404, 40401)
        self.assertEqual(self.ok("GET", "/subjects/s/versions/2?deleted=true")["id"], id2)
        self.error("POST", "/subjects/s", {"schema": v1}, 404, 40401)
        # Soft-deleted schemas stay readable by id.
        self.assertEqual(json.loads(self.ok("GET", f"/schemas/ids/{id2}")["schema"]), json.loads(v2))

        # Permanent delete after the soft one.
        self.assertEqual(self.ok("DELETE", "/subjects/s?permanent=true"), [1, 2])
        self.error("DELETE", "/subjects/s?permanent=true", None, 404, 40401)
        self.assertEqual(self.ok("GET", "/subjects?deleted=true"), ["keep"])
        self.error("GET", f"/schemas/ids/{id2}", None, 404, 40403)  # no version uses it any more
        self.assertEqual(self.ok("GET", f"/schemas/ids/{id1}/versions"), [{"subject": "keep", "version": 1}])
        # Registering again starts over at version 1, and the schema keeps its id.
        self.assertEqual(self.register("s", v2), id2)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1])

    def test_delete_version(self):
        v1 = record("R", ("a", "int"))
        v2 = record("R", ("a", "int"), ("b", "string", ""))
        self.register("s", v1)
        id2 = self.register("s", v2)
        self.error("DELETE", "/subjects/s/versions/1?permanent=true", None, 404, 40407)
        self.assertEqual(self.ok("DELETE", "/subjects/s/versions/1"), 1)
        self.error("DELETE", "/subjects/s/versions/1", None, 404, 40406)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [2])
        self.error("GET", "/subjects/s/versions/1", None, 404, 40402)
        self.error("DELETE", "/subjects/s/versions/5", None, 404, 40402)
        self.error("DELETE", "/subjects/nobody/versions/1", None, 404, 40401)
        self.assertEqual(self.ok("DELETE", "/subjects/s/versions/1?permanent=true"), 1)
        self.assertEqual(self.ok("GET", "/subjects/s/versions?deleted=true"), [2])
        # Soft-deleting the latest, then re-registering its schema: a new version, same id.
        self.assertEqual(self.ok("DELETE", "/subjects/s/versions/latest"), 2)
        self.error("GET", "/subjects/s/versions", None, 404, 40401)
        self.assertEqual(self.register("s", v2), id2)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [3])

    def test_references(self):
        address = json.dumps(
            {"type": "record", "name": "Address", "namespace": "t", "fields": [{"name": "city", "type": "string"}]}
        )
        user = json.dumps(
            {"type": "record", "name": "User", "namespace": "t", "fields": [{"name": "home", "type": "t.Address"}]}
        )
        self.register("address", address)
        self.error("POST", "/subjects/user/versions", {"schema": user}, 422, 42201)  # t.Address unknown
        refs = [{"name": "t.Address", "subject": "address", "version": 1}]
        uid = self.register("user", user, references=refs)
        got = self.ok("GET", "/subjects/user/versions/1")
        self.assertEqual(got["references"], refs)
        self.assertEqual(self.ok("GET", f"/schemas/ids/{uid}")["references"], refs)
        self.assertEqual(self.ok("GET", "/subjects/address/versions/1/referencedby"), [uid])
        self.error("DELETE", "/subjects/address", None, 422, 42206)
        self.error(
            "POST", "/subjects/user/versions", {"schema": user, "references": [{"name": "x", "subject": "no", "version": 1}]}, 422, 42201
        )

    # -- persistence

    def test_persistence_across_restart(self):
        v1 = record("R", ("a", "int"))
        v2 = record("R", ("a", "int"), ("b", "string", ""))
        id1 = self.register("s", v1)
        id2 = self.register("s", v2)
        self.register("gone", '"string"')
        self.ok("DELETE", "/subjects/gone")
        self.set_level("FULL_TRANSITIVE")
        self.set_level("NONE", "s")
        store = os.path.join(self.data_dir, "store.json")
        with open(store) as f:
            json.load(f)  # complete JSON after every change
        self.assertEqual(os.listdir(self.data_dir), ["store.json"])  # no temporary file left

        self.restart()
        self.assertEqual(self.ok("GET", "/subjects"), ["s"])
        self.assertEqual(self.ok("GET", "/subjects?deleted=true"), ["gone", "s"])
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2])
        self.assertEqual(self.ok("GET", "/subjects/s/versions/latest")["id"], id2)
        self.assertEqual(json.loads(self.ok("GET", f"/schemas/ids/{id1}")["schema"]), json.loads(v1))
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "FULL_TRANSITIVE"})
        self.assertEqual(self.ok("GET", "/config/s"), {"compatibilityLevel": "NONE"})
        # Ids go on from where they were; known schemas keep theirs.
        self.assertEqual(self.register("s", v1), id1)
        self.assertEqual(self.register("t", record("T", ("x", "int"))), 4)
        # Lookups still compare against the stored schemas.
        self.assertEqual(self.ok("POST", "/subjects/s", {"schema": v2})["version"], 2)

    def test_sigterm_stops_cleanly(self):
        self.register("s", '"int"')
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=10), 0)
        self.log.flush()
        with open(self.log.name) as f:
            self.assertIn("stopped", f.read())


if __name__ == "__main__":
    unittest.main()
