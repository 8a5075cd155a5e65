// Browser check of a latent atlas, driving the system Chromium with puppeteer-core.
//
//   node tests/browser/check_atlas.mjs SITE_DIR [--screenshots DIR] [--chromium PATH]
//
// Opens SITE_DIR/index.html from file://, clicks a table row (not its link) and checks that the
// latent page of that row opens, with its contexts table and its plotly figures drawn; follows
// the "next" link (hash navigation), sorts a column, searches a token, and fails on any console
// error, page error or failed request. Prints one JSON summary line; exits 1 on any failure.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

function options(argv) {
  const out = { site: null, screenshots: null, chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--screenshots") out.screenshots = argv[++i];
    else if (argv[i] === "--chromium") out.chromium = argv[++i];
    else out.site = argv[i];
  }
  if (!out.site || !fs.existsSync(path.join(out.site, "index.html"))) {
    console.error("usage: node check_atlas.mjs SITE_DIR [--screenshots DIR] [--chromium PATH] (SITE_DIR must hold index.html)");
    process.exit(2);
  }
  return out;
}

const opts = options(process.argv.slice(2));
const problems = [];
const checks = {};
const check = (name, ok, detail) => {
  checks[name] = Boolean(ok);
  if (!ok) problems.push(`${name}: ${detail ?? "failed"}`);
};

const browser = await puppeteer.launch({
  executablePath: opts.chromium,
  headless: true,
  // No GPU here: WebGL (plotly's 3D and scattergl) runs on SwiftShader.
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,1100"],
  defaultViewport: { width: 1400, height: 1100 },
});
try {
  const page = await browser.newPage();
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console error: ${msg.text()}`); });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`));

  const index = pathToFileURL(path.resolve(opts.site, "index.html")).href;
  await page.goto(index, { waitUntil: "load" });
  await page.waitForSelector("#latents tbody tr.row", { timeout: 30000 });
  const total = await page.$$eval("#latents tbody tr.row", (rows) => rows.length);
  check("index lists rows", total > 0, "no rows in the table");
  check("map drawn", await page.$("#map .plot-container"), "no plotly map");
  if (opts.screenshots) await page.screenshot({ path: path.join(opts.screenshots, "index.png") });

  // Sorting: click "eff. rank", the first rows come in descending order.
  await page.evaluate(() => [...document.querySelectorAll("#latents th")].find((th) => th.textContent.startsWith("eff. rank")).click());
  const ranks = await page.$$eval("#latents tbody tr.row", (rows) => rows.slice(0, 5).map((r) => Number(r.children[3].textContent)));
  check("sort by effective rank", ranks.every((v, i) => i === 0 || ranks[i - 1] >= v), `not descending: ${ranks}`);

  // Click the third row (a cell that is not the link): the latent page of that row opens.
  const rowIndex = Math.min(2, total - 1);
  const key = await page.$$eval("#latents tbody tr.row", (rows, i) => rows[i].dataset.item, rowIndex);
  const rows = await page.$$("#latents tbody tr.row");
  const cell = await rows[rowIndex].$("td:nth-child(2)");
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), cell.click()]);
  check("row opens its latent", page.url().endsWith(`latent.html#${key}`), `url ${page.url()} for row ${key}`);
  const kind = key[0];
  const id = Number(key.slice(1));
  const title = kind === "C" ? `Composite ${id} (row ${id} of W_down)` : `Latent ${id}`;
  await page.waitForFunction((t) => document.getElementById("title").textContent === t, { timeout: 30000 }, title);
  check("latent title", true);
  await page.waitForSelector("#top-contexts tbody tr mark", { timeout: 30000 });
  const contexts = await page.$$eval("#top-contexts tbody tr", (trs) => trs.length);
  check("top contexts visible", contexts > 0, "no context rows");
  check("token highlighted", await page.$eval("#top-contexts tbody tr mark", (m) => m.textContent.length > 0), "empty mark");
  await page.waitForSelector("#manifold .plot-container", { timeout: 30000 });
  await page.waitForSelector("#spectrum .plot-container", { timeout: 30000 });
  check("manifold and spectrum drawn", true);
  if (opts.screenshots) await page.screenshot({ path: path.join(opts.screenshots, "latent.png"), fullPage: true });

  // The "next" link changes only the hash: the page loads the next item's data file.
  const next = await page.$("#next");
  if (next) {
    await next.click();
    const nextTitle = kind === "C" ? `Composite ${id + 1} (row ${id + 1} of W_down)` : `Latent ${id + 1}`;
    await page.waitForFunction((t) => document.getElementById("title").textContent === t, { timeout: 30000 }, nextTitle);
    check("next link", page.url().endsWith(`#${kind}${id + 1}`), page.url());
  }

  // Search by token: the first row's first top token finds that row.
  await page.goto(index, { waitUntil: "load" });
  await page.waitForSelector("#latents tbody tr.row");
  const [firstKey, token] = await page.$eval("#latents tbody tr.row", (r) => [r.dataset.item, r.children[8].querySelector(".tok").textContent]);
  await page.type("#search", token);
  await page.waitForFunction((k) => [...document.querySelectorAll("#latents tbody tr.row")].some((r) => r.dataset.item === k), { timeout: 10000 }, firstKey);
  const found = await page.$$eval("#latents tbody tr.row", (trs) => trs.length);
  check("search by token", found >= 1 && found <= total, `${found} rows`);
} catch (err) {
  problems.push(`check aborted: ${err.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: problems.length === 0, checks, problems }));
process.exit(problems.length ? 1 : 0);
