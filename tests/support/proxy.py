"""A TCP proxy in front of a storage endpoint that counts HTTP requests and can delay them.

Tests use the count to show what a query asks of storage; the benchmark uses the
delay to give Azurite the first-byte latency of real Azure Blob Storage.
"""

from __future__ import annotations

import socket
import threading
import time

_METHODS = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ", b"PATCH ", b"OPTIONS ")


class CountingProxy:
    def __init__(self, target_port: int, delay_s: float = 0.0, host: str = "127.0.0.1") -> None:
        self._target = (host, target_port)
        self._delay = delay_s
        self._server = socket.create_server((host, 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._requests = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def requests(self) -> int:
        """HTTP requests forwarded so far (each starts a client-to-storage chunk with its method)."""
        with self._lock:
            return self._requests

    def endpoint(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_storage: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if to_storage and chunk.startswith(_METHODS):
                    with self._lock:
                        self._requests += 1
                    if self._delay:
                        time.sleep(self._delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
