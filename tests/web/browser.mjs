// Debian's headless Chromium through playwright-core (no bundled browser), with the flags
// this machine's closed network needs, and the FAIL protocol the Rust tests read.
import { chromium } from "playwright-core";

export async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  // Prints "FAIL <msg>" for the test and exits non-zero.
  const fail = async (msg) => {
    console.log("FAIL " + msg);
    await browser.close();
    process.exit(1);
  };
  return { browser, fail };
}
