// Browser check of a sweep's pareto.html, driving the system Chromium with puppeteer-core.
//
//   node tests/browser/check_pareto.mjs SWEEP_DIR [--screenshot FILE.png] [--chromium PATH]
//
// (--screenshot also writes FILE-hover.png, with a tooltip showing.)
//
// Opens SWEEP_DIR/pareto.html from file:// and checks it against SWEEP_DIR/sweep.json: one
// legend entry per curve (variant; unlifted members apart), one drawn point per finished member
// with numbers, and hovering each point (a real mouse move) shows a tooltip naming that
// point's member and its numbers; fails on any console error, page error or failed request.
// Prints one JSON summary line; exits 1 on any failure.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

function options(argv) {
  const out = { dir: null, screenshot: null, chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--screenshot") out.screenshot = argv[++i];
    else if (argv[i] === "--chromium") out.chromium = argv[++i];
    else out.dir = argv[i];
  }
  const needed = ["pareto.html", "sweep.json"];
  if (!out.dir || !needed.every((f) => fs.existsSync(path.join(out.dir, f)))) {
    console.error("usage: node check_pareto.mjs SWEEP_DIR [--screenshot FILE] [--chromium PATH] (SWEEP_DIR holds pareto.html and sweep.json)");
    process.exit(2);
  }
  return out;
}

const opts = options(process.argv.slice(2));
const table = JSON.parse(fs.readFileSync(path.join(opts.dir, "sweep.json"), "utf8"));
// What the plot must show: finished members with both numbers, by variant.
const plotted = table.members.filter(
  (m) => m.status === "done" && typeof m.error === "number" && typeof m.hoyer_density === "number",
);
// One curve per variant, unlifted members apart (sweep_report._curves).
const curveOf = (m) => String(m.variant) + (m.lifted === false ? " (unlifted)" : "");
const variants = [...new Set(plotted.map(curveOf))];

const problems = [];
const checks = {};
const check = (name, ok, detail) => {
  checks[name] = Boolean(ok);
  if (!ok) problems.push(`${name}: ${detail ?? "failed"}`);
};

const browser = await puppeteer.launch({
  executablePath: opts.chromium,
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1200,800"],
  defaultViewport: { width: 1200, height: 800 },
});
const hovered = [];
const texts = {};
try {
  const page = await browser.newPage();
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console error: ${msg.text()}`); });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`));

  await page.goto(pathToFileURL(path.resolve(opts.dir, "pareto.html")).href, { waitUntil: "load" });
  await page.waitForSelector(".js-plotly-plot .scatterlayer .trace .points path", { timeout: 30000 });
  const legend = await page.$$eval(".legend .traces .legendtext", (els) => els.map((e) => e.textContent));
  check("one legend entry per curve", legend.length === variants.length && variants.every((v) => legend.includes(v)),
    `legend ${JSON.stringify(legend)}, variants ${JSON.stringify(variants)}`);
  const points = await page.$$(".scatterlayer .trace .points path");
  check("every member drawn", points.length === plotted.length, `${points.length} points for ${plotted.length} members`);
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot });

  // Hover every point with the mouse: the tooltip names one member, each member once.
  for (const point of points) {
    const box = await point.boundingBox();
    if (!box) { problems.push("a point has no box on screen"); continue; }
    await page.mouse.move(0, 0);
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2, { steps: 4 });
    try {
      await page.waitForSelector(".hoverlayer .hovertext", { timeout: 5000 });
    } catch {
      problems.push(`no tooltip at (${box.x}, ${box.y})`);
      continue;
    }
    const text = await page.$eval(".hoverlayer .hovertext", (el) => el.textContent);
    const member = plotted.find((m) => text.includes(`name: ${m.name}`) && text.includes(`variant: ${m.variant}`));
    hovered.push(member ? member.name : `?${text.slice(0, 80)}`);
    if (member) texts[member.name] = text;
  }
  if (opts.screenshot && points.length) {
    // The same plot with the first point's tooltip showing.
    const box = await points[0].boundingBox();
    await page.mouse.move(0, 0);
    if (box) await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2, { steps: 4 });
    await page.waitForSelector(".hoverlayer .hovertext", { timeout: 5000 }).catch(() => problems.push("no tooltip to show"));
    await page.screenshot({ path: opts.screenshot.replace(/(\.png)?$/, "-hover.png") });
  }
  const names = plotted.map((m) => m.name).sort();
  check("hover names each member", JSON.stringify([...hovered].sort()) === JSON.stringify(names),
    `hovered ${JSON.stringify(hovered)}, members ${JSON.stringify(names)}`);
  // A spliced member's tooltip carries its spliced CE (the table's numbers, not just the plot's).
  const spliced = plotted.filter((m) => typeof m.ce_spliced === "number").map((m) => m.name);
  check("spliced members show ce_spliced", spliced.every((n) => (texts[n] || "").includes("ce_spliced: ")),
    `tooltips ${JSON.stringify(texts)}`);
} catch (err) {
  problems.push(`check aborted: ${err.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: problems.length === 0, checks, hovered, problems }));
process.exit(problems.length ? 1 : 0);
