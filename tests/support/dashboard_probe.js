// A real browser on the dashboard: headless Debian Chromium driven by
// playwright-core (npm), run by tests/e2e_resilience.rs inside the control
// pod. Usage: node dashboard_probe.js URL DIR
//
// It opens URL and, every 200 ms, prints one JSON line of what the page's
// DOM shows: each circuit card's data attributes and each edge row. When
// the file DIR/shoot appears it writes a full-page screenshot to
// DIR/dashboard.png, removes DIR/shoot and prints {"shot": PATH}. It exits
// when DIR/quit appears, or after ten minutes whatever happens.
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, dir] = process.argv.slice(2);
const LIFETIME_MS = 10 * 60 * 1000;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("console", (m) => console.log(JSON.stringify({ console: m.text() })));
  page.on("pageerror", (e) => console.log(JSON.stringify({ pageerror: String(e) })));
  await page.goto(url);
  const started = Date.now();
  for (;;) {
    if (fs.existsSync(path.join(dir, "quit")) || Date.now() - started > LIFETIME_MS) break;
    if (fs.existsSync(path.join(dir, "shoot"))) {
      const shot = path.join(dir, "dashboard.png");
      await page.screenshot({ path: shot, fullPage: true });
      fs.unlinkSync(path.join(dir, "shoot"));
      console.log(JSON.stringify({ shot }));
    }
    const dom = await page.evaluate(() => ({
      status: document.getElementById("status").textContent,
      circuits: [...document.querySelectorAll(".circuit")].map((e) => ({
        service: e.dataset.service,
        rate: Number(e.dataset.rate),
        state: e.dataset.state,
        errorPercentage: Number(e.dataset.errorPercentage),
        requests: Number(e.dataset.requests),
        words: e.querySelector(".state").textContent,
        sparkline: !!e.querySelector(".sparkline"),
      })),
      edges: [...document.querySelectorAll("tr.edge")].map((e) => ({
        caller: e.dataset.caller,
        destination: e.dataset.destination,
        mtls: e.dataset.mtls === "true",
      })),
    }));
    console.log(JSON.stringify({ at: Date.now(), dom }));
    await new Promise((r) => setTimeout(r, 200));
  }
  await browser.close();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(JSON.stringify({ error: String(e && e.stack || e) }));
    process.exit(1);
  },
);
