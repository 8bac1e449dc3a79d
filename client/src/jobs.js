// The stack's web client, bundled from source by a build step of the nginx recipe
// (Debian's esbuild, in imgbuild's sandbox): see client/README.md.

import { api } from "./api.js";
import { $ } from "./form.js";

// Polls GET /api/jobs/<id> until the job is done, then refreshes the table.
export async function poll(id, out) {
  for (let i = 0; i < 60; i++) {
    const { data } = await api(`/api/jobs/${id}`);
    out.textContent = JSON.stringify(data, null, 2);
    if (data.status === "success" || data.status === "failure") break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  refresh();
}

// The recent jobs and the stats.
export async function refresh() {
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
