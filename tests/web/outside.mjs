// The status page opened from outside the cluster's networks (run by tests/web_ui.rs): the
// shell loads but its data is refused until the admin token is entered; then the table
// fills and the live stream connects (EventSource with the token). Protocol: prints
// "READY" once live, waits for a line on stdin (the test moved NODE on), prints "LIVE"
// when the row shows NEXT_STATE without a reload.
// Usage: SLIPWAY_TOKEN=... node outside.mjs URL NODE NEXT_STATE
import { launch } from "./browser.mjs";
import readline from "node:readline";

const [url, node, next] = process.argv.slice(2);
const { browser, fail } = await launch();
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => /enter the admin token/.test(document.querySelector("#action-result").textContent),
    null, { timeout: 15000 })
    .catch(async () => fail("no hint to enter the token: " + await page.locator("#action-result").textContent()));
  if (await page.locator("#nodes tbody tr").count() !== 0) await fail("data shown without the token");
  await page.locator("#token").fill(process.env.SLIPWAY_TOKEN || "");
  await page.locator("#token").dispatchEvent("change");
  await page.locator(`tr[data-node="${node}"]`).waitFor({ timeout: 15000 });
  await page.locator("#live.on").waitFor({ timeout: 15000 })
    .catch(async () => fail("the live stream did not connect with the token"));
  await page.evaluate(() => { window.__slipwayNoReload = true; });
  console.log("READY");
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s, [node, next], { timeout: 15000 })
    .catch(async () => fail(`row ${node} never showed ${next}`));
  if (!(await page.evaluate(() => window.__slipwayNoReload === true))) await fail("the page reloaded");
  console.log("LIVE");
  await browser.close();
  process.exit(0);
} catch (e) {
  await fail(String(e));
}
