// Submits a job with POST /api/jobs and polls GET /api/jobs/<id> until it is done.
"use strict";
const $ = (sel) => document.querySelector(sel);

function showArgs() {
  const kind = $("#kind").value;
  document.querySelectorAll(".arg").forEach((el) => el.classList.toggle("hidden", el.dataset.kind !== kind));
}

function jobBody(form) {
  const f = new FormData(form);
  const body = { kind: f.get("kind"), queue: f.get("queue") };
  if (body.kind === "wordcount") body.text = f.get("text");
  if (body.kind === "add") { body.a = Number(f.get("a")); body.b = Number(f.get("b")); }
  if (body.kind === "sleep") body.seconds = Number(f.get("seconds"));
  return body;
}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({ headers: { "Content-Type": "application/json" } }, options));
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: resp.statusText }; }
  return { status: resp.status, data };
}

async function poll(id, out) {
  for (let i = 0; i < 60; i++) {
    const { data } = await api(`/api/jobs/${id}`);
    out.textContent = JSON.stringify(data, null, 2);
    if (data.status === "success" || data.status === "failure") break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  refresh();
}

async function refresh() {
  const jobs = await api("/api/jobs?limit=10");
  const tbody = $("#jobs tbody");
  tbody.replaceChildren();
  for (const j of (jobs.data.jobs || [])) {
    const tr = document.createElement("tr");
    for (const [text, cls] of [[j.created_at, ""], [j.kind, ""], [j.queue, ""],
                               [j.status, `status-${j.status}`], [JSON.stringify(j.result ?? j.error ?? ""), ""]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  const stats = await api("/api/stats");
  $("#stats").textContent = JSON.stringify(stats.data, null, 2);
}

$("#kind").addEventListener("change", showArgs);
$("#refresh").addEventListener("click", refresh);
$("#job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("#job-output");
  const { status, data } = await api("/api/jobs", { method: "POST", body: JSON.stringify(jobBody(ev.target)) });
  out.textContent = JSON.stringify(data, null, 2);
  if (status === 202) poll(data.id, out);
});
showArgs();
refresh();
