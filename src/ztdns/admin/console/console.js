// The ztdns console: a client of the admin API (/v1/...). Every value from the server is put into the page with
// textContent (DNS names and list entries are attacker-controlled): this file never assigns innerHTML.

const state = { csrf: null, role: null, etag: null, checked: null };
const $ = (id) => document.getElementById(id);

// el("td", {class: "num"}, "text", child): children that are strings become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child === null ? "" : String(child)));
  }
  return node;
}

function status(text, isError = false) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("error", isError);
}

async function api(method, path, body, headers = {}) {
  const options = { method, credentials: "same-origin", headers: { ...headers } };
  if (method !== "GET" && state.csrf) options.headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) {
    if (typeof body === "string") {
      options.body = body;
    } else {
      options.body = JSON.stringify(body);
      options.headers["Content-Type"] = options.headers["Content-Type"] || "application/json";
    }
  }
  const response = await fetch(path, options);
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text }; }
  }
  return { status: response.status, ok: response.ok, data, etag: response.headers.get("ETag") };
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) =>
      cell instanceof Node ? el("td", {}, cell) : el("td", typeof cell === "number" ? { class: "num" } : {}, cell))))));
}

function counts(title, object) {
  const rows = Object.entries(object).sort((a, b) => b[1] - a[1]);
  return [el("h2", {}, title), rows.length ? table([title, "queries"], rows) : el("p", { class: "hint" }, "none yet")];
}

function when(seconds) {
  return seconds === null || seconds === undefined ? "—" : new Date(seconds * 1000).toISOString().replace(".000", "");
}

// -- pages ---------------------------------------------------------------------------------------------------

async function overview(page) {
  const [stats, recent] = await Promise.all([api("GET", "/v1/stats"), api("GET", "/v1/overview")]);
  if (!stats.ok) return failed(page, stats.data);
  const data = stats.data;
  const blocked = (data.by_kind.blocked || 0) + (data.by_kind.prohibited || 0);
  page.append(
    el("h1", {}, "Overview"),
    el("div", { class: "card row" },
      el("p", {}, el("strong", { id: "queries-total" }, String(data.queries_total)), " queries answered"),
      el("p", {}, el("strong", { id: "queries-blocked" }, String(blocked)), " blocked or prohibited"),
      el("p", {}, "latency sum ", el("strong", {}, data.latency_seconds_sum.toFixed(3)), " s")));
  if (recent.ok && recent.data.available) {
    const o = recent.data;
    const minutes = o.bucket_seconds / 60;
    page.append(el("section", { class: "card", id: "overview-charts" },
      el("h2", {}, `Over time (one bar per ${minutes >= 1 ? `${minutes} min` : `${o.bucket_seconds} s`}` +
        `${o.privacy === "full" ? "" : `, privacy ${o.privacy}`})`),
      o.reason ? el("p", { class: "hint" }, o.reason) : "",
      el("div", { class: "charts" },
        barChart("Queries", "chart-queries", o.queries, o.start, o.bucket_seconds, "series-queries"),
        barChart("Blocked", "chart-blocked", o.blocked, o.start, o.bucket_seconds, "series-blocked"),
        barChart("Detections", "chart-detections", o.detections, o.start, o.bucket_seconds, "series-detections"))),
    el("div", { class: "row top" },
      topChart("Most blocked names", "top-names", o.top_blocked_names),
      topChart("Most blocked identities", "top-identities", o.top_blocked_identities)));
  } else if (recent.ok) {
    page.append(el("p", { class: "hint reason" }, `Charts: ${recent.data.reason}`));
  }
  page.append(upstreamHealth(data.samples), dnssecResults(data.samples));
  page.append(...counts("kind", data.by_kind), ...counts("transport", data.by_transport),
    ...counts("rcode", data.by_rcode),
    el("details", {}, el("summary", {}, "All metric samples"),
      table(["metric", "labels", "value"], data.samples.map((s) =>
        [s.name, Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(", "), s.value]))));
}

