// A small Dockerfile linter (hadolint is not in Debian): parses the file into instructions and
// checks what matters for Pagoda's image. Exit 0 when clean.
//
//   node dockerfile-lint.mjs ../Dockerfile
//   node dockerfile-lint.mjs --self-test
import { readFileSync } from "node:fs";

const KNOWN = new Set(["FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
  "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"]);

// Joins continuation lines; returns [{line, keyword, args}].
export function parse(text) {
  const out = [];
  let buf = "";
  let start = 0;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const trimmed = raw.trim();
    if (buf === "" && (trimmed === "" || trimmed.startsWith("#"))) continue;
    if (buf !== "" && trimmed.startsWith("#")) continue;  // comments inside a continuation
    if (buf === "") start = i + 1;
    if (trimmed.endsWith("\\")) {
      buf += trimmed.slice(0, -1) + " ";
      continue;
    }
    buf += trimmed;
    const m = buf.match(/^(\S+)\s*(.*)$/s);
    out.push({ line: start, keyword: m[1].toUpperCase(), raw: m[1], args: m[2] });
    buf = "";
  }
  if (buf !== "") out.push({ line: start, keyword: "", raw: "", args: buf, dangling: true });
  return out;
}

export function lint(text) {
  const errors = [];
  const ins = parse(text);
  const args = {};
  const stages = [];
  let current = null;
  if (ins.length === 0) return ["empty Dockerfile"];
  for (const i of ins) {
    const at = `line ${i.line}`;
    if (i.dangling) {
      errors.push(`${at}: continuation with no following line`);
      continue;
    }
    if (!KNOWN.has(i.keyword)) {
      errors.push(`${at}: unknown instruction '${i.raw}'`);
      continue;
    }
    if (i.raw !== i.keyword) errors.push(`${at}: write instructions in upper case ('${i.raw}')`);
    if (!current && i.keyword !== "FROM" && i.keyword !== "ARG") {
      errors.push(`${at}: ${i.keyword} before the first FROM`);
    }
    switch (i.keyword) {
      case "ARG": {
        const [name, def] = i.args.split("=");
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) errors.push(`${at}: bad ARG name '${name}'`);
        if (!current) args[name] = def;
        break;
      }
      case "FROM": {
        const m = i.args.match(/^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$/i);
        if (!m) {
          errors.push(`${at}: cannot parse FROM '${i.args}'`);
          break;
        }
        const image = m[1].replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a || b] ?? "");
        const known = stages.some((s) => s.name === image);
        if (!known && !/:[^/]+$/.test(image) && !image.includes("@")) {
          errors.push(`${at}: base image '${m[1]}' needs an explicit tag`);
        }
        if (/:latest$/.test(image)) errors.push(`${at}: base image '${m[1]}' uses :latest`);
        current = { name: m[2], line: i.line, user: null, entry: false };
        stages.push(current);
        break;
      }
      case "COPY":
      case "ADD": {
        const from = i.args.match(/--from=(\S+)/);
        if (from && !/^\d+$/.test(from[1]) && !stages.slice(0, -1).some((s) => s.name === from[1])) {
          errors.push(`${at}: COPY --from=${from[1]} names no earlier stage`);
        }
        if (i.keyword === "ADD" && !/https?:\/\//.test(i.args)) {
          errors.push(`${at}: use COPY for local files`);
        }
        break;
      }
      case "RUN": {
        if (/apt-get\s+install/.test(i.args)) {
          if (!/\s-y\b|--yes|--assume-yes/.test(i.args)) errors.push(`${at}: apt-get install without -y`);
          if (!/--no-install-recommends/.test(i.args)) {
            errors.push(`${at}: apt-get install without --no-install-recommends`);
          }
          if (!/rm -rf \/var\/lib\/apt\/lists/.test(i.args)) {
            errors.push(`${at}: apt lists not removed in the same RUN`);
          }
          if (!/apt-get update/.test(i.args)) errors.push(`${at}: apt-get install without update in the same RUN`);
        }
        if (/\bcurl\b[^|]*\|\s*(ba)?sh/.test(i.args) || /\bwget\b[^|]*\|\s*(ba)?sh/.test(i.args)) {
          errors.push(`${at}: piping a download into a shell`);
        }
        break;
      }
      case "USER":
        current.user = i.args.split(":")[0];
        break;
      case "ENTRYPOINT":
      case "CMD":
        if (i.args.startsWith("[")) {
          try {
            const v = JSON.parse(i.args);
            if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new Error();
          } catch {
            errors.push(`${at}: ${i.keyword} exec form is not a JSON array of strings`);
          }
        }
        if (i.keyword === "ENTRYPOINT") current.entry = true;
        break;
      case "EXPOSE":
        for (const p of i.args.split(/\s+/)) {
          const n = Number(p.split("/")[0]);
          if (!(n >= 1 && n <= 65535)) errors.push(`${at}: EXPOSE ${p} is not a port`);
        }
        break;
      default:
        break;
    }
  }
  const last = stages[stages.length - 1];
  if (!last) errors.push("no FROM");
  else {
    if (!last.user || last.user === "root" || last.user === "0") {
      errors.push(`final stage (line ${last.line}) runs as root: add USER`);
    }
    if (!last.entry) errors.push(`final stage (line ${last.line}) has no ENTRYPOINT`);
  }
  const names = stages.map((s) => s.name).filter(Boolean);
  if (new Set(names).size !== names.length) errors.push("two stages share a name");
  return errors;
}

