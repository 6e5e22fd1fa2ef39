"""A Python client that connects COUNT times to 127.0.0.1:PORT from a function DEPTH frames below
the module, each connection reset at once (SO_LINGER 0: no TIME_WAIT to exhaust the ports), for
the kernel cost of Python frames at connect (cargo xtask bench, xtask/src/bench/python_frames.rs).
Usage: connect_loop.py PORT COUNT DEPTH. Prints "ready", waits for a line on stdin, connects,
prints "connected COUNT in T ns", then waits for stdin to close."""
import socket
import struct
import sys
import time

RESET = struct.pack("ii", 1, 0)


def connect_once(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    sock.connect(("127.0.0.1", port))
    sock.close()


def connect_all(port, count):
    for _ in range(count):
        connect_once(port)


def nested(depth, port, count):
    if depth > 0:
        return nested(depth - 1, port, count)
    start = time.perf_counter_ns()
    connect_all(port, count)
    return time.perf_counter_ns() - start


port, count, depth = (int(arg) for arg in sys.argv[1:4])
print("ready", flush=True)
sys.stdin.readline()
elapsed = nested(depth, port, count)
print(f"connected {count} in {elapsed} ns", flush=True)
sys.stdin.read()
