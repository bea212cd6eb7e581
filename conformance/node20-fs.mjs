// Node 20 has no fs.globSync (Node 22 added it); the conformance CLI imports it at load,
// for its tier-check command only. `node --import ./conformance/node20-fs.mjs` gives its
// `fs` import a module with everything of node:fs plus a globSync that says so.
import { register } from "node:module";

const shim = "data:text/javascript," + encodeURIComponent(
  'export * from "node:fs"; import fs from "node:fs"; export default fs;' +
  'export function globSync() { throw new Error("fs.globSync needs Node 22"); }');
const hooks = "data:text/javascript," + encodeURIComponent(
  `export async function resolve(specifier, context, next) {
     if ((specifier === "fs" || specifier === "node:fs") &&
         (context.parentURL || "").includes("@modelcontextprotocol/conformance"))
       return { url: ${JSON.stringify(shim)}, shortCircuit: true };
     return next(specifier, context);
   }`);
if (!("globSync" in (await import("node:fs")))) register(hooks);
