"""Boto3 clients for one executor or worker, configured once.

Why a module of its own: every part (client, worker, launcher, stack commands, emulator
tooling) must talk to the same endpoint with the same retry policy, and nothing else in the
code may branch on "AWS or emulator". The only difference between the two is `endpoint_url`.

Retries are botocore's own (`adaptive` mode: standard retries plus client-side rate limiting
when the service throttles), never hand-written loops. Timeouts are explicit so that an
unreachable endpoint is an error in seconds, not a hang, and the read timeout outlasts SQS's
20 s long poll.
"""

from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
import botocore.session

from . import jsonread
from .errors import ConfigurationError, EndpointUnreachableError

#: Longest SQS long poll (the service maximum). Read timeouts must exceed it.
LONG_POLL_SECONDS = 20
#: Connect timeout: short, so an unreachable endpoint fails fast instead of hanging.
CONNECT_TIMEOUT = 5
#: Read timeout: above LONG_POLL_SECONDS with margin for a slow response.
READ_TIMEOUT = LONG_POLL_SECONDS + 15
#: botocore retry attempts (first try included). Throttling and 5xx are retried with backoff.
RETRY_ATTEMPTS = 8

_DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """Explicit argument, then AWS_ENDPOINT_URL, else None (AWS itself)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def resolve_region(region: str | None, endpoint_url: str | None) -> str:
    """Explicit argument, then AWS_REGION / AWS_DEFAULT_REGION; an endpoint alone: us-east-1."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if endpoint_url:
        return "us-east-1"
    session_region = boto3.session.Session().region_name
    if session_region:
        return session_region
    raise ConfigurationError(
        "no AWS region configured: pass region=..., or set AWS_REGION (e.g. us-east-1)"
    )


@dataclass
class AwsClients:
    """A boto3 session and lazily created, shared clients for one endpoint and region.

    boto3 clients are thread-safe once created; creation is not, hence the lock.
    """

    region: str
    endpoint_url: str | None = None
    retry_mode: str = "adaptive"
    retry_attempts: int = RETRY_ATTEMPTS
    _session: boto3.session.Session = field(init=False, repr=False)
    _clients: dict = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    emulated: bool = False

    @classmethod
    def resolve(cls, region: str | None = None, endpoint_url: str | None = None, **kw):
        endpoint = resolve_endpoint(endpoint_url)
        return cls(region=resolve_region(region, endpoint), endpoint_url=endpoint, **kw)

    @classmethod
    def for_emulator(cls, region: str | None, endpoint_url: str):
        """Clients of the embedded emulator: dummy credentials, whatever AWS_PROFILE or
        ~/.aws say (the offline default must not depend on the user's AWS configuration)."""
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls(region=region or "us-east-1", endpoint_url=endpoint_url, emulated=True)

    def __post_init__(self) -> None:
        kwargs = {"region_name": self.region}
        if self.emulated:
            kwargs.update(_DUMMY_CREDENTIALS)
            botocore_session = _profile_free_botocore_session()
        else:
            botocore_session = botocore.session.get_session()  # what boto3 would make
            if self.endpoint_url and not _has_credentials():
                kwargs.update(_DUMMY_CREDENTIALS)
        botocore_session.register_component("response_parser_factory", FastJsonParsers())
        kwargs["botocore_session"] = botocore_session
        try:
            self._session = boto3.session.Session(**kwargs)
        except botocore.exceptions.ProfileNotFound as exc:
            raise _profile_error(exc) from None

    def client(self, service: str):
        with self._lock:
            c = self._clients.get(service)
            if c is None:
                c = self._session.client(
                    service, endpoint_url=self.endpoint_url, config=self.config()
                )
                self._clients[service] = c
            return c

    def config(self, **overrides) -> botocore.config.Config:
        opts = dict(
            retries={"mode": self.retry_mode, "total_max_attempts": self.retry_attempts},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=32,
        )
        opts.update(overrides)
        return botocore.config.Config(**opts)

    def check_reachable(self) -> None:
        """One cheap call with few retries: a clear EndpointUnreachableError instead of a hang."""
        sqs = self._session.client(
            "sqs",
            endpoint_url=self.endpoint_url,
            config=self.config(retries={"mode": "standard", "total_max_attempts": 2}),
        )
        with connection_errors_explained(self.endpoint_url):
            try:
                sqs.list_queues(MaxResults=1)
            except botocore.exceptions.ClientError as exc:
                if self.endpoint_url and not _is_aws_error(exc):
                    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                    raise ConfigurationError(
                        f"{self.endpoint_url} answered, but not as an AWS-compatible endpoint "
                        f"(HTTP {status} to an SQS ListQueues call): point endpoint_url / "
                        f"AWS_ENDPOINT_URL at `batchexec local` or another AWS emulator, or "
                        f"unset it to use AWS"
                    ) from None
                raise

    def worker_environment(self) -> dict[str, str]:
        """What a worker needs to reach the same endpoint in the same region."""
        env = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        return env


