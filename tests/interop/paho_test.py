#!/usr/bin/env python3
"""Interop checks of a running culex broker with paho-mqtt 2.x (Eclipse Paho Python client).

    python3 tests/interop/paho_test.py --host 127.0.0.1 --port PORT

Covers, for MQTT 3.1.1 and 5.0 (plus a 3.1 smoke test): QoS 0/1/2 round trips, retained
messages, wills on abrupt close (a child process killed with SIGKILL), and persistent sessions
with QoS 1 messages queued while the client is offline. MQTT 5 only: publish properties passed
through unchanged, subscription options (No Local, Retain As Published, Retain Handling) and
Subscription Identifiers, Topic Aliases from the client, Response Information, session expiry
set on DISCONNECT, and reason codes (0x99 on a PUBACK, 0x8C on CONNACK).

paho-mqtt 2.x does not resolve Topic Aliases it receives, so these checks never send a Topic
Alias Maximum (the broker then sends no aliases; rumqttc tests cover server aliases).

Prints one line per check and finally `paho: N passed, M failed`; exits 1 on any failure.
Every wait is bounded; nothing synchronises by sleeping.
"""

import argparse
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10.0  # seconds for any single event (CONNACK, SUBACK, a message, ...)

PROTOCOLS = {
    "v3.1": mqtt.MQTTv31,
    "v3.1.1": mqtt.MQTTv311,
    "v5": mqtt.MQTTv5,
}


class CheckFailed(Exception):
    pass


