// The pixlake search page: plain browser JavaScript over the HTTP API, no build step.
// The API key lives in sessionStorage (this tab only) and is sent as a Bearer header;
// thumbnails are fetched with it too, so no key ever appears in a URL.
"use strict";

const KEY_STORAGE = "pixlake.apiKey";
const SLOW_AFTER_MS = 1500; // past this, say the search is still running
const TIMEOUT_MS = 120000; // then give up and say so
const THUMB_SIDE = 256;
const THUMB_PARALLEL = 6;
const MESSAGES = {
  401: "The API key was not accepted. Check it and enter it again.",
  403: "This API key may not search.",
  413: "The image is too large for this service.",
  415: "That file is not an image this service reads (JPEG, PNG, WebP, GIF, BMP or TIFF).",
  422: "The search was not accepted.",
  429: "Too many requests with this key.",
  503: "The service is starting or restarting.",
};

const $ = (id) => document.getElementById(id);
// similar: the result a "more like this" search starts from ({id, name}), or null
const state = { image: null, imageName: "", similar: null, controller: null, objectUrls: [], generation: 0 };

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// A key typed into the field is the key to use, whether the user pressed "Use key" or went
// straight to a search: adopt it, once, into this tab's session storage.
function adoptTypedKey() {
  const key = $("api-key").value.trim();
  if (!key) return false;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  showKey();
  return true;
}

function showKey() {
  const set = Boolean(apiKey());
  $("key-form").hidden = set;
  $("key-set").hidden = !set;
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  return fetch(path, { ...options, headers });
}

// --- errors and status --------------------------------------------------------------------

async function errorOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  return { status: response.status, code: body.error || "", message: body.message || response.statusText,
           retryAfter: response.headers.get("Retry-After") };
}

function showError(err) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  const known = MESSAGES[err.status];
  title.textContent = err.status ? `${known || "The search failed."} (HTTP ${err.status})` : "Could not reach the service.";
  box.append(title);
  const detail = document.createElement("span");
  let text = err.message || "";
  if (err.retryAfter) text += ` Try again in ${err.retryAfter} s.`;
  detail.textContent = text;
  box.append(detail);
  box.hidden = false;
  if (err.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    showKey();
    $("api-key").focus();
  }
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function setStatus(text) {
  $("status").textContent = text;
}

// --- the query ------------------------------------------------------------------------------

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

// A typed value is sent both as text and, when it reads as one, as a number or boolean:
// the filter matches either, so "2" finds a count of 2 and a label "2" alike.
function filterValues(raw) {
  const values = [];
  for (const part of raw.split(",").map((s) => s.trim()).filter(Boolean)) {
    values.push(part);
    if (/^-?\d+(\.\d+)?$/.test(part)) values.push(Number(part));
    if (part === "true" || part === "false") values.push(part === "true");
  }
  return values;
}

function readFilters() {
  const filter = {};
  for (const row of document.querySelectorAll(".filter-row")) {
    const key = row.querySelector(".filter-key").value.trim();
    const values = filterValues(row.querySelector(".filter-value").value);
    if (key && values.length) filter[key] = values;
  }
  return Object.keys(filter).length ? filter : null;
}

function buildQuery() {
  const text = $("q").value.trim();
  const body = { k: Number($("k").value) };
  if ($("collapse").checked) body.collapse_duplicates = true;
  const filter = readFilters();
  if (filter) body.filter = filter;
  if (state.similar) {  // the stored item's own vector: no text or image with it
    body.item_id = state.similar.id;
    return body;
  }
  if (text) body.text = text;
  if (state.image) body.image = bytesToBase64(state.image);
  if (text && state.image) {
    const w = Number($("weight").value) / 100;
    body.weights = { text: 1 - w, image: w };
  }
  return body;
}

