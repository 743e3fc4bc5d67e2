// The JavaScript client (wsflask/static/wsflask.js, as the server serves it at /wsflask.js)
// in Node against tests/browser/js_app.py, driven by tests/test_js_client.py:
//   node js_client.mjs HTTP_BASE
// Prints one JSON line per step ({"step": ...}); on {"step": "restart"} the test restarts the
// server on the same port and this script waits for the client to reconnect by itself. The
// last line is {"step": "done", ...results}. Exits 1 on any failure; every wait is bounded.
import WebSocket from "ws";

const base = process.argv[2];
const wsBase = base.replace(/^http/, "ws");
const STEP_MS = 20000;

function say(step, extra = {}) {
  process.stdout.write(`${JSON.stringify({ step, ...extra })}\n`);
}

function within(promise, what, ms = STEP_MS) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// The next time `sock` fires `event` (with `test(data)` true), as a Promise.
function next(sock, event, what, test = () => true) {
  return within(new Promise((resolve) => {
    const handler = (data) => {
      if (!test(data)) return;
      sock.off(event, handler);
      resolve(data);
    };
    sock.on(event, handler);
  }), what);
}

async function rejection(promise) {
  try {
    const value = await promise;
    return { resolved: value };
  } catch (error) {
    return { name: error.name, type: error.type, message: error.message };
  }
}

async function main() {
  const response = await fetch(`${base}/wsflask.js`);
  const source = await response.text();
  const served = {
    status: response.status,
    type: response.headers.get("content-type"),
    etag: response.headers.get("etag"),
  };
  const again = await fetch(`${base}/wsflask.js`, { headers: { "If-None-Match": served.etag } });
  served.revalidated = again.status;
  const wsflask = await import(`data:text/javascript,${encodeURIComponent(source)}`);
  const options = { WebSocket, backoff: { min: 100, max: 800 } };
  const result = { served };

  // client -> server: emit, call answered, call refused, call timed out
  const sock = wsflask.connect(`${wsBase}/events`, options);
  const reconnects = [];
  sock.on("reconnect", (info) => { reconnects.push(info); say("reconnect", info); });
  result.firstOpen = await next(sock, "open", "open");
  const shouted = next(sock, "shouted", "shouted");
  result.emitted = sock.emit("shout", "hello");
  result.shouted = await shouted;
  result.sum = await within(sock.call("add", { a: 2, b: 3 }), "add");
  result.failed = await rejection(sock.call("fail", null));
  const started = Date.now();
  result.timedOut = await rejection(sock.call("slow", 1.5, { timeout: 200 }));
  result.timeoutMs = Date.now() - started;

  // the connection drops while a call waits: it rejects at once, then the client reconnects
  const closed = next(sock, "close", "close after drop");
  const dropStart = Date.now();
  result.dropped = await rejection(sock.call("drop", null, { timeout: 60000 }));
  result.dropMs = Date.now() - dropStart;
  result.dropClose = await closed;
  result.reopened = await next(sock, "open", "reopen after drop");
  result.sumAfterDrop = await within(sock.call("add", { a: 40, b: 2 }), "add after drop");

  // server -> client calls, answered by handlers (an ack, an unknown event, a throw)
  const raw = wsflask.connect(`${wsBase}/raw`, options);
  raw.on("ping", async (n) => n + 1);
  raw.on("boom", () => { throw new TypeError("handler failed on purpose"); });
  result.replies = await next(raw, "replies", "replies");
  const rawClosed = next(raw, "close", "deliberate close");
  raw.close();
  result.deliberate = await rawClosed;

  // refused with 1008: no reconnection
  const refused = wsflask.connect(`${wsBase}/refuse`, options);
  let refusedReconnects = 0;
  refused.on("reconnect", () => { refusedReconnects += 1; });
  result.refusedClose = await next(refused, "close", "refused close");
  result.refusedReconnects = refusedReconnects;
  result.refusedTimer = refused.timer;

  // the server restarts: the client retries with growing delays until it is back
  const down = next(sock, "close", "close on server stop");
  reconnects.length = 0;
  say("restart");
  result.restartClose = await down;
  result.whileDown = await rejection(sock.call("add", { a: 1, b: 1 }));
  result.restartOpen = await within(next(sock, "open", "open after restart"), "restart", 60000);
  result.restartReconnects = [...reconnects];
  result.sumAfterRestart = await within(sock.call("add", { a: 1, b: 2 }), "add after restart");
  sock.close();
  say("done", result);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
