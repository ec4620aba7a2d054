#!/usr/bin/env python3
"""Soak test of Culex's flow control (issue 16): mixed QoS 1 load with a flapping slow consumer.

    python3 scripts/soak.py [--culex target/release/culex] [--duration 600] [--rate 500]

Starts the broker with its default limits (and `slow_client_timeout 10`, so that the slow
consumer is cut off several times during the run), then for DURATION seconds:
  * 4 publishers (paho-mqtt, MQTT 3.1.1, QoS 1, 20 in flight each) publish RATE msg/s each;
  * 1 healthy subscriber on `soak/#` acknowledges everything;
  * 1 flapping consumer with a persistent session reads for 20 s, then stops reading (its
    network loop paused, socket open, no acknowledgements) for 30 s, then resumes -- over and
    over;
  * the broker's RSS is sampled every 5 s.
At the end it checks that every message the broker acknowledged to a publisher reached the
healthy subscriber (zero QoS 1 loss to an online subscriber), and prints RSS and the broker's
flow-control counters. Exit status 1 on any loss. Needs: pip install paho-mqtt.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client(cid, clean=True):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean,
                    protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--culex", default="target/release/culex")
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--rate", type=int, default=500, help="messages/s per publisher")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="culex-soak-")
    port, mport = free_port(), free_port()
    conf = os.path.join(work, "soak.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                f"metrics_listener 127.0.0.1:{mport}\nslow_client_timeout 10\nuser root\n"
                "log_type warning\n")
    broker = subprocess.Popen([args.culex, "-c", conf], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(work, "culex.log"), "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    lock = threading.Lock()
    acked = set()      # (publisher, seq) the broker acknowledged
    got = set()        # (publisher, seq) the healthy subscriber received
    flapper_got = [0]

    def on_msg(store):
        def cb(_c, _u, m):
            p, s = m.payload.decode().split(":")
            with lock:
                store.add((int(p), int(s)))
        return cb

    healthy = client("soak-healthy")
    healthy.on_message = on_msg(got)
    healthy.connect("127.0.0.1", port)
    healthy.subscribe("soak/#", qos=1)
    healthy.loop_start()

    flapper = client("soak-flapper", clean=False)
    flapper.on_message = lambda _c, _u, _m: flapper_got.__setitem__(0, flapper_got[0] + 1)
    flapper.connect("127.0.0.1", port)
    flapper.subscribe("soak/#", qos=1)
    flapper.loop_start()
    time.sleep(1)

    stop = threading.Event()

    def publisher(i):
        c = client(f"soak-pub-{i}")
        pending = {}

        def on_publish(_c, _u, mid, _rc, _props):
            with lock:
                key = pending.pop(mid, None)
                if key is not None:
                    acked.add(key)

        c.on_publish = on_publish
        c.connect("127.0.0.1", port)
        c.loop_start()
        seq, t0 = 0, time.time()
        while not stop.is_set():
            seq += 1
            info = c.publish(f"soak/{i}", f"{i}:{seq}", qos=1)
            with lock:
                if info.is_published():
                    acked.add((i, seq))
                else:
                    pending[info.mid] = (i, seq)
            behind = t0 + seq / args.rate - time.time()
            if behind > 0:
                time.sleep(behind)
        # Wait for the outstanding acknowledgements (publishers may be held back).
        deadline = time.time() + 120
        while time.time() < deadline:
            with lock:
                if not pending:
                    break
            time.sleep(0.1)
        c.loop_stop()
        c.disconnect()

    pubs = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
    for t in pubs:
        t.start()

    samples = []
    start = time.time()
    phase_start, frozen = start, False
    while time.time() - start < args.duration:
        time.sleep(5)
        samples.append(rss_kb(broker.pid))
        now = time.time()
        if not frozen and now - phase_start >= 20:
            flapper.loop_stop()            # stops reading and acknowledging
            frozen, phase_start = True, now
        elif frozen and now - phase_start >= 30:
            try:
                flapper.reconnect()        # the broker has cut it off by now
            except OSError:
                pass
            flapper.loop_start()
            frozen, phase_start = False, now
    stop.set()
    for t in pubs:
        t.join()
    # Let the healthy subscriber drain.
    last, still = -1, 0
    while still < 5:
        time.sleep(1)
        with lock:
            n = len(got)
        still = still + 1 if n == last else 0
        last = n
    with lock:
        lost = sorted(acked - got)
        n_acked = len(acked)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    broker.terminate()
    broker.wait(timeout=30)

    def metric(name):
        m = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
        return m.group(1) if m else "absent"

    print(f"soak: {args.duration} s, 4 publishers x {args.rate} msg/s QoS 1, "
          f"slow_client_timeout 10 s, broker {args.culex}")
    print(f"acknowledged to publishers: {n_acked}; received by the healthy subscriber: "
          f"{len(got)}; acknowledged but not received: {len(lost)}")
    print(f"flapping consumer received {flapper_got[0]} messages")
    print(f"broker RSS (KB) min {min(samples)} max {max(samples)} last {samples[-1]} "
          f"over {len(samples)} samples")
    for name in ["culex_slow_client_disconnects_total", "culex_flow_blocked_total",
                 'culex_publish_dropped_total{reason="queue_full"}']:
        print(f"{name} {metric(name)}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
