"""A worker that handles jobs with a PostgreSQL connection each, through psycopg2: with
"leak" it never closes them (the incident), with "close" it closes each after its query.
Waits for a line on stdin before the first job, prints "job N" after each, runs JOBS jobs at
RATE a second, then exits when stdin closes (or at once with "exit").
Usage: pg_jobs.py leak|close HOST PORT JOBS RATE [exit]
"""
import sys
import time

import psycopg2

connections = []


def handle_job(number, host, port, close):
    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")  # connect: handle_job
    with conn.cursor() as cursor:
        cursor.execute("SELECT %s", (number,))
        cursor.fetchone()
    if close:
        conn.close()
    else:
        connections.append(conn)


def main():
    mode, host, port, jobs, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    exit_after = len(sys.argv) > 6 and sys.argv[6] == "exit"
    sys.stdin.readline()
    for number in range(1, jobs + 1):
        handle_job(number, host, port, mode == "close")
        print("job", number, flush=True)
        time.sleep(1 / rate)
    if not exit_after:
        sys.stdin.read()


main()
