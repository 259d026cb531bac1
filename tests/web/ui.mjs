// Drives Slipway's status page in Debian's headless Chromium (playwright-core, no bundled
// browser). Protocol with tests/web_ui.rs on stdin/stdout:
//   prints "LOADED" once the table shows the node in its first state,
//   waits for a line on stdin (the test moved the node on), then checks the row changed
//   without a reload and prints "LIVE", takes a screenshot and exits 0.
// Usage: node ui.mjs URL NODE FIRST_STATE NEXT_STATE SCREENSHOT
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, node, first, next, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => {
  console.log("FAIL " + msg);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const state = page.locator(`tr[data-node="${node}"] td.state`);
  await state.waitFor({ timeout: 15000 });
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s, [node, first], { timeout: 15000 });
  await page.locator("#live.on").waitFor({ timeout: 15000 });
  // Marks this document: a reload would lose it.
  await page.evaluate(() => { window.__slipwayNoReload = true; });
  console.log("LOADED");
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s, [node, next], { timeout: 15000 })
    .catch(async () => fail(`row ${node} never showed ${next}: ${await state.textContent()}`));
  if (!(await page.evaluate(() => window.__slipwayNoReload === true))) await fail("the page reloaded");
  // The node page (timeline) opens on click.
  await page.locator(`tr[data-node="${node}"]`).click();
  await page.locator("#timeline li").first().waitFor({ timeout: 10000 });
  const summary = await page.locator("#summary").textContent();
  if (!summary.includes("API endpoint")) await fail("no summary: " + summary);
  if (errors.length) await fail("page errors: " + errors.join("; "));
  await page.screenshot({ path: shot, fullPage: true });
  console.log("LIVE");
  await browser.close();
  process.exit(0);
} catch (e) {
  await fail(String(e));
}
