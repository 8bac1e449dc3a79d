// The stack's web client, bundled from source by a build step of the nginx recipe
// (Debian's esbuild, in imgbuild's sandbox): see client/README.md.

// A JSON request to the app's API (through nginx): { status, data }.
export async function api(path, options) {
  const resp = await fetch(path, Object.assign({ headers: { "Content-Type": "application/json" } }, options));
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: resp.statusText }; }
  return { status: resp.status, data };
}
