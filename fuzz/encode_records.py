#!/usr/bin/env python3
"""Ring-buffer records (the decode target's seeds) from a `leaktrace events` recording: each
connect, accept and state line encoded back into the bytes the probes send, laid out as
leaktrace-common's #[repr(C)] records (EventHeader, Owner, Tuple, ConnOpenRecord up to its
frames, StateChangeRecord). Usage: encode_records.py EVENTS.jsonl OUT_DIR [COUNT]"""
import ipaddress, json, os, struct, sys

KINDS = {"connect": 1, "accept": 2, "state": 3}
STATES = {"ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RECV": 3, "FIN_WAIT1": 4, "FIN_WAIT2": 5, "TIME_WAIT": 6,
          "CLOSE": 7, "CLOSE_WAIT": 8, "LAST_ACK": 9, "LISTEN": 10, "CLOSING": 11, "NEW_SYN_RECV": 12}


def header(event):
    return struct.pack("=IIQQQQ", KINDS[event["type"]], event["cpu"], event["ts_ns"],
                       int(event["socket"]["sk"], 16), event["socket"]["birth_ns"], event.get("cookie") or 0)


def tuple_(local, remote):
    def split(text):
        host, port = text.rsplit(":", 1)
        return ipaddress.ip_address(host.strip("[]")), int(port)
    (lhost, lport), (rhost, rport) = split(local), split(remote)
    family = 2 if lhost.version == 4 else 10
    return struct.pack("=HHHH16s16s", family, lport, rport, 0, lhost.packed, rhost.packed)


def record(event):
    if event["type"] == "state":
        return header(event) + tuple_(event["local"], event["remote"]) + struct.pack(
            "=II", STATES[event["old_state"]], STATES[event["new_state"]])
    owner = event["owner"]
    stack = [int(frame, 16) for frame in event.get("stack", [])]
    fixed = header(event) + struct.pack("=IIQQ16s", owner["pid"], owner["tid"], owner["process_start_ns"],
                                        owner["cgroup_id"], owner["comm"].encode()[:15])
    fixed += tuple_(event["local"], event["remote"])
    fixed += struct.pack("=IIiI", STATES[event["state"]], len(stack), event.get("stack_error") or 0, 0)
    fixed += struct.pack("=QII3Q3II", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    fixed += struct.pack("=IIiI", 0, 0, 0, 0)  # PythonTrail: no Python walk
    return fixed + b"".join(struct.pack("=Q", frame) for frame in stack)


def main():
    source, out = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    seen = {}
    for line in open(source):
        event = json.loads(line)
        kind = event.get("type")
        if kind not in KINDS or seen.get(kind, 0) >= count // 3 + 1:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        with open(os.path.join(out, f"{kind}-{seen[kind]}"), "wb") as file:
            file.write(record(event))


main()
