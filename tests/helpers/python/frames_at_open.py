"""Connects and accepts from known Python functions, for the tests of Python frames at an open
(tests/tests/python_capture.rs). Usage: frames_at_open.py PORT LISTENER_FD. Prints the address
of each function's code object (in CPython, id() is the object's address), waits for a line on
stdin, then: dial_alpha connects from the main thread and dial_beta from a second thread (started
first, so the main thread's state is not the newest) to PORT; then accept_gamma accepts one
connection on the listening socket it inherited as LISTENER_FD. Every socket is kept open until
stdin closes."""
import socket
import sys
import threading


def dial_alpha(port, kept):
    sock = socket.socket()
    sock.connect(("127.0.0.1", port))
    kept.append(sock)


def dial_beta(port, kept):
    sock = socket.socket()
    sock.connect(("127.0.0.1", port))
    kept.append(sock)


def accept_gamma(listener, kept):
    conn, _ = listener.accept()
    kept.append(conn)


def in_thread(port, kept, go):
    go.wait()
    dial_beta(port, kept)


def run(port, listener):
    kept = []
    go = threading.Event()
    thread = threading.Thread(target=in_thread, args=(port, kept, go))
    thread.start()
    sys.stdin.readline()
    dial_alpha(port, kept)
    go.set()
    thread.join()
    print("dialed", flush=True)
    accept_gamma(listener, kept)
    print("accepted", flush=True)
    sys.stdin.read()


listener = socket.socket(fileno=int(sys.argv[2]))
codes = {function.__name__: function.__code__ for function in (dial_alpha, dial_beta, accept_gamma, in_thread, run)}
codes["<module>"] = sys._getframe().f_code
# socket.socket.accept is Python code (around the C _accept): the accept's innermost frame.
codes["socket.accept"] = socket.socket.accept.__code__
print(" ".join(f"{name}={id(code):#x}" for name, code in codes.items()), flush=True)
run(int(sys.argv[1]), listener)
