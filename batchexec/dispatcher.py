"""The dispatcher thread: turns pending tasks into task messages and sends them.

It waits on the task table for a message credit, takes packs of tasks, marks their futures
running (a cancelled one is dropped here: cancel() works until this point), moves payloads
above the inline limit to S3, and sends the messages in as few SendMessageBatch calls as SQS's
limits allow. A failure to send fails exactly the futures of that message and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import protocol
from .protocol import TaskEntry, TaskMessage
from .tasks import TaskTable, WorkItem
from .threads import ServiceThread
from .transport import MessageQueue, PayloadStore, TransportError

log = logging.getLogger(__name__)


class TaskDispatcher(ServiceThread):
    def __init__(
        self,
        table: TaskTable,
        queue: MessageQueue,
        store: PayloadStore,
        session: str,
        inline_limit: int,
        on_broken: Callable[[BaseException], None],
    ):
        super().__init__("batchexec-dispatcher", on_broken)
        self.table = table
        self.queue = queue
        self.store = store
        self.session = session
        self.inline_limit = inline_limit

    def serve(self) -> None:
        while True:
            packs = self.table.take_packs(protocol.SQS_BATCH_ENTRIES)
            if packs is None:
                return
            messages = []
            for items in packs:
                live = [i for i in items if i.future.set_running_or_notify_cancel()]
                messages.extend(self._encode(live))
            for items, _body in messages:
                self.table.register_message(items)
            try:
                self.queue.send([body for _, body in messages], self.session)
            except TransportError as exc:
                log.error("sending %d task messages failed: %s", len(messages), exc)
                for items, _ in messages:
                    for item in items:
                        if self.table.resolve(item.task_id) is not None:
                            item.future.set_exception(exc)

    def _encode(self, items: list[WorkItem]) -> list[tuple[list[WorkItem], str]]:
        """Encode items as one or more message bodies, each under the SQS size limit."""
        out: list[tuple[list[WorkItem], str]] = []
        batch: list[WorkItem] = []
        entries: list[TaskEntry] = []
        fns: dict[str, bytes] = {}
        size = 0
        for item in items:
            try:
                entry = self._entry(item)
            except TransportError as exc:  # not registered yet: fail just this task
                item.future.set_exception(exc)
                continue
            n = protocol.ENTRY_OVERHEAD + (
                len(entry.ref) if entry.ref else protocol.encoded_len(len(entry.args))
            )
            fn_size = 0 if entry.ref else protocol.encoded_len(len(item.fn_bytes)) + 32
            extra = 0 if entry.fn in fns else fn_size
            if batch and size + n + extra > protocol.MESSAGE_BODY_LIMIT:
                out.append((batch, TaskMessage(self.session, entries, fns).encode()))
                batch, entries, fns, size = [], [], {}, 0
            if entry.fn is not None and entry.fn not in fns:
                fns[entry.fn] = item.fn_bytes
                size += fn_size
            batch.append(item)
            entries.append(entry)
            size += n
        if batch:
            out.append((batch, TaskMessage(self.session, entries, fns).encode()))
        return out

    def _entry(self, item: WorkItem) -> TaskEntry:
        """The task's entry: inline, or a pointer to its payload uploaded to S3."""
        if item.size > self.inline_limit:
            key = self.store.put(
                f"tasks/{item.task_id}", protocol.frame_call(item.fn_bytes, item.args_bytes)
            )
            return TaskEntry(item.task_id, ref=key)
        return TaskEntry(item.task_id, fn=item.fn_digest, args=item.args_bytes)
