"""A stand-in Confluent Schema Registry: a small HTTP server on 127.0.0.1 for unit and end-to-end tests.

No Confluent Schema Registry can be installed here, so ``StandInRegistry`` implements only the REST endpoints
confluent-kafka 2.16's ``SchemaRegistryClient``, ``AvroSerializer`` and ``AvroDeserializer`` call, with the
registry's response shapes and error codes:

- ``POST /subjects/{subject}/versions``   register (the serializer, auto.register.schemas=true)
- ``POST /subjects/{subject}``            look up a schema under a subject (auto.register.schemas=false)
- ``GET  /schemas/ids/{id}``              a writer schema by id (the deserializer, our resolver)
- ``GET  /subjects/{subject}/versions/latest``  (use.latest.version; used by the tests to inspect)
- ``GET  /associations/resources/{ns}/{topic}``  answered 404, as a registry without the associations API:
  the serializer's default (associated) subject strategy then falls back to the topic strategy.

Ids are global and start at 1; the same schema under two subjects keeps its id (as the registry does).
Everything else the client might ask is answered 404 and recorded in ``unexpected`` (tests assert it empty).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["StandInRegistry"]


class StandInRegistry:
    """An in-process stand-in for a Confluent Schema Registry: only the endpoints listed in the module doc."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.schemas: list[dict[str, Any]] = []  # index = id - 1; {"schema": str, "schemaType": str}
        self.subjects: dict[str, list[int]] = {}  # subject -> ids of its versions 1..n
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unexpected: list[tuple[str, str]] = []
        self.fail_status: int | None = None  # answer every request with this status (fault tests)
        self.auth = auth
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                registry._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                registry._handle(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                registry._handle(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                registry._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (method, path))

    # the registry's own behaviour
    def register(self, subject: str, schema: str, schema_type: str = "AVRO") -> int:
        body = {"schema": schema, "schemaType": schema_type}
        sid = next((i for i, known in enumerate(self.schemas, start=1)  # same schema, same id, any subject
                    if known["schemaType"] == schema_type and json.loads(known["schema"]) == json.loads(schema)), None)
        if sid is None:
            self.schemas.append(body)
            sid = len(self.schemas)
        versions = self.subjects.setdefault(subject, [])
        if sid not in versions:
            versions.append(sid)
        return sid

    def _version(self, subject: str, sid: int) -> dict[str, Any]:
        return {"subject": subject, "id": sid, "version": self.subjects[subject].index(sid) + 1,
                "schema": self.schemas[sid - 1]["schema"]}

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(req.path).path
        self.requests.append((method, path))
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length)) if length else None
        if self.fail_status is not None:
            return self._reply(req, self.fail_status, {"error_code": 50001, "message": "Error in the backend"})
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if req.headers.get("Authorization") != expected:
                return self._reply(req, 401, {"error_code": 401, "message": "Unauthorized"})
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            sid = self.register(parts[1], body["schema"], body.get("schemaType", "AVRO"))
            return self._reply(req, 200, {"id": sid})
        if method == "POST" and len(parts) == 2 and parts[0] == "subjects":
            if parts[1] not in self.subjects:
                return self._reply(req, 404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."})
            for sid in self.subjects[parts[1]]:
                if json.loads(self.schemas[sid - 1]["schema"]) == json.loads(body["schema"]):
                    return self._reply(req, 200, self._version(parts[1], sid))
            return self._reply(req, 404, {"error_code": 40403, "message": "Schema not found"})
        if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            sid = int(parts[2])
            if not 1 <= sid <= len(self.schemas):
                return self._reply(req, 404, {"error_code": 40403, "message": f"Schema {sid} not found"})
            known = self.schemas[sid - 1]
            answer = {"schema": known["schema"]}
            if known["schemaType"] != "AVRO":  # the registry leaves schemaType out for Avro
                answer["schemaType"] = known["schemaType"]
            return self._reply(req, 200, answer)
        if method == "GET" and len(parts) == 4 and parts[0] == "subjects" and parts[2:] == ["versions", "latest"]:
            if parts[1] not in self.subjects:
                return self._reply(req, 404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."})
            return self._reply(req, 200, self._version(parts[1], self.subjects[parts[1]][-1]))
        if method == "GET" and parts[:2] == ["associations", "resources"]:
            return self._reply(req, 404, {"error_code": 404, "message": "HTTP 404 Not Found"})
        self.unexpected.append((method, path))
        return self._reply(req, 404, {"error_code": 404, "message": "HTTP 404 Not Found"})

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
