// The JS client's recovery bookkeeping against a scripted WebSocket (no server, no browser),
// run by tests/test_browser_recovery.py: node recovery_unit.mjs
// What a real server never does here is scripted: copies, an "unavailable" answer, gap
// notices, more rooms than one handshake may present. Each check asserts with node:assert;
// the last line printed is {"passed": [names]}; any failure exits 1.
import assert from "node:assert/strict";
import { connect } from "../../wsflask/static/wsflask.js";

class FakeSocket {
  static made = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.closedWith = null;
    FakeSocket.made.push(this);
  }

  send() {}

  close(code, reason) {
    this.readyState = 3;
    this.closedWith = { code, reason };
  }

  open() {
    this.readyState = 1;
    this.onopen({});
  }

  deliver(envelope) {
    this.onmessage?.({ data: JSON.stringify(envelope) });  // null: nobody listens any more
  }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
}

const OPTIONS = { WebSocket: FakeSocket, backoff: { min: 1, max: 1 }, jitter: false };
const n = (room, offset, epoch, data = offset) => ({ event: "n", data, room, offset, epoch });
const marker = (data) => ({ event: "_recovery", data });
const presented = (ws) => {
  const raw = new URL(ws.url).searchParams.get("recover");
  return raw === null ? null : JSON.parse(raw);
};

function start(url, options = {}) {
  FakeSocket.made.length = 0;
  const sock = connect(url, { ...OPTIONS, ...options });
  const seen = { n: [], recovery: [], close: [], gap: [] };
  sock.on("n", (data) => seen.n.push(data));
  sock.on("recovery", (info) => seen.recovery.push(info));
  sock.on("close", (info) => seen.close.push(info));
  sock.on("_gap", (data) => seen.gap.push(data));
  const ws = FakeSocket.made[0];
  ws.open();
  return { sock, seen, ws };
}

const nextSocket = (count) => new Promise((resolve, reject) => {
  const deadline = Date.now() + 5000;
  const poll = () => {
    if (FakeSocket.made.length >= count) resolve(FakeSocket.made[count - 1]);
    else if (Date.now() > deadline) reject(new Error(`no reconnection ${count}`));
    else setTimeout(poll, 1);
  };
  poll();
});

