"""A Python client that leaks plain sockets from two functions: every round, open_report and
open_feed each connect to the server and keep the socket. Waits for a line on stdin before the
first round (so leaktrace is ready), prints "round N" after each, waits PAUSE seconds between
rounds, and exits when stdin closes after the last. Usage: two_leaks.py HOST PORT ROUNDS PAUSE
"""
import socket
import sys
import time

kept = []


def open_report(address):
    sock = socket.create_connection(address)  # connect: open_report
    kept.append(sock)


def open_feed(address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(address)  # connect: open_feed
    kept.append(sock)


def main():
    address = (sys.argv[1], int(sys.argv[2]))
    rounds, pause = int(sys.argv[3]), float(sys.argv[4])
    sys.stdin.readline()
    for number in range(1, rounds + 1):
        open_report(address)
        open_feed(address)
        print("round", number, flush=True)
        time.sleep(pause)
    sys.stdin.read()


main()