// Metric samples of one family (a counter's samples end in _total), by one label.
function byLabel(samples, family, label) {
  const found = {};
  for (const s of samples) {
    if ((s.name === family || s.name === `${family}_total`) && label in s.labels) {
      found[s.labels[label]] = (found[s.labels[label]] || 0) + s.value;
    }
  }
  return found;
}

function upstreamHealth(samples) {
  const up = byLabel(samples, "ztdns_upstream_up", "upstream");
  const srtt = byLabel(samples, "ztdns_upstream_srtt_seconds", "upstream");
  const sent = byLabel(samples, "ztdns_upstream_queries", "upstream");
  const failed = byLabel(samples, "ztdns_upstream_errors", "upstream");
  const names = Object.keys(up).sort();
  return el("section", { class: "card", id: "upstream-health" }, el("h2", {}, "Upstream health"),
    names.length
      ? table(["upstream", "state", "smoothed RTT (ms)", "attempts", "failed"], names.map((name) => [
        name, up[name] ? "in service" : "out of service",
        srtt[name] === undefined ? "—" : (srtt[name] * 1000).toFixed(1), sent[name] || 0, failed[name] || 0]))
      : el("p", { class: "hint" }, "no forwarding upstreams (recursion, local zones or authority only)"));
}

function dnssecResults(samples) {
  const results = byLabel(samples, "ztdns_dnssec_answers", "result");
  const failures = byLabel(samples, "ztdns_dnssec_validation_failures", "ede");
  const section = el("section", { class: "card", id: "dnssec-results" }, el("h2", {}, "DNSSEC"));
  if (!Object.keys(results).length && !Object.keys(failures).length) {
    section.append(el("p", { class: "hint" }, "validation is off, or nothing validated yet"));
    return section;
  }
  section.append(table(["result", "answers"], Object.entries(results).sort()));
  const rows = Object.entries(failures).sort((a, b) => b[1] - a[1]);
  section.append(el("h3", {}, "Validation failures by EDE code"),
    rows.length ? table(["EDE", "failures"], rows) : el("p", { class: "hint" }, "none"));
  return section;
}

// Charts are SVG drawn here (no library): bars scaled to the largest value, each with a <title> for its value.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function barChart(title, id, values, start, bucket, series) {
  const width = 360, height = 120, top = Math.max(1, ...values);
  const step = width / Math.max(values.length, 1);
  const total = values.reduce((a, b) => a + b, 0);
  const chart = svg("svg", { id, viewBox: `0 0 ${width} ${height + 16}`, role: "img", class: `chart ${series}`,
    "aria-label": `${title}: ${total} in the last ${values.length} intervals, at most ${top} in one` },
  svg("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis" }));
  values.forEach((value, index) => {
    const h = (value / top) * (height - 4);
    const at = new Date((start + index * bucket) * 1000).toISOString().slice(11, 16);
    chart.append(svg("rect", { x: index * step + 0.5, y: height - h, width: Math.max(step - 1, 1), height: h,
      "data-value": value }, svg("title", {}, `${at} UTC: ${value}`)));
  });
  chart.append(svg("text", { x: 0, y: height + 14, class: "label" }, `max ${top}`),
    svg("text", { x: width, y: height + 14, class: "label end" }, "now"));
  return el("figure", {}, chart, el("figcaption", {}, `${title}: ${total}`));
}

function topChart(title, id, items) {
  const figure = el("figure", { class: "card" }, el("figcaption", {}, title));
  if (!items.length) { figure.append(el("p", { class: "hint" }, "none")); return figure; }
  const top = Math.max(...items.map((i) => i.count)), row = 22, width = 360;
  const chart = svg("svg", { id, viewBox: `0 0 ${width} ${items.length * row}`, role: "img", class: "chart top",
    "aria-label": title });
  items.forEach((item, index) => {
    chart.append(
      svg("rect", { x: 0, y: index * row + 2, width: Math.max((item.count / top) * width * 0.45, 1), height: row - 6 }),
      svg("text", { x: width * 0.47, y: index * row + row - 7, class: "label" }, `${item.count}  ${item.name}`));
  });
  figure.append(chart);
  return figure;
}

