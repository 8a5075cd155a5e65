/* sae-bilinear latent atlas: the index (table + map) and the latent page.
 *
 * Data arrive as scripts calling atlasMeta / atlasIndex / atlasCorpus / atlasItem (file://
 * forbids fetch). Every string from the data is inserted as text, never as HTML, except in
 * plotly hover labels, which are escaped first.
 */
"use strict";

const Atlas = (() => {
  const state = { meta: null, index: null, corpus: null, want: null };
  window.atlasMeta = (meta) => { state.meta = meta; };
  window.atlasIndex = (index) => { state.index = index; };
  window.atlasCorpus = (corpus) => { state.corpus = corpus; };
  window.atlasItem = (record) => {
    if (`${record.kind}${record.id}` === state.want) renderItem(record);
  };

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
    const a = Math.abs(value);
    if (a !== 0 && (a >= 1e4 || a < 1e-3)) return value.toExponential(2);
    return String(Number(value.toPrecision(3)));
  }

  function pct(value) {
    if (value === null || value === undefined) return "–";
    const p = 100 * value;
    return (p === 0 ? "0" : p >= 0.01 ? String(Number(p.toPrecision(3))) : p.toExponential(1)) + "%";
  }

  function shown(text) {
    return String(text).replace(/\n/g, "⏎").replace(/\r/g, "").replace(/\t/g, "⇥");
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function tok(text) {
    // An empty or all-blank token would show as nothing: draw its blanks.
    const visible = String(text).trim() === "" ? (String(text).replace(/ /g, "␣") || "∅") : text;
    return el("span", { class: "tok" }, shown(visible));
  }

  function fail(message) {
    const target = document.querySelector("main") || document.body;
    target.replaceChildren(el("p", { class: "error" }, message));
  }

  function dequant(packed) {
    const scale = packed.s / state.meta.quant;
    return packed.q.map((q) => q * scale);
  }

  function href(kind, id) {
    return `latent.html#${kind}${id}`;
  }

  function itemName(kind, id) {
    return kind === "C" ? `composite ${id}` : `latent ${id}`;
  }

  function header(meta) {
    const parts = [
      `${meta.variant} bilinear SAE`,
      meta.model ? `on ${meta.model}` : null,
      meta.hook_name ? `at ${meta.hook_name}` : null,
      `d_in ${meta.d_in}, d_sae ${meta.d_sae}` + (meta.bottleneck ? `, bottleneck ${meta.bottleneck}` : ""),
      meta.lifted ? "lifted" : "unlifted",
      `scored on ${meta.n_tokens} tokens`,
    ];
    return parts.filter(Boolean).join(" · ");
  }

  // ------------------------------------------------------------------ index page

  function initIndex() {
    const { meta, index } = state;
    if (!meta || !index) return fail("The atlas data did not load (data/meta.js, data/index.js): open index.html from the atlas folder.");
    document.title = meta.title;
    document.getElementById("header").replaceChildren(
      el("h1", {}, meta.title),
      el("p", { class: "muted" }, header(meta)),
      el("p", { class: "muted small" },
        `${meta.n_latents} latents` + (meta.n_composites ? ` and ${meta.n_composites} composites (rows of W_down)` : "") +
        ". Click a row or a point to open it; click a column to sort; hover a column for its definition."),
    );
    const col = Object.fromEntries(index.columns.map((name, i) => [name, i]));
    const rows = index.rows.map((row) => ({
      key: row[0], kind: row[0][0], id: Number(row[0].slice(1)), row,
      // Raw and as shown (⏎ for a newline), so either form finds the token.
      haystack: row[col.top_tokens].concat(row[col.bottom_tokens]).flatMap((t) => [t, shown(t)]).join("\u0000").toLowerCase(),
    }));
    const view = { sort: "frequency", dir: -1, page: 0, size: 100 };
    const search = el("input", { type: "search", id: "search", placeholder: "token (e.g. ' the') or item (L12, C3)" });
    const kind = el("select", { id: "kind" }, el("option", { value: "" }, "latents and composites"),
      el("option", { value: "L" }, "latents"), el("option", { value: "C" }, "composites"));
    if (!meta.n_composites) kind.disabled = true;
    const minFreq = el("input", { type: "number", id: "min-frequency", min: "0", max: "100", step: "any", placeholder: "0" });
    const hideDead = el("input", { type: "checkbox", id: "hide-dead" });
    document.getElementById("controls").replaceChildren(
      el("label", {}, "search ", search), el("label", {}, "show ", kind),
      el("label", {}, "frequency ≥ ", minFreq, " %"), el("label", {}, hideDead, " hide dead"),
      el("span", { id: "count", class: "muted small" }),
    );
    for (const input of [search, kind, minFreq, hideDead]) input.addEventListener("input", () => { view.page = 0; render(); });

    function filtered() {
      const query = search.value.trim();
      const itemQuery = /^([LClc]?)(\d+)$/.exec(query);
      const needle = query.toLowerCase();
      const threshold = Number(minFreq.value || 0) / 100;
      return rows.filter((r) => {
        if (kind.value && r.kind !== kind.value) return false;
        if (r.row[col.frequency] < threshold) return false;
        if (hideDead.checked && r.row[col.max_abs] === 0) return false;
        if (!query) return true;
        if (itemQuery) return r.id === Number(itemQuery[2]) && (!itemQuery[1] || r.kind === itemQuery[1].toUpperCase());
        return r.haystack.includes(needle);
      });
    }

    function sorted(list) {
      const key = view.sort;
      const value = key === "item" ? (r) => (r.kind === "L" ? 0 : 1e9) + r.id : (r) => r.row[col[key]];
      return list.slice().sort((a, b) => view.dir * (value(a) - value(b)) || a.id - b.id);
    }

    function table(list) {
      const shownColumns = meta.columns;
      const head = el("tr", {}, shownColumns.map((c) => {
        const text = c.key === "top_tokens" || c.key === "bottom_tokens";
        const th = el("th", { title: c.doc, class: [text ? "text" : "", view.sort === c.key ? "sorted" : "", view.sort === c.key && view.dir > 0 ? "asc" : ""].join(" ").trim() }, c.label);
        if (!text) th.addEventListener("click", () => { view.dir = view.sort === c.key ? -view.dir : -1; view.sort = c.key; view.page = 0; render(); });
        return th;
      }));
      const start = view.page * view.size;
      const body = list.slice(start, start + view.size).map((r) => {
        const cells = shownColumns.map((c) => {
          const v = r.row[col[c.key]];
          if (c.key === "item") return el("td", { class: "text" }, el("a", { href: href(r.kind, r.id) }, r.key));
          if (c.key === "top_tokens" || c.key === "bottom_tokens") return el("td", { class: "text" }, v.map(tok));
          if (c.key === "frequency") return el("td", {}, pct(v));
          return el("td", {}, fmt(v));
        });
        const tr = el("tr", { class: "row", "data-item": r.key }, cells);
        tr.addEventListener("click", (event) => { if (!event.target.closest("a")) location.href = href(r.kind, r.id); });
        return tr;
      });
      return el("table", { id: "latents" }, el("thead", {}, head), el("tbody", {}, body));
    }

    function pager(list) {
      const pages = Math.max(1, Math.ceil(list.length / view.size));
      const go = (delta) => () => { view.page = Math.min(pages - 1, Math.max(0, view.page + delta)); render(); };
      return el("div", { class: "pager" },
        el("button", { type: "button", onclick: go(-1), ...(view.page === 0 ? { disabled: "" } : {}) }, "‹ previous"),
        el("span", { class: "muted small" }, `page ${view.page + 1} of ${pages}`),
        el("button", { type: "button", onclick: go(1), ...(view.page >= pages - 1 ? { disabled: "" } : {}) }, "next ›"));
    }

    function drawMap(list) {
      if (typeof Plotly === "undefined") return;
      const logs = list.map((r) => Math.log10(Math.max(r.row[col.frequency], 1e-6)));
      const low = logs.reduce((a, b) => Math.min(a, b), 0);
      const range = [low, Math.max(logs.reduce((a, b) => Math.max(a, b), -6), low + 0.1)];
      const traces = ["L", "C"].map((k) => {
        const part = list.filter((r) => r.kind === k);
        return {
          type: "scattergl", mode: "markers", name: k === "L" ? "latents" : "composites",
          x: part.map((r) => r.row[col.x]), y: part.map((r) => r.row[col.y]), customdata: part.map((r) => r.key),
          text: part.map((r) => `${escapeHtml(r.key)} · ${pct(r.row[col.frequency])}<br>${r.row[col.top_tokens].map((t) => escapeHtml(shown(t))).join(" | ")}`),
          hovertemplate: "%{text}<extra></extra>",
          marker: {
            size: k === "L" ? 5 : 9, symbol: k === "L" ? "circle" : "diamond", opacity: 0.85,
            color: part.map((r) => Math.log10(Math.max(r.row[col.frequency], 1e-6))), colorscale: "Viridis",
            cmin: range[0], cmax: range[1], showscale: k === "L", colorbar: { title: { text: "log₁₀ frequency", side: "right" }, thickness: 12 },
          },
        };
      }).filter((t) => t.x.length);
      const layout = {
        margin: { l: 20, r: 10, t: 10, b: 20 },
        xaxis: { zeroline: false, showticklabels: false }, yaxis: { zeroline: false, showticklabels: false },
        legend: { orientation: "h", y: -0.05 }, template: "plotly_white", hovermode: "closest",
      };
      const div = document.getElementById("map");
      Plotly.react(div, traces, layout, { displaylogo: false, responsive: true });
      if (!div.dataset.bound) {
        div.on("plotly_click", (event) => { location.href = `latent.html#${event.points[0].customdata}`; });
        div.dataset.bound = "1";
      }
    }

    function render() {
      const list = sorted(filtered());
      document.getElementById("count").textContent = `${list.length} of ${rows.length} shown`;
      document.getElementById("table-wrap").replaceChildren(pager(list), table(list), pager(list));
      drawMap(list);
    }

    document.getElementById("map-note").textContent = `Map: ${meta.map}. Nearby points read similar quadratic forms.`;
    render();
  }

  // ------------------------------------------------------------------ latent page

  function initLatent() {
    if (!state.meta || !state.corpus) return fail("The atlas data did not load (data/meta.js, data/corpus.js): open latent.html from the atlas folder.");
    window.addEventListener("hashchange", route);
    route();
  }

  function route() {
    const match = /^#([LC])(\d+)$/.exec(location.hash || "#L0");
    const meta = state.meta;
    const kind = match ? match[1] : null;
    const id = match ? Number(match[2]) : -1;
    const count = kind === "C" ? meta.n_composites : meta.n_latents;
    if (!match || id >= count) {
      state.want = null;
      document.getElementById("title").textContent = "no such item";
      return fail(`"${location.hash}" names no item: use #L0 … #L${meta.n_latents - 1}` + (meta.n_composites ? ` or #C0 … #C${meta.n_composites - 1}` : "") + ".");
    }
    state.want = `${kind}${id}`;
    document.getElementById("title").textContent = `${itemName(kind, id)} (loading…)`;
    const script = el("script", { src: `data/items/${kind}/${Math.floor(id / meta.shard)}/${id}.js` });
    script.addEventListener("error", () => fail(`The data file of ${itemName(kind, id)} is missing (${script.src}).`));
    script.addEventListener("load", () => script.remove());
    document.head.append(script);
  }

  function context(position, before, after) {
    const { ids, vocab, sequence_length: length } = state.corpus;
    const start = Math.floor(position / length) * length;
    const left = [], right = [];
    for (let p = Math.max(start, position - before); p < position; p++) left.push(vocab[ids[p]]);
    for (let p = position + 1; p < Math.min(start + length, position + after + 1); p++) right.push(vocab[ids[p]]);
    return { left: left.join(""), token: vocab[ids[position]], right: right.join("") };
  }

  function hover(position, value) {
    const c = context(position, 24, 6);
    const text = `${shown(c.left)}[[${shown(c.token)}]]${shown(c.right)}`;
    const lines = [];
    for (let i = 0; i < text.length && lines.length < 6; i += 64) lines.push(escapeHtml(text.slice(i, i + 64)));
    return `<b>${escapeHtml(shown(c.token))}</b><br>${lines.join("<br>")}<br>f = ${fmt(value)}`;
  }

  function card(key, value, doc) {
    return el("div", { class: "card", title: doc || "" }, el("div", { class: "k" }, key), el("div", { class: "v" }, value));
  }

  function docOf(key) {
    const column = state.meta.columns.find((c) => c.key === key);
    return column ? column.doc : "";
  }

  function manifold(record, values) {
    const template = JSON.parse(JSON.stringify(state.meta.templates.manifold));
    const trace = template.data[0];
    const [x, y, z] = ["x", "y", "z"].map((a) => dequant(record.points[a]));
    trace.x = x; trace.y = y; trace.z = z;
    const bound = Math.max(...values.map(Math.abs)) || 1;
    Object.assign(trace.marker, { color: values, cmin: -bound, cmax: bound, cmid: 0 });
    trace.text = record.points.pos.map((p, i) => hover(p, values[i]));
    const layout = template.layout;
    layout.title = { text: "" };
    layout.margin = { l: 0, r: 0, t: 10, b: 0 };
    const labels = (record.axes || []).concat(["", "", ""]);
    ["xaxis", "yaxis", "zaxis"].forEach((axis, i) => { layout.scene[axis] = Object.assign(layout.scene[axis] || {}, { title: { text: labels[i] } }); });
    const spread = [x, y, z].map((a) => (a.length ? Math.max(...a) - Math.min(...a) : 1));
    const top = Math.max(...spread) || 1;
    const ratio = spread.map((s) => Math.min(1, Math.max(0.05, s / top)));
    layout.scene.aspectratio = { x: ratio[0], y: ratio[1], z: ratio[2] };
    const div = el("div", { id: "manifold" });
    return { div, draw: () => Plotly.newPlot(div, [trace], layout, { displaylogo: false, responsive: true }) };
  }

  function spectrum(record) {
    const template = JSON.parse(JSON.stringify(state.meta.templates.spectrum));
    const trace = template.data[0];
    const values = record.eigenvalues;
    trace.x = values.map((_, i) => i);
    trace.y = values;
    trace.marker = Object.assign(trace.marker || {}, { color: values.map((v) => (v >= 0 ? "#b2182b" : "#2166ac")) });
    const layout = template.layout;
    layout.title = { text: "" };
    layout.margin = { l: 50, r: 10, t: 10, b: 40 };
    layout.xaxis = Object.assign(layout.xaxis || {}, { dtick: values.length <= 16 ? 1 : null });
    const div = el("div", { id: "spectrum" });
    return { div, draw: () => Plotly.newPlot(div, [trace], layout, { displaylogo: false, responsive: true }) };
  }

  function contextTable(id, caption, positions, values) {
    const rows = positions.map((p, i) => {
      const c = context(p, 16, 6);
      return el("tr", {},
        el("td", { class: values[i] >= 0 ? "pos" : "neg" }, fmt(values[i])),
        el("td", { class: "ctx" }, shown(c.left), el("mark", {}, shown(c.token)), shown(c.right)));
    });
    return el("div", {}, el("h2", {}, caption),
      rows.length ? el("table", { id }, el("thead", {}, el("tr", {}, el("th", {}, "f"), el("th", { class: "text" }, "context (token highlighted)"))), el("tbody", {}, rows))
        : el("p", { class: "muted" }, "no tokens"));
  }

  function logitTable(caption, entries) {
    if (!entries) return el("div", {}, el("h2", {}, caption), el("p", { class: "muted small" }, `Not available: ${state.meta.logits_note}.`));
    return el("div", {}, el("h2", {}, caption), el("table", {}, el("tbody", {}, entries.map(([text, value]) =>
      el("tr", {}, el("td", { class: "text" }, tok(text)), el("td", { class: value >= 0 ? "pos" : "neg" }, fmt(value)))))));
  }

  function links(caption, entries, label, note) {
    if (!entries || !entries.length) return null;
    return el("div", {}, el("h2", {}, caption), note ? el("p", { class: "muted small" }, note) : null,
      el("ul", { class: "links" }, entries.map(([kind, id, value]) => el("li", {}, el("a", { href: href(kind, id) }, `${kind}${id}`), ` ${label} ${fmt(value)}`))));
  }

  function renderItem(record) {
    const meta = state.meta;
    const { kind, id } = record;
    const count = kind === "C" ? meta.n_composites : meta.n_latents;
    document.title = `${itemName(kind, id)} · ${meta.title}`;
    document.getElementById("title").textContent = kind === "C" ? `Composite ${id} (row ${id} of W_down)` : `Latent ${id}`;
    document.getElementById("subtitle").textContent = header(meta);
    document.getElementById("nav").replaceChildren(
      el("a", { href: "index.html" }, "← all latents"),
      id > 0 ? el("a", { href: href(kind, id - 1), id: "prev" }, `‹ ${kind}${id - 1}`) : null,
      id < count - 1 ? el("a", { href: href(kind, id + 1), id: "next" }, `${kind}${id + 1} ›`) : null,
    );
    const s = record.stats;
    const cards = el("div", { class: "cards" },
      card("frequency", pct(s.frequency), docOf("frequency")), card("Hoyer density", fmt(s.density), docOf("density")),
      card("effective rank", fmt(s.effective_rank), docOf("effective_rank")), card("importance Σλ²", fmt(s.importance), docOf("importance")),
      card("top-3 share", fmt(s.top3_share), docOf("top3_share")), card("support", fmt(s.support), docOf("support")),
      card("max |f|", fmt(s.max_abs), docOf("max_abs")));
    const parts = [cards];
    const draws = [];
    const spec = spectrum(record);
    draws.push(spec.draw);
    let values = [];
    if (record.points) {
      values = dequant(record.points.v);
      const view = manifold(record, values);
      draws.push(view.draw);
      parts.push(el("div", { class: "figures" },
        el("div", {}, el("h2", {}, "Manifold: the tokens on the top-3 |λ| eigenvectors"), view.div,
          el("p", { class: "muted small" }, `${record.points.pos.length} tokens (highest and lowest activations); colour = activation, hover for the context.`)),
        el("div", {}, el("h2", {}, `Spectrum (${record.eigenvalues.length} largest |λ|)`), spec.div)));
    } else {
      parts.push(el("h2", {}, "Spectrum"), spec.div, el("p", { class: "muted" }, "No valid tokens: no manifold view."));
    }
    const positions = record.points ? record.points.pos : [];
    const n = Math.min(meta.n_listed, record.n_high);
    const bottom = positions.map((p, i) => [p, values[i]]).reverse().slice(0, meta.n_listed);
    parts.push(el("div", { class: "two" },
      contextTable("top-contexts", "Top activations", positions.slice(0, n), values.slice(0, n)),
      contextTable("bottom-contexts", "Bottom activations", bottom.map((b) => b[0]), bottom.map((b) => b[1]))));
    parts.push(el("div", { class: "two" },
      logitTable("Promotes (direct effect on the logits)", record.promote),
      logitTable("Suppresses", record.suppress)));
    parts.push(links("Nearest by weights", record.neighbours, "cos", "Largest |cos| between the quadratic forms (data-free)."));
    parts.push(links(kind === "C" ? "Members (latents, weight D_rj)" : "Read by composites (weight D_rj)", record.members, "D ="));
    document.getElementById("item").replaceChildren(...parts.filter(Boolean));
    if (typeof Plotly !== "undefined") draws.forEach((draw) => draw());
    window.scrollTo(0, 0);
  }

  return { index: initIndex, latent: initLatent };
})();
