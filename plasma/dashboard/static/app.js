// plasma-coord dashboard: polls /api/state and draws it. Read-only: it only ever GETs.
// Everything the page shows is built with DOM calls (textContent), never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
}

function cell(text, cls) {
  return el("td", cls ? { class: cls } : null, text);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fmtNumber(n) {
  if (n === null || n === undefined) return "–";
  return n >= 100 ? Math.round(n).toLocaleString("en") : String(Math.round(n * 10) / 10);
}

function taskColor(id) {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 55%, 45%)`;
}

function cpuList(cpus) {
  if (!cpus || cpus.length === 0) return "–";
  const parts = [];
  let start = cpus[0];
  let prev = cpus[0];
  for (const c of [...cpus.slice(1), null]) {
    if (c !== prev + 1) {
      parts.push(start === prev ? `${start}` : `${start}-${prev}`);
      start = c;
    }
    prev = c;
  }
  return parts.join(",");
}

// ------------------------------------------------------------------ the machine

function drawNodes(nodes) {
  const box = document.getElementById("nodes");
  box.replaceChildren(...nodes.map((node) => {
    const store = node.store;
    const bar = el("div", { class: "bar" }, el("span"));
    bar.firstChild.style.width = store && store.capacity ? `${(100 * store.used) / store.capacity}%` : "0";
    const huge = Object.entries(node.hugepages).filter(([, n]) => n > 0)
      .map(([size, n]) => `${n} × ${fmtBytes(Number(size))}`);
    const cpus = el("div", { class: "cpus" }, ...node.cpus.map((cpu) => {
      const div = el("div", { class: cpu.task ? "cpu held" : "cpu", "data-cpu": cpu.id,
        title: cpu.task ? `CPU ${cpu.id}: ${cpu.task}` : `CPU ${cpu.id}: free` }, cpu.id);
      if (cpu.task) div.style.backgroundColor = taskColor(cpu.task);
      return div;
    }));
    return el("div", { class: store ? "node" : "node unserved", "data-node": node.id },
      el("h4", null, `node ${node.id}`),
      el("div", { class: "line" }, `memory ${fmtBytes(node.memory_total)}, ${fmtBytes(node.memory_free)} free`),
      store ? bar : null,
      el("div", { class: "line" }, store
        ? `store ${fmtBytes(store.capacity)}: ${fmtBytes(store.used)} used, ${fmtBytes(store.free)} free, ${store.objects} objects`
        : "store: not served"),
      el("div", { class: "line" }, `hugepages ${huge.length ? huge.join(", ") : "none reserved"}`),
      cpus);
  }));
  const ids = nodes.map((n) => n.id);
  const table = document.getElementById("distances");
  const known = nodes.some((n) => Object.keys(n.distances).length > 0);
  table.replaceChildren(...(known ? [
    el("tr", null, el("th"), ...ids.map((id) => el("th", null, id))),
    ...nodes.map((n) => el("tr", null, el("th", null, n.id), ...ids.map((id) =>
      cell(n.distances[id] ?? "–", id === n.id ? "local" : null)))),
  ] : [el("tr", null, el("td", null, "unknown"))]));
}

// ------------------------------------------------------------------ the store

function drawChart(id, points, key, format) {
  const chart = document.getElementById(id);
  const width = chart.clientWidth || 260;
  const height = chart.clientHeight || 90;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const values = points.filter((p) => p[key] !== null && p[key] !== undefined);
  if (values.length === 0) {
    chart.replaceChildren(svg("text", { x: 6, y: 16 }, "no data yet"));
    return;
  }
  const t0 = points[0].t;
  const span = Math.max(points[points.length - 1].t - t0, 1);
  const top = Math.max(...values.map((p) => p[key]), 1);
  const x = (p) => 4 + ((width - 8) * (p.t - t0)) / span;
  const y = (p) => height - 14 - ((height - 28) * p[key]) / top;
  const line = values.map((p, i) => `${i ? "L" : "M"}${x(p).toFixed(1)},${y(p).toFixed(1)}`).join("");
  const first = values[0];
  const last = values[values.length - 1];
  const area = `${line}L${x(last).toFixed(1)},${height - 14}L${x(first).toFixed(1)},${height - 14}Z`;
  chart.replaceChildren(
    svg("path", { class: "area", d: area }),
    svg("path", { class: "line", d: line }),
    svg("text", { x: 6, y: 11 }, `max ${format(top)}`),
    svg("text", { x: width - 6, y: 11, "text-anchor": "end" }, `now ${format(last[key])}`),
    svg("text", { x: 6, y: height - 3 }, `last ${fmtSeconds(span)}`),
  );
}

function drawStore(state) {
  const store = state.store;
  const used = document.getElementById("store-used");
  used.textContent = fmtBytes(store.used);
  used.dataset.bytes = String(store.used);
  document.getElementById("store-capacity").textContent = fmtBytes(store.capacity);
  document.getElementById("store-objects").textContent = fmtNumber(store.objects);
  document.getElementById("store-evictions").textContent = fmtNumber(store.evictions);
  document.getElementById("store-uptime").textContent = fmtSeconds(store.uptime);
  const spills = store.spilled !== null && store.spilled !== undefined;
  document.getElementById("store-spilled-box").hidden = !spills;
  document.getElementById("chart-spilled-box").hidden = !spills;
  if (spills) document.getElementById("store-spilled").textContent = fmtBytes(store.spilled);

  const history = state.history;
  drawChart("chart-used", history, "used", fmtBytes);
  drawChart("chart-ops", history, "ops_per_s", fmtNumber);
  drawChart("chart-objects", history, "objects", fmtNumber);
  if (spills) drawChart("chart-spilled", history, "spilled", fmtBytes);

  const largest = state.objects.largest || [];
  document.querySelector("#objects tbody").replaceChildren(...largest.map((o) => el("tr", null,
    el("td", { title: o.id }, `${o.id.slice(0, 16)}…`), cell(fmtBytes(o.size), "num"),
    cell(o.node), cell(o.state), cell(o.ref_count, "num"))));
  document.getElementById("objects-note").textContent = state.objects.note ||
    (largest.length ? "" : "the store is empty");
  document.querySelector("#clients tbody").replaceChildren(...state.clients.map((c) =>
    el("tr", null, cell(c.id), cell(c.name || "–"), cell(c.pid ?? "–"), cell(c.uid ?? "–"),
      cell(fmtBytes(c.total), "num"), cell(fmtBytes(c.references), "num"),
      cell(fmtBytes(c.pins), "num"), cell(fmtBytes(c.unsealed), "num"),
      cell(fmtBytes(c.arena), "num"))));
  const holders = state.holders || { total: null, objects: [] };
  const total = holders.total;
  document.getElementById("holders-total").textContent = total
    ? `held in all (each object once): ${fmtBytes(total.bytes)}: ${fmtBytes(total.references)} ` +
      `referenced, ${fmtBytes(total.pins)} only pinned, ${fmtBytes(total.unsealed)} being ` +
      `written, ${fmtBytes(total.arenas)} in arenas`
    : "";
  document.querySelector("#held-objects tbody").replaceChildren(...holders.objects.map((o) =>
    el("tr", null, el("td", { title: o.id }, `${o.id.slice(0, 16)}…`),
      cell(fmtBytes(o.size), "num"), cell(o.node), cell(o.state),
      cell(o.holders.join(", ") || "–"))));
}

// ------------------------------------------------------------------ the run

function drawGraph(run) {
  const graph = document.getElementById("run-graph");
  const columns = new Map();
  for (const task of run.tasks) {
    if (!columns.has(task.level)) columns.set(task.level, []);
    columns.get(task.level).push(task);
  }
  const boxW = 130;
  const boxH = 28;
  const gapX = 40;
  const gapY = 12;
  const rows = Math.max(1, ...[...columns.values()].map((c) => c.length));
  const width = Math.max(1, columns.size) * (boxW + gapX);
  const height = rows * (boxH + gapY) + gapY;
  graph.setAttribute("width", width);
  graph.setAttribute("height", height);
  graph.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const where = new Map();
  for (const [level, tasks] of columns) {
    tasks.forEach((task, i) => where.set(task.id, { x: 4 + level * (boxW + gapX), y: gapY + i * (boxH + gapY) }));
  }
  const edges = run.edges.filter(([a, b]) => where.has(a) && where.has(b)).map(([a, b, kind]) => {
    const from = where.get(a);
    const to = where.get(b);
    const x1 = from.x + boxW;
    const y1 = from.y + boxH / 2;
    const x2 = to.x;
    const y2 = to.y + boxH / 2;
    const mid = (x1 + x2) / 2;
    return svg("path", { class: kind, d: `M${x1},${y1}C${mid},${y1} ${mid},${y2} ${x2},${y2}` });
  });
  const boxes = run.tasks.map((task) => {
    const at = where.get(task.id);
    const group = svg("g", { class: "task-node", "data-task": task.id });
    group.append(
      svg("rect", { x: at.x, y: at.y, width: boxW, height: boxH, rx: 4, class: `s-${task.state}` }),
      svg("text", { x: at.x + 6, y: at.y + 12, class: "name" }, task.id.length > 20 ? `${task.id.slice(0, 19)}…` : task.id),
      svg("text", { x: at.x + 6, y: at.y + 23 }, task.state),
      svg("title", null, `${task.id}: ${task.state}`),
    );
    return group;
  });
  graph.replaceChildren(...edges, ...boxes);
}

function drawGantt(run, now) {
  const gantt = document.getElementById("run-gantt");
  const started = run.tasks.filter((t) => t.start !== null);
  const label = 150;
  const width = Math.max(600, document.getElementById("run").clientWidth - 40);
  const rowH = 18;
  const height = run.tasks.length * rowH + 20;
  gantt.setAttribute("width", width);
  gantt.setAttribute("height", height);
  gantt.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const t0 = run.start ?? Math.min(...started.map((t) => t.start), now);
  const t1 = Math.max(run.end ?? now, ...started.map((t) => t.end ?? now), t0 + 0.001);
  const x = (t) => label + ((width - label - 10) * (t - t0)) / (t1 - t0);
  const parts = [svg("text", { x: label, y: height - 4 }, "0 s"),
    svg("text", { x: width - 10, y: height - 4, "text-anchor": "end" }, fmtSeconds(t1 - t0))];
  run.tasks.forEach((task, i) => {
    const y = i * rowH + 2;
    parts.push(svg("text", { x: 0, y: y + 11 }, task.id.length > 24 ? `${task.id.slice(0, 23)}…` : task.id));
    if (task.start !== null) {
      const x1 = x(task.start);
      const bar = svg("rect", { x: x1, y, height: rowH - 5, rx: 2, class: `bar-${task.state}`,
        width: Math.max(2, x(task.end ?? now) - x1) });
      bar.append(svg("title", null, `${task.id}: ${task.state}, ${fmtSeconds(task.duration)}`));
      parts.push(bar);
    }
  });
  gantt.replaceChildren(...parts);
}

function drawRun(run, now) {
  const title = document.getElementById("run-title");
  const body = document.querySelector("#run-tasks tbody");
  document.getElementById("run-graph").toggleAttribute("hidden", !run);  // (SVG: no .hidden)
  document.getElementById("run-gantt").toggleAttribute("hidden", !run);
  if (!run) {
    title.textContent = "no run yet";
    body.replaceChildren();
    return;
  }
  const elapsed = run.start ? (run.end ?? now) - run.start : null;
  title.textContent = `${run.run_id || "(no run id)"}: ${run.status}, ${run.tasks.length} tasks, ${fmtSeconds(elapsed)}`;
  drawGraph(run);
  drawGantt(run, now);
  body.replaceChildren(...run.tasks.map((t) => el("tr", { class: "task", "data-task": t.id, "data-state": t.state },
    cell(t.id), el("td", null, el("span", { class: `state ${t.state}` }, t.state)),
    cell(cpuList(t.cpus)), cell(t.node ?? "–"),
    cell(t.locality === null || t.locality === undefined ? "–" : `${(100 * t.locality).toFixed(0)} % local`),
    cell(fmtSeconds(t.duration), "num"))));
}

// ------------------------------------------------------------------ polling

function showStatus(text, live) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = live ? "status live" : "status stale";
}

function showError(reason) {
  const box = document.getElementById("error");
  box.hidden = !reason;
  box.textContent = reason || "";
}

function draw(state) {
  document.getElementById("source").textContent = state.source;
  drawNodes(state.machine.nodes);
  drawStore(state);
  drawRun(state.run, state.time);
}

async function fetchState() {
  try {
    const response = await fetch("api/state", { cache: "no-store", credentials: "same-origin" });
    const state = await response.json();
    return response.ok && !state.error ? { state } : { error: state.error || `status ${response.status}` };
  } catch (err) {
    return { error: `the dashboard is not answering (${err.message}): is it still running?` };
  }
}

async function poll() {
  const { state, error } = await fetchState();
  if (error) {
    showError(error);
    showStatus(`not updated since ${new Date().toLocaleTimeString()}`, false);
  } else {
    showError(null);
    draw(state);  // (a drawing bug is thrown: it shows in the console, where tests look)
    showStatus(`updated ${new Date(state.time * 1000).toLocaleTimeString()}`, true);
  }
}

async function loop() {
  try {
    await poll();
  } finally {
    setTimeout(loop, POLL_MS);
  }
}

loop();