@contextmanager
def connection_errors_explained(endpoint_url: str | None):
    """Turn "nothing answers" and "no credentials" into batchexec's one-line errors."""
    try:
        yield
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
    ) as exc:
        raise EndpointUnreachableError(endpoint_url, str(exc)) from None
    except botocore.exceptions.NoCredentialsError:
        raise ConfigurationError(
            "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or an "
            "instance role), or use an emulator: unset BATCHEXEC_STACK for the embedded one, "
            "or point AWS_ENDPOINT_URL / --endpoint-url at `batchexec local`"
        ) from None


def _has_credentials() -> bool:
    try:
        return boto3.session.Session().get_credentials() is not None
    except botocore.exceptions.ProfileNotFound as exc:
        raise _profile_error(exc) from None


def _profile_error(exc: Exception) -> ConfigurationError:
    return ConfigurationError(
        f"{exc}: AWS_PROFILE (or profile=) names a profile that ~/.aws/config does not have; "
        f"fix or unset AWS_PROFILE (the embedded emulator needs no profile)"
    )


def _profile_free_botocore_session():
    """A botocore session that ignores AWS_PROFILE and the user's config files."""
    session = botocore.session.Session()
    session.set_config_variable("profile", "default")  # instance variables beat AWS_PROFILE
    session._config = {"profiles": {"default": {}}}  # ... and ~/.aws/config is not read
    return session


class FastJsonParsers(botocore.parsers.ResponseParserFactory):
    """botocore's response parsers, reading JSON bodies through `jsonread`.

    Why: botocore reads every SQS answer with json.loads, bodies and all (the bodies are
    escaped strings inside it, which json.loads reads at about 0.9 GB/s here and orjson at
    3.3). The parsers are botocore's own; only the step that turns the body's bytes into
    Python values is replaced, and only where orjson gives json.loads's answer (see
    jsonread). A body orjson refuses goes to botocore's own step, so errors, empty bodies
    and non-JSON answers are botocore's. Registered on our botocore sessions as the
    documented ``response_parser_factory`` component; a parser class without the step
    (XML protocols) is left as it is.
    """

    def create_parser(self, protocol_name):
        parser = super().create_parser(protocol_name)
        botocores_own = getattr(parser, "_parse_body_as_json", None)
        if botocores_own is not None:
            parser._parse_body_as_json = functools.partial(jsonread.read_body,
                                                           own=botocores_own)  # fmt: skip
        return parser


#: Error codes that prove an AWS-compatible service answered (an XML/JSON error body).
_AWS_LIKE = ("AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch", "Throttling",
             "UnrecognizedClientException", "MissingAuthenticationToken", "InvalidAction")


def _is_aws_error(exc: botocore.exceptions.ClientError) -> bool:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", ""))
    if "<html" in message.lower() or "<!doctype" in message.lower():
        return False
    return bool(code) and not code.isdigit() or code in _AWS_LIKE


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, else ''."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code", "")
    return ""
