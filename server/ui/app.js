// Sugar playground: search, ask (streamed, cited), library. Plain ES module, no dependencies.
// Every document text and metadata value is rendered with textContent (never as HTML).

const $ = (id) => document.getElementById(id);
const KEY = "sugar.apiKey";
const waiting = []; // requests that got a 401, resumed together once a key is entered

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(resp) {
  let msg = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      msg = `${resp.status}: ${body.error.message}`;
      if (body.error.files) msg += "\n" + body.error.files.map((f) => `${f.file}: ${f.reason}`).join("\n");
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(resp.status, msg);
}

// fetch with the key; a 401 asks for the key and retries once it is given
async function api(path, opts = {}) {
  const resp = await fetch(path, { ...opts, headers: headers(opts.headers) });
  if (resp.status === 401) {
    await askForKey(sessionStorage.getItem(KEY) ? "That key was refused. Enter the API key:" : "");
    return api(path, opts);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

// ------------------------------------------------------------------ collections
// the collection every tab works on: the picker lists those this API key may read
const coll = () => $("collection").value || "default";
// `path` with the chosen collection as a query parameter (the default one needs none)
function inColl(path) {
  const c = coll();
  return c === "default" ? path : `${path}${path.includes("?") ? "&" : "?"}collection=${encodeURIComponent(c)}`;
}

// read without asking for a key: the prompt comes when the user's own request needs one,
// and the list is read again once a key is entered
async function refreshCollections() {
  try {
    const resp = await fetch("/collections", { headers: headers() });
    if (!resp.ok) return;
    const data = await resp.json();
    const sel = $("collection");
    const keep = sel.value;
    sel.replaceChildren();
    for (const c of data.collections) {
      const o = document.createElement("option");
      o.value = c.name;
      o.textContent = `${c.name} (${c.count})`;
      sel.append(o);
    }
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  } catch (_) { /* the status line says what is wrong */ }
}
$("collection").addEventListener("change", () => {
  $("search-results").replaceChildren();
  if (!$("library").hidden) refreshLibrary();
});

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-error").textContent = message;
  $("key-input").focus();
  return new Promise((resolve) => waiting.push(resolve));
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("key-input").value);
  $("key-input").value = "";
  $("key-form").hidden = true;
  for (const go of waiting.splice(0)) go();
  refreshCollections();
});

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",", 2)[1]);
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsDataURL(file);
  });
}

// the image first, then the text: LLaVA's order (`<image>` then the question), the one
// the model is trained on; put after the question, the tiny shipped model answers worse
async function sampleFrom(text, file) {
  const slices = [];
  if (file) slices.push({ type: "image", base64: await fileToBase64(file) });
  if (text.trim()) slices.push({ type: "text", text });
  return { slices };
}

// images behind the API key: fetched with the header, shown from a blob URL
async function imageElement(url, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  img.loading = "lazy";
  const resp = await api(url);
  img.src = URL.createObjectURL(await resp.blob());
  return img;
}

async function renderSlices(container, docId, slices) {
  for (const [k, s] of slices.entries()) {
    if (s.type === "text") {
      const p = document.createElement("p");
      p.textContent = s.text;
      container.append(p);
    } else {
      const holder = document.createElement("div");
      container.append(holder);
      imageElement(s.url || `/documents/${encodeURIComponent(docId)}/images/${k}`, `image ${k} of ${docId}`)
        .then((img) => holder.append(img))
        .catch((e) => { holder.textContent = `(image unavailable: ${e.message})`; });
    }
  }
}

function label(meta) {
  const parts = [];
  if (meta && typeof meta.title === "string" && meta.title) parts.push(meta.title);
  if (meta && typeof meta.source === "string") parts.push(meta.source);
  if (meta && Number.isInteger(meta.page)) parts.push(`page ${meta.page}`);
  return parts.join(" · ");
}

let openId = null;
// deleting cannot be undone: both Delete buttons ask first
const sure = (id) => window.confirm(`Delete document ${id}? This cannot be undone.`);

$("doc-delete").addEventListener("click", async () => {
  if (!sure(openId)) return;
  try {
    await api(inColl(`/documents/${encodeURIComponent(openId)}`), { method: "DELETE" });
    $("doc-dialog").close();
    for (const card of document.querySelectorAll(".card")) if (card.dataset.id === openId) card.remove();
    if (!$("library").hidden) refreshLibrary();
  } catch (e) {
    $("doc-dialog-error").textContent = e.message;
  }
});

