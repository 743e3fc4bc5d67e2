// The dashboard: snapshots from /dashboard/feed (one per second, pushed by one server
// greenlet for every viewer) drawn as line charts on <canvas>, by hand, no libraries; the
// connection is the JavaScript client the app serves at /wsflask.js (an ES module).
import { connect } from "/wsflask.js";

const $ = (id) => document.getElementById(id);
const HISTORY = 120;  // points kept per chart: two minutes at one snapshot per second

// -- a small line chart ---------------------------------------------------------------------

class LineChart {
  // series: [{key, label, color}]; values are pushed as {key: number|null}
  constructor(canvas, series, { unit = "", integer = false } = {}) {
    this.canvas = canvas;
    this.series = series;
    this.unit = unit;
    this.integer = integer;
    this.points = [];
    new ResizeObserver(() => this.draw()).observe(canvas);
    const legend = document.querySelector(`.legend[data-for="${canvas.id}"]`);
    for (const s of series) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      item.append(swatch, document.createTextNode(s.label));
      legend.append(item);
    }
  }

  push(values) {
    this.points.push(values);
    if (this.points.length > HISTORY) this.points.shift();
    this.canvas.dataset.points = String(this.points.length);
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.body);
    const grid = style.getPropertyValue("--grid").trim() || "#e5e7eb";
    const text = style.getPropertyValue("--muted").trim() || "#6b7280";
    const pad = { left: 44, right: 10, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const top = niceCeiling(this.maxValue(), this.integer);
    const y = (v) => pad.top + plotH - (v / top) * plotH;
    const x = (i) => pad.left + (plotW * (i + HISTORY - this.points.length)) / (HISTORY - 1);

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let step = 0; step <= 4; step += 1) {  // horizontal grid lines and their labels
      const value = (top * step) / 4;
      const py = Math.round(y(value)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, py);
      ctx.lineTo(width - pad.right, py);
      ctx.stroke();
      ctx.fillStyle = text;
      ctx.fillText(formatTick(value, this.unit), pad.left - 6, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    for (const [label, slot] of [["-2 min", 0], ["-1 min", 60], ["now", HISTORY - 1]]) {
      ctx.fillText(label, Math.min(pad.left + (plotW * slot) / (HISTORY - 1), width - 18),
        height - 5);
    }
    for (const s of this.series) this.drawSeries(ctx, s, x, y, pad.top + plotH);
  }

  drawSeries(ctx, series, x, y, bottom) {
    const pts = [];
    this.points.forEach((p, i) => {
      if (typeof p[series.key] === "number") pts.push([x(i), y(p[series.key])]);
    });
    if (!pts.length) return;
    const fill = ctx.createLinearGradient(0, y(this.maxValue() || 1), 0, bottom);
    fill.addColorStop(0, withAlpha(series.color, 0.28));
    fill.addColorStop(1, withAlpha(series.color, 0));
    ctx.beginPath();
    ctx.moveTo(pts[0][0], bottom);
    for (const [px, py] of pts) ctx.lineTo(px, py);
    ctx.lineTo(pts[pts.length - 1][0], bottom);
    ctx.closePath();
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.beginPath();
    pts.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
    ctx.strokeStyle = series.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
    const [lx, ly] = pts[pts.length - 1];  // the latest value as a dot
    ctx.beginPath();
    ctx.arc(lx, ly, 3.5, 0, Math.PI * 2);
    ctx.fillStyle = series.color;
    ctx.fill();
  }

  maxValue() {
    let max = 0;
    for (const p of this.points) {
      for (const s of this.series) if (typeof p[s.key] === "number") max = Math.max(max, p[s.key]);
    }
    return max;
  }
}

// The top of the y axis: four grid steps of 1, 2, 2.5 or 5 x 10^n (whole steps for counts).
function niceCeiling(value, integer) {
  const step = Math.max(value, integer ? 4 : 1) / 4;
  const magnitude = 10 ** Math.floor(Math.log10(step));
  for (const nice of [1, 2, 2.5, 5, 10]) {
    const candidate = nice * magnitude;
    if (candidate >= step && (!integer || Number.isInteger(candidate))) return candidate * 4;
  }
  return 40 * magnitude;
}

function formatTick(value, unit) {
  const text = String(Number(value.toFixed(value >= 10 ? 1 : 2)));
  return unit ? `${text}${unit}` : text;
}

function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

// -- the feed --------------------------------------------------------------------------------

const charts = {
  connections: new LineChart($("chart-connections"),
    [{ key: "connections", label: "open", color: "#4f46e5" }], { integer: true }),
  rate: new LineChart($("chart-rate"), [
    { key: "in_per_s", label: "received", color: "#0ea5e9" },
    { key: "out_per_s", label: "sent", color: "#f59e0b" },
  ]),
  rtt: new LineChart($("chart-rtt"), [
    { key: "rtt_ms", label: "heartbeat avg", color: "#10b981" },
    { key: "page_ms", label: "this page", color: "#ec4899" },
  ]),
};

const feed = { sock: null, pageRtt: null };

function connectFeed() {  // the JavaScript client reconnects with backoff and jitter
  const sock = connect("/dashboard/feed", { backoff: { min: 500, max: 10000 } });
  feed.sock = sock;
  setStatus("connecting", "connecting…");
  sock.on("open", () => setStatus("open", "live"));
  sock.on("reconnect", ({ delay }) =>
    setStatus("retrying", `reconnecting in ${Math.ceil(delay / 1000)} s…`));
  sock.on("snapshot", show);
}

async function timePage() {  // this page's own round trip: one call, once per snapshot
  const started = performance.now();
  try {
    await feed.sock.call("ping", null, { timeout: 5000 });
    feed.pageRtt = performance.now() - started;
  } catch {
    feed.pageRtt = null;  // disconnected or timed out: a gap in the chart
  }
}

function show(snapshot) {
  charts.connections.push(snapshot);
  charts.rate.push(snapshot);
  charts.rtt.push({ rtt_ms: snapshot.rtt_ms, page_ms: feed.pageRtt });
  $("stat-connections").textContent = snapshot.connections;
  $("stat-rate").textContent = (snapshot.in_per_s + snapshot.out_per_s).toFixed(1);
  $("stat-rtt").textContent = snapshot.rtt_ms === null ? "–" : `${snapshot.rtt_ms.toFixed(2)} ms`;
  $("stat-total").textContent = snapshot.connections_total;
  $("stat-uptime").textContent = formatUptime(snapshot.uptime_s);
  renderRooms(snapshot.rooms);
  timePage();
}

function renderRooms(rooms) {
  const body = $("rooms-body");
  body.replaceChildren();
  if (!rooms.length) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 2;
    cell.className = "muted";
    cell.textContent = "no one is chatting yet";
    return;
  }
  for (const room of rooms) {
    const row = body.insertRow();
    const name = row.insertCell();
    const link = document.createElement("a");
    link.href = `/#${room.name}`;
    link.textContent = `#${room.name}`;
    name.append(link);
    const count = row.insertCell();
    count.className = "num";
    count.textContent = room.members;
  }
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
}

connectFeed();
