// The live dashboard: prices and sparklines follow the push feed (GET /stream, conflated for
// display); symbols, flow rates, lag and connections are polled from the JSON API. Data is only
// ever written with textContent or SVG attributes, never as HTML.
"use strict";

(() => {
  const POLL_MS = 1500;
  const STREAM_CONFLATE = "250ms"; // at most four updates per symbol and second: readable
  const TIMEOUT_MS = 8000;
  const SPARK_POINTS = 60;
  const KEY_STORAGE = "crypto-dashboard.api-key";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SPARK_W = 120;
  const SPARK_H = 28;
  const JOBS_SHOWN = 10;
  const HOUR_MS = 3_600_000;

  const $ = (id) => document.getElementById(id);
  const rows = new Map(); // symbol → {row, cells}
  const latest = new Map(); // symbol → newest trade shown
  const series = new Map(); // symbol → the sparkline's trades, oldest first
  let stream = null; // {key, controller, ready}: the open push-feed connection
  let previous = null; // {at, counts} of the last status poll, for rates
  let timer = null;
  let polling = false;
  let pollAgain = false; // a change was made while a poll was in flight
  let lagInFlight = false;

  // -- storage --------------------------------------------------------------------------

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  }

  function storeKey(value) {
    try {
      if (value) {
        window.sessionStorage.setItem(KEY_STORAGE, value);
      } else {
        window.sessionStorage.removeItem(KEY_STORAGE);
      }
      return true;
    } catch {
      return false;
    }
  }

  // -- HTTP -----------------------------------------------------------------------------

  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") {
      const key = storedKey();
      if (key) headers["X-API-Key"] = key;
    }
    const controller = new AbortController();
    const abort = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin",
        signal: controller.signal,
      });
      let data = null;
      const text = await response.text();
      if (text) {
        try {
          data = JSON.parse(text);
        } catch {
          data = { detail: text };
        }
      }
      return { ok: response.ok, status: response.status, data };
    } finally {
      clearTimeout(abort);
    }
  }

  // The API's {"detail": ...}: a message, or FastAPI's list of validation errors.
  function describeError(result) {
    const detail = result.data && result.data.detail;
    let text;
    if (typeof detail === "string") {
      text = detail;
    } else if (Array.isArray(detail)) {
      text = detail
        .map((item) => {
          if (item && typeof item === "object") {
            const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
            return loc ? `${loc}: ${item.msg}` : String(item.msg);
          }
          return String(item);
        })
        .join("; ");
    } else if (detail !== undefined && detail !== null) {
      text = JSON.stringify(detail);
    } else {
      text = "no detail";
    }
    if (result.status === 401) text += " (enter the API key)";
    return `${result.status}: ${text}`;
  }

  // -- formatting -----------------------------------------------------------------------

  // Decimal strings stay strings: trim trailing zeros, keep at least two decimals.
  function formatPrice(value) {
    if (typeof value !== "string" || !/^-?\d+(\.\d+)?$/.test(value)) return String(value);
    const [whole, fraction = ""] = value.split(".");
    let trimmed = fraction.replace(/0+$/, "");
    if (trimmed.length < 2) trimmed = trimmed.padEnd(2, "0");
    return `${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",")}.${trimmed}`;
  }

  function formatRate(value) {
    if (value === null || !Number.isFinite(value)) return "—";
    return value >= 100 ? value.toFixed(0) : value.toFixed(1);
  }

  function formatCount(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "—";
  }

  function formatAge(ms) {
    if (ms < 0) ms = 0;
    if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s ago`;
    if (ms < 120_000) return `${Math.round(ms / 1000)} s ago`;
    if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min ago`;
    return `${Math.round(ms / 3_600_000)} h ago`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // -- rendering: connection banner -----------------------------------------------------

  function setLive(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    setText("connection-text", text);
  }

  // -- rendering: symbols table ---------------------------------------------------------

  function makeRow(symbol) {
    const row = document.createElement("tr");
    row.dataset.symbol = symbol;

    const name = document.createElement("th");
    name.scope = "row";
    name.className = "symbol";
    name.textContent = symbol;

    const price = document.createElement("td");
    price.className = "num price";
    price.textContent = "waiting for trades…";
    price.dataset.empty = "true";

    const change = document.createElement("td");
    change.className = "num change";

    const spark = document.createElement("td");
    spark.className = "spark";
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.setAttribute("width", String(SPARK_W));
    svg.setAttribute("height", String(SPARK_H));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${symbol}: no trades yet`);
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("points", "");
    svg.appendChild(line);
    spark.appendChild(svg);

    const age = document.createElement("td");
    age.className = "age muted";

    const actions = document.createElement("td");
    actions.className = "actions";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove secondary";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove ${symbol}`);
    remove.addEventListener("click", () => removeSymbol(symbol, remove));
    actions.appendChild(remove);

    row.append(name, price, change, spark, age, actions);
    return { row, price, change, svg, line, age, remove, tradeTime: null };
  }

  function renderSymbols(symbols) {
    const body = $("symbols-body");
    const wanted = new Set(symbols);
    for (const [symbol, entry] of rows) {
      if (!wanted.has(symbol)) {
        entry.row.remove();
        rows.delete(symbol);
      }
    }
    symbols.forEach((symbol, index) => {
      let entry = rows.get(symbol);
      if (!entry) {
        entry = makeRow(symbol);
        rows.set(symbol, entry);
      }
      if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
      renderPrice(symbol);
    });
    $("symbols-empty").hidden = symbols.length > 0;
    setText("symbols-count", symbols.length === 1 ? "1 symbol" : `${symbols.length} symbols`);
    renderAges();
  }

  function renderPrice(symbol) {
    const entry = rows.get(symbol);
    const trade = latest.get(symbol);
    if (!entry || !trade) return;
    const text = formatPrice(trade.price);
    if (entry.price.textContent !== text) entry.price.textContent = text;
    delete entry.price.dataset.empty;
    entry.tradeTime = trade.trade_time;
  }

  function renderAges() {
    const now = Date.now();
    for (const entry of rows.values()) {
      const text = entry.tradeTime === null ? "—" : formatAge(now - entry.tradeTime);
      if (entry.age.textContent !== text) entry.age.textContent = text;
    }
  }

  function renderSpark(symbol) {
    const entry = rows.get(symbol);
    const trades = series.get(symbol) || [];
    if (!entry) return;
    const prices = trades.map((t) => Number(t.price)).filter(Number.isFinite); // oldest first
    if (prices.length === 0) return;
    const low = Math.min(...prices);
    const high = Math.max(...prices);
    const span = high - low || 1;
    const step = prices.length > 1 ? (SPARK_W - 2) / (prices.length - 1) : 0;
    const points = prices
      .map((p, i) => {
        const x = 1 + i * step;
        const y = high === low ? SPARK_H / 2 : 1 + (SPARK_H - 2) * (1 - (p - low) / span);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(" ");
    entry.line.setAttribute("points", points);
    const first = prices[0];
    const last = prices[prices.length - 1];
    const direction = last > first ? "up" : last < first ? "down" : "flat";
    entry.svg.dataset.trend = direction;
    entry.change.dataset.trend = direction;
    const pct = first ? ((last - first) / first) * 100 : 0;
    entry.change.textContent = `${pct > 0 ? "+" : ""}${pct.toFixed(3)} %`;
    entry.svg.setAttribute(
      "aria-label",
      `${symbol}: last ${prices.length} trades, from ${trades[0].price} to ${trades[trades.length - 1].price}`,
    );
  }

  // Trades into a sparkline: by trade id, each once, the newest SPARK_POINTS kept.
  function addToSeries(symbol, trades) {
    const byId = new Map((series.get(symbol) || []).map((t) => [t.trade_id, t]));
    for (const trade of trades) byId.set(trade.trade_id, trade);
    const merged = [...byId.values()].sort((a, b) => a.trade_id - b.trade_id).slice(-SPARK_POINTS);
    series.set(symbol, merged);
  }

  function showTrade(trade) {
    const shown = latest.get(trade.symbol);
    if (!shown || trade.trade_id >= shown.trade_id) {
      latest.set(trade.symbol, trade);
      renderPrice(trade.symbol);
    }
  }

  // -- the push feed --------------------------------------------------------------------

  // The stream of the tracked symbols, (re)opened whenever they change or it ended. fetch()
  // rather than EventSource: it can send the API key, which STREAM_REQUIRES_KEY asks for.
  function follow(symbols) {
    const key = symbols.join(",");
    if (stream && stream.key === key) return;
    if (stream) stream.controller.abort();
    stream = null;
    if (symbols.length) openStream(key);
  }

  async function openStream(key) {
    const current = { key, controller: new AbortController(), ready: false };
    stream = current;
    const headers = { Accept: "text/event-stream" };
    const apiKey = storedKey();
    if (apiKey) headers["X-API-Key"] = apiKey;
    try {
      const response = await fetch(`/stream?symbols=${encodeURIComponent(key)}&conflate=${STREAM_CONFLATE}`, {
        headers,
        cache: "no-store",
        credentials: "same-origin",
        signal: current.controller.signal,
      });
      if (response.ok && response.body) await readEvents(response.body, current);
    } catch {
      // Aborted (the symbols changed) or the connection broke: polling covers the prices.
    }
    if (stream === current) stream = null; // the next poll opens a new one
  }

  async function readEvents(body, current) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (stream !== current) return;
        onEvent(block, current);
      }
    }
  }

  function onEvent(block, current) {
    let kind = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return;
    const payload = JSON.parse(data);
    if (kind === "ready") {
      current.ready = true;
      loadHistories(payload.symbols);
    } else if (kind === "trade" || kind === "backfill") {
      showTrade(payload);
      addToSeries(payload.symbol, [payload]);
      renderSpark(payload.symbol);
    }
  }

  // The sparklines' start: the newest trades stored, merged with what the stream brings.
  async function loadHistories(symbols) {
    const histories = await Promise.all(
      symbols.map((name) =>
        request("GET", `/prices/${encodeURIComponent(name)}/history?limit=${SPARK_POINTS}`).catch(() => null),
      ),
    );
    histories.forEach((result, i) => {
      if (!result || !result.ok) return;
      const items = result.data.items;
      if (items.length) showTrade(items[0]);
      addToSeries(symbols[i], items);
      renderSpark(symbols[i]);
    });
  }

  // -- rendering: flow stats ------------------------------------------------------------

  function rate(now, name, counts) {
    if (!previous) return null;
    const before = previous.counts[name];
    const after = counts[name];
    if (typeof before !== "number" || typeof after !== "number" || after < before) return null;
    const seconds = (now - previous.at) / 1000;
    return seconds > 0 ? (after - before) / seconds : null;
  }

  function renderStatus(status) {
    const now = performance.now();
    const counts = status.counts;
    for (const name of ["received", "produced", "stored"]) {
      const off = counts[name] === null || counts[name] === undefined;
      setText(`rate-${name}`, off ? "off" : formatRate(rate(now, name, counts)));
      setText(`total-${name}`, off ? "role not running here" : `${formatCount(counts[name])} since start`);
    }
    setText("dlq", formatCount(counts.dead_letters));
    const dlqRate = rate(now, "dead_letters", counts);
    setText("rate-dlq", dlqRate ? `+${formatRate(dlqRate)} /s` : "in the DLQ topic");
    $("dlq").dataset.alert = counts.dead_letters > 0 ? "true" : "false";
    previous = { at: now, counts };
    renderSources(status.source);
  }

  function renderSources(source) {
    const list = $("sources");
    list.replaceChildren();
    const connections = source ? source.connections : [];
    for (const connection of connections) {
      const item = document.createElement("li");
      item.dataset.state = connection.state;
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = connection.state;
      const name = document.createElement("span");
      name.className = "conn-name";
      name.textContent = connection.name;
      const detail = document.createElement("span");
      detail.className = "muted conn-detail";
      const streams = connection.streams.length;
      detail.textContent =
        `${streams} stream${streams === 1 ? "" : "s"} · ${formatCount(connection.frames)} frames` +
        (connection.reconnects ? ` · ${connection.reconnects} reconnects` : "");
      item.append(badge, name, detail);
      list.appendChild(item);
    }
    const empty = $("sources-empty");
    empty.hidden = connections.length > 0;
    empty.textContent = source ? "no open connection (no symbols to stream?)" : "the producer role does not run here";
  }

  function renderLag(result) {
    const lag = $("lag");
    if (result.ok && result.data && typeof result.data.total_lag === "number") {
      setText("lag", formatCount(result.data.total_lag));
      setText("lag-unit", "msgs");
      setText("lag-hint", `${result.data.partitions.length} partition(s) of ${result.data.topic}`);
      lag.dataset.state = "ok";
    } else {
      setText("lag", "unavailable");
      setText("lag-unit", "");
      setText("lag-hint", result.status === 503 ? "Kafka did not answer" : describeError(result));
      lag.dataset.state = "unavailable";
    }
  }

  // -- rendering: history jobs ----------------------------------------------------------

  function formatWindow(start, end) {
    const iso = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");
    const from = iso(start);
    const to = iso(end);
    return from.slice(0, 10) === to.slice(0, 10) ? `${from} → ${to.slice(11)}` : `${from} → ${to}`;
  }

  function formatEta(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function jobRow(job) {
    const row = document.createElement("tr");
    row.dataset.id = String(job.id);
    row.dataset.state = job.state;

    const name = document.createElement("th");
    name.scope = "row";
    name.className = "symbol";
    name.textContent = `#${job.id} ${job.symbol}`;

    const state = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = job.state;
    state.appendChild(badge);
    if (job.last_error) {
      const error = document.createElement("span");
      error.className = "job-error";
      error.textContent = job.last_error;
      state.appendChild(error);
    }

    const progressCell = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = 1;
    if (typeof job.progress === "number") bar.value = job.progress;
    else if (job.state !== "running") bar.value = 0;
    bar.setAttribute("aria-label", `job ${job.id} progress`);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = typeof job.progress === "number" ? `${(job.progress * 100).toFixed(1)} %` : "";
    progressCell.append(bar, pct);

    const actions = document.createElement("td");
    actions.className = "actions";
    if (job.state === "queued" || job.state === "running") {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "remove secondary";
      cancel.textContent = "Cancel";
      cancel.setAttribute("aria-label", `Cancel job ${job.id}`);
      cancel.addEventListener("click", () => cancelJob(job.id, cancel));
      actions.appendChild(cancel);
    }

    row.append(
      name,
      cell(formatWindow(job.start, job.end), "window"),
      state,
      progressCell,
      cell(formatCount(job.fetched), "num"),
      cell(formatCount(job.stored), "num"),
      cell(typeof job.rate === "number" ? `${formatCount(Math.round(job.rate))} /s` : "—", "num"),
      cell(formatEta(job.eta_s), "num"),
      actions,
    );
    return row;
  }

  function renderJobs(result) {
    if (!result.ok) {
      setText("jobs-count", describeError(result));
      return;
    }
    const jobs = result.data.items;
    $("jobs-body").replaceChildren(...jobs.map(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
    const active = jobs.filter((job) => job.state === "queued" || job.state === "running").length;
    setText("jobs-count", active ? `${active} active` : "");
  }

  // -- polling --------------------------------------------------------------------------

  // Lag asks Kafka (up to 5 s when it is down): polled on its own, so prices stay live.
  function pollLag() {
    if (lagInFlight) return;
    lagInFlight = true;
    request("GET", "/consumer/lag")
      .then(renderLag)
      .catch((error) => renderLag({ ok: false, status: 0, data: { detail: error.message } }))
      .finally(() => {
        lagInFlight = false;
      });
  }

  async function poll() {
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    pollAgain = false;
    clearTimeout(timer);
    try {
      pollLag();
      // Prices come from the stream; /prices only while it is not up (start, or reconnecting).
      const streaming = stream !== null && stream.ready;
      const [symbols, prices, status, jobs] = await Promise.all([
        request("GET", "/symbols"),
        streaming ? Promise.resolve({ ok: true, data: { items: [] } }) : request("GET", "/prices"),
        request("GET", "/pipeline/status"),
        request("GET", `/backfills?limit=${JOBS_SHOWN}`),
      ]);
      renderJobs(jobs);
      if (!symbols.ok || !prices.ok || !status.ok) {
        const failed = [symbols, prices, status].find((r) => !r.ok);
        setLive("down", `API error ${describeError(failed)}`);
      } else {
        setLive("up", `live · updated ${new Date().toLocaleTimeString("en-GB")}`);
      }
      if (status.ok) renderStatus(status.data);
      if (prices.ok) prices.data.items.forEach(showTrade);
      if (symbols.ok) {
        const names = symbols.data.symbols.map((s) => s.symbol);
        for (const symbol of [...series.keys()]) {
          if (!names.includes(symbol)) {
            series.delete(symbol);
            latest.delete(symbol);
          }
        }
        renderSymbols(names);
        names.forEach(renderSpark);
        follow(names);
      }
    } catch (error) {
      setLive("down", `API unreachable (${error.name === "AbortError" ? "timeout" : error.message})`);
    } finally {
      polling = false;
      timer = setTimeout(poll, pollAgain ? 0 : POLL_MS);
    }
  }

  // -- actions --------------------------------------------------------------------------

  function showMessage(text, kind) {
    const el = $("form-message");
    el.textContent = text;
    el.dataset.kind = kind;
  }

  async function addSymbol(event) {
    event.preventDefault();
    const input = $("symbol-input");
    const button = $("add-button");
    const symbol = input.value.trim();
    if (!symbol) {
      showMessage("Enter a symbol, e.g. ADAUSDT.", "error");
      input.focus();
      return;
    }
    button.disabled = true;
    showMessage(`Adding ${symbol}…`, "info");
    try {
      const result = await request("POST", "/symbols", { symbol });
      if (result.ok) {
        showMessage(result.data.detail, "ok");
        input.value = "";
        poll();
      } else {
        showMessage(describeError(result), "error");
        input.focus();
      }
    } catch (error) {
      showMessage(`Request failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function removeSymbol(symbol, button) {
    button.disabled = true;
    showMessage(`Removing ${symbol}…`, "info");
    try {
      const result = await request("DELETE", `/symbols/${encodeURIComponent(symbol)}`);
      if (result.ok) {
        showMessage(`${symbol} removed; producers unsubscribe within 2 s. Its stored trades stay.`, "ok");
        poll();
      } else {
        showMessage(describeError(result), "error");
      }
    } catch (error) {
      showMessage(`Request failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  function showJobMessage(text, kind) {
    const el = $("job-message");
    el.textContent = text;
    el.dataset.kind = kind;
  }

  async function startJob(event) {
    event.preventDefault();
    const input = $("job-symbol");
    const button = $("job-button");
    const symbol = input.value.trim();
    if (!symbol) {
      showJobMessage("Enter a symbol, e.g. ETHUSDT.", "error");
      input.focus();
      return;
    }
    const end = Date.now() - 1000;
    const start = end - Number($("job-hours").value) * HOUR_MS;
    button.disabled = true;
    showJobMessage(`Starting a history job for ${symbol}…`, "info");
    try {
      const result = await request("POST", "/backfills", { symbol, start, end });
      if (result.ok) {
        showJobMessage(`Job #${result.data.id} queued: ${result.data.symbol}'s trades are on their way.`, "ok");
        input.value = "";
        poll();
      } else {
        showJobMessage(describeError(result), "error");
        input.focus();
      }
    } catch (error) {
      showJobMessage(`Request failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      const result = await request("DELETE", `/backfills/${id}`);
      if (result.ok) {
        showJobMessage(`Job #${id} cancelled; what it stored stays.`, "ok");
        poll();
      } else {
        showJobMessage(describeError(result), "error");
      }
    } catch (error) {
      showJobMessage(`Request failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  function renderKeyStatus() {
    setText("key-status", storedKey() ? "A key is stored for this tab and sent with changes." : "No key stored.");
  }

  function saveKey(event) {
    event.preventDefault();
    const input = $("key-input");
    if (!storeKey(input.value.trim())) {
      setText("key-status", "This browser refused to store the key.");
      return;
    }
    input.value = "";
    renderKeyStatus();
  }

  function clearKey() {
    storeKey("");
    $("key-input").value = "";
    renderKeyStatus();
  }

  function start() {
    $("add-form").addEventListener("submit", addSymbol);
    $("job-form").addEventListener("submit", startJob);
    $("key-form").addEventListener("submit", saveKey);
    $("key-clear").addEventListener("click", clearKey);
    renderKeyStatus();
    setInterval(renderAges, 500);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) poll();
    });
    poll();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