async function identities(page) {
  const [who, policies] = await Promise.all([api("GET", "/v1/identities"), api("GET", "/v1/policies")]);
  if (!who.ok) return failed(page, who.data);
  page.append(el("h1", {}, "Identities and policies"), explainForm());
  page.append(el("h2", {}, "Identities"),
    table(["identity", "networks", "certificates", "policies"], who.data.identities.map((i) =>
      [i.name, i.networks.join(", "), i.certificates.join(", "), i.policies.join(", ")])),
    el("p", { class: "hint" }, `Unknown clients: ${who.data.unknown_clients.action}` +
      (who.data.unknown_clients.identity ? ` (as ${who.data.unknown_clients.identity})` : "")));
  if (policies.ok) {
    const rule = (r) => (typeof r === "string" ? r : `${r.pattern} (${r.qtypes.join(" ")})`);
    page.append(el("h2", {}, "Policies"),
      table(["policy", "allow", "deny", "lists", "blocked answer", "used by"], policies.data.policies.map((p) => [
        p.name, p.allow.map(rule).join("\n"), p.deny.map(rule).join("\n"),
        [...p.allow_lists.map((l) => `allow: ${l}`), ...p.deny_lists.map((l) => `deny: ${l}`)].join("\n"),
        p.blocked_response, p.used_by.join(", ")])));
  }
}

function explained(data) {
  const ede = data.ede.map((e) => `EDE ${e.code} (${e.name}) ${e.text}`).join("; ");
  return [
    table(["fact", "value"], [
      ["identity", data.identity ? `${data.identity} (${data.identity_how})` : "none: unknown client"],
      ["question", `${data.question || ""} ${data.qtype || ""}`],
      ["decision", el("span", { class: `decision ${data.decision === "allow" ? "allow" : "deny"}` },
        data.decision + (data.decided_name ? ` (at CNAME target ${data.decided_name})` : ""))],
      ["policy", data.policy || "—"], ["rule", data.rule || "—"], ["from", data.origin || "—"],
      ["how", data.chain.join("\n") || "—"], ["detection", data.detection.join("\n") || "—"],
      ["outcome", data.outcome], ["response", `${data.rcode || "dropped"}${ede ? ", " + ede : ""}`]]),
    el("pre", {}, data.response || "")];
}

function explainForm() {
  const result = el("div", { id: "explain-result", "aria-live": "polite" });
  const form = el("form", { class: "card", id: "explain-form" },
    el("h2", {}, "Explain a decision"),
    el("div", { class: "row" },
      el("div", {}, el("label", { for: "explain-client" }, "Client (address, identity or SPIFFE ID)"),
        el("input", { id: "explain-client", name: "client", required: "" })),
      el("div", {}, el("label", { for: "explain-name" }, "Name"),
        el("input", { id: "explain-name", name: "name", required: "" })),
      el("div", {}, el("label", { for: "explain-type" }, "Type"),
        el("input", { id: "explain-type", name: "type", value: "A" }))),
    el("button", { type: "submit", id: "explain-submit" }, "Explain"), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { client: $("explain-client").value, name: $("explain-name").value, type: $("explain-type").value };
    const { ok, data } = await api("POST", "/v1/explain", body);
    if (!ok) { result.replaceChildren(el("p", { class: "deny" }, data.error)); return; }
    result.replaceChildren(...explained(data));
    result.querySelector(".decision").id = "explain-decision";
  });
  return form;
}

