"""Client side of the worker's new messages: OutputPrinter, and the collector's handling of
output messages and worker events (no emulator: a fake result queue)."""

from __future__ import annotations

import io

from batchexec import protocol
from batchexec.collector import ResultCollector
from batchexec.errors import WorkersUnavailableError
from batchexec.output import OutputPrinter
from batchexec.protocol import OutputLine, OutputMessage, ProtocolError, WorkerEvent
from batchexec.tasks import TaskTable
from batchexec.transport import Received


def test_output_lines_go_to_their_stream_with_the_worker_prefix():
    out, err = io.StringIO(), io.StringIO()
    OutputPrinter(out, err).print(OutputMessage("s", "3f2a9c:1", [
        OutputLine("1", "stdout", "hello"), OutputLine("1", "stderr", "oops"),
        OutputLine(None, "stdout", "between tasks")]))
    assert out.getvalue() == "(worker 3f2a9c:1) hello\n(worker 3f2a9c:1) between tasks\n"
    assert err.getvalue() == "(worker 3f2a9c:1) oops\n"


def test_a_closed_stream_does_not_break_the_printer():
    out = io.StringIO()
    out.close()
    OutputPrinter(out, io.StringIO()).print(
        OutputMessage("s", "w", [OutputLine("1", "stdout", "x")]))


def test_output_message_round_trip_and_bad_stream():
    msg = OutputMessage("s", "w", [OutputLine("1", "stderr", 'quote " and \x00 nul')])
    assert protocol.decode(msg.encode()) == msg
    body = msg.encode().replace('"stderr"', '"stdin"')
    try:
        protocol.decode(body)
    except protocol.ProtocolError as exc:
        assert "malformed" in str(exc)
    else:
        raise AssertionError("a line on an unknown stream was accepted")


def _collector(broken: list, printed: list):
    c = ResultCollector(TaskTable(credits=1), queue=None, store=None, session="s",
                        on_broken=broken.append)
    c.printer = type("P", (), {"print": lambda self, m: printed.append(m)})()
    return c


def test_collector_prints_output_ignores_started_and_breaks_on_mismatches():
    broken, printed = [], []
    c = _collector(broken, printed)

    def feed(msg):
        c._handle(Received(msg.encode(), "r", "m", 1, {}))

    feed(OutputMessage("s", "w", [OutputLine("1", "stdout", "x")]))
    feed(WorkerEvent("s", "w", WorkerEvent.STARTED, info={"python": "3.11"}))
    assert len(printed) == 1 and broken == []
    feed(WorkerEvent("s", "w", WorkerEvent.VERSION_MISMATCH, message="build with 3.12"))
    feed(WorkerEvent("s", "w", WorkerEvent.PROTOCOL_MISMATCH, message="versions 1 and 2"))
    assert [type(e) for e in broken] == [WorkersUnavailableError, ProtocolError]
    assert "build with 3.12" in str(broken[0]) and "versions 1 and 2" in str(broken[1])
