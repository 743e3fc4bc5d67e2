// wsflask.js: the JavaScript client of wsflask's JSON event routes, served by every App at
// /wsflask.js (types at /wsflask.d.ts). A plain ES module, no dependencies, no build step:
//
//   <script type="module">
//     import { connect } from "/wsflask.js";
//     const sock = connect("/chat/lobby");
//     sock.on("said", (data) => console.log(data));
//     const reply = await sock.call("say", { text: "hi" }, { timeout: 5000 });
//   </script>
//
// Wire format (one JSON text message each way):
//   client -> server  {"event", "data"}  with "id": <int> when an answer is wanted; the server
//                     answers {"event":"ack","id","data"} or {"event":"error","id","data":{"type","message"}}
//   server -> client  {"event", "data"}  with "id": "s<n>" when the server calls; this client
//                     answers the same way (an unknown event or a throwing handler is an error)
// Reconnects with capped exponential backoff and full jitter, except after close() and after
// a close code in DO_NOT_RETRY. Nothing is buffered while disconnected: emit() and send()
// return false, call() rejects at once.
//
// Recoverable rooms (app.rooms.recoverable on the server): each event to such a room also
// carries "room", "offset", "epoch". The client remembers the last (offset, epoch) per room and
// presents them on every (re)connection as ?recover={"room":{"offset":n,"epoch":"e"}}; the
// server answers each join with a "_recovery" event {room, recovered, offset, epoch[, replayed]
// [, reason]} and replays what was missed. The page hears it as the "recovery" event. A copy
// (offset <= the last one seen in the same epoch) is dropped and counted; an offset that jumps
// by more than one, or a "_gap" notice for such a room, makes the client drop the connection
// and reconnect (after the first backoff delay) to recover what it missed. A "_skipped" event
// (a publication this client was left out of, skip=) only moves the position.

/** Close codes after which the client does not reconnect: the server refused this client
 * (1008 policy: a connect handler or the origin check said no) or what it sends (1002
 * protocol error, 1003 unsupported data, 1007 invalid payload); retrying would repeat it. */
export const DO_NOT_RETRY = Object.freeze([1002, 1003, 1007, 1008]);

const LIFECYCLE = new Set(["open", "close", "reconnect", "message", "recovery"]);

/** The event answering each join of a recoverable room, and the backplane's gap notice. */
const MARKER = "_recovery";
const GAP = "_gap";
const SKIPPED = "_skipped";  // a publication this client was left out of: its position only
/** The most rooms one handshake may present (the server's recovery.MAX_POSITIONS). */
const MAX_POSITIONS = 128;

/** A position the server accepts (recovery.parse_positions): offset >= 0, epoch 1-64 chars. */
function validPosition(offset, epoch) {
  return Number.isInteger(offset) && offset >= 0 && typeof epoch === "string" &&
    epoch.length > 0 && epoch.length <= 64;
}

/** Why a call() failed: `type` is "Timeout", "Disconnected", "NotConnected", or the type the
 * other side's error reply named (e.g. "UnknownEvent", "ValueError"). */
export class CallError extends Error {
  constructor(type, message) {
    super(message);
    this.name = "CallError";
    this.type = type;
  }
}

/** The wait before reconnection attempt `attempt` (0-based), in ms: min * 2^attempt capped at
 * max; with jitter ("full jitter") a uniform random value between 0 and that. */
export function backoffDelay(attempt, min, max, jitter = true, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return jitter ? random() * ceiling : ceiling;
}

