"""tests/toxiproxy.rs drives faultline's Toxiproxy API with toxiproxy-python.

Environment: TOXIPROXY_PORT (the API), UPSTREAM (host:port of an upstream
that answers every byte upper-cased). Prints "ok" when every check held;
any failure raises.
"""

import os
import socket
import time

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer

server = Toxiproxy()
server.update_api_consumer("127.0.0.1", int(os.environ["TOXIPROXY_PORT"]))
assert server.running()
assert b"2.12.0" in server.version(), server.version()

proxy = server.create(upstream=os.environ["UPSTREAM"], name="echo", listen="127.0.0.1:0")
host, port = proxy.listen.rsplit(":", 1)
address = (host, int(port))
assert int(port) != 0


def connect():
    sock = socket.create_connection(address, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def exchange(payload=b"ping"):
    """Sends payload, closes the sending side, reads to the end."""
    with connect() as sock:
        start = time.monotonic()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock)
        return data, time.monotonic() - start


assert exchange() [0] == b"PING"

# latency
proxy.add_toxic(name="slow", type="latency", attributes={"latency": 300})
assert [t for t in proxy.toxics()] == ["slow"], proxy.toxics()
data, took = exchange()
assert data == b"PING" and took >= 0.3, (data, took)
# toxicity updated to 0: never fires
APIConsumer.post("/proxies/echo/toxics/slow", json={"toxicity": 0})
data, took = exchange()
assert data == b"PING" and took < 0.3, (data, took)
proxy.destroy_toxic("slow")
assert proxy.toxics() == {}, proxy.toxics()

# bandwidth: 10 KB/s, 5,000 bytes back take about half a second
proxy.add_toxic(type="bandwidth", attributes={"rate": 10})
data, took = exchange(b"a" * 5000)
assert data == b"A" * 5000 and took >= 0.3, (len(data), took)
proxy.destroy_toxic("bandwidth_downstream")

# slicer: one byte at a time, 20 ms apart
proxy.add_toxic(type="slicer", attributes={"average_size": 1, "size_variation": 0, "delay": 20000})
data, took = exchange()
assert data == b"PING" and took >= 0.05, (data, took)
proxy.destroy_toxic("slicer_downstream")

# limit_data: two bytes, then the connection closes
proxy.add_toxic(type="limit_data", attributes={"bytes": 2})
data, _ = exchange()
assert data == b"PI", data
proxy.destroy_toxic("limit_data_downstream")

# reset_peer: the client sees a reset
proxy.add_toxic(type="reset_peer", attributes={"timeout": 0})
try:
    exchange()
    raise AssertionError("no reset")
except ConnectionResetError:
    pass
proxy.destroy_toxic("reset_peer_downstream")

# timeout: nothing comes back, the connection closes after 200 ms
proxy.add_toxic(type="timeout", attributes={"timeout": 200})
data, took = exchange()
assert data == b"" and took >= 0.2, (data, took)
proxy.destroy_toxic("timeout_downstream")

# slow_close: the upstream's close reaches the client 300 ms late
proxy.add_toxic(type="slow_close", attributes={"delay": 300})
data, took = exchange()
assert data == b"PING" and took >= 0.3, (data, took)

# reset takes every toxic away; a disabled proxy refuses
server.reset()
assert server.get_proxy("echo").toxics() == {}
proxy.disable()
assert not server.get_proxy("echo").enabled
try:
    connect()
    raise AssertionError("a disabled proxy accepted")
except ConnectionRefusedError:
    pass
proxy.enable()
deadline = time.monotonic() + 5
while True:
    try:
        assert exchange()[0] == b"PING"
        break
    except ConnectionRefusedError:
        assert time.monotonic() < deadline, "the proxy did not come back"
        time.sleep(0.01)

server.destroy(proxy)
assert server.proxies() == {}
print("ok")
