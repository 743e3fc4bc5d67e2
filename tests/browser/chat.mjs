// Browser check of examples/chat.py, driven by tests/test_browser.py:
//   node chat.mjs BASE_URL SCREENSHOT_DIR USER_DATA_DIR
// Debian's /usr/bin/chromium, headless, through playwright-core (no browser download).
// Two pages join the same room, one sends, the other must show it; a call with an ack
// (/nick) answers; on the line {"step": "restart"} the test restarts the server on the same
// port and both pages must reconnect by themselves and chat again; the dashboard must draw
// its charts. Prints one JSON line per step, the last one with what it saw; exits 1 on any
// failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, shots, userDataDir] = process.argv.slice(2);
const STEP_MS = 20000;  // every wait is bounded
const ROOM = "e2e";

function say(step, extra = {}) {
  process.stdout.write(`${JSON.stringify({ step, ...extra })}\n`);
}

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function enterRoom(page, nick) {
  await page.goto(`${base}/#${ROOM}`, { timeout: STEP_MS });
  await page.fill("#nick", nick);
  await page.fill("#room", ROOM);
  await page.click("#join");
  await page.waitForSelector('#status[data-state="open"]', { timeout: STEP_MS });
}

// Pixels of the canvas whose colour is close to `hex` (the series' stroke colour).
async function colouredPixels(page, selector, hex) {
  return page.$eval(selector, (canvas, colour) => {
    const n = parseInt(colour.slice(1), 16);
    const want = [n >> 16, (n >> 8) & 255, n & 255];
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
      const close = Math.abs(data[i] - want[0]) + Math.abs(data[i + 1] - want[1]) +
        Math.abs(data[i + 2] - want[2]) < 60;
      if (close && data[i + 3] > 200) count += 1;
    }
    return count;
  }, hex);
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
    timeout: STEP_MS,
  });
  const problems = [];
  const refusedWhileDown = [];
  let restarting = false;
  const result = { problems, refusedWhileDown };
  try {
    const [alice, bob, board] = [await context.newPage(), await context.newPage(),
      await context.newPage()];
    for (const [name, page] of [["alice", alice], ["bob", bob], ["dashboard", board]]) {
      page.on("pageerror", (error) => problems.push(`${name}: ${error.message}`));
      page.on("console", (msg) => {
        if (msg.type() !== "error") return;
        // while the server is down, chromium logs each refused reconnection attempt
        if (restarting && /WebSocket connection to .* failed: .*ERR_CONNECTION_REFUSED/
          .test(msg.text())) refusedWhileDown.push(name);
        else problems.push(`${name} console: ${msg.text()}`);
      });
    }

    // The server's answer to chromium's permessage-deflate offer (RFC 7692), via CDP.
    const cdp = await context.newCDPSession(alice);
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketHandshakeResponseReceived", ({ response }) => {
      for (const [name, value] of Object.entries(response.headers || {})) {
        if (name.toLowerCase() === "sec-websocket-extensions") result.extensions = value;
      }
    });
    await enterRoom(alice, "alice");
    await enterRoom(bob, "bob");
    await alice.waitForSelector('.notice:text("bob joined")', { timeout: STEP_MS });
    await bob.fill("#message", "hello from bob");
    await bob.press("#message", "Enter");
    const shown = await alice.waitForSelector('.msg .text:text("hello from bob")',
      { timeout: STEP_MS });
    result.received = await shown.textContent();
    result.receivedNick = await alice.$eval(".msg:last-child .nick", (el) => el.textContent);
    const own = await bob.waitForSelector('.msg.mine .text:text("hello from bob")',
      { timeout: STEP_MS });
    result.bobSeesOwn = await own.textContent();
    result.aliceMembers = await alice.$$eval("#members li", (items) =>
      items.map((item) => item.textContent));
    await alice.fill("#message", "hi bob, welcome to #e2e!");
    await alice.press("#message", "Enter");
    await bob.waitForSelector('.msg .text:text("hi bob")', { timeout: STEP_MS });
    // a call with an ack: the page shows the server's answer to "nick"
    await bob.fill("#message", "/nick robert");
    await bob.press("#message", "Enter");
    await bob.waitForSelector('.notice:text("You are now robert")', { timeout: STEP_MS });
    await alice.waitForSelector('.notice:text("bob is now robert")', { timeout: STEP_MS });
    await alice.waitForFunction(() => /ms$/.test(document.getElementById("latency").textContent),
      null, { timeout: STEP_MS });  // the ping call's round trip
    result.latency = await alice.textContent("#latency");
    await alice.screenshot({ path: join(shots, "chat-alice.png") });
    await bob.screenshot({ path: join(shots, "chat-bob.png") });

    // the server restarts: both pages notice, count down, reconnect and chat again
    restarting = true;
    say("restart");
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status:not([data-state="open"])', { timeout: STEP_MS });
    }
    await bob.waitForSelector('#status[data-state="retrying"]', { timeout: STEP_MS });
    await bob.screenshot({ path: join(shots, "chat-retrying.png") });
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status[data-state="open"]', { timeout: 60000 });
      await page.waitForSelector('.notice:text("Reconnected to #e2e")', { timeout: STEP_MS });
    }
    restarting = false;
    await alice.fill("#message", "still here after the restart");
    await alice.press("#message", "Enter");
    const back = await bob.waitForSelector('.msg .text:text("still here after the restart")',
      { timeout: STEP_MS });
    result.afterRestart = await back.textContent();
    await alice.waitForFunction(() => document.querySelectorAll("#members li").length === 2,
      null, { timeout: STEP_MS });
    result.aliceMembersAfterRestart = await alice.$$eval("#members li", (items) =>
      items.map((item) => item.textContent));
    await bob.screenshot({ path: join(shots, "chat-reconnected.png") });

    await board.goto(`${base}/dashboard`, { timeout: STEP_MS });
    await board.waitForFunction(() => {
      const canvas = document.getElementById("chart-connections");
      return Number(canvas.dataset.points || 0) >= 3;
    }, null, { timeout: STEP_MS });
    result.points = await board.$eval("#chart-connections", (c) => Number(c.dataset.points));
    result.connectionPixels = await colouredPixels(board, "#chart-connections", "#4f46e5");
    result.ratePixels = await colouredPixels(board, "#chart-rate", "#f59e0b");
    result.statConnections = await board.textContent("#stat-connections");
    result.rooms = await board.$$eval("#rooms-body tr", (rows) =>
      rows.map((row) => row.textContent.trim()));
    await board.screenshot({ path: join(shots, "dashboard.png"), fullPage: true });

    await alice.setViewportSize({ width: 390, height: 760 });  // a phone
    await alice.screenshot({ path: join(shots, "chat-mobile.png") });
    const joinPage = await context.newPage();
    await joinPage.goto(`${base}/`, { timeout: STEP_MS });
    await joinPage.screenshot({ path: join(shots, "join.png") });
  } finally {
    await context.close();
  }
  say("done", result);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
