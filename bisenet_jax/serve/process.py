"""``python -m bisenet_jax.serve`` in a subprocess on free loopback ports: the server that the
serve benchmark (``bisenet_jax.bench.serve_load``) and the tests start.

Plain Python: neither kserve nor JAX is imported here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading

from bisenet_jax.errors import UserError

READY_LINE = 'serving '  # What the server prints once it answers (docs/serving.md).
START_TIMEOUT_S = 600  # A JAX server compiles every padded batch size before it is ready.


def free_port() -> int:
  """A TCP port of 127.0.0.1 that nothing listens on now."""
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


class ServerProcess:
  """A server on 127.0.0.1, ready once constructed; a context manager (stopped on exit).

  Args:
    checkpoint: its --checkpoint.
    *flags: its other flags (not --host, --port, --grpc-port: free ports are picked).
    preamble: Python source run by ``python -c`` instead of ``python -m bisenet_jax.serve``
      (it calls ``bisenet_jax.serve.__main__.main(sys.argv[1:])``), e.g. to patch the model.
    env: variables added to this process's environment.
    cwd: its working directory.
    timeout_s: how long it may take to print its ready line.

  Attributes:
    process: the ``subprocess.Popen``; its stdout is drained once it is ready.
    url, grpc_url: '127.0.0.1:PORT' of its REST and gRPC servers (port, grpc_port: the ports).
    ready_line: the line it printed once ready.

  Raises:
    UserError: it exited, or printed no ready line in ``timeout_s``; the message ends with the
      last line of its output.
  """

  def __init__(self, checkpoint, *flags: str, preamble: str | None = None,
               env: dict | None = None, cwd=None, timeout_s: float = START_TIMEOUT_S):
    self.port, self.grpc_port = free_port(), free_port()
    self.url, self.grpc_url = f'127.0.0.1:{self.port}', f'127.0.0.1:{self.grpc_port}'
    command = ([sys.executable, '-c', preamble] if preamble else
               [sys.executable, '-m', 'bisenet_jax.serve'])
    self.checkpoint = str(checkpoint)
    self._log = tempfile.TemporaryFile('w+')  # Its stderr.
    self.process = subprocess.Popen(
        [*command, '--checkpoint', self.checkpoint, '--host', '127.0.0.1',
         '--port', str(self.port), '--grpc-port', str(self.grpc_port), *flags],
        cwd=cwd, stdout=subprocess.PIPE, stderr=self._log, text=True,
        env={**os.environ, **(env or {})})
    self.ready_line = self._wait_ready(timeout_s)

  def _wait_ready(self, timeout_s: float) -> str:
    """The ready line; stdout is drained afterwards so the server never blocks on it."""
    lines = []
    timer = threading.Timer(timeout_s, self.process.kill)
    timer.start()
    try:
      for line in self.process.stdout:
        if line.startswith(READY_LINE):
          threading.Thread(target=self.process.stdout.read, daemon=True).start()
          return line.strip()
        lines.append(line)
    finally:
      timer.cancel()
    self.close(kill=True)
    tail = (''.join(lines) + self.log()).strip().splitlines()[-1:] or ['no output']
    self._log.close()
    raise UserError(f'the server for {self.checkpoint} stopped before it was ready (exit '
                    f'{self.process.returncode}, or {timeout_s:.0f} s passed): {tail[0]}')

  def log(self) -> str:
    """What it has written to stderr so far."""
    self._log.flush()
    self._log.seek(0)
    return self._log.read()

  def close(self, kill: bool = False, grace_s: float = 30) -> None:
    """Stops it: SIGTERM (it answers what it accepted, then exits) or, with ``kill`` or after
    ``grace_s``, SIGKILL."""
    if self.process.poll() is None:
      if kill:
        self.process.kill()
      else:
        self.process.terminate()
      try:
        self.process.wait(grace_s)
      except subprocess.TimeoutExpired:
        self.process.kill()
    self.process.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    self._log.close()