async function editor(page) {
  const { ok, data } = await api("GET", "/v1/config");
  if (!ok) return failed(page, data);
  state.etag = data.etag;
  state.checked = null;
  const text = el("textarea", { id: "config-text", spellcheck: "false", "aria-describedby": "editor-hint" });
  text.value = data.toml;
  const problems = el("div", { id: "config-problems", "aria-live": "polite" });
  const diff = el("pre", { id: "config-diff", hidden: "" });
  const apply = el("button", { type: "button", id: "config-apply", disabled: "" }, "Apply");
  const check = el("button", { type: "button", id: "config-check" }, "Validate and show diff");
  text.addEventListener("input", () => { state.checked = null; apply.disabled = true; });
  check.addEventListener("click", async () => {
    const sent = text.value;
    const result = await api("POST", "/v1/config/check", sent, { "Content-Type": "application/toml" });
    if (!result.ok) { problems.replaceChildren(el("p", { class: "deny" }, result.data.error)); return; }
    showProblems(problems, result.data.problems);
    diff.replaceChildren(...result.data.diff.split("\n").map((line) => el("span",
      { class: line.startsWith("+") ? "diff-add" : line.startsWith("-") ? "diff-del" : null }, line + "\n")));
    diff.hidden = false;
    state.checked = result.data.valid && result.data.diff ? sent : null;
    apply.disabled = state.checked === null;
    status(result.data.valid ? (result.data.diff ? "Valid: review the diff, then apply." : "No change.") : "Invalid.",
      !result.data.valid);
  });
  apply.addEventListener("click", async () => {
    if (state.checked === null) return;
    const result = await api("PUT", "/v1/config", state.checked,
      { "Content-Type": "application/toml", "If-Match": state.etag });
    if (result.status === 202) {
      showToPublish(problems, result.data);
    } else if (result.ok) {
      state.etag = result.data.etag;
      state.checked = null;
      apply.disabled = true;
      status(`Applied. ${result.data.notes.join(" ")}`);
      problems.replaceChildren(el("p", { class: "allow", id: "config-applied" }, "Applied and serving."));
    } else if (result.status === 412) {
      status("The config changed since you loaded it: reload the page and redo your change.", true);
    } else if (result.data.problems) {
      showProblems(problems, result.data.problems);
      status(result.data.error, true);
    } else {
      status(result.data.error, true);
    }
  });
  page.append(el("h1", {}, "Policy editor"),
    el("p", { class: "hint", id: "editor-hint" },
      `Editing ${data.source}. Validate to see problems and the diff; apply takes effect at once (the reload path).`),
    el("label", { for: "config-text" }, "Configuration (TOML)"), text, check, apply, problems, diff);
}

function showProblems(container, problems) {
  container.replaceChildren(problems.length
    ? table(["line", "key", "problem"], problems.map((p) => [p.line === null ? "?" : p.line, p.key || "", p.message]))
    : el("p", { class: "allow" }, "No problems."));
}

async function zones(page) {
  const { ok, data } = await api("GET", "/v1/zones");
  if (!ok) return failed(page, data);
  page.append(el("h1", {}, "Zones and key rollover"));
  if (!data.zones.length) page.append(el("p", { class: "hint" }, "No [authority] zones are served."));
  const steps = ["created", "publish", "active", "ready", "ds_seen", "retire", "remove"];
  for (const zone of data.zones) {
    page.append(el("section", { class: "card" },
      el("h2", {}, `${zone.name} (serial ${zone.serial}, ${zone.signed ? "signed" : "unsigned"})`),
      zone.keys.length ? table(["key", "state", "timeline"], zone.keys.map((k) => [
        `${k.role} ${k.tag} (algorithm ${k.algorithm})`, k.state,
        el("div", { class: "timeline" }, steps.filter((s) => k[s] !== null).map((s) =>
          el("span", {}, `${s}: ${when(k[s])}`)))])) : "",
      zone.ds.length ? [el("h2", {}, "DS for the parent"), el("pre", {}, zone.ds.join("\n"))] : ""));
  }
}

