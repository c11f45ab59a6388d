// Validates rendered Kubernetes manifests offline: every object against the Kubernetes API
// schemas (npm kubernetes-models), then a few cross-object checks a schema cannot see (selectors
// that match nothing, probes on ports that do not exist, ConfigMaps that are not there).
//
//   node validate.mjs rendered.yaml [more.yaml ...]   exit 0 when everything is valid
//   node validate.mjs --self-test                     checks that broken objects are rejected
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

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
  let failed = 0;
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
  console.log(`self-test: ${Object.keys(cases).length + 1 - failed} passed, ${failed} failed`);
  return failed === 0;
}

const args = process.argv.slice(2);
if (args[0] === "--self-test") {
  process.exit((await selfTest()) ? 0 : 1);
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
