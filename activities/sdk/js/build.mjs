// node build.mjs <toolchain dir> <entry.js> <wit dir> <world> <out.wasm>
// Runs componentize-js from the toolchain folder (make js-toolchain) on the staged entry.
// Features: no `http` and no `fetch-event`, so the component imports no wasi:http (outbound
// HTTP goes through loom.http and the manifest's allowlist); stdio, random and clocks stay:
// the host discards stdio and makes the wall clock and random deterministic unless granted.
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const [toolchain, source, witPath, worldName, out] = process.argv.slice(2);
const lib = `${toolchain}/node_modules/@bytecodealliance/componentize-js/src/componentize.js`;
const { componentize } = await import(pathToFileURL(lib).href);
const { component } = await componentize({
  sourcePath: source,
  witPath,
  worldName,
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