async function search(event) {
  if (event) event.preventDefault();
  clearError();
  if (adoptTypedKey()) describeCollection();
  if (!apiKey()) {
    showError({ status: 401, message: "Enter an API key first." });
    return;
  }
  const body = buildQuery();
  if (!body.text && !body.image && !body.item_id) {
    setStatus("Type a description or choose an image to search.");
    $("q").focus();
    return;
  }
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  const timeout = setTimeout(() => controller.abort("timeout"), TIMEOUT_MS);
  const ticker = setInterval(() => {
    const s = (performance.now() - started) / 1000;
    if (s * 1000 >= SLOW_AFTER_MS) setStatus(`Still searching… ${s.toFixed(0)} s`);
  }, 500);
  setStatus("Searching…");
  $("search-button").disabled = true;
  $("cancel-button").hidden = false;
  document.body.setAttribute("aria-busy", "true");
  try {
    const response = await api("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      showError(await errorOf(response));
      setStatus("");
      return;
    }
    const result = await response.json();
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    render(result.results);
    setStatus(result.results.length
      ? `${result.results.length} results in ${seconds} s (server ${Math.round(result.took_ms)} ms).`
      : "No results. Try other words, another image, or fewer filters.");
  } catch (e) {
    if (controller.signal.aborted) {
      const timedOut = controller.signal.reason === "timeout";
      setStatus(timedOut ? `The search took over ${TIMEOUT_MS / 1000} s and was stopped.` : "Search cancelled.");
    } else {
      showError({ status: 0, message: String(e) });
      setStatus("");
    }
  } finally {
    clearTimeout(timeout);
    clearInterval(ticker);
    if (state.controller === controller) state.controller = null;
    $("search-button").disabled = false;
    $("cancel-button").hidden = true;
    document.body.removeAttribute("aria-busy");
  }
}

// --- results ------------------------------------------------------------------------------

function basename(source) {
  const tail = source.split("#").pop();
  return source.includes("#") ? tail : source.split("/").pop() || source;
}

function describeMeta(meta) {
  return Object.entries(meta || {})
    .filter(([, v]) => v !== null && typeof v !== "object")
    .slice(0, 6)
    .map(([k, v]) => `${k}: ${v}`)
    .join(" · ");
}