async function attestation(page) {
  const { ok, data } = await api("GET", "/v1/attestation");
  if (!ok) return failed(page, data);
  page.append(el("h1", {}, "Attestation"));
  if (!data.available) { page.append(el("p", { class: "deny" }, `Not available: ${data.error}`)); return; }
  const r = data.report;
  page.append(table(["field", "value"], [
    ["version", r.version], ["evidence", r.evidence.type], ["measured at", r.measured_at],
    ["code digest", r.code_digest], ["config digest", r.config_digest], ["policy revision", r.policy_revision],
    ["issued", when(r.issued_at)], ["listeners", r.listeners.map((l) => `${l.transport} ${l.address}`).join(", ")]]),
  el("p", { class: "hint" }, r.evidence.statement || ""));
}

function notAvailable(page, data) {
  page.append(el("div", { class: "card unavailable" },
    el("p", {}, el("strong", {}, "Nothing to show. ")), el("p", { class: "reason" }, data.reason || "")));
}

function canChange() { return state.role === "operator" || state.role === "admin"; }

// With [control] a change is validated but not applied: the operator signs and publishes it (docs/console.md).
function showToPublish(where, data) {
  where.replaceChildren(el("div", { class: "card to-publish", id: "config-to-publish" },
    el("p", { class: "allow" }, "Valid, not applied: this node takes its policy from the control plane."),
    el("p", {}, `Save the text below as ${data.source} and publish it with the operator's key: `,
      el("code", {}, data.publish)),
    el("pre", {}, data.toml)));
  status("Validated. Publish it through the control plane to apply it.");
}

async function addException(body, where) {
  const result = await api("POST", "/v1/exceptions", body);
  if (result.status === 202) {
    showToPublish(where, result.data);
  } else if (result.ok) {
    const text = `Exception added: ${body.name} in ${result.data.added.join(", ")}. Serving it now.`;
    where.replaceChildren(el("p", { class: "allow exception-added", role: "status" }, text));
    status(text);
  } else {
    where.replaceChildren(el("p", { class: "deny" }, (result.data && result.data.error) || "failed"));
    status((result.data && result.data.error) || "failed", true);
  }
}

const DECISIONS = ["", "allow", "deny", "refuse", "none"];
const query = { name: "", client: "", identity: "", decision: "", minutes: "" };

async function querylog(page) {
  page.append(el("h1", {}, "Query log"));
  const field = (key, label, attrs = {}) => el("div", {}, el("label", { for: `q-${key}` }, label),
    el("input", { id: `q-${key}`, name: key, value: query[key], ...attrs }));
  const decision = el("select", { id: "q-decision", name: "decision" },
    DECISIONS.map((d) => el("option", d === query.decision ? { value: d, selected: "" } : { value: d }, d || "any")));
  const form = el("form", { class: "card", id: "querylog-form", role: "search" },
    el("div", { class: "row" }, field("name", "Name contains"), field("client", "Client"),
      field("identity", "Identity"), el("div", {}, el("label", { for: "q-decision" }, "Decision"), decision),
      field("minutes", "Last minutes", { inputmode: "numeric", size: 6 })),
    el("button", { type: "submit", id: "querylog-search" }, "Search"));
  const results = el("div", { id: "querylog-results", "aria-live": "polite" });
  page.append(form, results);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const key of Object.keys(query)) query[key] = $(`q-${key}`).value.trim();
    search(results, null);
  });
  await search(results, null);
}

