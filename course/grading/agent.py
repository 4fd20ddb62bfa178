"""The grader's agent inside a submission's kernel: it answers the judge and decides nothing.

After the submission's cells have run, the grader runs one cell, ``serve(path, token)``: it
connects to the judge's socket and, until the judge says goodbye, looks up the learner's names,
calls the learner's code with the inputs the judge sends, and sends back what came out. Every
verdict is made in the judge, so nothing here has to be trusted; the learner may replace this
module and gains nothing but a failed grade.
"""

from __future__ import annotations

import contextlib
import socket

from .channel import Channel


class _Discard:
    """Where the learner's prints go while the judge is asking (a flood must not fill memory)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def serve(path: str, token: str) -> None:
    from IPython import get_ipython

    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(token.encode())
    channel = Channel(sock, guarded=False, allow_pickle=True, namespace=namespace)
    with contextlib.redirect_stdout(_Discard()), contextlib.redirect_stderr(_Discard()):
        channel.serve_forever()
    channel.closed = True
    sock.close()
