"""A TCP forwarder on loopback that can be cut: a network partition on demand.

A relay given the forwarder's address instead of its Redis's reaches Redis
through it; :meth:`Partition.cut` then resets every connection and refuses new
ones, as a switch failing between one node and Redis would, while the node
itself and every other node keep running. :meth:`Partition.heal` lets
connections through again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.support.relay import free_port

#: Bytes a pump moves at a time.
CHUNK = 65536


class Partition:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` until cut."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()

    def heal(self) -> Partition:
        """Accept and forward connections (again)."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Reset every forwarded connection and refuse new ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # A reset, not a polite close: the far end learns at once.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                far = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                near.close()
                continue
            far.settimeout(None)  # an idle connection (a blocking read) stays open
            with self._lock:
                if self._listener is not listener:
                    near.close()
                    far.close()
                    return
                self._open.update((near, far))
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
