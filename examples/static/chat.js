// The chat page, on the JavaScript client every wsflask app serves at /wsflask.js: one
// connection to /chat/<room>?nick=NAME; the client reconnects with capped, jittered backoff
// and this page shows the countdown. Calls ("say", "nick", "ping", "count", "members") get
// their answer as a Promise. User text only ever reaches the page through textContent.
import { connect } from "/wsflask.js";

const $ = (id) => document.getElementById(id);

const state = {
  sock: null,
  nick: "",
  room: "",
  myId: null,
  countdown: null,
  lastTs: 0,           // newest message shown: replayed history is not shown twice
  members: new Map(),  // id -> nick (null: a member on another node), a bounded page
  count: 0,            // members in the room, cluster-wide
  rooms: [],           // [{name, members}]: active rooms when we joined, this one kept current
};

// -- connection -------------------------------------------------------------------------------

function open() {
  // a function: each reconnection uses the nickname the page has then (after /nick too)
  const url = () =>
    `/chat/${encodeURIComponent(state.room)}?nick=${encodeURIComponent(state.nick)}`;
  setStatus("connecting", "connecting…");
  const sock = connect(url, { backoff: { min: 500, max: 10000 } });
  state.sock = sock;
  sock.on("close", (info) => {
    clearInterval(state.countdown);
    setComposer(false);
    if (info.code === 1008) setStatus("error", "refused: check the room name");
    else if (!info.willReconnect && !info.deliberate) setStatus("error", `closed (${info.code})`);
  });
  sock.on("reconnect", ({ delay }) => {
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setStatus("retrying", `reconnecting in ${left} s…`);
    };
    tick();
    state.countdown = setInterval(tick, 250);
  });
  sock.on("open", () => {
    clearInterval(state.countdown);
    setStatus("connecting", "joining…");
  });
  for (const [event, handler] of Object.entries(handlers)) sock.on(event, handler);
}

function call(event, data) {  // a call whose failure is shown, not thrown
  return state.sock.call(event, data, { timeout: 10000 }).catch((error) => {
    if (error.type !== "NotConnected" && error.type !== "Disconnected") {
      notice(`${event} failed: ${error.message}`, "error");
    }
    return null;
  });
}

async function measure() {  // round trip of one call, and the room's exact count
  if (!state.sock || !state.sock.connected) return;
  const started = performance.now();
  if ((await call("ping", started)) === null) return;  // the ack echoes the data
  $("latency").textContent = `${(performance.now() - started).toFixed(1)} ms`;
  const reply = await call("count", null);
  if (reply) setCount(reply.count);
}

// -- server events ----------------------------------------------------------------------------

const handlers = {
  welcome(data) {
    const again = state.myId !== null;
    state.myId = data.id;
    state.nick = data.nick;
    $("room-name").textContent = data.room;
    document.title = `#${data.room} · wsflask chat`;
    state.members = new Map(data.members.map((m) => [m.id, m.nick]));
    state.rooms = data.rooms;
    renderRooms();
    setCount(data.count);
    for (const message of data.history) if (message.ts > state.lastTs) showMessage(message);
    notice(again ? `Reconnected to #${data.room} as ${data.nick}` :
      `You joined #${data.room} as ${data.nick}`);
    setStatus("open", "connected");
    setComposer(true);
    measure();
  },
  joined(data) {
    state.members.set(data.id, data.nick);
    setCount(data.count);
    notice(`${data.nick} joined`);
  },
  left(data) {
    state.members.delete(data.id);
    setCount(data.count);
    notice(`${data.nick} left`);
  },
  count(data) {  // a big room: the count changed a lot, no names
    setCount(data.count);
  },
  renamed(data) {
    if (state.members.has(data.id)) state.members.set(data.id, data.nick);
    renderMembers();
    if (data.id !== state.myId) notice(`${data.old} is now ${data.nick}`);  // ours: the ack
  },
  said(data) {
    showMessage(data);
  },
  error(data) {
    notice(data.message, "error");
  },
};

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

function renderMembers() {  // the members we know (a bounded page), "+ N more" for the rest
  const list = $("members");
  list.replaceChildren();
  const label = ([id, nick]) => nick ?? `guest ${id.slice(-6)}`;
  const sorted = [...state.members.entries()].sort((a, b) => label(a).localeCompare(label(b)));
  for (const entry of sorted) {
    const nick = label(entry);
    const item = document.createElement("li");
    const dot = document.createElement("i");
    dot.className = "avatar";
    dot.style.background = colorFor(nick);
    dot.textContent = nick.slice(0, 1).toUpperCase();
    const name = document.createElement("span");
    name.textContent = entry[0] === state.myId ? `${nick} (you)` : nick;
    item.append(dot, name);
    list.append(item);
  }
  const more = state.count - state.members.size;
  $("more-members").hidden = more <= 0;
  $("more-members").textContent = `Show more (${more})`;
  $("member-count").textContent = String(state.count);
}

function setCount(count) {  // the room's count (cluster-wide) in the header and the sidebar
  state.count = Math.max(count, state.members.size);
  renderMembers();
  const room = state.rooms.find((r) => r.name === state.room);
  if (room) room.members = state.count;
  else state.rooms.push({ name: state.room, members: state.count });
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
  state.lastTs = 0;
  state.myId = null;
  state.members = new Map();
  state.count = 0;
  $("messages").replaceChildren();
  if (location.hash !== `#${state.room}`) history.replaceState(null, "", `#${state.room}`);
  $("join-view").hidden = true;
  $("chat-view").hidden = false;
  const old = state.sock;
  if (old) old.close(1000, "switching rooms");
  clearInterval(state.countdown);
  open();
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

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  $("message").value = "";
  if (text.startsWith("/nick ")) {
    const reply = await call("nick", { nick: text.slice(6) });
    if (reply && reply.ok) {
      state.nick = reply.nick;
      localStorage.setItem("wsflask-nick", reply.nick);
      notice(`You are now ${reply.nick}`);
    }
    return;
  }
  const reply = await call("say", { text });
  if (reply && reply.ok === false) notice(reply.error, "error");
});

$("more-members").addEventListener("click", async () => {
  const reply = await call("members", { offset: state.members.size });
  if (!reply) return;
  for (const member of reply.members) state.members.set(member.id, member.nick);
  setCount(reply.count);
});

window.addEventListener("hashchange", () => {
  const room = decodeURIComponent(location.hash.slice(1));
  if (state.nick && room && room !== state.room) enter(room);
});

setInterval(measure, 5000);

$("nick").value = localStorage.getItem("wsflask-nick") || "";
$("room").value = decodeURIComponent(location.hash.slice(1)) || "lobby";
$("nick").focus();