async function openDocument(id) {
  const dlg = $("doc-dialog");
  openId = id;
  $("doc-dialog-error").textContent = "";
  $("doc-dialog-title").textContent = id;
  const body = $("doc-dialog-body");
  body.replaceChildren();
  try {
    const d = await (await api(inColl(`/documents/${encodeURIComponent(id)}`))).json();
    const m = document.createElement("pre");  // one key per line, long values wrapped (style.css)
    m.className = "muted meta";
    m.textContent = JSON.stringify(d.metadata, null, 2);
    body.append(m);
    await renderSlices(body, d.id, d.slices);
  } catch (e) {
    body.textContent = e.message;
  }
  if (!dlg.open) dlg.showModal();
}

// ------------------------------------------------------------------ tabs
function showTab(name) {
  for (const b of document.querySelectorAll(".tab")) {
    const on = b.dataset.tab === name;
    b.setAttribute("aria-selected", String(on));
    $(b.dataset.tab).hidden = !on;
  }
  if (name === "library") refreshLibrary();
  refreshCollections();
}
for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));

// ------------------------------------------------------------------ search
let searchImage = null;
let searchTimer = null;
let searchSeq = 0;

function setSearchImage(file) {
  searchImage = file || null;
  $("search-image-name").textContent = file ? file.name : "";
}
$("search-image").addEventListener("change", (ev) => { setSearchImage(ev.target.files[0]); runSearch(); });
const drop = $("search-drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  if (ev.dataTransfer.files[0]) { setSearchImage(ev.dataTransfer.files[0]); runSearch(); }
});
document.addEventListener("paste", (ev) => {
  if ($("search").hidden) return;
  const item = [...(ev.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) { setSearchImage(item.getAsFile()); runSearch(); }
});
// typing searches once the user pauses (debounced): never one request per keystroke
$("search-text").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 400);
});
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); clearTimeout(searchTimer); runSearch(); });

async function runSearch() {
  const text = $("search-text").value;
  if (!text.trim() && !searchImage) return;
  const seq = ++searchSeq;
  $("search-error").textContent = "";
  $("search-meta").textContent = "searching…";
  const body = { query: await sampleFrom(text, searchImage), k: Number($("search-k").value) || 5 };
  const prefix = $("search-source").value.trim();
  if (prefix) body.filters = { source: { $prefix: prefix } };
  if ($("search-mode").value) body.mode = $("search-mode").value;
  if (coll() !== "default") body.collection = coll();
  if ($("search-explain").checked) body.explain = true;
  const t0 = performance.now();
  try {
    const resp = await api("/retrieve", { method: "POST", body: JSON.stringify(body),
                                          headers: { "content-type": "application/json" } });
    const data = await resp.json();
    if (seq !== searchSeq) return; // a newer search is on its way
    const tAnswer = performance.now();
    renderResults(data.results);
    const out = $("search-results");
    // how long the cards took to appear after the server answered (the browser tests read it)
    out.dataset.renderMs = (performance.now() - tAnswer).toFixed(1);
    $("search-meta").textContent = `${data.results.length} results in ${(tAnswer - t0).toFixed(0)} ms`;
  } catch (e) {
    if (seq === searchSeq) {
      $("search-error").textContent = e.message;
      $("search-meta").textContent = "";
      $("search-results").replaceChildren();
    }
  }
}

function renderResults(results) {
  const out = $("search-results");
  out.replaceChildren();
  results.forEach((r, i) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = r.id;
    card.tabIndex = 0;
    card.setAttribute("aria-label", `result ${i + 1}: ${r.id}`);
    const h = document.createElement("h3");
    h.textContent = `${i + 1}. ${r.id}`;
    const sc = document.createElement("p");
    sc.className = "scores";
    const sides = (r.dense_score != null ? ` · embedding ${r.dense_score.toFixed(4)}` : "")
      + (r.lexical_score != null ? ` · words ${r.lexical_score.toFixed(2)}` : "");
    sc.textContent = `score ${r.score.toFixed(4)} · ANN ${r.ann_score.toFixed(4)}${sides}` + (label(r.metadata) ? ` · ${label(r.metadata)}` : "");
    const slices = document.createElement("div");
    slices.className = "slices";
    card.append(h, sc);
    if (r.explanation) card.append(explanationList(r.explanation, r.slices));
    card.append(slices);
    out.append(card);
    renderSlices(slices, r.id, r.slices);
    card.addEventListener("click", () => openDocument(r.id));
    card.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openDocument(r.id); } });
  });
}

