// The stack's web client, bundled from source by a build step of the nginx recipe
// (Debian's esbuild, in imgbuild's sandbox): see client/README.md.

// Submits a job with POST /api/jobs and polls it until it is done.
import { api } from "./api.js";
import { $, jobBody, showArgs } from "./form.js";
import { poll, refresh } from "./jobs.js";

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
