// twentyq — watch it think. Plain JS, no libraries: reads GET /v1/models and /v1/systems, posts one image
// to POST /v1/classify?trace=1 and replays its questions step by step. Every server error
// ({"error": {code, message, field}}) is shown as this page's own message.
"use strict";

const STOPS = {
  confident: "confident: the top class reached τ",
  no_gain: "no gain: no question left was expected to tell enough",
  budget: "budget: the next question would cost more prompts than are left",
  exhausted: "exhausted: every question was asked",
  settled: "settled: the questions left were unlikely to move the answer",
  error: "error: the image could not be scored",
};

const state = { options: null, modelLabel: "", panels: [] };

function $(root, sel) { return root.querySelector(sel); }
function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    // styles through the CSSOM: the page's Content-Security-Policy (style-src 'self') refuses style="" attributes
    else if (k === "style") Object.assign(e.style, v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}
const pct = (p) => (100 * p).toFixed(1) + "%";
const num = (x, d = 3) => Number(x).toFixed(d);

function headers() {
  const key = document.getElementById("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

// One fetch: the parsed JSON, or an Error whose message is the server's own (or says what failed).
async function api(path, init = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  } catch (e) {
    throw new Error(`could not reach the server (${e.message}); is twentyq serve still running?`);
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok || body === null) {
    const err = body && body.error;
    if (err && err.message) {
      const where = err.field ? ` [${err.field}]` : "";
      throw new Error(`${err.message}${where} (HTTP ${resp.status}, ${err.code})`);
    }
    throw new Error(`the server answered HTTP ${resp.status} without a readable message`);
  }
  return body;
}

// what the server ran the image with, after a calibration's choices (the answer's stop_rule)
function ruleLine(r) {
  if (!r) return "";
  const parts = [`policy ${r.policy}`, `τ ${num(r.tau, 2)}`];
  if (r.target) {
    parts[1] += r.target.reached ? ` (chosen on the calibration's dev images for target accuracy ${r.target.target_accuracy})`
      : ` (target accuracy ${r.target.target_accuracy} not reached on the calibration's dev images: no early stop)`;
  }
  if (r.settle !== null) parts.push(`settle ${num(r.settle, 2)}`);
  if (r.delta) parts.push(`δ ${r.delta}`);
  parts.push(r.budget === null ? "no budget" : `budget ${r.budget}`);
  return "Ran with: " + parts.join(", ") + ".";
}

function showError(box, msg) {
  box.textContent = msg;
  box.hidden = !msg;
}

// ----------------------------------------------------------------------------- options
async function loadOptions() {
  const pageErr = document.getElementById("page-error");
  showError(pageErr, "");
  try {
    const [models, systems] = await Promise.all([api("v1/models"), api("v1/systems")]);
    const m = models.models[0];
    state.modelLabel = m.label || m.model;
    state.options = systems;
    document.getElementById("model-label").textContent = state.modelLabel;
    for (const p of state.panels) p.fillOptions();
  } catch (e) {
    document.getElementById("model-label").textContent = "unknown (the server did not say)";
    showError(pageErr, e.message);
  }
}

// ----------------------------------------------------------------------------- one panel
class Panel {
  constructor(n, policy) {
    this.n = n;
    this.record = null;
    this.step = 0;
    this.timer = null;
    const node = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
    this.node = node;
    const title = $(node, ".panel-title");
    title.id = `panel-${n}-title`;
    title.textContent = n === 1 ? "Image A" : "Image B (compare)";
    node.setAttribute("aria-labelledby", title.id);
    node.id = `panel-${n}`;
    // unique ids for label/for pairs are not needed (inputs sit inside their labels)
    this.form = $(node, "form");
    this.file = $(node, ".file");
    this.preview = $(node, ".preview");
    this.err = $(node, ".panel-error");
    this.result = $(node, ".result");
    this.slider = $(node, ".slider");
    this.wantPolicy = policy;
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.classify(); });
    this.file.addEventListener("change", () => this.picked(this.file.files[0]));
    const drop = $(node, ".drop");
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      const f = ev.dataTransfer.files[0];
      if (f) { this.dropped = f; this.picked(f); }
    });
    $(node, ".first").addEventListener("click", () => this.go(0));
    $(node, ".prev").addEventListener("click", () => this.go(this.step - 1));
    $(node, ".next").addEventListener("click", () => this.go(this.step + 1));
    $(node, ".last").addEventListener("click", () => this.go(this.nSteps()));
    $(node, ".play").addEventListener("click", () => this.play());
    this.slider.addEventListener("input", () => this.go(Number(this.slider.value)));
    document.getElementById("panels").append(node);
    if (state.options) this.fillOptions();
  }

  fillOptions() {
    const o = state.options;
    const sys = $(this.node, ".system"), pol = $(this.node, ".policy");
    sys.replaceChildren(...o.systems.map((s) =>
      el("option", { value: s.name, text: `${s.name} (${s.n_classes} classes, ${s.n_groups} groups)` })));
    const def = o.systems.find((s) => s.default);
    if (def) sys.value = def.name;
    pol.replaceChildren(...o.policies.map((p) => el("option", { value: p, text: p })));
    pol.value = o.policies.includes(this.wantPolicy) ? this.wantPolicy : o.policies[0];
  }

  picked(f) {
    if (!f) return;
    this.preview.src = URL.createObjectURL(f);
    this.preview.alt = `the chosen image, ${f.name}`;
    this.preview.hidden = false;
    $(this.node, ".file-name").textContent = `Chosen: ${f.name}`;
  }

  async classify() {
    showError(this.err, "");
    const f = this.dropped && !this.file.files.length ? this.dropped : this.file.files[0];
    if (!f) { showError(this.err, "choose an image first (or drop one on the image box)"); return; }
    const q = new URLSearchParams({ trace: "1", top_k: "5" });
    q.set("system", $(this.node, ".system").value);
    q.set("policy", $(this.node, ".policy").value);
    const budget = $(this.node, ".budget").value.trim(), tau = $(this.node, ".tau").value.trim();
    if (budget !== "") q.set("budget", budget);
    if (tau !== "") q.set("tau", tau);
    const settle = $(this.node, ".settle").value.trim(), target = $(this.node, ".target").value.trim();
    if (settle !== "") q.set("settle", settle);
    if (target !== "") q.set("target_accuracy", target);
    const fd = new FormData();
    fd.append("image", f, f.name);
    const btn = $(this.node, ".classify");
    btn.disabled = true;
    btn.textContent = "Classifying…";
    try {
      const body = await api("v1/classify?" + q.toString(), { method: "POST", body: fd });
      const rec = body.results[0];
      if (rec.error) throw new Error(`${rec.image}: ${rec.error}`);
      this.show(rec, body, budget === "" ? null : Number(budget));
    } catch (e) {
      this.result.hidden = true;
      showError(this.err, e.message);
    } finally {
      btn.disabled = false;
      btn.textContent = "Classify";
    }
  }

  nSteps() { return this.record ? this.record.asked.length : 0; }

  show(rec, body, budget) {
    this.record = rec;
    this.budget = budget;
    this.nClasses = (state.options.systems.find((s) => s.name === body.system) || {}).n_classes;
    $(this.node, ".summary").textContent =
      `Answer: ${rec.label} (${pct(rec.confidence)}) after ${rec.asked.length} question` +
      `${rec.asked.length === 1 ? "" : "s"}, system ${body.system}.`;
    $(this.node, ".stop").textContent = "Stopped because: " + (STOPS[rec.stop] || rec.stop);
    $(this.node, ".rule").textContent = ruleLine(body.stop_rule);
    $(this.node, ".model-line").textContent = `Model: ${state.modelLabel || body.model}`;
    const steps = $(this.node, ".steps");
    steps.replaceChildren(...rec.asked.map((s, i) => el("li", {
      "data-step": String(i + 1),
      text: `Q${i + 1}: asked “${s.group}” (EIG ${num(s.eig)} nats) → answer “${s.answer}” ` +
            `(p ${pct(s.answer_prob)}); top class now ${pct(s.confidence_after)}` +
            (s.q_spent != null ? `; Q spent ${s.q_spent}` : ""),
    })));
    this.slider.max = String(rec.asked.length);
    this.result.hidden = false;
    this.go(rec.asked.length);
  }

  go(i) {
    if (!this.record) return;
    const n = this.nSteps();
    this.step = Math.max(0, Math.min(n, i));
    const rec = this.record, k = this.step;
    this.slider.value = String(k);
    this.slider.setAttribute("aria-valuetext", `step ${k} of ${n}`);
    $(this.node, ".first").disabled = $(this.node, ".prev").disabled = k === 0;
    $(this.node, ".next").disabled = $(this.node, ".last").disabled = k === n;
    // prompts spent after step k (the trace's q_spent; the record's total at the end)
    const spent = k === 0 ? 0 : (rec.asked[k - 1].q_spent ?? (k === n ? rec.q_spent : null));
    const qtext = $(this.node, ".qtext"), prog = $(this.node, ".qprogress");
    const of = this.budget === null ? "no budget limit" : `of a budget of ${this.budget}`;
    qtext.textContent = `Q spent: ${spent === null ? "?" : spent} prompts ${of} (question ${k} of ${n})`;
    prog.max = this.budget || Math.max(rec.q_spent, 1);
    prog.value = spent || 0;
    prog.setAttribute("aria-label", `prompts spent ${spent} ${of}`);
    const items = [...$(this.node, ".steps").children];
    items.forEach((li, j) => {
      li.classList.toggle("future", j >= k);
      if (j === k - 1) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
    });
    const bars = $(this.node, ".bars"), title = $(this.node, ".bars-title");
    if (k === 0) {
      title.textContent = "Top classes before any question";
      const u = this.nClasses ? 1 / this.nClasses : null;
      bars.replaceChildren(el("li", { class: "prior", text: u === null ? "the prior (uniform)" :
        `every class: ${pct(u)} (uniform prior over ${this.nClasses} classes)` }));
      $(this.node, ".step-status").textContent = `Step 0 of ${n}: nothing asked yet.`;
      return;
    }
    const s = rec.asked[k - 1];
    title.textContent = `Top classes after Q${k}` + (k === n ? " (final)" : "");
    const top = s.top || (k === n ? rec.top : []);
    bars.replaceChildren(...top.map(([label, p], j) => {
      const li = el("li", { class: j === 0 ? "lead" : "" },
        el("span", { class: "cls", text: (j === 0 ? "★ " : "") + label }),
        el("span", { class: "bar", role: "img", "aria-label": `${label} ${pct(p)}` },
          el("span", { style: { width: `${Math.max(0, Math.min(100, 100 * p)).toFixed(2)}%` } })),
        el("span", { class: "pct", text: pct(p) }));
      return li;
    }));
    $(this.node, ".step-status").textContent =
      `Step ${k} of ${n}: asked “${s.group}”, answer “${s.answer}” (p ${pct(s.answer_prob)}); ` +
      `leading: ${top.length ? top[0][0] + " " + pct(top[0][1]) : "?"}` +
      (k === n ? `. Stopped: ${rec.stop}.` : ".");
  }

  play() {
    if (!this.record) return;
    clearInterval(this.timer);
    this.go(0);
    this.timer = setInterval(() => {
      if (this.step >= this.nSteps()) { clearInterval(this.timer); return; }
      this.go(this.step + 1);
    }, 700);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  state.panels.push(new Panel(1, "eig"));
  const cmp = document.getElementById("compare");
  cmp.addEventListener("click", () => {
    if (state.panels.length === 1) {
      const other = state.options && state.options.policies.find((p) => p !== $(state.panels[0].node, ".policy").value);
      state.panels.push(new Panel(2, other || "random"));
      cmp.disabled = true;
      cmp.textContent = "Second image shown (Image B)";
      $(state.panels[1].node, ".file").focus();
    }
  });
  document.getElementById("reload").addEventListener("click", loadOptions);
  loadOptions();
});