function selfTest() {
  const good = "FROM debian:12 AS b\nRUN true\nFROM debian:12-slim\nCOPY --from=b /x /x\nUSER 1000\nENTRYPOINT [\"/x\"]\n";
  const bad = {
    "untagged base": "FROM debian\nUSER 1\nENTRYPOINT [\"/x\"]\n",
    "unknown instruction": "FROM debian:12\nRUNN true\nUSER 1\nENTRYPOINT [\"/x\"]\n",
    "copy from unknown stage": "FROM debian:12\nCOPY --from=nope /a /a\nUSER 1\nENTRYPOINT [\"/x\"]\n",
    "root final stage": "FROM debian:12\nENTRYPOINT [\"/x\"]\n",
    "apt without cleanup": "FROM debian:12\nRUN apt-get update && apt-get install -y --no-install-recommends x\nUSER 1\nENTRYPOINT [\"/x\"]\n",
    "bad exec form": "FROM debian:12\nUSER 1\nENTRYPOINT [\"/x\",]\n",
    "RUN before FROM": "RUN true\nFROM debian:12\nUSER 1\nENTRYPOINT [\"/x\"]\n",
  };
  let failed = 0;
  if (lint(good).length) {
    console.error("self-test: good Dockerfile rejected:", lint(good));
    failed++;
  }
  for (const [what, text] of Object.entries(bad)) {
    if (lint(text).length === 0) {
      console.error(`self-test: '${what}' was accepted`);
      failed++;
    }
  }
  console.log(`dockerfile self-test: ${Object.keys(bad).length + 1 - failed} passed, ${failed} failed`);
  return failed === 0;
}

if (process.argv[1] && process.argv[1].endsWith("dockerfile-lint.mjs")) {
  const a = process.argv.slice(2);
  if (a[0] === "--self-test") process.exit(selfTest() ? 0 : 1);
  let bad = 0;
  for (const f of a) {
    const errors = lint(readFileSync(f, "utf8"));
    for (const e of errors) console.error(`${f}: ${e}`);
    console.log(`${f}: ${parse(readFileSync(f, "utf8")).length} instructions, ${errors.length} problems`);
    bad += errors.length;
  }
  process.exit(bad || a.length === 0 ? 1 : 0);
}
