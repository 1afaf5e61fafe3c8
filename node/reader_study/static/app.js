// synthlearn reader study page: no dependency, no request to any other host.
// Every name from the server is shown with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { study: null, reader: null, position: null, pending: null, busy: false };

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function showAlert(text, kind, retry) {
  $("alert").hidden = false;
  $("alert").className = "alert" + (kind === "error" ? " error" : "");
  $("alert-text").textContent = text;
  $("retry").hidden = !retry;
}
function clearAlert() { $("alert").hidden = true; $("retry").hidden = true; }

class ServerDown extends Error {}

async function api(path, body) {
  let resp;
  try {
    resp = await fetch(path, body === undefined ? { cache: "no-store" } : {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ServerDown("The study server is not answering.");
  }
  let data = null;
  try { data = await resp.json(); } catch (err) { data = null; }
  if (!resp.ok) {
    let msg = data && (data.error || data.detail) || ("server error " + resp.status);
    if (Array.isArray(msg)) msg = msg.map((d) => d.msg).join("; ");
    const e = new Error(msg);
    e.status = resp.status;
    throw e;
  }
  return data;
}

function downMessage() {
  return "The study server stopped. Every answer you gave before this one is saved; this " +
    "one is not yet. Ask the admin to start `synthlearn node reader-study` again, then " +
    "press Retry (or reload the page) to go on where you left off.";
}

// -- tabs -------------------------------------------------------------------------------
function showTab(name) {
  for (const t of document.querySelectorAll(".tab")) {
    t.classList.toggle("active", t.dataset.tab === name);
  }
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== name;
  if (name === "results") loadResults().catch(handleError);
  if (name === "gallery") loadGallery().catch(handleError);
}

function handleError(err) {
  if (err instanceof ServerDown) showAlert(downMessage(), "error", false);
  else showAlert(err.message, "error", false);
}

// -- study ------------------------------------------------------------------------------
async function loadStudy() {
  state.study = await api("/api/study");
  const box = $("readers");
  box.replaceChildren();
  for (const name of state.study.readers) {
    const b = el("button", name, { "data-reader": name });
    b.addEventListener("click", () => startReader(name));
    box.appendChild(b);
  }
  if (!state.study.readers.length) {
    box.appendChild(el("p", "No readers yet: the admin names them with --reader NAME."));
  }
  const cls = $("classes");
  cls.replaceChildren();
  const options = [["", "not sure"]].concat(state.study.class_names.map((c) => [c, c]));
  for (const [value, label] of options) {
    const l = el("label");
    const r = el("input", null, { type: "radio", name: "class", value: value });
    if (value === "") r.checked = true;
    l.append(r, " " + label);
    cls.appendChild(l);
  }
  const conf = $("confidence");
  conf.replaceChildren();
  for (const [value, label] of [["", "–"], ["1", "1 guess"], ["2", "2"], ["3", "3"],
                                ["4", "4"], ["5", "5 certain"]]) {
    const l = el("label");
    const r = el("input", null, { type: "radio", name: "confidence", value: value });
    if (value === "") r.checked = true;
    l.append(r, " " + label);
    conf.appendChild(l);
  }
  const hash = new URLSearchParams(location.hash.slice(1));
  const wanted = hash.get("reader");
  if (wanted && state.study.readers.includes(wanted)) await startReader(wanted);
}

async function startReader(name) {
  state.reader = name;
  history.replaceState(null, "", "#reader=" + encodeURIComponent(name));
  const p = await api("/api/reader/" + encodeURIComponent(name));
  render(p);
}

function render(p) {
  $("pick").hidden = true;
  if (p.finished) {
    $("read").hidden = true;
    $("done").hidden = false;
    $("done-who").textContent = p.reader;
    return;
  }
  $("done").hidden = true;
  $("read").hidden = false;
  $("who").textContent = p.reader;
  $("pos").textContent = String(p.answered + 1);
  $("total").textContent = String(p.total);
  state.position = p.next;
  for (const r of document.querySelectorAll("input[name=class], input[name=confidence]")) {
    r.checked = r.value === "";
  }
  // The answer buttons wake up only once the new image is on screen (and a moment later),
  // so a double click cannot answer an image the reader has not seen.
  setBusy(true);
  const img = $("image");
  img.onload = () => setTimeout(() => setBusy(false), 250);
  img.onerror = () => {
    showAlert("This image could not be loaded; reload the page to try again.", "error", false);
  };
  img.dataset.position = String(p.next);
  img.src = "/api/reader/" + encodeURIComponent(p.reader) + "/image/" + p.next + ".png";
}

function setBusy(busy) {
  state.busy = busy;
  for (const b of document.querySelectorAll(".call")) b.disabled = busy;
}

async function submit(call) {
  // One answer in flight at a time; the server also stores a double submit only once.
  if (state.position === null || state.reader === null || state.busy) return;
  const cls = document.querySelector("input[name=class]:checked");
  const conf = document.querySelector("input[name=confidence]:checked");
  state.pending = {
    reader: state.reader, position: state.position, call: call,
    class_name: cls && cls.value ? cls.value : null,
    confidence: conf && conf.value ? Number(conf.value) : null,
  };
  await send();
}

async function send() {
  const answer = state.pending;
  if (!answer) return;
  setBusy(true);
  try {
    const p = await api("/api/answer", answer);
    state.pending = null;
    clearAlert();
    render(p);
  } catch (err) {
    if (err instanceof ServerDown) {
      showAlert(downMessage(), "error", true);
      setBusy(false);
    } else if (err.status === 409) {
      // Answered already (another window): the first answer counts; move on.
      state.pending = null;
      showAlert(err.message, "warn", false);
      render(await api("/api/reader/" + encodeURIComponent(answer.reader)));
    } else {
      state.pending = null;
      showAlert(err.message, "error", false);
      setBusy(false);
    }
  }
}

// -- results ----------------------------------------------------------------------------
function prop(p) {
  if (!p || p.value === null || p.value === undefined) return "–";
  return p.value.toFixed(2) + " [" + p.ci_low.toFixed(2) + ", " + p.ci_high.toFixed(2) +
    "] (" + p.k + "/" + p.n + ")";
}

function resultRow(name, r, cls) {
  const tr = el("tr", null, cls ? { class: cls } : {});
  tr.appendChild(el("td", name));
  tr.appendChild(el("td", r.answered + " / " + r.total));
  if (!r.finished && cls !== "pooled") {
    tr.appendChild(el("td", "in progress: shown when finished", { colspan: "6" }));
    return tr;
  }
  for (const key of ["accuracy", "synthetic_called_real", "real_called_synthetic",
                     "class_agreement_synthetic", "class_agreement_real"]) {
    tr.appendChild(el("td", prop(r[key]), { "data-key": key }));
  }
  tr.appendChild(el("td", r.mean_confidence === null ? "–" : r.mean_confidence.toFixed(2)));
  return tr;
}

async function loadResults() {
  const res = await api("/api/results");
  $("verdict").textContent = res.verdict;
  const body = document.querySelector("#results-table tbody");
  body.replaceChildren();
  for (const r of res.readers) body.appendChild(resultRow(r.reader, r, ""));
  body.appendChild(resultRow("Pooled (finished readers)", res.pooled, "pooled"));
}

// -- gallery ----------------------------------------------------------------------------
async function loadGallery(select) {
  const sets = (await api("/api/gallery")).sets;
  const s = $("g-set");
  const keep = select || s.value;
  s.replaceChildren();
  for (const name of sets) s.appendChild(el("option", name, { value: name }));
  if (!sets.length) {
    $("g-count").textContent = "No synthetic set yet: run `synthlearn node generate` first.";
    return;
  }
  if (keep && sets.includes(keep)) s.value = keep;
  await showSet(true);
}

async function showSet(refillClasses) {
  const name = $("g-set").value;
  const cls = $("g-class").value;
  const q = !refillClasses && cls ? "?class_name=" + encodeURIComponent(cls) : "";
  const listing = await api("/api/gallery/" + encodeURIComponent(name) + q);
  if (refillClasses) {
    const sel = $("g-class");
    const before = sel.value;
    sel.replaceChildren(el("option", "all classes", { value: "" }));
    for (const c of listing.class_names) sel.appendChild(el("option", c, { value: c }));
    if (listing.class_names.includes(before)) {
      sel.value = before;
      return showSet(false);
    }
  }
  const grid = $("g-grid");
  grid.replaceChildren();
  const shown = listing.indices.slice(0, 200);
  shown.forEach((i, j) => {
    const f = el("figure");
    const img = el("img", null, { alt: "synthetic " + listing.labels[j], loading: "lazy",
      src: "/api/gallery/" + encodeURIComponent(name) + "/image/" + i + ".png" });
    f.append(img, el("figcaption", listing.labels[j]));
    grid.appendChild(f);
  });
  $("g-count").textContent = listing.indices.length + " synthetic images" +
    (listing.truncation !== null && listing.truncation !== undefined ?
      " (ψ " + listing.truncation + ")" : "") +
    (listing.indices.length > shown.length ? ", first " + shown.length + " shown" : "");
  const sheet = "/api/gallery/" + encodeURIComponent(name) + "/sheet.png" +
    ($("g-class").value ? "?class_name=" + encodeURIComponent($("g-class").value) : "");
  $("g-sheet").setAttribute("href", sheet);
}

async function generate() {
  const cls = $("g-class").value;
  if (!cls) { showAlert("Pick a class first: new images are drawn one class at a time.",
                        "warn", false); return; }
  $("g-generate").disabled = true;
  $("g-count").textContent = "Generating…";
  try {
    const listing = await api("/api/gallery/generate", {
      class_name: cls, n: Number($("g-n").value), truncation: Number($("g-psi").value) });
    clearAlert();
    await loadGallery(listing.set);
  } finally {
    $("g-generate").disabled = false;
  }
}

// -- wiring -----------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  for (const t of document.querySelectorAll(".tab")) {
    t.addEventListener("click", () => showTab(t.dataset.tab));
  }
  for (const b of document.querySelectorAll(".call")) {
    b.addEventListener("click", () => submit(b.dataset.call).catch(handleError));
  }
  $("retry").addEventListener("click", () => {
    if (state.pending) send().catch(handleError);
    else location.reload();
  });
  $("switch").addEventListener("click", () => {
    history.replaceState(null, "", "#");
    state.reader = null;
    $("read").hidden = true; $("done").hidden = true; $("pick").hidden = false;
  });
  document.addEventListener("keydown", (e) => {
    if ($("read").hidden || $("study").hidden || e.target.tagName === "INPUT" &&
        e.target.type === "number") return;
    if (e.key === "r" || e.key === "R") submit("real").catch(handleError);
    if (e.key === "s" || e.key === "S") submit("synthetic").catch(handleError);
  });
  $("g-set").addEventListener("change", () => showSet(true).catch(handleError));
  $("g-class").addEventListener("change", () => showSet(false).catch(handleError));
  $("g-psi").addEventListener("input", () => {
    $("g-psi-out").textContent = Number($("g-psi").value).toFixed(2);
  });
  $("g-generate").addEventListener("click", () => generate().catch(handleError));
  loadStudy().catch(handleError);
});