def unique(prefix):
    # MQTT 3.1 allows client ids of at most 23 characters.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class TestClient:
    """A paho client driven by its network thread, with events and a message queue."""

    def __init__(self, host, port, proto, client_id=None, clean=True, session_expiry=None,
                 will=None, connect_props=None):
        self.host, self.port, self.proto = host, port, proto
        self.version = PROTOCOLS[proto]
        self.client_id = client_id or unique("paho")
        self.clean = clean
        self.session_expiry = session_expiry
        self.connect_props = connect_props or {}
        self.connack_props = None
        self.disconnect_reason = None
        kwargs = {"client_id": self.client_id, "protocol": self.version}
        if self.version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None  # (reason_code, session_present)
        self.subacks = {}
        self.suback_event = threading.Condition()
        self.messages = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        if will is not None:
            topic, payload, qos, props = will
            self.client.will_set(topic, payload, qos=qos, retain=False, properties=props)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code, flags.session_present)
        self.connack_props = properties
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.suback_event:
            self.subacks[mid] = reason_codes
            self.suback_event.notify_all()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def connect(self, expect_failure=False):
        props = None
        kwargs = {}
        if self.version == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None or self.connect_props:
                props = Properties(PacketTypes.CONNECT)
                if self.session_expiry is not None:
                    props.SessionExpiryInterval = self.session_expiry
                for name, value in self.connect_props.items():
                    setattr(props, name, value)
        self.client.connect(self.host, self.port, keepalive=30, properties=props, **kwargs)
        self.client.loop_start()
        if not self.connected.wait(TIMEOUT):
            raise CheckFailed(f"{self.client_id}: no CONNACK within {TIMEOUT}s")
        rc, _ = self.connack
        if rc.is_failure and not expect_failure:
            raise CheckFailed(f"{self.client_id}: CONNACK refused: {rc}")
        return self

    @property
    def session_present(self):
        return self.connack[1]

    def subscribe(self, topic, qos, options=None, properties=None):
        """Subscribes and waits for the SUBACK; `options` (MQTT 5 SubscribeOptions) replaces
        `qos` on the wire but `qos` is still the grant expected."""
        if options is None:
            result, mid = self.client.subscribe(topic, qos, properties=properties)
        else:
            result, mid = self.client.subscribe(topic, options=options, properties=properties)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise CheckFailed(f"subscribe {topic!r} failed to send: {result}")
        deadline = time.monotonic() + TIMEOUT
        with self.suback_event:
            while mid not in self.subacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"no SUBACK for {topic!r} within {TIMEOUT}s")
                self.suback_event.wait(left)
            codes = self.subacks[mid]
        granted = codes[0]
        value = granted.value if hasattr(granted, "value") else int(granted)
        if value != qos:
            raise CheckFailed(f"SUBACK for {topic!r} granted {granted}, expected QoS {qos}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise CheckFailed(f"publish to {topic!r} (QoS {qos}) not completed within {TIMEOUT}s")

    def receive(self, what="a message"):
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise CheckFailed(f"{self.client_id}: no {what} within {TIMEOUT}s") from None

    def disconnect(self):
        """A normal DISCONNECT; returns once it was sent and the connection closed."""
        self.client.disconnect()
        if not self.disconnected.wait(TIMEOUT):
            raise CheckFailed(f"{self.client_id}: disconnect not completed within {TIMEOUT}s")
        self.client.loop_stop()

    def stop(self):
        """Best-effort cleanup; never raises."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        try:
            self.client.loop_stop()
        except Exception:
            pass


def expect_message(msg, topic, payload, qos, retain=False):
    got = (msg.topic, msg.payload, msg.qos, bool(msg.retain))
    want = (topic, payload, qos, retain)
    if got != want:
        raise CheckFailed(f"expected (topic, payload, qos, retain) = {want}, got {got}")


class Runner:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.passed = 0
        self.failed = 0
        self.clients = []

    def client(self, proto, **kwargs):
        c = TestClient(self.host, self.port, proto, **kwargs)
        self.clients.append(c)
        return c

    def check(self, name, fn, *args):
        try:
            fn(*args)
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL - paho {name}: {e}", flush=True)
        except Exception as e:  # a bug in the check or an unexpected client error
            self.failed += 1
            print(f"FAIL - paho {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            self.passed += 1
            print(f"ok   - paho {name}", flush=True)
        finally:
            for c in self.clients:
                c.stop()
            self.clients.clear()

    # --- checks ---------------------------------------------------------------------------

    def round_trip(self, proto, qos):
        topic = f"interop/paho/rt/{proto}/{qos}/{uuid.uuid4().hex[:6]}"
        sub = self.client(proto).connect()
        sub.subscribe(topic, qos)
        pub = self.client(proto).connect()
        payloads = [f"{proto} qos{qos} #{i}".encode() for i in range(3)]
        for p in payloads:
            pub.publish(topic, p, qos)
        for p in payloads:
            expect_message(sub.receive(f"message {p!r}"), topic, p, qos)

    def retained(self, proto):
        base = f"interop/paho/retain/{proto}/{uuid.uuid4().hex[:6]}"
        pub = self.client(proto).connect()
        pub.publish(f"{base}/kept", b"first", 1, retain=True)
        pub.publish(f"{base}/kept", b"second", 1, retain=True)  # replaces
        pub.publish(f"{base}/gone", b"temporary", 1, retain=True)
        pub.publish(f"{base}/gone", b"", 1, retain=True)  # clears
        sub = self.client(proto).connect()
        sub.subscribe(f"{base}/#", 1)
        expect_message(sub.receive("the retained message"), f"{base}/kept", b"second", 1, True)
        # A live message published after SUBACK comes after all retained ones, without the
        # retain flag; the cleared topic must not have shown up in between.
        pub.publish(f"{base}/live", b"live", 1, retain=False)
        expect_message(sub.receive("the live message"), f"{base}/live", b"live", 1, False)
        pub.publish(f"{base}/kept", b"", 1, retain=True)  # leave nothing behind

    def will_on_kill(self, proto, delay=None):
        topic = f"interop/paho/will/{proto}/{uuid.uuid4().hex[:6]}"
        watcher = self.client(proto).connect()
        watcher.subscribe(topic, 1)
        args = [sys.executable, os.path.abspath(__file__), "--victim",
                "--host", self.host, "--port", str(self.port),
                "--proto", proto, "--will-topic", topic]
        if delay is not None:
            args += ["--will-delay", str(delay)]
        victim = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            line = read_line(victim, TIMEOUT)
            if line != "connected":
                raise CheckFailed(f"victim did not connect: {line!r}")
            killed_at = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait(TIMEOUT)
            msg = watcher.receive("will message")
            elapsed = time.monotonic() - killed_at
            expect_message(msg, topic, b"victim died", 1)
            if delay is not None and elapsed < delay - 0.25:
                raise CheckFailed(f"will arrived after {elapsed:.2f}s, before its {delay}s delay")
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
            if victim.stdout:
                victim.stdout.close()

    def no_will_on_disconnect(self, proto):
        topic = f"interop/paho/nowill/{proto}/{uuid.uuid4().hex[:6]}"
        watcher = self.client(proto).connect()
        watcher.subscribe(f"{topic}/#", 1)
        polite = self.client(proto, will=(f"{topic}/will", b"must not appear", 1, None)).connect()
        polite.disconnect()
        other = self.client(proto).connect()
        other.publish(f"{topic}/end", b"end marker", 1)
        expect_message(watcher.receive("the end marker"), f"{topic}/end", b"end marker", 1)

    def persistent_session(self, proto, qos):
        topic = f"interop/paho/persist/{proto}/{uuid.uuid4().hex[:6]}"
        client_id = unique("persist")
        expiry = 300 if proto == "v5" else None
        first = self.client(proto, client_id=client_id, clean=False, session_expiry=expiry)
        first.connect()
        first.subscribe(topic, qos)
        first.disconnect()
        pub = self.client(proto).connect()
        payloads = [f"queued {i}".encode() for i in range(3)]
        for p in payloads:
            pub.publish(topic, p, qos)
        again = self.client(proto, client_id=client_id, clean=False, session_expiry=expiry)
        again.connect()
        if not again.session_present:
            raise CheckFailed("CONNACK session present = 0 on reconnect to a persistent session")
        for p in payloads:
            expect_message(again.receive(f"queued message {p!r}"), topic, p, qos)
        again.disconnect()
        # Clean the session up: a clean (and for v5, expiring) connection with the same id.
        done = self.client(proto, client_id=client_id, clean=True, session_expiry=0 if expiry else None)
        done.connect()
        if done.session_present:
            raise CheckFailed("CONNACK session present = 1 on a clean-session connect")
        done.disconnect()

    # --- MQTT 5 only ------------------------------------------------------------------------

    def v5_properties_pass_through(self):
        topic = f"interop/paho/props/{uuid.uuid4().hex[:6]}"
        sub = self.client("v5").connect()
        sub.subscribe(topic, 1)
        pub = self.client("v5").connect()
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.ContentType = "text/plain; charset=utf-8"
        props.ResponseTopic = f"{topic}/reply"
        props.CorrelationData = b"\x00corr\xff"
        props.MessageExpiryInterval = 3600
        props.UserProperty = [("b", "1"), ("a", "2"), ("b", "3")]
        pub.publish(topic, "grüße".encode(), 1, properties=props)
        msg = sub.receive("the message with properties")
        expect_message(msg, topic, "grüße".encode(), 1)
        got = msg.properties
        for name in ("PayloadFormatIndicator", "ContentType", "ResponseTopic", "CorrelationData",
                     "UserProperty"):
            if getattr(got, name, None) != getattr(props, name):
                raise CheckFailed(f"{name}: sent {getattr(props, name)!r}, "
                                  f"got {getattr(got, name, None)!r}")
        left = getattr(got, "MessageExpiryInterval", None)
        if left is None or not 3590 <= left <= 3600:
            raise CheckFailed(f"MessageExpiryInterval {left!r}, expected 3590..3600")

    def v5_subscription_options(self):
        from paho.mqtt.subscribeoptions import SubscribeOptions
        base = f"interop/paho/subopts/{uuid.uuid4().hex[:6]}"
        other = self.client("v5").connect()
        other.publish(f"{base}/retained", b"stored", 1, retain=True)
        me = self.client("v5").connect()
        sub_props = Properties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 17
        me.subscribe(f"{base}/chat", 1, SubscribeOptions(qos=1, noLocal=True), sub_props)
        # Retain Handling 2: the stored message is not sent; Retain As Published keeps RETAIN.
        me.subscribe(f"{base}/retained", 1, SubscribeOptions(
            qos=1, retainAsPublished=True,
            retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
        me.publish(f"{base}/chat", b"mine", 1)  # No Local: not echoed
        other.publish(f"{base}/chat", b"yours", 1)
        msg = me.receive("the other client's chat message")
        expect_message(msg, f"{base}/chat", b"yours", 1)
        ids = getattr(msg.properties, "SubscriptionIdentifier", None)
        if ids != [17]:
            raise CheckFailed(f"SubscriptionIdentifier {ids!r}, expected [17]")
        other.publish(f"{base}/retained", b"live", 1, retain=True)
        expect_message(me.receive("the live retained message"), f"{base}/retained", b"live", 1,
                       True)
        other.publish(f"{base}/retained", b"", 1, retain=True)  # leave nothing behind

    def v5_client_topic_alias(self):
        topic = f"interop/paho/alias/{uuid.uuid4().hex[:6]}"
        sub = self.client("v5").connect()
        sub.subscribe(topic, 1)
        pub = self.client("v5").connect()
        maximum = getattr(pub.connack_props, "TopicAliasMaximum", 0)
        if maximum < 1:
            raise CheckFailed(f"CONNACK Topic Alias Maximum {maximum!r}")
        props = Properties(PacketTypes.PUBLISH)
        props.TopicAlias = 1
        pub.publish(topic, b"sets the alias", 1, properties=props)
        pub.publish("", b"uses the alias", 1, properties=props)
        expect_message(sub.receive("first aliased message"), topic, b"sets the alias", 1)
        expect_message(sub.receive("second aliased message"), topic, b"uses the alias", 1)

    def v5_response_information(self):
        asked = self.client("v5", connect_props={"RequestResponseInformation": 1}).connect()
        info = getattr(asked.connack_props, "ResponseInformation", None)
        if info != f"culex/response/{asked.client_id}":
            raise CheckFailed(f"ResponseInformation {info!r}")
        plain = self.client("v5").connect()
        if hasattr(plain.connack_props, "ResponseInformation"):
            raise CheckFailed("ResponseInformation sent without being requested")

    def v5_session_expiry_on_disconnect(self):
        client_id = unique("expiry")
        first = self.client("v5", client_id=client_id, clean=False, session_expiry=300).connect()
        first.subscribe(f"interop/paho/expiry/{client_id}", 1)
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        first.client.disconnect(properties=props)
        if not first.disconnected.wait(TIMEOUT):
            raise CheckFailed("disconnect not completed")
        first.client.loop_stop()
        again = self.client("v5", client_id=client_id, clean=False, session_expiry=300).connect()
        if again.session_present:
            raise CheckFailed("session kept although DISCONNECT set its expiry to 0")
        again.client.disconnect(properties=props)

    def v5_reason_codes(self):
        topic = f"interop/paho/reason/{uuid.uuid4().hex[:6]}"
        pub = self.client("v5").connect()
        acks = queue.Queue()
        pub.client.on_publish = lambda c, u, mid, rc, p: acks.put(rc)
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        pub.client.publish(topic, b"\xff\xfe", qos=1, properties=props)
        try:
            rc = acks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise CheckFailed("no PUBACK") from None
        if rc.value != 0x99:
            raise CheckFailed(f"PUBACK reason {rc}, expected 0x99 Payload format invalid")
        auth = self.client("v5", connect_props={"AuthenticationMethod": "SCRAM-SHA-1"})
        auth.connect(expect_failure=True)
        rc, _ = auth.connack
        if rc.value != 0x8C:
            raise CheckFailed(f"CONNACK {rc}, expected 0x8C Bad authentication method")
        why = getattr(auth.connack_props, "ReasonString", "")
        if "authentication method" not in why:
            raise CheckFailed(f"CONNACK Reason String {why!r}")

    def run(self):
        for proto in ("v3.1.1", "v5"):
            for qos in (0, 1, 2):
                self.check(f"{proto} QoS {qos} round trip", self.round_trip, proto, qos)
        self.check("v3.1 QoS 1 round trip (smoke)", self.round_trip, "v3.1", 1)
        for proto in ("v3.1.1", "v5"):
            self.check(f"{proto} retained set/replace/clear", self.retained, proto)
        for proto in ("v3.1.1", "v5"):
            self.check(f"{proto} will on abrupt close (SIGKILL)", self.will_on_kill, proto)
            self.check(f"{proto} no will after DISCONNECT", self.no_will_on_disconnect, proto)
        self.check("v5 will delay interval (1 s)", self.will_on_kill, "v5", 1)
        for proto in ("v3.1.1", "v5"):
            for qos in (1, 2):
                self.check(f"{proto} persistent session, QoS {qos} queued while offline",
                           self.persistent_session, proto, qos)
        self.check("v5 publish properties passed through unchanged",
                   self.v5_properties_pass_through)
        self.check("v5 No Local, Retain As Published, Retain Handling 2, Subscription Identifier",
                   self.v5_subscription_options)
        self.check("v5 Topic Alias from the client", self.v5_client_topic_alias)
        self.check("v5 Response Information only when requested", self.v5_response_information)
        self.check("v5 Session Expiry 0 on DISCONNECT ends the session",
                   self.v5_session_expiry_on_disconnect)
        self.check("v5 reason codes: PUBACK 0x99, CONNACK 0x8C with a Reason String",
                   self.v5_reason_codes)
        print(f"paho: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


def read_line(proc, timeout):
    """Reads one line from proc.stdout with a deadline; returns it stripped, or '' on EOF."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed(f"victim printed nothing within {timeout}s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").strip()


def victim(args):
    """Child process: connect with a will, say 'connected', then wait to be killed."""
    props = None
    if PROTOCOLS[args.proto] == mqtt.MQTTv5 and args.will_delay is not None:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = args.will_delay
    # A will is published when the will delay has passed *or* the session ends, whichever
    # comes first [MQTT-3.1.3-9]; so a delayed will needs a session that outlives the
    # connection.
    expiry = 60 if props is not None else None
    c = TestClient(args.host, args.port, args.proto, client_id=unique("victim"),
                   session_expiry=expiry, will=(args.will_topic, b"victim died", 1, props))
    c.connect()
    print("connected", flush=True)
    time.sleep(TIMEOUT * 6)  # the parent kills us long before this
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--victim", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--proto", default="v3.1.1", help=argparse.SUPPRESS)
    ap.add_argument("--will-topic", help=argparse.SUPPRESS)
    ap.add_argument("--will-delay", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.victim:
        return victim(args)
    return Runner(args.host, args.port).run()


if __name__ == "__main__":
    sys.exit(main())
