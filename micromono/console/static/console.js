// micromono's live page: reads the daemon's event stream (/console/events, docs/operations.md, "The live page")
// and draws it with plain DOM and SVG. No framework, nothing fetched from anywhere else.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const state = {
    tick: 1,
    historySeconds: 300,
    last: null, // the last sample
    series: new Map(), // service -> [{t, p50, p99, rate}], oldest first
    reloads: new Map(), // seq -> reload event
    rendered: false,
  };

  // --- the stream --------------------------------------------------------------------------------------------

  const statusEl = document.getElementById("status");
  function setStatus(name, text) {
    statusEl.className = "status " + name;
    statusEl.dataset.state = name;
    statusEl.textContent = text;
  }

  const source = new EventSource("/console/events");
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("error", () => {
    if (statusEl.dataset.state !== "ended") setStatus("reconnecting", "reconnecting…");
  });
  source.addEventListener("hello", (event) => {
    const hello = JSON.parse(event.data);
    state.tick = hello.tick;
    state.historySeconds = hello.history_seconds;
    // A new stream (the first, or after a reconnect or a restart of the daemon) sends the recent samples and the
    // reload history again, from scratch: start over with them.
    state.series.clear();
    state.reloads.clear();
    for (const r of hello.reloads) state.reloads.set(r.seq, r);
    setStatus("live", "live");
    schedule();
  });
  source.addEventListener("sample", (event) => {
    const sample = JSON.parse(event.data);
    state.last = sample;
    for (const s of sample.services) {
      let points = state.series.get(s.name);
      if (!points) state.series.set(s.name, (points = []));
      points.push({ t: sample.t, p50: s.latency.p50, p99: s.latency.p99, rate: s.rate });
    }
    const oldest = sample.t - state.historySeconds;
    for (const points of state.series.values()) {
      while (points.length && points[0].t < oldest) points.shift();
    }
    for (const r of sample.reloads) state.reloads.set(r.seq, r);
    schedule();
  });
  source.addEventListener("end", () => setStatus("ended", "the daemon stopped; reconnecting…"));

  // Many events arrive at once when the page opens (the last minutes): draw once per frame, not once per event.
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    const draw = () => {
      pending = false;
      render();
    };
    if (document.visibilityState === "visible") requestAnimationFrame(draw);
    else setTimeout(draw, 100);
  }

  // --- formatting ----------------------------------------------------------------------------------------------

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(s < 1e-5 ? 1 : 0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }
  function rate(r) {
    if (!r) return "0";
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }
  function percent(x) {
    if (x >= 0.1) return (x * 100).toFixed(0) + "%";
    return (x * 100).toFixed(1) + "%";
  }
  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }

  // --- drawing ---------------------------------------------------------------------------------------------------

  function render() {
    const sample = state.last;
    if (sample) {
      drawGraph(sample);
      drawServices(sample);
      document.getElementById("updated").textContent =
        `sample ${sample.seq} at ${clock(sample.t)}, every ${state.tick} s`;
    }
    drawReloads();
  }

  // The edges worth drawing: every allowlist edge, and ingress only to services with routes (or traffic).
  function shownEdges(sample) {
    const routed = new Set(sample.services.filter((s) => s.routed).map((s) => s.name));
    return sample.edges.filter((e) => e.caller !== "ingress" || routed.has(e.callee) || e.calls > 0);
  }

  // Layers: ingress first, then each service one right of the furthest caller that reaches it (cycles cut by
  // a bound); within a layer by name. The same services always land in the same places.
  function layout(sample, edges) {
    const names = sample.services.map((s) => s.name).sort();
    const layer = new Map(names.map((n) => [n, 1]));
    layer.set("ingress", 0);
    const internal = edges.filter((e) => e.caller !== "ingress" && layer.has(e.caller) && layer.has(e.callee));
    for (let round = 0; round < names.length; round++) {
      let changed = false;
      for (const e of internal) {
        const want = Math.min(layer.get(e.caller) + 1, names.length);
        if (want > layer.get(e.callee) && e.caller !== e.callee) {
          layer.set(e.callee, want);
          changed = true;
        }
      }
      if (!changed) break;
    }
    const columns = [];
    for (const name of ["ingress", ...names]) {
      const l = layer.get(name);
      (columns[l] = columns[l] || []).push(name);
    }
    const used = columns.filter(Boolean);
    const nodeW = 150, nodeH = 40, colGap = 110, rowGap = 26;
    const tallest = Math.max(...used.map((c) => c.length));
    const height = tallest * (nodeH + rowGap) + rowGap;
    const pos = new Map();
    used.forEach((column, i) => {
      const top = (height - column.length * (nodeH + rowGap) + rowGap) / 2;
      column.forEach((name, j) => {
        pos.set(name, { x: 20 + i * (nodeW + colGap), y: top + j * (nodeH + rowGap), w: nodeW, h: nodeH });
      });
    });
    const width = 40 + used.length * nodeW + (used.length - 1) * colGap;
    return { pos, width, height };
  }

  function drawGraph(sample) {
    const graph = document.getElementById("graph");
    const edges = shownEdges(sample);
    const { pos, width, height } = layout(sample, edges);
    graph.setAttribute("viewBox", `0 0 ${width} ${height}`);
    graph.setAttribute("width", String(Math.round(width * 1.25))); // at most this wide; narrower in a narrow window

    const byName = new Map(sample.services.map((s) => [s.name, s]));
    const parts = [];
    const placed = [];
    for (const e of edges) {
      const a = pos.get(e.caller), b = pos.get(e.callee);
      if (!a || !b) continue;
      const failing = e.error_ratio !== null && e.error_ratio > 0;
      const busy = e.rate > 0 || e.message_rate > 0;
      const cls = failing ? "err" : busy ? "busy" : "idle";
      let x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x - 6, y2 = b.y + b.h / 2;
      let c1, c2;
      if (x2 > x1) {
        const mid = (x1 + x2) / 2;
        c1 = [mid, y1]; c2 = [mid, y2];
      } else { // backwards or in the same column: a loop under the nodes
        x1 = a.x + a.w / 2; y1 = a.y + a.h; x2 = b.x + b.w / 2; y2 = b.y + b.h + 6;
        const drop = Math.max(y1, y2) + 40;
        c1 = [x1, drop]; c2 = [x2, drop];
      }
      const d = `M${x1},${y1} C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${x2},${y2}`;
      let label = `${rate(e.rate)}/s`;
      if (failing) label += ` · ${percent(e.error_ratio)} err`;
      if (e.message_rate > 0 || (e.messages > 0 && e.calls === 0)) label += ` · ${rate(e.message_rate)} msg/s`;
      // On the curve, nearer the callee (the fan out of ingress is crowded), moved down while it would overlap.
      const [lx, ly0] = bezier([x1, y1], c1, c2, [x2, y2], e.caller === "ingress" ? 0.8 : 0.6);
      const ly = freeSpot(placed, lx, ly0 - 4, label.length * 6.2);
      const title = svg("title");
      title.textContent = `${e.caller} → ${e.callee}: ${e.calls} calls (${e.errors} failed), ` +
        `${e.messages} messages since the caller's version started`;
      parts.push(svg("g", {
        class: `edge ${cls}`, "data-edge": `${e.caller}->${e.callee}`, "data-rate": String(e.rate),
        "data-calls": String(e.calls), "data-errors": String(e.errors),
      }, title, svg("path", { d }), arrowHead(d, cls), textNode(lx, ly, label, { "text-anchor": "middle" })));
    }
    for (const [name, p] of pos) {
      const s = byName.get(name);
      const classes = ["node"];
      if (!s) classes.push("ingress");
      else {
        if (s.kind === "actor") classes.push("actor");
        if (s.quarantine) classes.push("quarantined");
      }
      const title = svg("title");
      title.textContent = s ? `${name} ${s.version} (${s.kind})` : "HTTP requests from the ingress listener";
      parts.push(svg("g", { class: classes.join(" "), "data-service": name }, title,
        svg("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 6 }),
        textNode(p.x + 10, p.y + 17, s ? name : "HTTP ingress"),
        textNode(p.x + 10, p.y + 32, s ? `${s.version}${s.kind === "actor" ? " · actor" : ""}` : "", { class: "version" })));
    }
    graph.replaceChildren(...parts);
  }

  function bezier(p0, p1, p2, p3, t) {
    const u = 1 - t;
    const at = (i) => u * u * u * p0[i] + 3 * u * u * t * p1[i] + 3 * u * t * t * p2[i] + t * t * t * p3[i];
    return [at(0), at(1)];
  }

  // The first y from `y` down (in steps of a line) where a label `w` wide centred on `x` overlaps none placed.
  function freeSpot(placed, x, y, w) {
    for (let tries = 0; tries < 6; tries++, y += 14) {
      if (!placed.some((p) => Math.abs(p.x - x) < (p.w + w) / 2 && Math.abs(p.y - y) < 13)) break;
    }
    placed.push({ x, y, w });
    return y;
  }

  function textNode(x, y, text, attrs) {
    const t = svg("text", { x, y, ...(attrs || {}) });
    t.textContent = text;
    return t;
  }

  // An arrow head at the end of a path "… x,y": a small triangle pointing along the last segment.
  function arrowHead(d, cls) {
    const nums = d.match(/-?[\d.]+/g).map(Number);
    const [px, py, x, y] = nums.slice(-4);
    const angle = Math.atan2(y - py, x - px);
    const tip = [x + 6 * Math.cos(angle), y + 6 * Math.sin(angle)];
    const left = [x - 3 * Math.sin(angle), y + 3 * Math.cos(angle)];
    const right = [x + 3 * Math.sin(angle), y - 3 * Math.cos(angle)];
    return svg("polygon", { class: `arrow ${cls}`, points: [tip, left, right].map((p) => p.join(",")).join(" ") });
  }

  function drawServices(sample) {
    const body = document.querySelector("#services tbody");
    const rows = [];
    for (const s of sample.services) {
      const q = s.quarantine;
      const stateCell = q
        ? el("td", { class: "state-bad", title: q.reason }, `quarantined ${q.seconds_left.toFixed(1)} s`)
        : el("td", { class: "state-ok" }, "serving");
      const fill = s.mailbox.capacity ? s.mailbox.queued / s.mailbox.capacity : 0;
      const bar = el("span", { class: fill >= 1 ? "bar full" : "bar" }, el("span"));
      bar.firstChild.style.width = `${Math.min(100, fill * 100).toFixed(0)}%`;
      const actors = s.actors ? `${s.actors.live} / ${s.actors.hibernated}` : "–";
      rows.push(el("tr", { "data-service": s.name },
        el("td", {}, s.name, el("span", { class: "kind" }, s.kind === "actor" ? "actor" : "")),
        el("td", { class: "mono", title: `sha256 ${s.sha256}…` }, s.version),
        el("td", { class: "num", title: `${s.instances.idle} idle` }, `${s.instances.live} / ${s.instances.max}`),
        el("td", { class: "num" }, `${s.mailbox.queued} / ${s.mailbox.capacity}`, bar),
        stateCell,
        el("td", { class: "num", "data-field": "actors" }, actors),
        el("td", { class: "num", "data-field": "websockets" }, String(s.websockets)),
        el("td", { class: "num", "data-field": "rate" }, rate(s.rate)),
        el("td", { class: "num", "data-field": "failed" }, rate(s.failed_rate)),
        el("td", { class: "num" }, seconds(s.latency.p50)),
        el("td", { class: "num" }, seconds(s.latency.p99)),
        el("td", {}, sparkline(state.series.get(s.name) || [], sample.t)),
      ));
    }
    body.replaceChildren(...rows);
  }

  // p50 and p99 (log scale, left) and calls/s (linear, dashed) over the last `historySeconds`.
  function sparkline(points, now) {
    const w = 220, h = 36;
    const node = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}` });
    const start = now - state.historySeconds;
    const x = (t) => ((t - start) / state.historySeconds) * w;
    const lat = points.flatMap((p) => [p.p50, p.p99]).filter((v) => v);
    if (lat.length) {
      const lo = Math.log10(Math.min(...lat)) - 0.1, hi = Math.log10(Math.max(...lat)) + 0.1;
      const y = (v) => h - 2 - ((Math.log10(v) - lo) / Math.max(hi - lo, 0.2)) * (h - 12);
      for (const key of ["p50", "p99"]) {
        const line = points.filter((p) => p[key]).map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
        if (line.length) node.append(svg("polyline", { class: key, points: line.join(" ") }));
      }
      node.append(textNode(2, 9, `p99 max ${seconds(Math.max(...points.map((p) => p.p99 || 0)))}`));
    }
    const top = Math.max(...points.map((p) => p.rate), 0);
    if (top > 0) {
      const line = points.map((p) => `${x(p.t).toFixed(1)},${(h - 2 - (p.rate / top) * (h - 12)).toFixed(1)}`);
      node.append(svg("polyline", { class: "rate", points: line.join(" ") }));
    }
    return node;
  }

  function drawReloads() {
    const list = document.getElementById("reloads");
    const events = [...state.reloads.values()].sort((a, b) => b.seq - a.seq);
    document.getElementById("no-reloads").hidden = events.length > 0;
    list.replaceChildren(...events.map((r) => {
      const change = r.previous && r.version && r.previous !== r.version
        ? `${r.previous} → ${r.version}`
        : (r.version || r.previous || "");
      return el("li", { "data-service": r.service, "data-outcome": r.outcome, value: r.seq },
        el("span", { class: "when" }, clock(r.at)),
        el("strong", {}, r.service),
        el("span", { class: `outcome ${r.outcome}` }, r.outcome.replace("_", " ")),
        el("span", { class: "mono" }, change),
        el("span", { class: "reason" }, r.reason ? `(${r.reason})` : ""),
        el("span", { class: "muted" }, r.duration_ms ? ` ${r.duration_ms} ms` : ""));
    }));
  }
})();
