"""SQS calls straight to moto's SQS responder, without moto's per-service Flask app.

Why: every task crosses SQS four times, and on the emulator the server's CPU per call is the
round trip's largest share (about 0.75 ms a call on the 2-core VM, 2026-11-25). Of moto's
part of that, a third went to Flask around the responder: the request context, URL routing
to the one view every SQS call reaches, debug-mode form helpers (moto runs its apps with
``debug = True``), flask-cors's after-request hook and the response object.

What is kept: the request object moto's responder expects (moto's own ``Request``, marked as
arriving through a WSGI server as moto's Flask app marks it), the request recorder, the
handling of a ClientError raised by the responder, the (status, headers, body) answer and
flask-cors's one header, so authorization (IAM enforcement), errors, headers and bodies are
moto's; an exception in the responder reaches the server as it does from moto's app in debug
mode (a 500). Only SQS's JSON protocol (``POST /`` with ``X-Amz-Target: AmazonSQS.*``: what
botocore sends) takes this path; every other request, SQS query-protocol calls included, goes
to moto's application as before.

Internal API, like speedups.py: tests/test_emulator_server.py checks the names it uses.
"""

from __future__ import annotations

from typing import Any

from .sqs_lock import SQS_BACKEND

#: The header botocore's JSON protocol names the operation in.
_TARGET_PREFIX = "AmazonSQS."


class SqsDirect:
    """WSGI middleware: SQS JSON calls to moto's responder, the rest to ``app``."""

    def __init__(self, app: Any):
        from botocore.exceptions import ClientError
        from flask import Response  # its default content type (text/html), as moto's app
        from moto.core.request import Request
        from moto.moto_api import recorder
        from moto.sqs.urls import dispatch

        class ServerRequest(Request):
            from_wsgi_server = True  # what moto's Flask app's request class says

        self.app = app
        self._request = ServerRequest
        self._recorder = recorder
        self._dispatch = dispatch
        self._client_error = ClientError
        self._response = Response

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if not (environ.get("HTTP_X_AMZ_TARGET", "").startswith(_TARGET_PREFIX)
                and environ.get("PATH_INFO") == "/"
                and environ.get("REQUEST_METHOD") == "POST"):  # fmt: skip
            return self.app(environ, start_response)
        request = self._request(environ)
        self._recorder._record_request(request)
        try:
            with SQS_BACKEND:  # see sqs_lock.py: moto's SQS backend is not thread-safe
                result = self._dispatch(request, request.raw_url, dict(request.headers))
        except self._client_error as exc:
            result = 400, {}, exc.response["Error"]["Message"]
        if len(result) == 3:
            status, headers, body = result
        else:
            status, headers, body = 200, {}, result
        response = self._response(response=body, status=status, headers=headers)
        response.headers.setdefault("Access-Control-Allow-Origin", "*")  # as flask-cors adds
        return response(environ, start_response)
