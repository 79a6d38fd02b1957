"""A user script that forks after starting an executor (as a web server or a multiprocessing
'fork' pool would). The child must get a clear error and must not tear down the parent's
session when it exits normally (running atexit hooks)."""

import os
import sys

import taskfuncs as tf

from batchexec import BatchExecutor


def main() -> None:
    ex = BatchExecutor(1, visibility_timeout=3, monitor_interval=0.5)
    print("parent before fork", ex.submit(tf.square, 3).result(timeout=60), flush=True)
    pid = os.fork()
    if pid == 0:
        try:
            ex.submit(tf.square, 4)
            print("child submitted?!", flush=True)
        except RuntimeError as exc:
            print("child refused:", exc, flush=True)
        ex.shutdown(wait=True)  # a no-op in the child
        sys.exit(0)  # a normal exit: the child runs the atexit hooks it inherited
    _, status = os.waitpid(pid, 0)
    print("child exit status", os.waitstatus_to_exitcode(status), flush=True)
    print("parent after child", ex.submit(tf.square, 5).result(timeout=60), flush=True)
    ex.shutdown()


if __name__ == "__main__":
    main()
