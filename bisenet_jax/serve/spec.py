"""What ``python -m bisenet_jax.serve`` serves and its bounds, built once from the flags at the
command's edge (``__main__``); nothing below it reads flags.

No kserve, no JAX here: the command builds these before it imports the server.
"""

from __future__ import annotations

import dataclasses

from bisenet_jax.specs.sizes import Size


@dataclasses.dataclass(frozen=True)
class Limits:
  """Every bound a request meets, each set by the flag of the same name (docs/serving.md, "Limits
  and faults").

  Attributes:
    max_batch_size: most images per forward pass and per request.
    max_pixels: most pixels (H x W) per image.
    max_request_bytes: largest request body (REST) or message (gRPC).
    max_json_bytes: largest JSON body, or JSON header of a binary one (REST): JSON is parsed
      into Python objects, far slower and bigger than binary data.
    max_connections: most REST connections open at once; a request beyond them is a 503.
    max_header_bytes: most bytes of a request's headers (REST).
    header_timeout_s: seconds a request's headers may take to arrive whole (REST), and a
      connection's opening handshake (gRPC).
    body_timeout_s: seconds a request's body may take to arrive whole after its headers, and an
      answer may wait for a client that takes none of it (REST).
    keep_alive_s: seconds an idle connection is kept open (REST; gRPC: an idle connection is
      sent GOAWAY after them).
    request_timeout_s: seconds a request may wait for its forward pass after it arrived (a gRPC
      client's shorter deadline wins); beyond them it is withdrawn from the queue (504).
    grpc_max_rpcs: most gRPC calls at once, every connection together; beyond them a call is
      RESOURCE_EXHAUSTED.
    grpc_max_streams: most calls at once on one gRPC connection (HTTP/2 streams); the client
      waits for one to end before it starts another.
  """
  max_batch_size: int = 8
  max_pixels: int = 8388608
  max_request_bytes: int = 64 << 20
  max_json_bytes: int = 8 << 20
  max_connections: int = 32
  max_header_bytes: int = 64 << 10
  header_timeout_s: float = 10.0
  body_timeout_s: float = 30.0
  keep_alive_s: float = 5.0
  request_timeout_s: float = 60.0
  grpc_max_rpcs: int = 32
  grpc_max_streams: int = 16


@dataclasses.dataclass(frozen=True)
class ServeSpec:
  """The server: where it listens, how it batches, and its limits.

  Attributes:
    model_name: the name in the protocol paths, /v2/models/<name>.
    host: the address both servers bind.
    port: the REST port.
    grpc_port: the gRPC port.
    max_batch_delay_s: how long a batch waits for more requests of its size.
    max_queue: most images waiting for a forward pass.
    warmup: image sizes run (JAX: compiled) at every batch size before the server is ready.
    limits: the bounds of each request.
  """
  model_name: str = 'bisenet'
  host: str = '127.0.0.1'
  port: int = 8080
  grpc_port: int = 8081
  max_batch_delay_s: float = 0.005
  max_queue: int = 64
  warmup: tuple[Size, ...] = ()
  limits: Limits = Limits()

  @property
  def rest_address(self) -> str:
    return f'http://{self.host}:{self.port}'

  @property
  def grpc_address(self) -> str:
    return f'{self.host}:{self.grpc_port}'