// explain: for each query slice, the document slice its soft alignment goes through most
function explanationList(e, docSlices) {
  const ol = document.createElement("ol");
  ol.className = "explanation";
  ol.setAttribute("aria-label", "alignment of the query's slices");
  const what = (s, k) => (s && s.type === "text" ? `text ${k + 1} “${s.text.slice(0, 40)}${s.text.length > 40 ? "…" : ""}”`
                                                : `image ${k + 1}`);
  for (const a of e.alignment) {
    const li = document.createElement("li");
    li.dataset.documentSlice = String(a.document_slice);
    li.textContent = `query slice ${a.query_slice + 1} → ${what(docSlices[a.document_slice], a.document_slice)}` +
      ` · weight ${a.weight.toFixed(2)} · cosine ${a.similarity.toFixed(3)}`;
    ol.append(li);
  }
  return ol;
}

// ------------------------------------------------------------------ ask (SSE from /generate)
$("ask-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const go = $("ask-go");
  go.disabled = true;
  $("ask-error").textContent = "";
  $("ask-answer").textContent = "";
  $("ask-abstained").hidden = true;
  $("ask-timings").textContent = "";
  $("ask-docs").replaceChildren();
  $("ask-timings").textContent = "retrieving and generating…";
  try {
    const body = {
      query: await sampleFrom($("ask-text").value, $("ask-image").files[0]),
      max_tokens: Number($("ask-max").value) || 32, stream: true,
      retrieval: { enabled: $("ask-retrieval").checked, k: Number($("ask-k").value), collection: coll() },
    };
    const resp = await api("/generate", { method: "POST", body: JSON.stringify(body),
                                          headers: { "content-type": "application/json" } });
    await readEvents(resp, (ev) => {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.delta !== undefined) $("ask-answer").textContent += ev.delta;
      if (ev.done) finishAnswer(ev);
    });
  } catch (e) {
    $("ask-error").textContent = e.message;
    $("ask-timings").textContent = "";
  } finally {
    go.disabled = false;
  }
});

async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && data !== "[DONE]") {
        onEvent(JSON.parse(data));
        // events that arrived in one network read are still painted one by one
        await new Promise((r) => setTimeout(r, 0));
      }
    }
  }
}

function finishAnswer(ev) {
  $("ask-answer").textContent = ev.text;
  // the checkpoint's calibrated abstention: the documents cannot answer the question
  $("ask-abstained").hidden = !ev.abstained;
  const t = ev.timings || {};
  const tps = t.generation_ms ? (ev.usage.completion_tokens / (t.generation_ms / 1000)).toFixed(1) : "–";
  $("ask-timings").textContent = `retrieval ${(t.retrieval_ms || 0).toFixed(0)} ms · generation ${(t.generation_ms || 0).toFixed(0)} ms · ` +
    `${ev.usage.completion_tokens} tokens · ${tps} tokens/s · prompt ${ev.usage.prompt_tokens} tokens`;
  const list = $("ask-docs");
  for (const d of ev.documents) list.append(citeItem(d, true));
  for (const d of ev.dropped_documents) list.append(citeItem(d, false));
}

function citeItem(d, used) {
  const li = document.createElement("li");
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = used ? "cited" : "dropped (context full)";
  const link = document.createElement("button");
  link.type = "button";
  link.textContent = d.id;
  link.addEventListener("click", () => openDocument(d.id));
  const meta = document.createElement("span");
  meta.className = "muted";
  meta.textContent = ` ${label(d)} · score ${d.score.toFixed(4)}`;
  li.append(badge, link, meta);
  return li;
}

// ------------------------------------------------------------------ library
let docOffset = 0;
const PAGE = 20;

$("upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("upload-error").textContent = "";
  const form = new FormData();
  for (const f of $("upload-files").files) form.append("files", f, f.name);
  const meta = $("upload-meta").value.trim();
  if (meta) form.append("metadata", meta);
  upload(form);
});

// XMLHttpRequest for the upload: it reports progress (fetch does not)
function upload(form) {
  const bar = $("upload-progress");
  bar.hidden = false; bar.value = 0;
  $("upload-go").disabled = true;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", inColl("/documents/upload"));
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
  xhr.onload = async () => {
    $("upload-go").disabled = false;
    bar.hidden = true;
    if (xhr.status === 401) { await askForKey("Enter the API key:"); upload(form); return; }
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status !== 200) {
      const err = data && data.error;
      let msg = err ? `${xhr.status}: ${err.message}` : `${xhr.status} ${xhr.statusText}`;
      if (err && err.files) msg += "\n" + err.files.map((f) => `${f.file}: ${f.reason}`).join("\n");
      $("upload-error").textContent = msg;
      return;
    }
    const tbody = $("upload-summary").querySelector("tbody");
    tbody.replaceChildren();
    for (const f of data.files) {
      const tr = document.createElement("tr");
      for (const v of [f.file, f.status, f.chunks, f.images, f.embedded]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.append(td);
      }
      tbody.append(tr);
    }
    $("upload-summary").hidden = false;
    refreshLibrary();
  };
  xhr.onerror = () => { $("upload-go").disabled = false; bar.hidden = true; $("upload-error").textContent = "upload failed (network)"; };
  xhr.send(form);
}

