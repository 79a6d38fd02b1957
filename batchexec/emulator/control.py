"""Request accounting and fault injection: a WSGI middleware in front of moto.

Why in the server: benchmarks need to know how many AWS requests a workload cost (the
executor's whole point is few requests under load), and unhappy-path tests need throttling
and errors on demand, from any process (client, workers) that talks to the endpoint.

    client/worker ──HTTP──▶ ControlMiddleware ──▶ moto (DomainDispatcherApplication)
                              │ /_batchexec/...   control plane, never counted
                              │ count "service.Operation"
                              └ a matching fault?  answer with a well-formed AWS error

Control plane (JSON):
    GET    /_batchexec/requests         {"sqs.SendMessageBatch": 3, ...}
    POST   /_batchexec/requests/reset
    POST   /_batchexec/faults           {"operation": "SendMessageBatch", "count": 3,
                                         "code": "ThrottlingException", "status": 400}
                                        a partial batch failure, as SQS reports one:
                                        {"operation": "SendMessageBatch", "entry": 1,
                                         "queue": "-tasks", "code": "InvalidMessageContents"}
    GET    /_batchexec/faults           the faults still armed
    DELETE /_batchexec/faults
"""

from __future__ import annotations

import io
import json
import threading
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

CONTROL_PREFIX = "/_batchexec/"
#: moto's own control plane: not AWS traffic, not counted.
_UNCOUNTED_PREFIXES = (CONTROL_PREFIX, "/moto-api")
#: Query-protocol services that use EC2's error envelope instead of ErrorResponse.
_EC2_STYLE = {"ec2"}
#: JSON services that are "awsQueryCompatible": botocore takes the code from this header.
_QUERY_COMPATIBLE = {"sqs"}


@dataclass
class Fault:
    """Fail the next `count` requests whose operation matches with `code`/`status`."""

    operation: str
    count: int = 1
    code: str = "ThrottlingException"
    status: int = 400
    message: str = "Rate exceeded (injected by the batchexec emulator)"
    #: SQS batch calls only: instead of failing the whole call, refuse the entry at this
    #: position of the next `count` calls that have one, and list it under "Failed" as SQS
    #: does. A refused body stays refused when sent again (SQS judges content, not timing),
    #: until the faults are cleared.
    entry: int | None = None
    #: Only calls whose QueueUrl contains this (e.g. "-tasks": the client's sends, not the
    #: workers' result sends).
    queue: str = ""

    def matches(self, service: str, operation: str) -> bool:
        return self.operation in ("*", operation, f"{service}.{operation}", f"{service}.*")


class ControlMiddleware:
    """Counts every AWS request by "service.Operation" and injects armed faults."""

    def __init__(self, app: Any):
        self.app = app
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._faults: list[Fault] = []
        #: Bodies refused by an entry fault, and the fault that refused them.
        self._refused: dict[str, Fault] = {}

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, path[len(CONTROL_PREFIX) :])
        if path.startswith(_UNCOUNTED_PREFIXES):
            return self.app(environ, start_response)
        service, operation = identify(environ)
        with self._lock:
            self._counts[f"{service}.{operation}"] += 1
            partial = (service, operation) in _SQS_BATCH_CALLS and (self._refused or any(
                f.entry is not None and f.matches(service, operation) for f in self._faults))
        if partial:
            return self._partial(environ, start_response, service, operation)
        return self._forward(environ, start_response, service, operation)

    def _forward(self, environ: dict, start_response: Any, service: str, operation: str) -> Any:
        """To moto, unless a whole-call fault is armed for this operation."""
        with self._lock:
            fault = next((f for f in self._faults
                          if f.entry is None and f.matches(service, operation)), None)
            if fault is not None:
                self._spend_locked(fault)
        if fault is not None:
            return error_response(environ, start_response, service, fault)
        return self.app(environ, start_response)

    def _spend_locked(self, fault: Fault) -> None:
        """One of the fault's ``count`` uses is taken: disarm it after the last."""
        fault.count -= 1
        if fault.count <= 0:
            self._faults.remove(fault)

    def _partial(self, environ: dict, start_response: Any, service: str, operation: str) -> Any:
        """An SQS batch call with some entries refused: the rest go through to moto, and the
        refused ones are added to moto's answer under "Failed"."""
        request = json.loads(read_body(environ) or b"{}")
        entries = request.get("Entries", [])
        refused: dict[int, Fault] = {}
        with self._lock:
            for i, entry in enumerate(entries):
                fault = self._refused.get(_entry_key(entry))
                if fault is not None:
                    refused[i] = fault
            for fault in list(self._faults):
                if (fault.entry is not None and fault.matches(service, operation)
                        and fault.queue in request.get("QueueUrl", "")
                        and fault.entry < len(entries) and fault.entry not in refused):
                    refused[fault.entry] = fault
                    self._refused[_entry_key(entries[fault.entry])] = fault
                    self._spend_locked(fault)
        failed = [{"Id": entries[i]["Id"], "SenderFault": f.status < 500, "Code": f.code,
                   "Message": f.message} for i, f in sorted(refused.items())]
        kept = [e for i, e in enumerate(entries) if i not in refused]
        if not failed:  # nothing to refuse in this call (read_body put the body back)
            return self._forward(environ, start_response, service, operation)
        if not kept:
            return _json(start_response, 200, {"Successful": [], "Failed": failed},
                         "application/x-amz-json-1.0")
        body = json.dumps({**request, "Entries": kept}).encode()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            raw = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        if not captured["status"].startswith("200"):  # moto refused the whole call: pass it on
            start_response(captured["status"], captured["headers"])
            return [raw]
        answer = json.loads(raw or b"{}")
        answer["Failed"] = answer.get("Failed", []) + failed
        return _json(start_response, 200, answer, "application/x-amz-json-1.0")

    # -- control plane -------------------------------------------------------------------

    def _control(self, environ: dict, start_response: Any, what: str) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        with self._lock:
            if what == "requests" and method == "GET":
                return _json(start_response, 200, dict(self._counts))
            if what == "requests/reset" and method == "POST":
                self._counts.clear()
                return _json(start_response, 200, {})
            if what == "faults" and method == "GET":
                return _json(start_response, 200, [asdict(f) for f in self._faults])
            if what == "faults" and method == "DELETE":
                self._faults.clear()
                self._refused.clear()
                return _json(start_response, 200, {})
        if what == "capacity" and method == "GET":
            from . import jobs

            return _json(start_response, 200, jobs.capacity.state())
        if what == "capacity" and method == "POST":
            from . import jobs

            try:
                spec = json.loads(read_body(environ) or b"{}")
                jobs.capacity.set(bool(spec["available"]), str(spec.get("reason", "")))
            except (ValueError, TypeError, KeyError) as exc:
                return _json(start_response, 400, {"error": f"bad capacity spec: {exc}"})
            return _json(start_response, 200, jobs.capacity.state())
        if what == "faults" and method == "POST":
            try:
                spec = json.loads(read_body(environ) or b"{}")
                fault = Fault(**spec)
            except (ValueError, TypeError) as exc:
                return _json(start_response, 400, {"error": f"bad fault spec: {exc}"})
            with self._lock:
                self._faults.append(fault)
            return _json(start_response, 200, asdict(fault))
        return _json(start_response, 404, {"error": f"no control endpoint {method} /{what}"})


