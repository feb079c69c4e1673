#!/usr/bin/env python3
"""CPU time per request of each thread of a running proxy, at a fixed request rate.

    benches/threads.py HOST PORT RATE SECONDS PID
    RATE=500 benches/cpu.sh [binary]     # runs it against a proxy, shipping off and on

Sends 2 KB chat completions (model `bench-model`) at RATE a second over four keep-alive
connections for SECONDS, then prints, for every thread of PID that used more than 1 ms,
its CPU time per request (from /proc/PID/task/*/schedstat, in nanoseconds) and its
voluntary context switches per request. This is how docs/benchmarks.md tells the spool
writer's wake-ups from the proxy's own work; `benches/load` gives the whole process.
Standard library only.
"""
import socket, sys, time, os, threading, json
host, port, rate, secs, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "x" * 1900}], "max_tokens": 64}).encode()
req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
def threads():
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            ns = int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
            st = open(f"/proc/{pid}/task/{t}/status").read()
            v = int(st.split("voluntary_ctxt_switches:")[1].split()[0])
            out[t] = (comm, ns, v)
        except Exception: pass
    return out
def one(sock):
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf: buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < n: rest += sock.recv(65536)
conns = 4
socks = [socket.create_connection((host, port)) for _ in range(conns)]
for s in socks: one(s)
before = threads(); t0 = time.perf_counter(); done = [0]
def worker(i):
    s = socks[i]; k = i
    while True:
        due = t0 + k / rate
        if due - t0 > secs: break
        d = due - time.perf_counter()
        if d > 0: time.sleep(d)
        one(s); done[0] += 1; k += conns
ths = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
[t.start() for t in ths]; [t.join() for t in ths]
time.sleep(1.5)
after = threads()
total = 0
for t, (comm, ns, v) in sorted(after.items()):
    b = before.get(t, (comm, 0, 0)); dns = ns - b[1]; dv = v - b[2]; total += dns
    if dns > 1e6: print(f"  {comm:20s} {dns/done[0]/1e3:7.1f} us/req  {dv/done[0]:.2f} switches/req")
print(f"requests {done[0]}  total {total/done[0]/1e3:.1f} us/req")