const checks = {
  async savedPositionsArePresentedFirst() {
    const { ws } = start("ws://h/r/a?token=x%20y", {
      positions: { a: { offset: 3, epoch: "e1" }, bad: { offset: -1, epoch: "e1" },
        empty: { offset: 1, epoch: "" } },
    });
    assert.deepEqual(presented(ws), { a: { offset: 3, epoch: "e1" } });
    assert.equal(new URL(ws.url).searchParams.get("token"), "x y");  // the app's own query kept
  },

  async noPositionNoParameter() {
    const { ws } = start("ws://h/r/a");
    assert.equal(ws.url, "ws://h/r/a");
  },

  async replayThenCopiesDropped() {
    const saved = { a: { offset: 3, epoch: "e1" } };
    const { sock, seen, ws } = start("ws://h/r/a", { positions: saved });
    ws.deliver(marker({ room: "a", recovered: true, offset: 5, epoch: "e1", replayed: 2 }));
    assert.deepEqual(sock.positions, { a: { offset: 3, epoch: "e1" } });  // the replay moves it
    for (const offset of [4, 5, 5, 4, 6]) ws.deliver(n("a", offset, "e1"));
    assert.deepEqual(seen.n, [4, 5, 6]);
    assert.equal(sock.duplicates, 2);
    assert.deepEqual(seen.recovery, [{ room: "a", recovered: true, reason: null, offset: 5,
      epoch: "e1", replayed: 2 }]);
    ws.deliver(n("a", 1, "e2"));  // a new epoch (the history was lost): adopted, delivered
    assert.deepEqual(sock.positions, { a: { offset: 1, epoch: "e2" } });
    assert.deepEqual(seen.n, [4, 5, 6, 1]);
  },

  async unrecoverableAnswerResetsThePosition() {
    const saved = { a: { offset: 3, epoch: "e1" } };
    const { sock, seen, ws } = start("ws://h/r/a", { positions: saved });
    ws.deliver(marker({ room: "a", recovered: false, reason: "epoch_changed", offset: 9,
      epoch: "e2" }));
    assert.deepEqual(sock.positions, { a: { offset: 9, epoch: "e2" } });
    assert.equal(seen.recovery[0].reason, "epoch_changed");
    assert.equal("replayed" in seen.recovery[0], false);
  },

  async unavailableKeepsThePosition() {
    const saved = { a: { offset: 3, epoch: "e1" } };
    const { sock, seen, ws } = start("ws://h/r/a", { positions: saved });
    ws.deliver(marker({ room: "a", recovered: false, reason: "unavailable", offset: 0,
      epoch: "" }));
    assert.deepEqual(sock.positions, { a: { offset: 3, epoch: "e1" } });
    assert.equal(seen.recovery[0].reason, "unavailable");
  },

  async offsetGapReconnectsAndPresents() {
    const { sock, seen, ws } = start("ws://h/r/a");
    ws.deliver(marker({ room: "a", recovered: false, offset: 4, epoch: "e1" }));
    ws.deliver(n("a", 5, "e1"));
    ws.deliver(n("a", 7, "e1"));  // 6 never came
    assert.deepEqual(seen.n, [5]);  // 7 comes again, in order, with the replay
    assert.equal(sock.gaps, 1);
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "recovering" });
    assert.deepEqual(seen.close, [{ code: 1000, reason: "offset gap in a: 5 then 7",
      deliberate: false, willReconnect: true }]);
    ws.deliver(n("a", 8, "e1"));  // the old connection is no longer heard
    assert.deepEqual(seen.n, [5]);
    const again = await nextSocket(2);
    assert.deepEqual(presented(again), { a: { offset: 5, epoch: "e1" } });
    sock.close();
  },

  async gapNoticeOfAKnownRoomReconnects() {
    const saved = { a: { offset: 3, epoch: "e1" } };
    const { sock, seen, ws } = start("ws://h/r/a", { positions: saved });
    ws.deliver({ event: "_gap", data: { room: "other" } });
    assert.equal(ws.closedWith, null);  // not a room we follow
    ws.deliver({ event: "_gap", data: { room: "a" } });
    assert.deepEqual(seen.gap, [{ room: "other" }, { room: "a" }]);  // the page still hears it
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "recovering" });
    assert.deepEqual(presented(await nextSocket(2)), { a: { offset: 3, epoch: "e1" } });
    sock.close();
  },

  async dropPresentsOnTheNextConnection() {
    const { sock, ws } = start("ws://h/r/a");
    ws.deliver(n("a", 1, "e1"));
    ws.deliver(n("b", 7, "e9"));
    ws.drop();
    const again = await nextSocket(2);
    assert.deepEqual(presented(again),
      { a: { offset: 1, epoch: "e1" }, b: { offset: 7, epoch: "e9" } });
    sock.close();
  },

  async atMost128RoomsPresented() {
    const { sock, ws } = start("ws://h/r/a");
    for (let i = 0; i < 130; i += 1) ws.deliver(n(`r${i}`, 1, "e1"));
    const rooms = Object.keys(sock.positions);
    assert.equal(rooms.length, 128);
    assert.deepEqual(rooms.slice(0, 2), ["r2", "r3"]);  // the rooms heard of first left
  },

  async turnedOff() {
    const { sock, seen, ws } = start("ws://h/r/a", { recover: false,
      positions: { a: { offset: 3, epoch: "e1" } } });
    assert.equal(ws.url, "ws://h/r/a");
    ws.deliver(marker({ room: "a", recovered: false, offset: 4, epoch: "e1" }));
    for (const offset of [5, 5, 9]) ws.deliver(n("a", offset, "e1"));
    assert.deepEqual(seen.n, [5, 5, 9]);  // as received, as before this feature
    assert.deepEqual(seen.recovery, []);
    assert.equal(ws.closedWith, null);
    assert.deepEqual(sock.positions, {});
  },

  async withoutReconnectAGapIsOnlyCounted() {
    const { sock, seen, ws } = start("ws://h/r/a", { reconnect: false });
    ws.deliver(n("a", 1, "e1"));
    ws.deliver(n("a", 3, "e1"));
    assert.deepEqual(seen.n, [1, 3]);
    assert.equal(sock.gaps, 1);
    assert.equal(ws.closedWith, null);
  },

  async aSkipMovesThePositionAndIsNotShown() {
    const { sock, seen, ws } = start("ws://h/r/a");
    let skips = 0;
    sock.on("_skipped", () => { skips += 1; });
    ws.deliver(n("a", 1, "e1"));
    ws.deliver({ event: "_skipped", data: null, room: "a", offset: 2, epoch: "e1" });
    ws.deliver(n("a", 3, "e1"));
    assert.deepEqual(seen.n, [1, 3]);
    assert.equal(skips, 0);
    assert.equal(sock.gaps, 0);
    assert.equal(ws.closedWith, null);
    assert.deepEqual(sock.positions, { a: { offset: 3, epoch: "e1" } });
  },
};

const passed = [];
for (const [name, check] of Object.entries(checks)) {
  await check();
  passed.push(name);
}
process.stdout.write(`${JSON.stringify({ passed })}\n`);
