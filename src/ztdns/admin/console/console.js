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
  const { ok, data } = await api("GET", "/v1/stats");
  if (!ok) return failed(page, data);
  const blocked = (data.by_kind.blocked || 0) + (data.by_kind.prohibited || 0);
  page.append(
    el("h1", {}, "Overview"),
    el("div", { class: "card row" },
      el("p", {}, el("strong", { id: "queries-total" }, String(data.queries_total)), " queries answered"),
      el("p", {}, el("strong", { id: "queries-blocked" }, String(blocked)), " blocked or prohibited"),
      el("p", {}, "latency sum ", el("strong", {}, data.latency_seconds_sum.toFixed(3)), " s")),
    ...counts("kind", data.by_kind), ...counts("transport", data.by_transport), ...counts("rcode", data.by_rcode),
    el("h2", {}, "All metric samples"),
    table(["metric", "labels", "value"], data.samples.map((s) =>
      [s.name, Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(", "), s.value])));
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
    const ede = data.ede.map((e) => `EDE ${e.code} (${e.name}) ${e.text}`).join("; ");
    result.replaceChildren(
      table(["fact", "value"], [
        ["identity", data.identity ? `${data.identity} (${data.identity_how})` : "none: unknown client"],
        ["question", `${data.question || ""} ${data.qtype || ""}`],
        ["decision", el("span", { class: data.decision === "allow" ? "allow" : "deny", id: "explain-decision" },
          data.decision + (data.decided_name ? ` (at CNAME target ${data.decided_name})` : ""))],
        ["policy", data.policy || "—"], ["rule", data.rule || "—"], ["from", data.origin || "—"],
        ["outcome", data.outcome], ["response", `${data.rcode || "dropped"}${ede ? ", " + ede : ""}`]]),
      el("pre", {}, data.response || ""));
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
    if (result.ok) {
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

function unavailable(path, title) {
  return async (page) => {
    const { status: code, data } = await api("GET", path);
    page.append(el("h1", {}, title));
    if (code === 501) {
      page.append(el("div", { class: "card unavailable" },
        el("p", {}, el("strong", {}, "Not available in this build. ")), el("p", { class: "reason" }, data.reason)));
    } else {
      page.append(el("pre", {}, JSON.stringify(data, null, 1)));
    }
  };
}

function failed(page, data) {
  page.append(el("p", { class: "deny" }, (data && data.error) || "request failed"));
}

const PAGES = {
  overview: overview, identities: identities, editor: editor, zones: zones, attestation: attestation,
  querylog: unavailable("/v1/querylog", "Query log"), detections: unavailable("/v1/detections", "Detections"),
  agents: unavailable("/v1/agents", "Agents"), flows: unavailable("/v1/flows", "Flows"),
  lists: unavailable("/v1/lists", "List feeds"),
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
