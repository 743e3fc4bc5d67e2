// Browser check of the JS client's recovery, driven by tests/test_browser_recovery.py:
//   node recovery.mjs BASE_URL USER_DATA_DIR CASE
// Debian's /usr/bin/chromium, headless, through playwright-core (no browser download); the
// server is tests/browser/recovery_app.py. CASE is one of:
//   whole: the server emits 1..300 to a recoverable room 5 ms apart and cuts the page's TCP
//          connection (no Close frame) right after 50, 150 and 250, the page reconnecting
//          after 200 ms; then 301..320 with 305 kept from the page (an offset gap in live
//          traffic), then 321 as the last one.
//   tiny:  the room keeps 3 publications; one cut after 30 with a 400 ms reconnection delay
//          misses far more than 3.
// Prints one JSON line, {"step": "done", problems, log, ...}: the page's list (#log, read from
// the DOM) and what the socket told the page. Exits 1 on any failure.
import { chromium } from "playwright-core";

const [base, userDataDir, which] = process.argv.slice(2);
const CASES = { whole, tiny };
const STEP_MS = 30000;  // every wait is bounded
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

function say(step, extra = {}) {
  process.stdout.write(`${JSON.stringify({ step, ...extra })}\n`);
}

async function open(context, problems, name, query) {
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`${name}: ${error.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`${name} console: ${msg.text()}`);
  });
  await page.goto(`${base}/?${query}`, { timeout: STEP_MS });
  // joined (the first "recovery" answer came) and the remote is up
  await page.waitForFunction(() => window.seen.recoveries.length === 1 && window.control.connected,
    null, { timeout: STEP_MS });
  return page;
}

const control = (page, event, data) =>
  page.evaluate(([e, d]) => window.control.call(e, d, { timeout: 10000 }), [event, data]);

const last = (page, n) => page.waitForFunction(
  (want) => document.querySelector("#log li:last-child")?.textContent === String(want), n,
  { timeout: STEP_MS });

async function report(page) {
  const log = await page.$$eval("#log li", (items) => items.map((li) => Number(li.textContent)));
  const shown = await page.$$eval("#recoveries li", (items) => items.map((li) => li.textContent));
  const state = await page.evaluate(() => ({
    ...window.seen, duplicates: window.sock.duplicates, gaps: window.sock.gaps,
    positions: window.sock.positions,
  }));
  return { log, shownRecoveries: shown, ...state };
}

async function whole(context, problems) {
  const room = "whole:a";
  const page = await open(context, problems, "whole", `room=${room}&min=200&jitter=0`);
  await control(page, "publish",
    { room, first: 1, count: 300, interval: 0.005, cut: [50, 150, 250] });
  await page.waitForFunction(() => window.seen.recoveries.length >= 4, null,
    { timeout: STEP_MS });
  await last(page, 300);
  await control(page, "publish", { room, first: 301, count: 20, interval: 0.005, skip: [305] });
  await last(page, 320);
  await control(page, "publish", { room, first: 321, count: 1, interval: 0 });
  await last(page, 321);
  return { kicked: await control(page, "cuts", { room }), ...(await report(page)) };
}

async function tiny(context, problems) {
  const room = "tiny:b";
  const page = await open(context, problems, "tiny", `room=${room}&min=400&jitter=0`);
  await control(page, "publish", { room, first: 1, count: 200, interval: 0.005, cut: [30] });
  await page.waitForFunction(() => window.seen.recoveries.length >= 2, null, { timeout: STEP_MS });
  await last(page, 200);
  return { kicked: await control(page, "cuts", { room }), ...(await report(page)) };
}

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    timeout: STEP_MS,
  });
  const problems = [];
  try {
    const result = await CASES[which](context, problems);
    say("done", { ...result, problems });
  } finally {
    await context.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
