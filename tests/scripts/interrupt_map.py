"""A user script: a long map inside `with BatchExecutor()`, stopped with Ctrl-C.

Run by tests/test_client_lifecycle.py with AWS_ENDPOINT_URL / BATCHEXEC_STACK pointing at
the shared emulator; the test sends SIGINT once the tasks run and times the exit.
"""

import sys

import taskfuncs as tf

from batchexec import BatchExecutor


def main(log_dir: str) -> None:
    with BatchExecutor(2, visibility_timeout=3, monitor_interval=0.5) as ex:
        print("session", ex.session_id, flush=True)
        for result in ex.map(tf.record_then, range(12), [log_dir] * 12, [10] * 12):
            print("result", result, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