async function search(results, before) {
  const params = new URLSearchParams({ limit: "100" });
  for (const key of ["name", "client", "identity", "decision"]) if (query[key]) params.set(key, query[key]);
  if (query.minutes && Number(query.minutes) > 0) params.set("since", String(Date.now() / 1000 - query.minutes * 60));
  if (before !== null) params.set("before", String(before));
  const { ok, data } = await api("GET", `/v1/querylog?${params}`);
  if (!ok) return failed(results, data);
  if (!data.available) {
    results.replaceChildren();
    notAvailable(results, data);
    if (data.windows.length) results.append(el("h2", {}, "Aggregate windows"), windowsTable(data.windows));
    return;
  }
  const rows = data.records.map((r) => {
    const explainCell = el("td", { class: "actions" });
    const button = el("button", { type: "button", class: "explain", "aria-label": `Explain ${r.qname || ""}` },
      "Explain this");
    explainCell.append(button);
    const row = el("tr", { "data-seq": r.seq, class: r.decision === "deny" || r.decision === "refuse" ? "blocked" : "" },
      el("td", {}, when(r.time)), el("td", {}, r.client + (r.certificate ? ` (${r.certificate})` : "")),
      el("td", {}, r.identity || "—"), el("td", { class: "name" }, r.qname || ""), el("td", {}, r.qtype || ""),
      el("td", { class: r.decision === "allow" ? "allow" : r.decision === "none" ? "" : "deny" }, r.decision),
      el("td", {}, [r.policy, r.rule].filter(Boolean).join(" ") || "—"),
      el("td", {}, r.rcode + (r.ede !== null ? ` EDE ${r.ede}` : "") + (r.detection ? ` ${r.detection}` : "")),
      explainCell);
    button.addEventListener("click", () => explainRecord(row, r));
    return row;
  });
  const body = el("tbody", {}, rows);
  const headers = ["time", "client", "identity", "name", "type", "decision", "rule", "answer", ""];
  const older = el("button", { type: "button", id: "querylog-older", hidden: data.more ? null : "" }, "Older");
  older.addEventListener("click", () => search(results, data.records[data.records.length - 1].seq));
  results.replaceChildren(
    el("p", { class: "hint" }, `${data.records.length} shown of ${data.held} kept (privacy ${data.privacy}).`),
    el("table", { id: "querylog-table" },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))), body),
    older);
}

async function explainRecord(row, record) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("explained")) { next.remove(); return; }
  const cell = el("td", { colspan: 9 }, el("p", { class: "hint" }, "Explaining…"));
  const detail = el("tr", { class: "explained" }, cell);
  row.after(detail);
  const client = record.identity || record.client;
  const { ok, data } = await api("POST", "/v1/explain", { client, name: record.qname || "", type: record.qtype || "A" });
  if (!ok) { cell.replaceChildren(el("p", { class: "deny" }, data.error)); return; }
  cell.replaceChildren(el("h2", {}, `Why ${record.qname} gets this answer for ${client}`), ...explained(data));
  if (data.decision === "deny" && canChange()) {
    const outcome = el("div", { "aria-live": "polite" });
    const button = el("button", { type: "button", class: "add-exception" }, `Add an exception for ${record.qname}`);
    button.addEventListener("click", () => {
      button.disabled = true;
      addException({ client, name: record.qname, type: record.qtype || "A" }, outcome);
    });
    cell.append(button, outcome);
  }
  cell.querySelector("h2").setAttribute("tabindex", "-1");
  cell.querySelector("h2").focus();
}

function windowsTable(windows) {
  return table(["start", "end", "queries", "decisions", "names (≥ k clients)"], windows.slice().reverse().map((w) => [
    w.start, w.end, w.queries, Object.entries(w.decisions).map(([k, v]) => `${k} ${v}`).join(", "),
    Object.entries(w.names).map(([k, v]) => `${k} ${v}`).join("\n")]));
}

async function detections(page) {
  const { ok, data } = await api("GET", "/v1/detections");
  page.append(el("h1", {}, "Detections"));
  if (!ok) return failed(page, data);
  if (!data.available) {
    notAvailable(page, data);
    if (Object.keys(data.counts).length) page.append(...counts("detector", data.counts));
    return;
  }
  if (!data.detections.length) page.append(el("p", { class: "hint" }, "No verdicts seen."));
  for (const d of data.detections) {
    const outcome = el("div", { "aria-live": "polite" });
    const card = el("section", { class: `card detection ${d.in_force ? "in-force" : ""}` },
      el("h2", {}, `${d.detector}: ${d.key}`),
      table(["fact", "value"], [
        ["action", `${d.action} (${d.mode})`], ["measured", `${d.measured || "—"} (limit ${d.limit || "—"})`],
        ["until", `${d.until || "—"}${d.in_force ? " — in force" : " — expired"}`],
        ["seen", `${when(d.first_seen)} … ${when(d.last_seen)} (${d.events} events)`], ["text", d.text || "—"]]),
      el("details", {}, el("summary", {}, "Evidence"), el("pre", { class: "evidence" },
        JSON.stringify(d.evidence, null, 1))));
    if (d.domain && canChange()) {
      const button = el("button", { type: "button", class: "add-exception" },
        `Add ${d.domain} to the detectors' allow-list`);
      button.addEventListener("click", () => {
        button.disabled = true;
        addException({ name: d.domain, scope: "detect" }, outcome);
      });
      card.append(button);
    }
    card.append(outcome);
    page.append(card);
  }
}

