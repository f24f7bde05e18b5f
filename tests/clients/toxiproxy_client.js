// tests/toxiproxy.rs drives faultline's Toxiproxy API with
// toxiproxy-node-client. Environment: TOXIPROXY_PORT (the API), UPSTREAM
// (host:port of an upstream that answers every byte upper-cased),
// NODE_PATH (where npm installed the client). Prints "ok" when every
// check held; any failure exits non-zero.
"use strict";
const assert = require("node:assert/strict");
const net = require("node:net");
const { Toxiproxy } = require("toxiproxy-node-client");

function exchange(port, payload = "ping") {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const chunks = [];
    const socket = net.connect({ host: "127.0.0.1", port }, () => {
      socket.setNoDelay(true);
      socket.end(payload);
    });
    socket.on("data", (chunk) => chunks.push(chunk));
    socket.on("end", () => resolve([Buffer.concat(chunks).toString(), Date.now() - start]));
    socket.on("error", reject);
    socket.setTimeout(5000, () => reject(new Error("timed out")));
  });
}

async function main() {
  const toxiproxy = new Toxiproxy(`http://127.0.0.1:${process.env.TOXIPROXY_PORT}`);
  const version = await toxiproxy.getVersion();
  assert.match(JSON.stringify(version), /2\.12\.0/);
  const proxy = await toxiproxy.createProxy({
    name: "echo",
    listen: "127.0.0.1:0",
    upstream: process.env.UPSTREAM,
  });
  const port = Number(proxy.listen.split(":").pop());
  assert.notEqual(port, 0);
  assert.deepEqual((await exchange(port))[0], "PING");

  // latency, then toxicity 0, then removed
  const slow = await proxy.addToxic({
    name: "slow", type: "latency", stream: "downstream", toxicity: 1,
    attributes: { latency: 300, jitter: 0 },
  });
  let [data, took] = await exchange(port);
  assert.equal(data, "PING");
  assert.ok(took >= 290, `latency: ${took} ms`);
  const updated = await slow.update({ toxicity: 0, attributes: { latency: 300, jitter: 0 } });
  assert.equal(updated.toxicity, 0);
  [data, took] = await exchange(port);
  assert.ok(took < 300, `toxicity 0: ${took} ms`);
  await updated.remove();

  const cases = [
    ["bandwidth", { rate: 10 }, "a".repeat(5000), (d, t) => d === "A".repeat(5000) && t >= 300],
    ["slicer", { average_size: 1, size_variation: 0, delay: 20000 }, "ping", (d, t) => d === "PING" && t >= 50],
    ["limit_data", { bytes: 2 }, "ping", (d) => d === "PI"],
    ["timeout", { timeout: 200 }, "ping", (d, t) => d === "" && t >= 190],
    ["slow_close", { delay: 300 }, "ping", (d, t) => d === "PING" && t >= 290],
  ];
  for (const [type, attributes, payload, holds] of cases) {
    const toxic = await proxy.addToxic({ type, stream: "downstream", toxicity: 1, attributes });
    const [d, t] = await exchange(port, payload);
    assert.ok(holds(d, t), `${type}: ${d.length} bytes in ${t} ms`);
    await toxic.remove();
  }
  const reset = await proxy.addToxic({ type: "reset_peer", stream: "downstream", toxicity: 1, attributes: { timeout: 0 } });
  await assert.rejects(exchange(port), /ECONNRESET/);
  await reset.remove();

  // reset clears toxics; a disabled proxy refuses
  await proxy.addToxic({ type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: 1000, jitter: 0 } });
  await toxiproxy.reset();
  const toxics = await fetch(`http://127.0.0.1:${process.env.TOXIPROXY_PORT}/proxies/echo/toxics`);
  assert.deepEqual(await toxics.json(), []);
  await proxy.update({ enabled: false, listen: proxy.listen, upstream: proxy.upstream });
  await assert.rejects(exchange(port), /ECONNREFUSED/);
  await proxy.update({ enabled: true, listen: proxy.listen, upstream: proxy.upstream });
  for (let i = 0; ; i++) {
    try {
      assert.equal((await exchange(port))[0], "PING");
      break;
    } catch (e) {
      if (i > 500) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  await proxy.remove();
  assert.deepEqual(Object.keys(await toxiproxy.getAll()), []);
  console.log("ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