function render(hits) {
  state.generation += 1;
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  const list = $("results");
  list.replaceChildren();
  const keys = new Set();
  hits.forEach((hit, i) => {
    Object.keys(hit.meta || {}).forEach((k) => keys.add(k));
    const item = document.createElement("li");
    item.className = "card";
    item.dataset.id = hit.id;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    thumb.textContent = "Loading…";
    const info = document.createElement("div");
    info.className = "info";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${i + 1} · score ${hit.score.toFixed(3)}`;
    const source = document.createElement("span");
    source.className = "source";
    source.textContent = basename(hit.source);
    source.title = hit.source;
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = describeMeta(hit.meta);
    info.append(score, source, meta);
    if (hit.copies) {
      const copies = document.createElement("span");
      copies.className = "copies";
      copies.textContent = `+${hit.copies} ${hit.copies === 1 ? "copy" : "copies"} hidden`;
      info.append(copies);
    }
    const similar = document.createElement("button");
    similar.type = "button";
    similar.textContent = "Find similar";
    similar.setAttribute("aria-label", `Find images similar to result ${i + 1}, ${basename(hit.source)}`);
    similar.addEventListener("click", () => findSimilar(hit, i));
    item.append(thumb, info, similar);
    list.append(item);
  });
  const datalist = $("meta-keys");
  datalist.replaceChildren(...[...keys].sort().map((k) => Object.assign(document.createElement("option"), { value: k })));
  loadThumbnails(hits, state.generation);
}

async function loadThumbnails(hits, generation) {
  let next = 0;
  const worker = async () => {
    while (next < hits.length && generation === state.generation) {
      const i = next++;
      await loadThumbnail(hits[i], i, generation);
    }
  };
  await Promise.all(Array.from({ length: THUMB_PARALLEL }, worker));
}

async function loadThumbnail(hit, i, generation) {
  const card = $("results").children[i];
  const box = card && card.querySelector(".thumb");
  try {
    const response = await api(`/v1/items/${encodeURIComponent(hit.id)}/thumbnail?size=${THUMB_SIDE}`);
    if (generation !== state.generation) return;
    if (!response.ok) {
      const err = await errorOf(response);
      box.textContent = `No preview (${err.message || err.status})`;
      return;
    }
    const blob = await response.blob();
    if (generation !== state.generation) return;
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    const img = document.createElement("img");
    img.alt = `Result ${i + 1}: ${basename(hit.source)}`;
    img.src = url;
    card.thumbBlob = blob;
    box.replaceChildren(img);
  } catch (e) {
    if (box) box.textContent = "No preview (network error)";
  }
}

async function findSimilar(hit, i) {
  // The result's own stored vector is the query (the service leaves the result itself out).
  state.similar = { id: hit.id, name: `result ${i + 1}, ${basename(hit.source)}` };
  $("similar-name").textContent = state.similar.name;
  $("similar-to").hidden = false;
  $("q").value = "";
  if (state.image) clearImage(false);
  updateWeight();
  await search();
}

function clearSimilar() {
  state.similar = null;
  $("similar-to").hidden = true;
  $("q").focus();
}

// --- the query image ------------------------------------------------------------------------

async function setImage(bytes, name, blob) {
  state.image = bytes;
  state.imageName = name;
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.alt = `Query image ${name}`;
  $("image-name").textContent = name;
  $("image-chosen").hidden = false;
  updateWeight();
}

async function chooseFile(file) {
  if (!file) return;
  if (state.similar) clearSimilar();
  await setImage(new Uint8Array(await file.arrayBuffer()), file.name, file);
}

function clearImage(focus = true) {
  state.image = null;
  state.imageName = "";
  $("image-file").value = "";
  $("image-chosen").hidden = true;
  updateWeight();
  if (focus) $("image-file").focus();
}

function updateWeight() {
  const both = Boolean($("q").value.trim()) && Boolean(state.image);
  $("weight-field").hidden = !both;
  const image = Number($("weight").value);
  const text = `${100 - image}% text, ${image}% image`;
  $("weight-out").textContent = text;
  $("weight").setAttribute("aria-valuetext", text);
}

// --- filters --------------------------------------------------------------------------------

function addFilter() {
  const n = document.querySelectorAll(".filter-row").length + 1;
  const row = document.createElement("div");
  row.className = "filter-row";
  const key = Object.assign(document.createElement("input"), { type: "text", className: "filter-key",
    placeholder: "key, e.g. colour", autocomplete: "off" });
  key.setAttribute("list", "meta-keys");
  key.setAttribute("aria-label", `Filter ${n} key`);
  const value = Object.assign(document.createElement("input"), { type: "text", className: "filter-value",
    placeholder: "value, e.g. red, blue", autocomplete: "off" });
  value.setAttribute("aria-label", `Filter ${n} value`);
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove filter ${n}`);
  remove.addEventListener("click", () => {
    row.remove();
    $("add-filter").focus();
  });
  row.append(key, value, remove);
  $("filter-rows").append(row);
  key.focus();
}

// --- the key and the collection ---------------------------------------------------------------

async function describeCollection() {
  if (!apiKey()) return;
  try {
    const response = await api("/v1/collections");
    if (!response.ok) {
      showError(await errorOf(response));
      return;
    }
    const c = (await response.json()).collections[0];
    $("collection-info").textContent = c
      ? `${c.name}: ${c.rows.toLocaleString()} images · ${c.index_type || "index"} · ${c.encryption ? "encrypted" : "plaintext"}`
      : "";
  } catch (e) {
    showError({ status: 0, message: String(e) });
  }
}

function init() {
  showKey();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!adoptTypedKey()) return;
    clearError();
    describeCollection();
    $("q").focus();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("collection-info").textContent = "";
    showKey();
    $("api-key").focus();
  });
  $("search-form").addEventListener("submit", search);
  $("cancel-button").addEventListener("click", () => state.controller && state.controller.abort("cancel"));
  $("q").addEventListener("input", () => {
    if (state.similar && $("q").value.trim()) clearSimilar();  // typing starts a new query
    updateWeight();
  });
  $("clear-similar").addEventListener("click", clearSimilar);
  $("weight").addEventListener("input", updateWeight);
  $("image-file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  $("clear-image").addEventListener("click", clearImage);
  $("add-filter").addEventListener("click", addFilter);
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    chooseFile(e.dataTransfer.files[0]);
  });
  // A file dropped outside the zone would make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  describeCollection();
}

document.addEventListener("DOMContentLoaded", init);