/** A ws:// or wss:// URL for `url`; a path ("/chat/x") is resolved against the page. */
function absolute(url) {
  if (/^wss?:\/\//i.test(url)) return url;
  const here = globalThis.location;
  if (!here) throw new TypeError(`connect() needs a ws:// or wss:// URL outside a page: ${url}`);
  const resolved = new URL(url, here.href);
  resolved.protocol = resolved.protocol === "https:" ? "wss:" : "ws:";
  return resolved.href;
}

export class Socket {
  constructor(url, options = {}) {
    this.target = url;           // a URL, or a function giving it at each (re)connection
    this.base = absolute(typeof url === "function" ? url() : url);
    this.url = this.base;        // base plus the positions presented (recover=...)
    this.reconnect = options.reconnect ?? true;
    this.backoff = { min: 500, max: 30000, ...(options.backoff || {}) };
    this.jitter = options.jitter ?? true;
    this.noRetry = new Set(options.noRetryCodes ?? DO_NOT_RETRY);
    this.protocols = options.protocols;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket (e.g. the `ws` package)");
    }
    this.ws = null;
    this.handlers = new Map();   // event -> [handler]
    this.pending = new Map();    // call id -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0;            // reconnection attempts since the last open
    this.opened = false;         // ever opened: the next open is a reconnection
    this.closed = false;         // close() was called
    this.timer = null;
    this.recover = options.recover ?? true;
    this._rooms = new Map();     // recoverable room -> {offset, epoch}: the last one seen
    this.duplicates = 0;         // copies dropped (offset <= the last seen, same epoch)
    this.gaps = 0;               // offset jumps seen live (each one made it recover)
    for (const [room, pos] of Object.entries(this.recover ? options.positions ?? {} : {})) {
      if (pos && validPosition(pos.offset, pos.epoch)) this._remember(room, pos.offset, pos.epoch);
    }
    this._open();
  }

  /** The last position seen per recoverable room, {room: {offset, epoch}} (a copy): what the
   * next reconnection presents; save it to pass as options.positions after a page reload. */
  get positions() {
    const out = {};
    for (const [room, { offset, epoch }] of this._rooms) out[room] = { offset, epoch };
    return out;
  }

  /** True while the WebSocket is open. */
  get connected() {
    return this.ws !== null && this.ws.readyState === 1;
  }

  /** Add a handler: for a server event (its return value or Promise answers a server call)
   * or a lifecycle event ("open", "close", "reconnect", "message": a non-envelope message). */
  on(event, handler) {
    const list = this.handlers.get(event);
    if (list) list.push(handler);
    else this.handlers.set(event, [handler]);
    return this;
  }

  /** Remove a handler added with on(). */
  off(event, handler) {
    const list = this.handlers.get(event) || [];
    const at = list.indexOf(handler);
    if (at >= 0) list.splice(at, 1);
    return this;
  }

  /** Send the event {"event", "data"}; false when not connected (nothing is queued). */
  emit(event, data = null) {
    return this._write({ event, data });
  }

  /** Send the event with an id; resolves with the server's ack data, rejects with a CallError
   * on an error reply, after `timeout` ms, and at once when the connection drops. */
  call(event, data = null, { timeout = 10000 } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new CallError("NotConnected", `not connected: ${event} was not sent`));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CallError("Timeout", `no answer to ${event} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      this._write({ event, data, id });
    });
  }

  /** Send a raw text or binary message, not an envelope; false when not connected. */
  send(raw) {
    if (!this.connected) return false;
    this.ws.send(raw);
    return true;
  }

  /** Close for good: no reconnection; pending calls reject with "Disconnected". */
  close(code = 1000, reason = "") {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    if (ws && ws.readyState <= 1) ws.close(code, reason);
    else if (!ws) this._fire("close", { code, reason, deliberate: true, willReconnect: false });
  }

  // -- internals ------------------------------------------------------------------------------

  _open() {
    this.timer = null;
    if (typeof this.target === "function") this.base = absolute(this.target());
    this.url = this._presenting(this.base);
    const ws = this.protocols ? new this.WebSocket(this.url, this.protocols)
      : new this.WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      const reconnected = this.opened;
      this.opened = true;
      this.attempt = 0;
      this._fire("open", { reconnected });
    };
    ws.onmessage = (message) => this._receive(message.data);
    ws.onerror = () => {};  // a close event follows; it decides what happens next
    ws.onclose = (event) => this._dropped(ws, event.code, event.reason || "");
  }

  /** `url` with the known positions in its `recover` parameter (any other one is kept). */
  _presenting(url) {
    if (!this.recover || this._rooms.size === 0) return url;
    const at = new URL(url);
    at.searchParams.set("recover", JSON.stringify(this.positions));
    return at.href;
  }

  _dropped(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const [id, call] of this.pending) {
      clearTimeout(call.timer);
      call.reject(new CallError("Disconnected", `connection closed (${code}) before call ${id} was answered`));
    }
    this.pending.clear();
    const willReconnect = this.reconnect && !this.closed && !this.noRetry.has(code);
    this._fire("close", { code, reason, deliberate: this.closed, willReconnect });
    if (!willReconnect) return;
    const delay = backoffDelay(this.attempt, this.backoff.min, this.backoff.max, this.jitter);
    this.attempt += 1;
    this._fire("reconnect", { attempt: this.attempt, delay });
    this.timer = setTimeout(() => this._open(), delay);
  }

  _write(envelope) {
    if (!this.connected) return false;
    this.ws.send(JSON.stringify(envelope));
    return true;
  }

  _receive(raw) {
    let envelope = null;
    if (typeof raw === "string") {
      try {
        envelope = JSON.parse(raw);
      } catch {
        envelope = null;
      }
    }
    if (envelope === null || typeof envelope !== "object" || typeof envelope.event !== "string") {
      this._fire("message", raw);
      return;
    }
    if (this.recover && !this._track(envelope)) return;
    const { event, data, id } = envelope;
    if ((event === "ack" || event === "error") && this.pending.has(id)) {
      const call = this.pending.get(id);
      this.pending.delete(id);
      clearTimeout(call.timer);
      if (event === "ack") call.resolve(data);
      else call.reject(new CallError(String(data?.type ?? "Error"), String(data?.message ?? "")));
      return;
    }
    if (id === undefined || id === null) {
      this._fire(event, data);
      return;
    }
    this._answer(event, data, id);
  }

  async _answer(event, data, id) {
    const handler = LIFECYCLE.has(event) ? undefined : (this.handlers.get(event) || [])[0];
    if (!handler) {
      this._write({ event: "error", id, data: { type: "UnknownEvent", message: `unknown event ${JSON.stringify(event).slice(0, 66)}` } });
      return;
    }
    try {
      const result = await handler(data);
      this._write({ event: "ack", id, data: result === undefined ? null : result });
    } catch (error) {
      const type = (error && error.name) || "Error";
      this._write({ event: "error", id, data: { type, message: String((error && error.message) || error) } });
    }
  }

  // -- recovery -------------------------------------------------------------------------------

  /** Follow positions; false for a message not to deliver (a copy, or one past a gap: the
   * recovery that follows replays it in order). */
  _track(envelope) {
    const { event, data } = envelope;
    if (event === MARKER && data !== null && typeof data === "object") {
      this._marker(data);
      return true;
    }
    if (event === GAP && data !== null && typeof data === "object" && this._rooms.has(data.room)) {
      this._resume(`gap notice for ${data.room}`);  // live traffic may have been lost
      return true;
    }
    const { room, offset, epoch } = envelope;
    if (typeof room !== "string" || !Number.isInteger(offset) || typeof epoch !== "string") {
      return true;
    }
    const known = this._rooms.get(room);
    if (known === undefined || known.epoch !== epoch) {
      this._remember(room, offset, epoch);
      return event !== SKIPPED;
    }
    if (offset <= known.offset) {
      this.duplicates += 1;
      return false;
    }
    if (offset > known.offset + 1) {
      this.gaps += 1;
      if (this.reconnect && !this.closed) {
        this._resume(`offset gap in ${room}: ${known.offset} then ${offset}`);
        return false;
      }
    }
    known.offset = offset;
    return event !== SKIPPED;  // a skip moves the position and is not shown
  }

  /** The server's answer to a join of a recoverable room: adopt its position unless it
   * replays (the replayed events move the position), then tell the page. */
  _marker(data) {
    const room = String(data.room);
    const recovered = data.recovered === true;
    const { offset, epoch } = data;
    if (validPosition(offset, epoch) && (!recovered || !this._rooms.has(room))) {
      this._remember(room, offset, epoch);  // no epoch ("unavailable"): keep ours, retry later
    }
    const info = { room, recovered, reason: data.reason ?? null, offset, epoch };
    if (Number.isInteger(data.replayed)) info.replayed = data.replayed;
    this._fire("recovery", info);
  }

  _remember(room, offset, epoch) {
    if (!this._rooms.has(room) && this._rooms.size >= MAX_POSITIONS) {
      this._rooms.delete(this._rooms.keys().next().value);  // the room heard of first
    }
    this._rooms.set(room, { offset, epoch });
  }

  /** Leave this connection now and reconnect, presenting the positions we have. */
  _resume(why) {
    const ws = this.ws;
    if (ws === null || !this.reconnect || this.closed) return;
    ws.onmessage = null;
    ws.onclose = null;
    if (ws.readyState <= 1) ws.close(1000, "recovering");
    this._dropped(ws, 1000, why);
  }

  _fire(event, data) {
    for (const handler of [...(this.handlers.get(event) || [])]) {
      try {
        handler(data);
      } catch (error) {
        setTimeout(() => { throw error; });  // reported, without stopping the other handlers
      }
    }
  }
}

/** Open a connection to `url` (ws://, wss://, or a path on this page's server); a function
 * is called for the URL at each (re)connection (a new token, a new nickname...). */
export function connect(url, options = {}) {
  return new Socket(url, options);
}
