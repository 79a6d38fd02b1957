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


# -- OutputCapture: attribution by the runner's boundary marks (real pipes, no runner) ---------

import os  # noqa: E402

from batchexec.worker.capture import MAX_LINE_BYTES, OutputCapture, boundary_mark  # noqa: E402


def _capture():
    lines = []
    cap = OutputCapture(1 << 20, lines.append, echo=False)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    cap.attach(out_r, err_r, "tok")
    return cap, lines, out_w, err_w


def _mark(seq):
    return boundary_mark("tok", seq)


def test_marks_attribute_output_read_long_after_it_was_written():
    cap, lines, out, err = _capture()
    try:
        cap.expect(1, "a")
        cap.expect(2, "b")
        # Everything written before any of it is read, as with tasks queued in the runner.
        os.write(out, b"before\n" + _mark(1) + b"a1\na2 no newline" + _mark(2) + b"b1\n")
        os.write(err, _mark(1) + b"a err\n" + _mark(2))
        assert cap.finish(1) == "a1\na2 no newline\na err\n"  # its tail, for crash reports
        assert cap.finish(2) == "b1\n"
        os.write(out, b"after\n")
    finally:
        cap.detach()
        os.close(out)
        os.close(err)
    got = [(ln.task_id, ln.stream, ln.text) for ln in lines]
    assert got == [(None, "stdout", "before"), ("a", "stdout", "a1"),
                   ("a", "stdout", "a2 no newline"), ("b", "stdout", "b1"),
                   ("a", "stderr", "a err"), (None, "stdout", "after")]


def test_a_mark_split_across_reads_and_long_lines_is_still_found():
    cap, lines, out, err = _capture()
    try:
        cap.expect(7, "x")
        mark = _mark(7)
        long = b"y" * (MAX_LINE_BYTES * 2 + 10)
        os.write(out, long + mark[:5])
        cap.finish(6)  # a read in between: the mark is half in
        os.write(out, mark[5:] + b"x says\n")
        tail = cap.finish(7)
    finally:
        cap.detach()
        os.close(out)
        os.close(err)
    assert tail == "x says\n"
    assert [ln.task_id for ln in lines[:-1]] == [None] * (len(lines) - 1)
    assert (lines[-1].task_id, lines[-1].text) == ("x", "x says")
    assert "".join(ln.text for ln in lines[:-1]).encode() == long
    assert not any("batchexec" in ln.text for ln in lines)


def test_a_task_that_lost_its_marks_still_ends_with_its_result():
    cap, lines, out, err = _capture()
    try:
        cap.expect(1, "a")
        os.write(out, _mark(1) + b"a writes")
        assert cap.finish(1) == "a writes\n"  # its result came: the partial line is its last
        os.write(out, b"then a leaked thread\n")
        cap.finish(2)  # a task whose marks never came (it closed fd 1 and fd 2)
    finally:
        cap.detach()
        os.close(out)
        os.close(err)
    assert [(ln.task_id, ln.text) for ln in lines] == [("a", "a writes"),
                                                        (None, "then a leaked thread")]


class _ThrottledOnceQueue:
    """Stands in for the result queue: the first send fails with a TransportError (a
    throttled SendMessageBatch after botocore's retries), later ones succeed."""

    def __init__(self):
        self.sends: list[str] = []

    def send(self, bodies, session):
        from batchexec.transport import TransportError

        if not self.sends:
            self.sends.append("failed")
            raise TransportError("throttled (for the test)")
        self.sends.append("sent")


def test_a_result_send_that_failed_is_retried_after_the_pause_not_the_timer(monkeypatch):
    """flush() (results durable before a task message is deleted) must not wait for the
    batching timer after a failed send: the batch was already due."""
    import time

    import batchexec.worker.outbox as outbox_module
    from batchexec.protocol import ResultEntry
    from batchexec.worker.outbox import Outbox

    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 0.05)
    queue = _ThrottledOnceQueue()
    outbox = Outbox(queue, "s", "w", flush_seconds=30)  # only urgency sends early
    outbox.start()
    try:
        outbox.add_result(ResultEntry("1", True, 0.0, data=b"x"))
        started = time.monotonic()
        assert outbox.flush(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        outbox.stop()
    assert queue.sends == ["failed", "sent"]
