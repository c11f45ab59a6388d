// Validates rendered Kubernetes manifests offline: every object against the Kubernetes API
// schemas (npm kubernetes-models), then a few cross-object checks a schema cannot see (selectors
// that match nothing, probes on ports that do not exist, ConfigMaps that are not there).
//
//   node validate.mjs rendered.yaml [more.yaml ...]   exit 0 when everything is valid
//   node validate.mjs --self-test                     checks that broken objects are rejected
import { readFileSync } from "node:fs";
import { parseAllDocuments, parseDocument } from "yaml";

// apiVersion -> module of kubernetes-models ("apps/v1" -> "kubernetes-models/apps/v1").
async function modelFor(apiVersion, kind) {
  const path = apiVersion.includes("/") ? apiVersion : `v1`;
  const mod = await import(`kubernetes-models/${path}`).catch(() => null);
  if (!mod || typeof mod[kind] !== "function") return null;
  return mod[kind];
}

async function validateObject(obj) {
  const errors = [];
  if (!obj || typeof obj !== "object") return ["not an object"];
  if (!obj.apiVersion || !obj.kind) return ["missing apiVersion or kind"];
  const Model = await modelFor(obj.apiVersion, obj.kind);
  if (!Model) return [`unknown type ${obj.apiVersion} ${obj.kind}`];
  try {
    new Model(obj).validate();
  } catch (e) {
    errors.push(String(e.message || e).slice(0, 2000));
  }
  if (!obj.metadata?.name) errors.push("metadata.name is missing");
  return errors;
}

const WORKLOADS = new Set(["DaemonSet", "StatefulSet", "Deployment"]);

function labelsMatch(selector, labels) {
  return Object.entries(selector || {}).every(([k, v]) => labels?.[k] === v);
}

// Pagoda's security defaults, on the rendered pagodad DaemonSet and its ConfigMap: no hostIPC
// (the zero-copy path passes a memfd over the unix socket; no documented path needs the node's
// IPC namespace), the bearer token from a Secret (never a literal, never in the ConfigMap), only
// listed tenants served.
function securityCheck(objects) {
  const errors = [];
  for (const o of objects) {
    if (o.kind !== "DaemonSet" || o.metadata?.name !== "pagodad") continue;
    const id = `${o.kind}/${o.metadata.name}`;
    const spec = o.spec?.template?.spec || {};
    if (spec.hostIPC) errors.push(`${id}: hostIPC is on; no Pagoda path needs it`);
    const c = (spec.containers || []).find((x) => x.name === "pagodad");
    if (!c) {
      errors.push(`${id}: no container named pagodad`);
      continue;
    }
    const token = (c.env || []).find((e) => e.name === "PAGODA_TOKEN");
    if (!token?.valueFrom?.secretKeyRef?.name || token.valueFrom.secretKeyRef.optional) {
      errors.push(`${id}: PAGODA_TOKEN must come from a (non-optional) Secret`);
    }
    if ((c.args || []).some((a) => a.startsWith("--token"))) {
      errors.push(`${id}: the token must not be a command-line argument`);
    }
    const cmName = (spec.volumes || []).find((v) => v.name === "config")?.configMap?.name;
    const cm = objects.find((x) => x.kind === "ConfigMap" && x.metadata?.name === cmName);
    const text = cm?.data?.["pagodad.yaml"];
    if (text === undefined) {
      errors.push(`${id}: its config volume has no pagodad.yaml`);
      continue;
    }
    const conf = parseDocument(text).toJS() || {};
    if (conf.security?.allow_unknown_tenants !== false) {
      errors.push(`${id}: pagodad.yaml must set security.allow_unknown_tenants: false`);
    }
    if (conf.security?.token) errors.push(`${id}: pagodad.yaml holds a token (use the Secret)`);
    for (const [name, t] of Object.entries(conf.tenants || {})) {
      if (t?.token) errors.push(`${id}: pagodad.yaml holds tenant ${name}'s token`);
    }
  }
  return errors;
}

// What deploy/validate.sh starts for one rendered overlay: pagodad's image, args and config.
function pagodadOf(objects) {
  const ds = objects.find((o) => o.kind === "DaemonSet" && o.metadata?.name === "pagodad");
  const spec = ds?.spec?.template?.spec || {};
  const c = (spec.containers || []).find((x) => x.name === "pagodad") || {};
  const cmName = (spec.volumes || []).find((v) => v.name === "config")?.configMap?.name;
  const cm = objects.find((x) => x.kind === "ConfigMap" && x.metadata?.name === cmName);
  return { image: c.image, args: c.args || [], config: cm?.data?.["pagodad.yaml"] };
}

