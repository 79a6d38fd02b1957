"""The dispatcher thread: turns pending tasks into task messages and sends them.

It waits on the task table for a message credit, takes packs of tasks, marks their futures
running (a cancelled one is dropped here: cancel() works until this point), moves payloads
above the inline limit to S3, and sends the messages in as few SendMessageBatch calls as SQS's
limits allow.

What goes to S3, and how often:
- a task's own arguments above the inline limit: once, under ``tasks/<id>``; the collector
  deletes the object when the task is resolved;
- a callable above the inline limit, and every large buffer pickled apart from arguments
  (serialization.BLOB_THRESHOLD): once per session under ``blobs/<digest>``, whatever the
  number of tasks that use it (a map's large callable is uploaded once, not once a task);
- an out-of-band buffer of the arguments (serialization.SHARE_THRESHOLD) that does not fit
  in what is left of the task's inline limit: the same, once per session.

Out-of-band buffers that fit travel in the message's ``bufs``, once per message however many
of its tasks list them, and count once towards its size: tasks that share an array share its
bytes (dask gives each chunk to every task that slices it). A buffer that every worker holds
from an earlier message (held.py) is only named, in the message's ``held``; such a task is
kept until it is resolved, to be sent again whole if its worker answers that it does not
hold one (TaskTable.requeue).

A send that SQS partly refuses fails exactly the tasks of the refused entries: the accepted
ones run and resolve as usual. Nothing here holds a task's data after it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import protocol
from .held import HeldBuffers
from .protocol import TaskEntry, TaskMessage
from .serialization import digest
from .tasks import TaskTable, WorkItem
from .threads import ServiceThread, settle
from .transport import MessageQueue, PayloadStore, TransportError

log = logging.getLogger(__name__)

#: The S3 "directory" of content-addressed objects under the session prefix.
BLOB_PREFIX = "blobs/"


class TaskDispatcher(ServiceThread):
    def __init__(
        self,
        table: TaskTable,
        queue: MessageQueue,
        store: PayloadStore,
        session: str,
        inline_limit: int,
        on_broken: Callable[[BaseException], None],
        held: HeldBuffers | None = None,
    ):
        super().__init__("batchexec-dispatcher", on_broken)
        self.held = held or HeldBuffers(0)
        self.table = table
        self.queue = queue
        self.store = store
        self.session = session
        self.inline_limit = inline_limit
        self._generation = 0

    def serve(self) -> None:
        while True:
            packs = self.table.take_packs(protocol.SQS_BATCH_ENTRIES)
            if packs is None:
                return
            self.dispatch(packs)
            del packs  # nothing of a sent task stays referenced here

    def dispatch(self, packs: list[list[WorkItem]]) -> None:
        """Encode, register and send one round of packs."""
        messages = []
        for items in packs:
            messages.extend(self._encode(self._live(items)))
        sent = []
        for entries, body, bufs in messages:
            # Registered before sending: a fast worker's result may arrive before send returns.
            number = self.table.register_message(entries)
            if number is not None:
                self.held.sent(number, bufs)
                sent.append((entries, body, number))
        if sent:
            self._send(sent)

    def _live(self, items: list[WorkItem]) -> list[WorkItem]:
        """Mark futures running; drop those cancelled (or failed by a break) meanwhile."""
        live = []
        for item in items:
            if item.resend:  # running since its first send
                running = not item.future.done()
            else:
                try:
                    running = item.future.set_running_or_notify_cancel()
                except RuntimeError:  # already failed: the executor broke
                    running = False
            if running:
                live.append(item)
            else:
                self._forget(item)
        return live

    def _send(self, sent: list[tuple[list[tuple[WorkItem, str | None]], str, int]]) -> None:
        try:
            errors = self.queue.send_each([body for _, body, _ in sent], self.session)
        except TransportError as exc:  # the whole call failed: nothing was accepted
            errors = [str(exc)] * len(sent)
        for (entries, _, number), error in zip(sent, errors, strict=True):
            if error is None:
                continue
            self.held.forget(number)
            log.error("sending a message of %d task(s) failed: %s", len(entries), error)
            garbage = []
            for item, _payload in entries:
                record = self.table.resolve(item.task_id)
                if record is not None:
                    garbage += record.garbage
                    settle(item.future, error=TransportError(
                        f"task {item.task_id} ({item.label}) could not be sent: {error}"))
            if garbage:
                try:
                    self.store.delete(garbage)
                except TransportError as exc:
                    log.warning("%s", exc)

    def _encode(self, items: list[WorkItem]):
        """Encode items as message bodies under the SQS size limit: [(entries, body, the
        buffers it carries inline)]."""
        out = []
        batch: list[tuple[WorkItem, str | None]] = []
        entries: list[TaskEntry] = []
        fns: dict[str, bytes] = {}
        refs: dict[str, str] = {}
        bufs: dict[str, bytes] = {}
        held: dict[str, None] = {}
        size = 0

        def message() -> tuple[list, str, dict[str, bytes]]:
            body = TaskMessage(self.session, entries, fns, 0, refs, bufs, list(held)).encode()
            return batch, body, bufs

        for item in items:
            try:
                entry, item_refs, item_bufs, item_held = self._entry(item)
            except TransportError as exc:
                self._forget(item)
                settle(item.future, error=exc)
                continue
            n = protocol.ENTRY_OVERHEAD + (
                len(entry.ref) if entry.ref else protocol.encoded_len(len(entry.args or b""))
            ) + 30 * (len(entry.blobs) + len(entry.buffers))
            inline_fn = entry.fn not in item_refs
            fn_size = protocol.encoded_len(len(item.fn_bytes)) + 32 if inline_fn else 0
            extra = 0 if (entry.fn in fns or entry.fn in refs) else fn_size
            extra += sum(len(k) + len(v) + 8 for k, v in item_refs.items() if k not in refs)
            extra += sum(_buffer_size(k, v) for k, v in item_bufs.items() if k not in bufs)
            extra += sum(len(k) + 3 for k in item_held if k not in held)
            if batch and size + n + extra > protocol.MESSAGE_BODY_LIMIT:
                out.append(message())
                batch, entries, fns, refs, bufs, held, size = [], [], {}, {}, {}, {}, 0
                extra = fn_size + sum(len(k) + len(v) + 8 for k, v in item_refs.items())
                extra += sum(_buffer_size(k, v) for k, v in item_bufs.items())
                extra += sum(len(k) + 3 for k in item_held)
            if inline_fn:
                fns.setdefault(entry.fn, item.fn_bytes)
            refs.update(item_refs)
            bufs.update(item_bufs)
            held.update(dict.fromkeys(item_held))
            batch.append((item, entry.ref))
            entries.append(entry)
            size += n + extra
        if batch:
            out.append(message())
        return out

    def _entry(self, item: WorkItem
               ) -> tuple[TaskEntry, dict[str, str], dict[str, bytes], list[str]]:  # fmt: skip
        """The task's entry, the content-addressed S3 objects it refers to, the out-of-band
        buffers that travel in its message, and those it only names (every worker holds
        them; not for a task sent again because its worker did not).

        Buffers go inline while the task's inline bytes (its arguments when inline, and its
        buffers) stay within the inline limit, so one task always fits in a message; the
        rest go to S3, once per session."""
        refs = {}
        if len(item.fn_bytes) > self.inline_limit:
            refs[item.fn_digest] = self._upload_once(item.fn_digest, item.fn_bytes)
        for key, data in item.blobs.items():
            refs[key] = self._upload_once(key, data)
        inline_args = len(item.args_bytes) <= self.inline_limit
        room = self.inline_limit - (len(item.args_bytes) if inline_args else 0)
        bufs = {}
        held = []
        for key, data in item.buffers.items():
            if not item.resend and self.held.held_by_all(key):
                held.append(key)
            elif len(data) <= room:
                bufs[key] = data
                room -= len(data)
            else:
                refs[key] = self._upload_once(key, data)
        item.names_held = bool(held)
        blobs, buffers = list(item.blobs), list(item.buffer_order)
        if not inline_args:
            ref = self.store.put(f"tasks/{item.task_id}", item.args_bytes)
            return TaskEntry(item.task_id, item.fn_digest, ref=ref, blobs=blobs,
                             sha=digest(item.args_bytes), buffers=buffers), refs, bufs, held
        return TaskEntry(item.task_id, item.fn_digest, args=item.args_bytes, blobs=blobs,
                         buffers=buffers), refs, bufs, held

    def _upload_once(self, digest: str, data: bytes) -> str:
        """The S3 key of a shared object, uploading it if no outstanding task has."""
        key = self.table.uploaded_key(digest)
        if key is None:
            self._generation += 1
            key = self.store.put(f"{BLOB_PREFIX}{digest}-{self._generation}", data)
            self.table.set_uploaded(digest, key)
        return key

    def _forget(self, item: WorkItem) -> None:
        garbage = self.table.drop_dispatching(item)
        if garbage:
            try:
                self.store.delete(garbage)
            except TransportError as exc:  # removed with the session's prefix at shutdown
                log.warning("%s", exc)


def _buffer_size(digest: str, data: bytes) -> int:
    """What an inline buffer adds to its message's body: key, quotes, colon, comma, base64."""
    return len(digest) + 6 + protocol.encoded_len(len(data))
