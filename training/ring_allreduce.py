"""Ring all-reduce of one fp32 vector over plain TCP on 127.0.0.1: the data-parallel baseline's exchange.

Ranks rendezvous through a directory (each writes the port it listens on), connect in a ring, then run
reduce-scatter + all-gather. Bytes are counted at the socket (what `send`/`recv_into` moved). It knows nothing
about models: it averages a numpy vector in place.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

from comms.averaging import UplinkShaper


class RingAllReduce:
    def __init__(
        self, rank: int, world: int, rendezvous: Path, timeout_s: float = 60.0, bandwidth_mbps: float | None = None
    ) -> None:
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.shaper = UplinkShaper(bandwidth_mbps) if bandwidth_mbps else None
        self.bytes_sent = 0
        self.bytes_received = 0
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(timeout_s)
        port = server.getsockname()[1]
        tmp = rendezvous / f".rank{rank}.tmp"
        tmp.write_text(str(port))
        tmp.rename(rendezvous / f"rank{rank}.port")
        next_port = self._wait_port(rendezvous / f"rank{(rank + 1) % world}.port")
        self._send = socket.create_connection(("127.0.0.1", next_port), timeout=timeout_s)
        self._recv, _ = server.accept()
        self._recv.settimeout(timeout_s)
        server.close()

    def _wait_port(self, path: Path) -> int:
        deadline = time.monotonic() + self.timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank file {path} did not appear in {self.timeout_s} s")
            time.sleep(0.05)
        return int(path.read_text())

    def _send_all(self, data: memoryview) -> None:
        if self.shaper is not None:
            self.shaper.wait(len(data))
        self._send.sendall(data)
        self.bytes_sent += len(data)

    def _recv_exact(self, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):
            n = self._recv.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("ring neighbour closed the connection")
            got += n
        self.bytes_received += got

    def _exchange(self, outgoing: np.ndarray, incoming: np.ndarray) -> None:
        sender = threading.Thread(target=self._send_all, args=(memoryview(np.ascontiguousarray(outgoing)).cast("B"),))
        sender.start()
        self._recv_exact(incoming)
        sender.join()

    def allreduce_mean_(self, vec: np.ndarray) -> None:
        """Replace `vec` (fp32, 1-D) by the mean over all ranks."""
        chunks = np.array_split(np.arange(vec.size), self.world)
        bounds = [(int(c[0]) if c.size else 0, int(c[-1]) + 1 if c.size else 0) for c in chunks]
        for k in range(self.world - 1):  # reduce-scatter
            s_lo, s_hi = bounds[(self.rank - k) % self.world]
            r_lo, r_hi = bounds[(self.rank - k - 1) % self.world]
            buf = np.empty(r_hi - r_lo, dtype=np.float32)
            self._exchange(vec[s_lo:s_hi], buf)
            vec[r_lo:r_hi] += buf
        for k in range(self.world - 1):  # all-gather
            s_lo, s_hi = bounds[(self.rank + 1 - k) % self.world]
            r_lo, r_hi = bounds[(self.rank - k) % self.world]
            buf = np.empty(r_hi - r_lo, dtype=np.float32)
            self._exchange(vec[s_lo:s_hi], buf)
            vec[r_lo:r_hi] = buf
        vec /= self.world

    def close(self) -> None:
        self._send.close()
        self._recv.close()
