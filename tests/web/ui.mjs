// Drives Slipway's status page in Debian's headless Chromium (playwright-core, no bundled
// browser). Protocol with tests/web_ui.rs on stdin/stdout:
//   prints "LOADED" once the table shows the node in its first state,
//   waits for a line on stdin (the test moved the node on), then checks without a reload:
//   the row changes state, then gets marked stuck (Slipway runs with a short --stuck-after
//   and nothing else happens: no event triggers it), the timeline opens, the registry's
//   images are listed; takes the screenshot; then the reinstall action is refused without
//   the admin token and works with it (the row goes back to `planned`). Prints "LIVE".
// Usage: SLIPWAY_TOKEN=... node ui.mjs URL NODE FIRST_STATE NEXT_STATE SCREENSHOT CACHED MISSING
import { launch } from "./browser.mjs";
import readline from "node:readline";

const [url, node, first, next, shot, cached, missing] = process.argv.slice(2);
const { browser, fail } = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const row = page.locator(`tr[data-node="${node}"]`);
  const state = row.locator("td.state");
  await state.waitFor({ timeout: 15000 });
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s, [node, first], { timeout: 15000 })
    .catch(async () => fail(`row ${node} never showed ${first}: ${await state.textContent()}`));
  await page.locator("#live.on").waitFor({ timeout: 15000 });
  if (await row.evaluate((tr) => tr.classList.contains("stuck"))) await fail("stuck before any step");
  // Marks this document: a reload would lose it.
  await page.evaluate(() => { window.__slipwayNoReload = true; });
  console.log("LOADED");
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s, [node, next], { timeout: 15000 })
    .catch(async () => fail(`row ${node} never showed ${next}: ${await state.textContent()}`));
  // No further event comes: only the page's own re-check can mark the node stuck.
  await page.locator(`tr[data-node="${node}"].stuck`).waitFor({ timeout: 60000 })
    .catch(async () => fail(`row ${node} never marked stuck`));
  if (!(await page.evaluate(() => window.__slipwayNoReload === true))) await fail("the page reloaded");
  // The node page (timeline) opens on click.
  await row.click();
  await page.locator("#timeline li").first().waitFor({ timeout: 10000 });
  const summary = await page.locator("#summary").textContent();
  if (!summary.includes("API endpoint")) await fail("no summary: " + summary);
  // The registry's contents: each pinned image, mirrored or not.
  await page.locator(`#images li.cached[data-image="${cached}"]`).waitFor({ timeout: 10000 })
    .catch(async () => fail("images: " + await page.locator("#images").textContent()));
  await page.locator(`#images li.missing[data-image="${missing}"]`).waitFor({ timeout: 10000 })
    .catch(async () => fail("images: " + await page.locator("#images").textContent()));
  await page.screenshot({ path: shot, fullPage: true });

  // Actions need the admin token: refused without it, done with it.
  await row.locator("button", { hasText: "Reinstall" }).click();
  await page.waitForFunction(() => /admin token required/.test(document.querySelector("#action-result").textContent),
    null, { timeout: 10000 })
    .catch(async () => fail("no refusal: " + await page.locator("#action-result").textContent()));
  await page.locator("#token").fill(process.env.SLIPWAY_TOKEN || "");
  await page.locator("#token").dispatchEvent("change");
  await row.locator("button", { hasText: "Reinstall" }).click();
  await page.waitForFunction(([n, s]) =>
    document.querySelector(`tr[data-node="${n}"] td.state`)?.textContent === s &&
    !document.querySelector(`tr[data-node="${n}"]`).classList.contains("stuck") &&
    /reinstall done/.test(document.querySelector("#action-result").textContent), [node, first], { timeout: 15000 })
    .catch(async () => fail(`reinstall: ${await state.textContent()} / ${await page.locator("#action-result").textContent()}`));
  if (errors.length) await fail("page errors: " + errors.join("; "));
  console.log("LIVE");
  await browser.close();
  process.exit(0);
} catch (e) {
  await fail(String(e));
}