async function lists(page) {
  const { ok, data } = await api("GET", "/v1/lists");
  page.append(el("h1", {}, "Lists and feeds"));
  if (!ok) return failed(page, data);
  if (!data.lists.length) page.append(el("p", { class: "hint" }, "No policy uses a list."));
  else page.append(table(["list", "kind", "used by", "entries / size", "copy", "last success", "last error"],
    data.lists.map((l) => [l.source, l.kind, l.used_by.map((u) => `${u.policy} (${u.used_as})`).join(", "),
      l.kind === "feed" ? l.entries : `${l.size === null ? "—" : l.size} bytes`,
      when(l.kind === "feed" ? l.copy_time : l.modified), when(l.last_success),
      l.last_error ? el("span", { class: "deny" }, `${l.last_error}${l.failures ? ` (${l.failures} failures)` : ""}`)
        : "—"])));
}

async function agents(page) {
  const { ok, data } = await api("GET", "/v1/agents");
  page.append(el("h1", {}, "Agents and fleet nodes"));
  if (!ok) return failed(page, data);
  if (!data.available) return notAvailable(page, data);
  page.append(el("p", {}, "Published: " + (Object.entries(data.published).map(([r, v]) => `${r} revision ${v}`)
    .join(", ") || "nothing")),
  table(["node", "role", "identity", "revision", "state", "last seen", "health", "reason"], data.nodes.map((n) =>
    [n.node || "", n.role || "", n.identity || "", n.revision ?? "", n.state || "", when(n.seen), n.health || "",
      n.reason || ""])));
}

async function flows(page) {
  const { ok, data } = await api("GET", "/v1/flows");
  page.append(el("h1", {}, "Flows"));
  if (!ok) return failed(page, data);
  if (!data.available) return notAvailable(page, data);
  if (!data.flows.length) page.append(el("p", { class: "hint" }, "No flow records in the last hour."));
  else page.append(table(["node", "record"], data.flows.map((f) => [f.node || "", JSON.stringify(f.record)])));
}

function failed(page, data) {
  page.append(el("p", { class: "deny" }, (data && data.error) || "request failed"));
}

const PAGES = {
  overview: overview, identities: identities, editor: editor, zones: zones, attestation: attestation,
  querylog: querylog, detections: detections, agents: agents, flows: flows, lists: lists,
};

async function show() {
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const page = el("section", { id: "page", "data-page": name });
  $("page").replaceWith(page);
  status("");
  await PAGES[name](page);
  const heading = page.querySelector("h1");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
}

async function start() {
  const session = await api("GET", "/v1/session");
  const loggedIn = session.ok;
  $("login").hidden = loggedIn;
  $("nav").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  if (!loggedIn) { $("page").replaceChildren(); $("token").focus(); return; }
  state.csrf = session.data.csrf;
  state.role = session.data.role;
  $("who").textContent = `${session.data.name} (${session.data.role})`;
  await show();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = await api("POST", "/v1/session", { token: $("token").value });
  $("token").value = "";
  if (!result.ok) { status(result.data.error, true); return; }
  await start();
});
$("logout").addEventListener("click", async () => {
  await api("DELETE", "/v1/session");
  state.csrf = null;
  $("who").textContent = "";
  await start();
});
window.addEventListener("hashchange", () => { if (state.role) show(); });
start();