// The list says aria-busy="true" from the moment a refresh starts until the newest one has
// rendered; a slower, older answer (two refreshes in flight) is dropped, never drawn over it.
let libraryGeneration = 0;
async function refreshLibrary() {
  const generation = ++libraryGeneration;
  $("doc-list").setAttribute("aria-busy", "true");
  $("library-error").textContent = "";
  try {
    const post = (path, body) => api(inColl(path), { method: "POST", body: JSON.stringify(body),
                                                     headers: { "content-type": "application/json" } }).then((r) => r.json());
    const [stats, page] = await Promise.all([
      api(inColl("/index/stats")).then((r) => r.json()),
      post("/documents/scroll", { offset: docOffset, limit: PAGE }),
    ]);
    if (generation !== libraryGeneration) return;
    const dl = $("index-stats");
    dl.replaceChildren();
    for (const k of ["count", "dim", "type", "embedding_version", "size_bytes"]) {
      if (!(k in stats)) continue;
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(stats[k]);
      dl.append(dt, dd);
    }
    const ul = $("doc-list");
    ul.replaceChildren();
    for (const doc of page.documents) {
      const id = doc.id;
      const source = typeof doc.metadata.source === "string" ? doc.metadata.source : null;
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = id;
      const from = document.createElement("span");
      from.className = "muted";
      from.textContent = source ? ` ${source}` : "";
      const view = document.createElement("button");
      view.type = "button"; view.textContent = "Open";
      view.addEventListener("click", () => openDocument(id));
      const del = document.createElement("button");
      del.type = "button"; del.textContent = "Delete";
      del.setAttribute("aria-label", `delete ${id}`);
      del.addEventListener("click", async () => {
        if (!sure(id)) return;
        try { await api(inColl(`/documents/${encodeURIComponent(id)}`), { method: "DELETE" }); refreshLibrary(); }
        catch (e) { $("library-error").textContent = e.message; }
      });
      li.append(name, from, view, del);
      if (source) {  // every chunk of the file at once: /documents/delete by filter
        const delSource = document.createElement("button");
        delSource.type = "button"; delSource.textContent = "Delete source";
        delSource.setAttribute("aria-label", `delete source ${source}`);
        delSource.addEventListener("click", async () => {
          try {
            const filters = { source };
            const { count } = await post("/documents/count", { filters });
            if (!window.confirm(`Delete all ${count} documents of ${source}? This cannot be undone.`)) return;
            const { deleted } = await post("/documents/delete", { filters });
            $("library-error").textContent = "";
            $("doc-page").dataset.lastDeleted = String(deleted);
            refreshLibrary();
          } catch (e) { $("library-error").textContent = e.message; }
        });
        li.append(delSource);
      }
      ul.append(li);
    }
    const total = stats.count;
    $("doc-page").textContent = `${total ? docOffset + 1 : 0}–${docOffset + page.documents.length} of ${total}`;
    $("doc-prev").disabled = docOffset === 0;
    $("doc-next").disabled = page.next_offset == null;
  } catch (e) {
    if (generation === libraryGeneration) $("library-error").textContent = e.message;
  } finally {
    if (generation === libraryGeneration) $("doc-list").setAttribute("aria-busy", "false");
  }
}
$("doc-prev").addEventListener("click", () => { docOffset = Math.max(0, docOffset - PAGE); refreshLibrary(); });
$("doc-next").addEventListener("click", () => { docOffset += PAGE; refreshLibrary(); });

// ------------------------------------------------------------------ status
async function refreshStatus() {
  try {
    const r = await fetch("/ready");
    const body = await r.json();
    const c = body.checks || {};
    $("status").textContent = r.ok ? `ready · ${c.model || ""} · ${c.index_documents ?? "?"} documents`
      : `not ready: ${c.error || body.status}`;
  } catch (_) {
    $("status").textContent = "server unreachable";
  }
}
refreshStatus();
setInterval(refreshStatus, 15000);
refreshCollections();
