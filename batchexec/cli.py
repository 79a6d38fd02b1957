"""The `batchexec` command line (also `python -m batchexec`).

    batchexec local [--port N] [--host H] [--containers [--engine E] [--image I]]
                    [--enforce-iam CREDENTIALS_FILE]
                                              the embedded emulator, until interrupted
    batchexec stack deploy|update|delete|status|outputs [--name N] [--wait] [--parameter K=V]
                    [--region R] [--endpoint-url URL]
    batchexec worker                          a worker's entry point (the job's container command)
    batchexec worker --self-check [--python X.Y] [--require-gpu] [--no-icd]
                                              can this environment run workers? (no session needed)
    batchexec gc [--older-than DURATION] [--dry-run] [--name N]
                                              remove the queues and payloads of vanished sessions

Errors batchexec raises itself (BatchExecError) are one line on stderr and exit status 2,
never a traceback: they are the user's to fix and each says how. Heavy imports (moto,
boto3, the worker) happen inside the subcommand that needs them so that each stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import BatchExecError

#: Exit status for user errors (bad arguments, missing stack, unreachable endpoint).
EXIT_USAGE = 2
DEFAULT_STACK = "batchexec"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except BatchExecError as exc:
        print(f"batchexec: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchexec",
        description="A concurrent.futures Executor whose workers are AWS Batch jobs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = sub.add_parser("local", help="run the embedded AWS emulator until interrupted")
    local.add_argument("--port", type=int, default=5000, help="port (0: any free port)")
    local.add_argument("--host", default="127.0.0.1", help="address to bind")
    local.add_argument("--log-requests", action="store_true", help="log each request")
    local.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process dies"
    )
    local.add_argument(
        "--containers", action="store_true",
        help="run jobs as containers of their job definition's image (docker or podman)",
    )  # fmt: skip
    local.add_argument("--engine", help="with --containers: docker, podman, or a path")
    local.add_argument(
        "--image", help="with --containers: run every job in this local image instead"
    )
    local.add_argument(
        "--enforce-iam", metavar="CREDENTIALS_FILE",
        help="check every request against IAM (as AWS does); an admin user's keys are "
             "written to this file (JSON) for the client",
    )  # fmt: skip
    local.set_defaults(handler=_cmd_local)

    stack = sub.add_parser("stack", help="deploy or inspect the CloudFormation stack")
    stack.add_argument("action", choices=["deploy", "update", "delete", "status", "outputs"])
    stack.add_argument(
        "--name",
        default=os.environ.get("BATCHEXEC_STACK") or DEFAULT_STACK,
        help="stack name (default: $BATCHEXEC_STACK or batchexec)",
    )
    stack.add_argument("--wait", action="store_true", help="wait until the change completes")
    stack.add_argument(
        "--parameter", "-p", action="append", default=[], metavar="KEY=VALUE",
        help="template parameter, e.g. DefaultWorkers=16 (repeatable)",
    )  # fmt: skip
    stack.add_argument("--region", help="AWS region (default: $AWS_REGION)")
    stack.add_argument("--endpoint-url", help="AWS endpoint, e.g. of `batchexec local`")
    stack.set_defaults(handler=_cmd_stack)

    gc = sub.add_parser(
        "gc", help="remove the queues and payloads of sessions whose client is gone"
    )
    gc.add_argument(
        "--name",
        default=os.environ.get("BATCHEXEC_STACK") or DEFAULT_STACK,
        help="stack name (default: $BATCHEXEC_STACK or batchexec)",
    )
    gc.add_argument(
        "--older-than", default="24h", metavar="DURATION",
        help="a session is gone when its last heartbeat (or, without one, its creation) is "
             "older than this: 90m, 24h, 2d (default 24h, at least 15m)",
    )  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    gc.add_argument("--region", help="AWS region (default: $AWS_REGION)")
    gc.add_argument("--endpoint-url", help="AWS endpoint, e.g. of `batchexec local`")
    gc.set_defaults(handler=_cmd_gc)

    worker = sub.add_parser("worker", help="run a worker (the Batch job's container command)")
    worker.add_argument(
        "--self-check", action="store_true",
        help="check this environment (Python, imports, OpenCL ICD and platforms) and exit",
    )  # fmt: skip
    worker.add_argument(
        "--python", metavar="X.Y",
        help="with --self-check: the client's Python version (default $BATCHEXEC_CLIENT_PYTHON)",
    )  # fmt: skip
    worker.add_argument(
        "--require-gpu", action="store_true", help="with --self-check: fail without a GPU device"
    )
    worker.add_argument(
        "--no-icd", action="store_true",
        help="with --self-check: do not require the NVIDIA OpenCL ICD file (outside the image)",
    )  # fmt: skip
    worker.set_defaults(handler=_cmd_worker)
    return parser


def _cmd_local(args: argparse.Namespace) -> int:
    from .emulator.embedded import require_emulator_extra

    require_emulator_extra()
    from .emulator.server import serve

    if (args.engine or args.image) and not args.containers:
        raise _CliError("--engine and --image go with --containers")
    try:
        status = serve(args.host, args.port, log_requests=args.log_requests,
                       exit_with_parent=args.exit_with_parent, containers=args.containers,
                       engine=args.engine, image=args.image,
                       credentials_file=args.enforce_iam)  # fmt: skip
    except OSError as exc:  # port in use, address not available
        raise _CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    # The server has stopped and killed its jobs; tearing down moto's hundreds of modules
    # would only make every EmbeddedEmulator.close() half a second slower.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _cmd_stack(args: argparse.Namespace) -> int:
    from . import stack
    from .aws import AwsClients

    parameters = _parse_parameters(args.parameter)
    if parameters and args.action not in ("deploy", "update"):
        raise _CliError(f"--parameter applies to deploy and update, not {args.action}")
    clients = AwsClients.resolve(region=args.region, endpoint_url=args.endpoint_url)
    if clients.endpoint_url:
        clients.check_reachable()  # seconds, not minutes of retries, for a wrong address
    name = args.name
    if args.action == "deploy":
        status = stack.deploy_stack(clients, name, parameters, wait=args.wait)
    elif args.action == "update":
        status = stack.update_stack(clients, name, parameters, wait=args.wait)
    elif args.action == "delete":
        status = stack.delete_stack(clients, name, wait=args.wait)
    elif args.action == "status":
        status = stack.stack_status(clients, name)
    else:
        print(json.dumps(stack.stack_outputs(clients, name), indent=2, sort_keys=True))
        return 0
    print(f"{name}: {status}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from . import gc
    from .aws import AwsClients
    from .stack import describe_stack

    older_than = gc.parse_duration(args.older_than)
    if older_than < gc.MIN_OLDER_THAN_SECONDS:
        raise _CliError(
            f"--older-than {args.older_than} is shorter than three client heartbeats "
            f"({gc.MIN_OLDER_THAN_SECONDS // 60} min): a live session could be removed"
        )
    clients = AwsClients.resolve(region=args.region, endpoint_url=args.endpoint_url)
    if clients.endpoint_url:
        clients.check_reachable()
    report = gc.collect(clients, describe_stack(clients, args.name), older_than,
                        dry_run=args.dry_run)  # fmt: skip
    for line in report.lines():
        print(line)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.self_check:
        from .selfcheck import main as self_check

        return self_check(args.python, require_gpu=args.require_gpu, require_icd=not args.no_icd)
    if args.python or args.require_gpu or args.no_icd:
        raise _CliError("--python, --require-gpu and --no-icd go with --self-check")
    from batchexec.worker import main

    return main()


def _parse_parameters(items: list[str]) -> dict[str, str]:
    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _CliError(f"--parameter {item!r} is not KEY=VALUE")
        parameters[key] = value
    return parameters


class _CliError(BatchExecError):
    """A command-line usage error."""