class EmulatorControl:
    """Client of the control plane above, for tests and benchmarks (any process)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint.rstrip("/")

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.endpoint}{CONTROL_PREFIX}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def requests(self) -> dict[str, int]:
        """AWS requests counted since the last reset, by "service.Operation"."""
        return self.call("GET", "requests")

    def reset_requests(self) -> None:
        self.call("POST", "requests/reset")

    def add_fault(self, operation: str, count: int = 1, code: str = "ThrottlingException",
                  status: int = 400, **extra: Any) -> dict:
        """Fail the next `count` requests of `operation` (see Fault)."""
        return self.call("POST", "faults", {"operation": operation, "count": count,
                                            "code": code, "status": status, **extra})

    def faults(self) -> list[dict]:
        """The faults still armed (a fault disappears once it has failed `count` requests)."""
        return self.call("GET", "faults")

    def clear_faults(self) -> None:
        self.call("DELETE", "faults")

    def set_capacity(self, available: bool, reason: str = "") -> dict:
        """Make the compute environment run new jobs (True), or hold them RUNNABLE with
        ``reason`` as their statusReason, as AWS does when no instance can be had."""
        return self.call("POST", "capacity", {"available": available, "reason": reason})


# -- which AWS operation is this request? -----------------------------------------------------


def identify(environ: dict) -> tuple[str, str]:
    """(service, operation) from SigV4's credential scope and the protocol's operation marker."""
    service = _service(environ)
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:  # JSON protocol: "AmazonSQS.SendMessageBatch"
        return service, target.rsplit(".", 1)[-1]
    action = _query_action(environ)
    if action:  # query/ec2 protocol: Action=CreateStack in the query string or form body
        return service, action
    if service == "s3":
        return service, s3_operation(environ)
    return service, _rest_operation(service, environ)


def _service(environ: dict) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:  # "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sqs/aws4_request, ..."
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0]
        return scope.split("/")[3]
    except IndexError:
        return "unknown"


def _query_action(environ: dict) -> str | None:
    action = parse_qs(environ.get("QUERY_STRING", "")).get("Action")
    if action:
        return action[0]
    ctype = environ.get("CONTENT_TYPE", "")
    if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in ctype:
        body = read_body(environ)
        action = parse_qs(body.decode("utf-8", "replace")).get("Action")
        if action:
            return action[0]
    return None


def read_body(environ: dict) -> bytes:
    """Read the request body and put it back, so the wrapped app can read it again.

    A chunked body has no Content-Length: the server marks its input as ending where the body
    does (``wsgi.input_terminated``, as werkzeug's does), so it is read to the end; reading
    nothing would hand the wrapped app an empty body."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    if length > 0:
        body = stream.read(length)
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


_REST_OPERATIONS: dict[str, dict[tuple[str, str], str]] = {}


def _rest_operation(service: str, environ: dict) -> str:
    """REST services whose URIs are fixed paths (Batch: POST /v1/submitjob), via botocore."""
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "")
    table = _REST_OPERATIONS.get(service)
    if table is None:
        table = {}
        try:
            import botocore.session

            model = botocore.session.get_session().get_service_model(service)
            for name in model.operation_names:
                http = model.operation_model(name).http
                table[(http.get("method", "POST"), http.get("requestUri", ""))] = name
        except Exception:  # unknown service name: fall back to method and path
            pass
        _REST_OPERATIONS[service] = table
    return table.get((method, path)) or f"{method} {path}"


