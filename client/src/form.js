// The stack's web client, bundled from source by a build step of the nginx recipe
// (Debian's esbuild, in imgbuild's sandbox): see client/README.md.

export const $ = (sel) => document.querySelector(sel);

// Shows the inputs of the selected job kind only.
export function showArgs() {
  const kind = $("#kind").value;
  document.querySelectorAll(".arg").forEach((el) => el.classList.toggle("hidden", el.dataset.kind !== kind));
}

// The POST /api/jobs body for the form's job.
export function jobBody(form) {
  const f = new FormData(form);
  const body = { kind: f.get("kind"), queue: f.get("queue") };
  if (body.kind === "wordcount") body.text = f.get("text");
  if (body.kind === "add") { body.a = Number(f.get("a")); body.b = Number(f.get("b")); }
  if (body.kind === "sleep") body.seconds = Number(f.get("seconds"));
  return body;
}