// Checks across objects; returns a list of messages.
function crossCheck(objects) {
  const errors = [];
  const configMaps = new Set(
    objects.filter((o) => o.kind === "ConfigMap").map((o) => `${o.metadata.namespace}/${o.metadata.name}`));
  const podTemplates = objects
    .filter((o) => WORKLOADS.has(o.kind))
    .map((o) => ({ owner: o, ns: o.metadata.namespace, labels: o.spec?.template?.metadata?.labels, spec: o.spec?.template?.spec }));
  for (const o of objects) {
    const id = `${o.kind}/${o.metadata?.name}`;
    if (o.kind !== "Namespace" && !o.metadata?.namespace) errors.push(`${id}: no namespace`);
    if (WORKLOADS.has(o.kind)) {
      const sel = o.spec?.selector?.matchLabels;
      if (!labelsMatch(sel, o.spec?.template?.metadata?.labels)) {
        errors.push(`${id}: selector does not match the pod template labels`);
      }
      const spec = o.spec?.template?.spec || {};
      for (const c of [...(spec.containers || []), ...(spec.initContainers || [])]) {
        const ports = new Set((c.ports || []).flatMap((p) => [p.name, p.containerPort]));
        for (const p of c.ports || []) {
          if (!(p.containerPort >= 1 && p.containerPort <= 65535)) {
            errors.push(`${id}: ${c.name} containerPort ${p.containerPort} is not 1..65535`);
          }
        }
        for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
          const port = c[probe]?.httpGet?.port;
          if (port !== undefined && !ports.has(port)) {
            errors.push(`${id}: ${c.name}.${probe} uses port ${port}, which the container lacks`);
          }
        }
        const mounts = new Set((spec.volumes || []).map((v) => v.name));
        for (const m of c.volumeMounts || []) {
          const claim = (o.spec.volumeClaimTemplates || []).some((t) => t.metadata?.name === m.name);
          if (!mounts.has(m.name) && !claim) errors.push(`${id}: ${c.name} mounts unknown volume ${m.name}`);
        }
        if (!c.resources?.requests || !c.resources?.limits?.memory) {
          errors.push(`${id}: ${c.name} needs resource requests and a memory limit`);
        }
        if (!c.image || c.image.endsWith(":latest") || !c.image.includes(":")) {
          errors.push(`${id}: ${c.name} image must carry a fixed tag`);
        }
      }
      for (const v of spec.volumes || []) {
        const ref = v.configMap?.name;
        if (ref && !configMaps.has(`${o.metadata.namespace}/${ref}`)) {
          errors.push(`${id}: volume ${v.name} refers to missing ConfigMap ${ref}`);
        }
      }
    }
    if (o.kind === "Service" && o.spec?.selector) {
      const hit = podTemplates.find((t) => t.ns === o.metadata.namespace && labelsMatch(o.spec.selector, t.labels));
      if (!hit) errors.push(`${id}: selector matches no workload`);
      for (const p of o.spec.ports || []) {
        if (!(p.port >= 1 && p.port <= 65535)) errors.push(`${id}: port ${p.port} is not 1..65535`);
        if (hit && typeof p.targetPort === "string") {
          const named = (hit.spec.containers || []).some((c) => (c.ports || []).some((cp) => cp.name === p.targetPort));
          if (!named) errors.push(`${id}: targetPort ${p.targetPort} is not a named container port`);
        }
      }
    }
    if (o.kind === "PodDisruptionBudget") {
      const sel = o.spec?.selector?.matchLabels;
      if (!podTemplates.some((t) => t.ns === o.metadata.namespace && labelsMatch(sel, t.labels))) {
        errors.push(`${id}: selector matches no workload`);
      }
    }
  }
  return errors;
}

async function validateText(text, name) {
  const docs = parseAllDocuments(text);
  const objects = [];
  const errors = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      errors.push(`${name}: YAML: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj == null) continue;
    objects.push(obj);
    for (const e of await validateObject(obj)) {
      errors.push(`${name}: ${obj.kind}/${obj.metadata?.name}: ${e}`);
    }
  }
  if (objects.length === 0) errors.push(`${name}: no objects`);
  for (const e of crossCheck(objects)) errors.push(`${name}: ${e}`);
  for (const e of securityCheck(objects)) errors.push(`${name}: ${e}`);
  return { objects, errors };
}

// Known-bad inputs must fail: proves the checks above can fail at all.
async function selfTest() {
  const good = `
apiVersion: v1
kind: ConfigMap
metadata: {name: c, namespace: n}
data: {a: b}
`;
  const cases = {
    "port not an integer": `
apiVersion: v1
kind: Service
metadata: {name: s, namespace: n}
spec: {ports: [{port: "not-a-port"}]}
`,
    "port out of range": `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: n}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: "i:1", ports: [{containerPort: 70000}],
            resources: {requests: {cpu: 1}, limits: {memory: 1Gi}}}]}
