// permessage-deflate interop with the Node `ws` client, driven by tests/test_deflate_interop.py:
//   node ws_client.mjs WS_URL
// Offers permessage-deflate (ws's default offer, threshold 0: every message compressed),
// sends text and binary messages of 0 B, 1 B, 1 KiB and 1 MiB, checks each echo byte for byte
// and prints one JSON object: the server's Sec-WebSocket-Extensions answer and the results.
// Exits 1 on any failure; every wait is bounded.
import WebSocket from "ws";

const url = process.argv[2];
const STEP_MS = 30000;
const SIZES = [0, 1, 1024, 1024 * 1024];

function textOf(size) {  // compressible JSON-like text, ASCII
  const unit = '{"user":"alice","room":"lobby","n":';
  let out = "";
  for (let i = 0; out.length < size; i += 1) out += `${unit}${i}}`;
  return out.slice(0, size);
}

function binaryOf(size) {
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i += 1) out[i] = (i * 7) % 251 & (i % 64 < 32 ? 0xff : 0x0f);
  return out;
}

function timeout(what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)),
    STEP_MS).unref());
}

async function main() {
  const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 }, maxPayload: 4 << 20 });
  let extensions = null;
  ws.on("upgrade", (res) => { extensions = res.headers["sec-websocket-extensions"] ?? ""; });
  const inbox = [];
  let wake = null;
  ws.on("message", (data, isBinary) => { inbox.push([data, isBinary]); if (wake) wake(); });
  await Promise.race([new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), timeout("open")]);
  const next = async () => {
    while (inbox.length === 0) {
      await Promise.race([new Promise((resolve) => { wake = resolve; }), timeout("echo")]);
    }
    return inbox.shift();
  };
  const results = [];
  for (const binary of [false, true]) {
    for (const size of SIZES) {
      const sent = binary ? binaryOf(size) : textOf(size);
      ws.send(sent, { binary, compress: true });
      const [data, isBinary] = await next();
      const same = binary ? Buffer.compare(data, sent) === 0 : data.toString("utf8") === sent;
      results.push({ binary, size, ok: same && isBinary === binary, got: data.length });
    }
  }
  ws.close(1000, "done");
  const code = await Promise.race([new Promise((resolve) => ws.once("close", resolve)),
    timeout("close")]);
  process.stdout.write(`${JSON.stringify({ extensions, results, closeCode: code })}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
