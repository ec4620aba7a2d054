#!/usr/bin/env python3
"""Confirms testdata/mosquitto_oracle_cases.txt against a real mosquitto broker.

Usage: python3 scripts/acl_oracle.py [PORT]   (needs mosquitto, mosquitto_pub, mosquitto_sub)

WRITE cases: the client publishes a unique payload; user `spy` (read on `#` and `$SYS/#`)
watches. READ cases: `admin` publishes (or, for $SYS/broker/version, the broker's retained
message is used) and the client subscribes to the exact topic (mosquitto 2.0 does not check
SUBSCRIBE, so delivery shows the READ decision).
"""
import os, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
acl = os.path.join(here, "..", "testdata", "mosquitto_oracle.acl")
cases_file = os.path.join(here, "..", "testdata", "mosquitto_oracle_cases.txt")
port = sys.argv[1] if len(sys.argv) > 1 else "18832"

conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
conf.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n")
conf.close()
broker = subprocess.Popen(["mosquitto", "-c", conf.name], stderr=subprocess.DEVNULL)
time.sleep(0.5)

def auth(user, cid):
    args = ["-p", port, "-i", cid]
    if user != "-":
        args += ["-u", user]
    return args

cases = []
for line in open(cases_file):
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        continue
    cases.append(line.split("|"))

spy = subprocess.Popen(["mosquitto_sub", "-p", port, "-u", "spy", "-i", "spy", "-t", "#",
                        "-t", "$SYS/#", "-F", "%p"], stdout=subprocess.PIPE, text=True)
time.sleep(0.3)
for n, (user, cid, topic, access, _) in enumerate(cases):
    if access == "W":
        subprocess.run(["mosquitto_pub", *auth(user, cid), "-t", topic, "-m", f"case-{n}"])
time.sleep(0.5)
spy.terminate()
seen = set(spy.communicate()[0].split())

failures = 0
for n, (user, cid, topic, access, expected) in enumerate(cases):
    if access == "W":
        got = "allow" if f"case-{n}" in seen else "deny"
    else:
        sub = subprocess.Popen(["mosquitto_sub", *auth(user, cid), "-t", topic, "-C", "1",
                                "-W", "1"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        if not topic.startswith("$SYS"):
            subprocess.run(["mosquitto_pub", "-p", port, "-u", "admin", "-i", "adminpub",
                            "-t", topic, "-m", f"case-{n}"])
        out = sub.communicate()[0]
        got = "allow" if out.strip() else "deny"
    mark = "ok " if got == expected else "MISMATCH"
    failures += got != expected
    print(f"{mark} {user}|{cid}|{topic}|{access} expected {expected}, mosquitto: {got}")
broker.terminate()
os.unlink(conf.name)
sys.exit(1 if failures else 0)