`,
    "int32 overflow": `
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: s, namespace: n}
spec:
  replicas: 99999999999
  serviceName: s
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: "i:1", resources: {requests: {cpu: 1}, limits: {memory: 1Gi}}}]}
`,
    "missing containers": `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: n}
spec:
  selector: {matchLabels: {a: b}}
  template: {metadata: {labels: {a: b}}, spec: {}}
`,
    "selector mismatch": `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: n}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: c}}
    spec: {containers: [{name: c, image: "i:1", resources: {requests: {cpu: 1}, limits: {memory: 1Gi}}}]}
`,
    "unknown kind": `
apiVersion: v1
kind: Podd
metadata: {name: p, namespace: n}
`,
    "probe on a missing port": `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: n}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: "i:1", livenessProbe: {httpGet: {path: /, port: http}},
            resources: {requests: {cpu: 1}, limits: {memory: 1Gi}}}]}
`,
  };
  const pagodad = (podExtra, containerExtra, conf) => `
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: n}
data:
  pagodad.yaml: |
${conf.split("\n").map((l) => "    " + l).join("\n")}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: pagodad, namespace: n}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      ${podExtra}
      volumes: [{name: config, configMap: {name: cfg}}]
      containers:
        - name: pagodad
          image: "i:1"
          resources: {requests: {cpu: 1}, limits: {memory: 1Gi}}
          volumeMounts: [{name: config, mountPath: /etc/pagoda}]
          ${containerExtra}
`;
  const secretEnv = "env: [{name: PAGODA_TOKEN, valueFrom: {secretKeyRef: {name: s, key: token}}}]";
  const locked = "security: {allow_unknown_tenants: false}\ntenants: {default: {}}";
  const goodPagodad = pagodad("hostNetwork: false", secretEnv, locked);
  Object.assign(cases, {
    "hostIPC on": pagodad("hostIPC: true", secretEnv, locked),
    "token as a literal": pagodad("hostNetwork: false", "env: [{name: PAGODA_TOKEN, value: abc}]", locked),
    "no token": pagodad("hostNetwork: false", "args: [--config=/etc/pagoda/pagodad.yaml]", locked),
    "token argument": pagodad("hostNetwork: false", `args: [--token=abc]\n          ${secretEnv}`, locked),
    "unknown tenants allowed": pagodad("hostNetwork: false", secretEnv, "security: {allow_unknown_tenants: true}"),
    "token in the ConfigMap": pagodad("hostNetwork: false", secretEnv,
      "security: {allow_unknown_tenants: false, token: abc}\ntenants: {default: {}}"),
  });
  let failed = 0;
  if ((await validateText(goodPagodad, "good pagodad")).errors.length) {
    console.error("self-test: a secure pagodad DaemonSet was rejected:",
      (await validateText(goodPagodad, "good pagodad")).errors);
    failed++;
  }
  if ((await validateText(good, "good")).errors.length) {
    console.error("self-test: a valid ConfigMap was rejected");
    failed++;
  }
  for (const [what, text] of Object.entries(cases)) {
    const { errors } = await validateText(text, what);
    if (errors.length === 0) {
      console.error(`self-test: '${what}' was accepted`);
      failed++;
    }
  }
  console.log(`self-test: ${Object.keys(cases).length + 2 - failed} passed, ${failed} failed`);
  return failed === 0;
}

const args = process.argv.slice(2);
if (args[0] === "--self-test") {
  process.exit((await selfTest()) ? 0 : 1);
}
if (args[0] === "--pagodad") {
  // node validate.mjs --pagodad rendered.yaml: pagodad's image, args and config as JSON.
  const objects = parseAllDocuments(readFileSync(args[1], "utf8")).map((d) => d.toJS()).filter(Boolean);
  console.log(JSON.stringify(pagodadOf(objects)));
  process.exit(0);
}
if (args.length === 0) {
  console.error("usage: node validate.mjs FILE.yaml [...] | --self-test");
  process.exit(2);
}
let bad = 0;
for (const file of args) {
  const { objects, errors } = await validateText(readFileSync(file, "utf8"), file);
  for (const e of errors) console.error(e);
  bad += errors.length;
  console.log(`${file}: ${objects.length} objects, ${errors.length} problems`);
}
process.exit(bad ? 1 : 0);
