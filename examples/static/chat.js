// The chat page: one WebSocket to /chat/<room>?nick=NAME speaking JSON envelopes
// ({"event", "data", "id"}), reconnecting with exponential backoff and jitter.
// User text is only ever put into the page with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;

const state = {
  ws: null,
  nick: "",
  room: "",
  myId: null,
  attempt: 0,          // failed connection attempts since the last welcome
  retryTimer: null,
  countdown: null,
  lastTs: 0,           // newest message shown: replayed history is not shown twice
  members: new Map(),  // id -> nick
  rooms: [],           // [{name, members}]: active rooms when we joined, this one kept current
  nextId: 1,
  pings: new Map(),    // ack id -> performance.now() at send
};

// -- connection -------------------------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdown);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/chat/${encodeURIComponent(state.room)}` +
    `?nick=${encodeURIComponent(state.nick)}`;
  setStatus("connecting", "connecting…");
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onmessage = (event) => {
    if (ws === state.ws) handle(JSON.parse(event.data));
  };
  ws.onclose = (event) => {
    if (ws !== state.ws) return;  // a socket we replaced on purpose (room switch)
    state.ws = null;
    setComposer(false);
    if (event.code === 1008) {
      setStatus("error", "refused: check the room name");
      return;
    }
    scheduleReconnect();
  };
}

// Exponential backoff with "equal jitter": half the delay is fixed, half random, so a server
// restart is not met by every tab reconnecting in the same millisecond.
function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function scheduleReconnect() {
  const delay = backoffDelay(state.attempt);
  state.attempt += 1;
  const due = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    setStatus("retrying", `reconnecting in ${left} s…`);
  };
  tick();
  state.countdown = setInterval(tick, 250);
  state.retryTimer = setTimeout(connect, delay);
}

function send(event, data, withAck = false) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return null;
  const envelope = { event, data };
  if (withAck) envelope.id = state.nextId++;
  state.ws.send(JSON.stringify(envelope));
  return envelope.id ?? null;
}

// -- server events ----------------------------------------------------------------------------

const handlers = {
  welcome(data) {
    const again = state.myId !== null;
    state.attempt = 0;
    state.myId = data.id;
    state.nick = data.nick;
    $("room-name").textContent = data.room;
    document.title = `#${data.room} · wsflask chat`;
    state.members = new Map(data.members.map((m) => [m.id, m.nick]));
    renderMembers();
    state.rooms = data.rooms;
    renderRooms();
    for (const message of data.history) if (message.ts > state.lastTs) showMessage(message);
    notice(again ? `Reconnected to #${data.room} as ${data.nick}` :
      `You joined #${data.room} as ${data.nick}`);
    setStatus("open", "connected");
    setComposer(true);
  },
  joined(data) {
    state.members.set(data.id, data.nick);
    renderMembers();
    updateRoomCount(data.count);
    notice(`${data.nick} joined`);
  },
  left(data) {
    state.members.delete(data.id);
    renderMembers();
    updateRoomCount(data.count);
    notice(`${data.nick} left`);
  },
  renamed(data) {
    state.members.set(data.id, data.nick);
    renderMembers();
    notice(`${data.old} is now ${data.nick}`);
  },
  said(data) {
    showMessage(data);
  },
  ack(data, id) {
    const sent = state.pings.get(id);
    if (sent !== undefined) {
      state.pings.delete(id);
      $("latency").textContent = `${(performance.now() - sent).toFixed(1)} ms`;
    } else if (data && data.ok === false) {
      notice(data.error, "error");
    }
  },
  error(data) {
    notice(data.message, "error");
  },
};

function handle(envelope) {
  const handler = handlers[envelope.event];
  if (handler) handler(envelope.data, envelope.id);
}

// -- rendering --------------------------------------------------------------------------------

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
}

function setComposer(enabled) {
  $("message").disabled = !enabled;
  $("send").disabled = !enabled;
  if (enabled) $("message").focus();
}

function colorFor(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 62% 45%)`;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function showMessage(message) {
  state.lastTs = Math.max(state.lastTs, message.ts);
  const item = document.createElement("li");
  item.className = message.id === state.myId ? "msg mine" : "msg";
  const head = document.createElement("div");
  head.className = "meta";
  const who = document.createElement("span");
  who.className = "nick";
  who.textContent = message.nick;
  who.style.color = colorFor(message.nick);
  const when = document.createElement("time");
  when.textContent = new Date(message.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  head.append(who, when);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = message.text;
  item.append(head, body);
  $("messages").append(item);
  scrollToEnd();
}

function notice(text, kind = "info") {
  const item = document.createElement("li");
  item.className = `notice ${kind}`;
  item.textContent = text;
  $("messages").append(item);
  scrollToEnd();
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const sorted = [...state.members.entries()].sort((a, b) => a[1].localeCompare(b[1]));
  for (const [id, nick] of sorted) {
    const item = document.createElement("li");
    const dot = document.createElement("i");
    dot.className = "avatar";
    dot.style.background = colorFor(nick);
    dot.textContent = nick.slice(0, 1).toUpperCase();
    const name = document.createElement("span");
    name.textContent = id === state.myId ? `${nick} (you)` : nick;
    item.append(dot, name);
    list.append(item);
  }
  $("member-count").textContent = String(state.members.size);
}

function updateRoomCount(count) {  // the sidebar's count of this room stays current
  const room = state.rooms.find((r) => r.name === state.room);
  if (room) room.members = count;
  else state.rooms.push({ name: state.room, members: count });
  renderRooms();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of state.rooms) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `#${room.name}`;
    link.textContent = `#${room.name}`;
    const count = document.createElement("span");
    count.className = "badge";
    count.textContent = String(room.members);
    item.append(link, count);
    list.append(item);
  }
}

// -- user actions -----------------------------------------------------------------------------

function enter(room) {
  state.room = room || "lobby";
  state.attempt = 0;
  state.lastTs = 0;
  state.myId = null;
  $("messages").replaceChildren();
  if (location.hash !== `#${state.room}`) history.replaceState(null, "", `#${state.room}`);
  $("join-view").hidden = true;
  $("chat-view").hidden = false;
  const old = state.ws;
  state.ws = null;
  if (old) old.close(1000, "switching rooms");
  connect();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.nick = $("nick").value.trim();
  localStorage.setItem("wsflask-nick", state.nick);
  enter($("room").value.trim());
});

$("switch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("switch-room").value.trim();
  if (room && room !== state.room) enter(room);
  $("switch-room").value = "";
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  if (text.startsWith("/nick ")) send("nick", { nick: text.slice(6) }, true);
  else send("say", { text }, true);
  $("message").value = "";
});

window.addEventListener("hashchange", () => {
  const room = decodeURIComponent(location.hash.slice(1));
  if (state.nick && room && room !== state.room) enter(room);
});

setInterval(() => {  // the page's own round trip, shown next to the status
  const id = send("ping", null, true);
  if (id !== null) state.pings.set(id, performance.now());
}, 5000);

$("nick").value = localStorage.getItem("wsflask-nick") || "";
$("room").value = decodeURIComponent(location.hash.slice(1)) || "lobby";
$("nick").focus();
