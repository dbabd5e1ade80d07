// stealproof admin console: lists clients from the admin API, blocks / unblocks / revokes,
// and draws a client's query rate and flagged share as inline SVG. No dependencies, no build.
// The admin key lives in sessionStorage (this tab only) and travels only as a Bearer header.
// Every value from the server is written with textContent, never parsed as HTML.
"use strict";

(function () {
  const KEY_ITEM = "stealproof.adminKey";
  const REFRESH_MS = 15000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let selected = null;
  let timer = null;

  function adminKey() { return sessionStorage.getItem(KEY_ITEM); }

  function status(text, isError) {
    const el = $("status");
    el.textContent = text || "";
    el.classList.toggle("error", Boolean(isError));
  }

  class ApiError extends Error {}

  async function api(method, path) {
    const key = adminKey();
    if (!key) { throw new ApiError("no admin key"); }
    const resp = await fetch(path, {
      method: method,
      headers: { "Authorization": "Bearer " + key, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (resp.status === 401) {
      signOut("The admin key was rejected.");
      throw new ApiError("admin key rejected");
    }
    if (resp.status === 204) { return null; }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const msg = body && body.error ? body.error : "HTTP " + resp.status;
      throw new ApiError(method + " " + path + ": " + msg);
    }
    return body;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }

  function fmtTime(iso) {
    if (!iso) { return "never"; }
    const t = new Date(iso);
    const age = Math.max(0, (Date.now() - t.getTime()) / 1000);
    const stamp = t.toISOString().slice(0, 19).replace("T", " ") + " UTC";
    let ago;
    if (age < 90) { ago = Math.round(age) + " s ago"; }
    else if (age < 5400) { ago = Math.round(age / 60) + " min ago"; }
    else if (age < 172800) { ago = Math.round(age / 3600) + " h ago"; }
    else { ago = Math.round(age / 86400) + " d ago"; }
    return stamp + " (" + ago + ")";
  }

  function share(c) {
    if (!c.rows_used) { return "—"; }
    return (100 * c.flagged_rows / c.rows_used).toFixed(1) + " % (" + c.flagged_rows + ")";
  }

  function enc(name) { return encodeURIComponent(name); }

  async function act(button, method, path, done) {
    button.disabled = true;
    try {
      await api(method, path);
      status(done);
      await loadClients();
      if (selected) { await loadDetail(); }
    } catch (e) {
      if (!(e instanceof ApiError && e.message === "admin key rejected")) { status(e.message, true); }
    } finally {
      button.disabled = false;
    }
  }

  function clientRow(c) {
    const tr = el("tr");
    tr.dataset.client = c.name;
    if (c.name === selected) { tr.classList.add("selected"); }
    const name = el("td");
    name.dataset.field = "name";
    const link = el("a", c.name, "client");
    link.addEventListener("click", () => select(c.name));
    name.appendChild(link);
    tr.appendChild(name);
    const cells = [
      ["rows_used", c.rows_used, "num"],
      ["quota_rows", c.quota_rows === null ? "unlimited" : c.quota_rows, "num"],
      ["flagged_share", share(c), "num"],
    ];
    for (const [field, value, cls] of cells) {
      const td = el("td", value, cls);
      td.dataset.field = field;
      tr.appendChild(td);
    }
    const standing = el("td");
    standing.dataset.field = "standing";
    const badge = el("span", c.standing, "standing " + c.standing);
    if (c.block_reason) { badge.title = c.block_reason; }
    standing.appendChild(badge);
    tr.appendChild(standing);
    const seen = el("td", fmtTime(c.last_seen));
    seen.dataset.field = "last_seen";
    tr.appendChild(seen);
    const actions = el("td", null, "actions");
    const blocked = c.standing === "blocked";
    const toggle = el("button", blocked ? "unblock" : "block", blocked ? "unblock" : "block danger");
    toggle.type = "button";
    toggle.addEventListener("click", () => act(
      toggle, "POST", "/v1/admin/clients/" + enc(c.name) + (blocked ? "/unblock" : "/block"),
      (blocked ? "Unblocked " : "Blocked ") + c.name + ".",
    ));
    const details = el("button", "chart & keys", "details");
    details.type = "button";
    details.addEventListener("click", () => select(c.name));
    actions.append(toggle, details);
    tr.appendChild(actions);
    return tr;
  }

  async function loadClients() {
    const clients = await api("GET", "/v1/admin/clients");
    const tbody = $("clients").querySelector("tbody");
    tbody.replaceChildren(...clients.map(clientRow));
    if (!clients.length) {
      const tr = el("tr");
      const td = el("td", "No clients yet: create one with `stealproof keys create NAME`.", "muted");
      td.colSpan = 7;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    status("Loaded " + clients.length + " client" + (clients.length === 1 ? "" : "s") + " at " +
           new Date().toISOString().slice(11, 19) + " UTC.");
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, String(v)); }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }

  function niceMax(v) {
    if (v <= 0) { return 1; }
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) { if (m * p >= v) { return m * p; } }
    return 10 * p;
  }

  function drawChart(series) {
    const W = 900, H = 260, L = 56, R = 56, T = 14, B = 34;
    const pw = W - L - R, ph = H - T - B;
    const pts = series.points;
    const n = pts.length;
    const maxRate = niceMax(Math.max(0, ...pts.map((p) => p.rows_per_min)));
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "query rate and flagged share of " + series.client });
    root.appendChild(svg("title", {}, "rows per minute (bars) and flagged share (line) of " +
                         series.client));
    for (let i = 0; i <= 4; i++) {  // grid and both axes' labels
      const y = T + ph - (ph * i) / 4;
      root.appendChild(svg("line", { x1: L, x2: L + pw, y1: y, y2: y, stroke: "#e4e7ec" }));
      const rate = (maxRate * i) / 4;
      root.appendChild(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11,
        fill: "#2e6fd8" }, rate >= 10 ? Math.round(rate) : +rate.toFixed(2)));
      root.appendChild(svg("text", { x: L + pw + 6, y: y + 4, "font-size": 11, fill: "#d9480f" },
        (25 * i) + " %"));
    }
    const bw = pw / n;
    let path = "";
    pts.forEach((p, i) => {
      const x = L + i * bw;
      if (p.rows_per_min > 0) {
        const h = (ph * p.rows_per_min) / maxRate;
        const bar = svg("rect", { x: x + bw * 0.1, y: T + ph - h, width: Math.max(1, bw * 0.8),
          height: h, fill: "#2e6fd8", "fill-opacity": 0.55 });
        bar.appendChild(svg("title", {}, p.start.slice(0, 16).replace("T", " ") + " UTC: " +
          p.requests + " requests, " + p.rows + " rows, " + p.flagged_rows + " flagged"));
        root.appendChild(bar);
      }
      if (p.flagged_share !== null) {
        const cx = x + bw / 2, cy = T + ph - ph * p.flagged_share;
        path += (path ? " L " : "M ") + cx.toFixed(1) + " " + cy.toFixed(1);
        root.appendChild(svg("circle", { cx: cx, cy: cy, r: 2.5, fill: "#d9480f" }));
      }
    });
    if (path) {
      root.appendChild(svg("path", { d: path, fill: "none", stroke: "#d9480f",
        "stroke-width": 1.8 }));
    }
    for (const i of [0, Math.floor(n / 2), n]) {  // time labels at start, middle, end
      const iso = i < n ? pts[i].start : series.end;
      const anchor = i === 0 ? "start" : i === n ? "end" : "middle";
      root.appendChild(svg("text", { x: L + i * bw, y: H - 10, "text-anchor": anchor,
        "font-size": 11, fill: "#667085" }, iso.slice(0, 16).replace("T", " ") + " UTC"));
    }
    root.appendChild(svg("text", { x: L, y: T - 3, "font-size": 10, fill: "#667085" },
      "rows / min"));
    if (series.truncated) {
      root.appendChild(svg("text", { x: L + pw, y: T - 3, "text-anchor": "end",
        "font-size": 10, fill: "#b42318" }, "window truncated: oldest rows not read"));
    }
    $("chart").replaceChildren(root);
  }

  function keyRow(k) {
    const tr = el("tr");
    tr.dataset.key = k.key_id;
    tr.append(el("td", k.key_id), el("td", fmtTime(k.created_at)),
              el("td", k.revoked_at ? fmtTime(k.revoked_at) : "—"));
    const td = el("td");
    if (!k.revoked_at) {
      const b = el("button", "revoke", "revoke danger");
      b.type = "button";
      b.addEventListener("click", () => {
        if (window.confirm("Revoke key " + k.key_id + "? Requests with it will get 401.")) {
          act(b, "DELETE", "/v1/admin/keys/" + enc(k.key_id), "Revoked key " + k.key_id + ".");
        }
      });
      td.appendChild(b);
    }
    tr.appendChild(td);
    return tr;
  }

  async function loadDetail() {
    const name = selected;
    const [bucket, points] = $("window").value.split(":");
    const base = "/v1/admin/clients/" + enc(name);
    const [series, keys] = await Promise.all([
      api("GET", base + "/series?bucket=" + bucket + "&points=" + points),
      api("GET", base + "/keys"),
    ]);
    if (name !== selected) { return; }
    $("detail-name").textContent = name;
    drawChart(series);
    $("keys").querySelector("tbody").replaceChildren(...keys.map(keyRow));
    $("detail").hidden = false;
  }

  async function select(name) {
    selected = name;
    for (const tr of $("clients").querySelectorAll("tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.client === name);
    }
    try { await loadDetail(); } catch (e) { status(e.message, true); }
  }

  async function refresh() {
    try {
      await loadClients();
      if (selected) { await loadDetail(); }
    } catch (e) {
      if (!(e instanceof ApiError && e.message === "admin key rejected")) { status(e.message, true); }
    }
  }

  function showSession(signedIn) {
    $("login-panel").hidden = signedIn;
    $("console").hidden = !signedIn;
    $("session").hidden = !signedIn;
    if (timer !== null) { clearInterval(timer); timer = null; }
    if (signedIn) { timer = setInterval(refresh, REFRESH_MS); }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_ITEM);
    selected = null;
    $("detail").hidden = true;
    $("clients").querySelector("tbody").replaceChildren();
    showSession(false);
    status(message || "Signed out.", Boolean(message));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("admin-key");
      const key = input.value.trim();
      input.value = "";
      if (!key) { return; }
      sessionStorage.setItem(KEY_ITEM, key);
      showSession(true);
      refresh();
    });
    $("logout").addEventListener("click", () => signOut());
    $("refresh").addEventListener("click", refresh);
    $("window").addEventListener("change", () => { if (selected) { select(selected); } });
    if (adminKey()) { showSession(true); refresh(); } else { showSession(false); }
  });
})();
