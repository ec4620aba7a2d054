// MQTT.js against a running Culex over MQTT-over-WebSocket (ws://, subprotocol "mqtt").
//
// Usage: node check.mjs ws://127.0.0.1:PORT/mqtt
// The broker must allow anonymous clients on that listener. Prints one line per check and
// "mqttjs: N passed, M failed"; exits 1 if any check failed. tests/interop/mqttjs.sh starts a
// broker and runs this.
//
// MQTT.js offers the WebSocket subprotocol "mqtt" for MQTT 3.1.1 and 5.0 (Culex refuses an
// upgrade without it), so connecting at all proves the subprotocol negotiation works.

import mqtt from "mqtt";

const url = process.argv[2];
if (!url) {
  console.error("usage: node check.mjs ws://HOST:PORT/PATH");
  process.exit(2);
}

const TIMEOUT_MS = 10_000;
let passed = 0;
let failed = 0;

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function check(name, fn) {
  try {
    await withTimeout(fn(), name);
    passed += 1;
    console.log(`ok   - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL - ${name}: ${e && e.message ? e.message : e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function connect(protocolVersion, clientId, extra = {}) {
  return mqtt.connectAsync(url, {
    protocolVersion,
    clientId,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: TIMEOUT_MS,
    ...extra,
  });
}

/// Resolves with the first `count` messages delivered to `client`.
function collect(client, count) {
  return new Promise((resolve) => {
    const got = [];
    const onMessage = (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), packet });
      if (got.length === count) {
        client.removeListener("message", onMessage);
        resolve(got);
      }
    };
    client.on("message", onMessage);
  });
}

for (const version of [4, 5]) {
  const v = version === 5 ? "5.0" : "3.1.1";
  const base = `mqttjs/${version}/${process.pid}`;

  await check(`MQTT ${v}: connect, subscribe, publish QoS 0/1/2, receive`, async () => {
    const client = await connect(version, `mqttjs-rt-${version}-${process.pid}`);
    try {
      const granted = await client.subscribeAsync(`${base}/rt/#`, { qos: 2 });
      assert(
        granted.length === 1 && granted[0].qos === 2,
        `SUBACK ${JSON.stringify(granted)}`,
      );
      const arriving = collect(client, 3);
      for (const qos of [0, 1, 2]) {
        await client.publishAsync(`${base}/rt/q${qos}`, `hello qos ${qos}`, { qos });
      }
      const got = await arriving;
      const seen = got.map((m) => `${m.topic}=${m.payload}@${m.packet.qos}`).sort();
      const want = [0, 1, 2].map((q) => `${base}/rt/q${q}=hello qos ${q}@${q}`).sort();
      assert(
        JSON.stringify(seen) === JSON.stringify(want),
        `received ${JSON.stringify(seen)}, expected ${JSON.stringify(want)}`,
      );
    } finally {
      await client.endAsync();
    }
  });

  await check(`MQTT ${v}: retained message reaches a later subscriber`, async () => {
    const publisher = await connect(version, `mqttjs-ret-pub-${version}-${process.pid}`);
    await publisher.publishAsync(`${base}/retained`, "kept", { qos: 1, retain: true });
    await publisher.endAsync();
    const client = await connect(version, `mqttjs-ret-sub-${version}-${process.pid}`);
    try {
      const arriving = collect(client, 1);
      await client.subscribeAsync(`${base}/retained`, { qos: 1 });
      const [m] = await arriving;
      assert(m.payload === "kept", `payload ${m.payload}`);
      assert(m.packet.retain === true, "retain flag not set");
      // Clear it.
      await client.publishAsync(`${base}/retained`, "", { qos: 1, retain: true });
    } finally {
      await client.endAsync();
    }
  });

  if (version === 5) {
    await check("MQTT 5.0: user properties and content type round-trip", async () => {
      const client = await connect(5, `mqttjs-props-${process.pid}`);
      try {
        await client.subscribeAsync(`${base}/props`, { qos: 1 });
        const arriving = collect(client, 1);
        await client.publishAsync(`${base}/props`, "{}", {
          qos: 1,
          properties: { userProperties: { origin: "mqttjs" }, contentType: "application/json" },
        });
        const [m] = await arriving;
        const props = m.packet.properties || {};
        assert(
          props.userProperties && props.userProperties.origin === "mqttjs",
          `user properties ${JSON.stringify(props.userProperties)}`,
        );
        assert(props.contentType === "application/json", `content type ${props.contentType}`);
      } finally {
        await client.endAsync();
      }
    });
  }

  await check(`MQTT ${v}: two clients exchange a message`, async () => {
    const a = await connect(version, `mqttjs-a-${version}-${process.pid}`);
    const b = await connect(version, `mqttjs-b-${version}-${process.pid}`);
    try {
      await b.subscribeAsync(`${base}/chat`, { qos: 1 });
      const arriving = collect(b, 1);
      await a.publishAsync(`${base}/chat`, "from a", { qos: 1 });
      const [m] = await arriving;
      assert(m.payload === "from a", `payload ${m.payload}`);
    } finally {
      await a.endAsync();
      await b.endAsync();
    }
  });
}

console.log(`mqttjs: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