_S3_BUCKET_SUBRESOURCES = (
    "lifecycle", "policy", "tagging", "encryption", "publicAccessBlock", "versioning",
    "acl", "cors", "notification", "website", "logging", "ownershipControls",
    "object-lock", "replication", "accelerate", "requestPayment", "location",
)  # fmt: skip


def s3_operation(environ: dict) -> str:
    """Name an S3 REST request (path-style addressing) the way the S3 API does, roughly."""
    method = environ.get("REQUEST_METHOD", "GET")
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    q = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    copy = "HTTP_X_AMZ_COPY_SOURCE" in environ
    if not bucket:
        return "ListBuckets"
    if key:
        if "uploadId" in q or "uploads" in q:
            return {
                ("PUT", True): "UploadPartCopy" if copy else "UploadPart",
                ("POST", True): "CompleteMultipartUpload",
                ("DELETE", True): "AbortMultipartUpload",
                ("GET", True): "ListParts",
            }.get((method, "uploadId" in q), "CreateMultipartUpload")
        verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head"}.get(method)
        if "tagging" in q and verb:
            return f"{verb}ObjectTagging"
        if method == "PUT" and copy:
            return "CopyObject"
        return f"{verb}Object" if verb else f"{method}Object"
    if method == "POST" and "delete" in q:
        return "DeleteObjects"
    if method == "GET":
        if q.get("list-type") == ["2"]:
            return "ListObjectsV2"
        if "uploads" in q:
            return "ListMultipartUploads"
        if "versions" in q:
            return "ListObjectVersions"
    sub = next((s for s in _S3_BUCKET_SUBRESOURCES if s in q), None)
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head"}.get(method, method)
    if sub:
        return f"{verb}Bucket{sub[0].upper()}{sub[1:].replace('-', '')}"
    return {"GET": "ListObjects", "PUT": "CreateBucket"}.get(method, f"{verb}Bucket")


# -- well-formed AWS errors, per protocol -----------------------------------------------------


def error_response(environ: dict, start_response: Any, service: str, fault: Fault) -> Any:
    """An error botocore parses into ClientError(code) for the request's protocol."""
    request_id = str(uuid.uuid4())
    status = f"{fault.status} {_REASONS.get(fault.status, 'Error')}"
    headers = [("x-amzn-RequestId", request_id), ("x-amz-request-id", request_id)]
    sender = "Sender" if fault.status < 500 else "Receiver"
    if environ.get("HTTP_X_AMZ_TARGET"):  # JSON protocol
        body = json.dumps(
            {"__type": f"com.amazonaws.{service}#{fault.code}", "message": fault.message}
        ).encode()
        headers.append(("Content-Type", "application/x-amz-json-1.0"))
        if service in _QUERY_COMPATIBLE:
            headers.append(("x-amzn-query-error", f"{fault.code};{sender}"))
    elif service == "s3":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
            f"<Message>{fault.message}</Message><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        headers.append(("Content-Type", "application/xml"))
    elif service in _EC2_STYLE:
        body = (
            f"<Response><Errors><Error><Code>{fault.code}</Code><Message>{fault.message}"
            f"</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    elif _query_action(environ):  # query protocol
        body = (
            f"<ErrorResponse><Error><Type>{sender}</Type><Code>{fault.code}</Code>"
            f"<Message>{fault.message}</Message></Error><RequestId>{request_id}</RequestId>"
            f"</ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    else:  # rest-json (Batch and friends)
        body = json.dumps({"__type": fault.code, "message": fault.message}).encode()
        headers += [("Content-Type", "application/json"), ("x-amzn-ErrorType", fault.code)]
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


_REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


def _json(start_response: Any, status: int, payload: Any,
          content_type: str = "application/json") -> list[bytes]:
    body = json.dumps(payload, sort_keys=True).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'OK')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))),
         ("x-amzn-RequestId", str(uuid.uuid4()))],
    )
    return [body]


#: SQS calls whose entries succeed or fail one by one.
_SQS_BATCH_CALLS = {("sqs", "SendMessageBatch"), ("sqs", "DeleteMessageBatch"),
                    ("sqs", "ChangeMessageVisibilityBatch")}


def _entry_key(entry: dict) -> str:
    """What makes a batch entry the same entry when it is sent again: its content."""
    return json.dumps({k: v for k, v in entry.items() if k != "Id"}, sort_keys=True)
