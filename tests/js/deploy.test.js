// The deployment files under deploy/ (Dockerfile, compose, nginx, Kubernetes)
// are parsed and checked for how they fit together: probes on the container
// port, selectors matching the pods, one auth key and a broker URL pointing at
// Redis on every host, a drain shorter than the grace period. Nothing is
// built or started: there is no Docker daemon or cluster here.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const YAML = require('yaml');

const deployDir = path.resolve(__dirname, '..', '..', 'deploy');
const k8sDir = path.join(deployDir, 'kubernetes');

/** Every *.yaml / *.yml file under `dir`, recursively. */
function yamlFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return yamlFiles(full);
    return /\.ya?ml$/.test(entry.name) ? [full] : [];
  });
}

/** The documents of a YAML file as plain objects; a syntax error fails. */
function parseYaml(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'), { merge: true });
  for (const doc of docs) {
    assert.deepEqual(doc.errors.map(String), [], `${file}: YAML errors`);
  }
  return docs.map((doc) => doc.toJS()).filter((doc) => doc !== null && doc !== undefined);
}

/** All Kubernetes documents, each with the file it came from. */
function k8sDocs() {
  return yamlFiles(k8sDir).flatMap((file) => parseYaml(file).map((doc) => ({ file, doc })));
}

function findOne(docs, kind, name) {
  const found = docs.filter(({ doc }) => doc.kind === kind && (!name || doc.metadata.name === name));
  assert.equal(found.length, 1, `expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0].doc;
}

/** Whether `selector` (a label map) selects a pod with `labels`. */
function selects(selector, labels) {
  assert.ok(selector && Object.keys(selector).length > 0, 'empty selector');
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

/** The container port a probe/targetPort names (by name or number), or undefined. */
function resolvePort(container, port) {
  return (container.ports || []).find((p) => p.name === port || p.containerPort === port);
}

function envOf(container) {
  return Object.fromEntries((container.env || []).map((e) => [e.name, e]));
}

/** The wasmcluster Deployment, its pod spec and its main container. */
function wasmclusterPod(docs) {
  const deployment = findOne(docs, 'Deployment', 'wasmcluster');
  const pod = deployment.spec.template.spec;
  const container = pod.containers.find((c) => c.name === 'wasmcluster');
  assert.ok(container, 'no container named wasmcluster');
  return { deployment, pod, container };
}

test('every YAML file under deploy/ parses', () => {
  const files = yamlFiles(deployDir);
  assert.ok(files.length >= 5, `only ${files.length} YAML files under deploy/`);
  for (const file of files) {
    assert.ok(parseYaml(file).length > 0, `${file} has no document`);
  }
});

test('every Kubernetes document has apiVersion, kind and metadata.name', () => {
  const docs = k8sDocs();
  assert.ok(docs.length >= 6);
  for (const { file, doc } of docs) {
    assert.equal(typeof doc.apiVersion, 'string', `${file}: apiVersion`);
    assert.equal(typeof doc.kind, 'string', `${file}: kind`);
    if (doc.kind === 'Kustomization') continue; // kustomize's own file has no metadata
    assert.ok(doc.metadata && typeof doc.metadata.name === 'string' && doc.metadata.name,
      `${file}: ${doc.kind} without metadata.name`);
  }
});

test('kustomization lists every manifest except the placeholder Secret', () => {
  const kustomization = findOne(k8sDocs(), 'Kustomization');
  const listed = new Set(kustomization.resources);
  for (const resource of listed) {
    assert.ok(fs.existsSync(path.join(k8sDir, resource)), `${resource} is listed but missing`);
  }
  for (const file of yamlFiles(k8sDir)) {
    const name = path.relative(k8sDir, file);
    if (name === 'kustomization.yaml') continue;
    const hasSecret = parseYaml(file).some((doc) => doc.kind === 'Secret');
    if (hasSecret) {
      assert.ok(!listed.has(name), `${name} holds a placeholder Secret; kubectl apply -k would overwrite the real key`);
    } else {
      assert.ok(listed.has(name), `${name} is not in kustomization.yaml`);
    }
  }
});

test('Deployment: two replicas, probes on /healthz and /readyz at the container port', () => {
  const { deployment, pod, container } = wasmclusterPod(k8sDocs());
  assert.ok(deployment.spec.replicas >= 2, 'fewer than two replicas');
  assert.ok(selects(deployment.spec.selector.matchLabels, deployment.spec.template.metadata.labels),
    'Deployment selector does not match its own pods');

  const env = envOf(container);
  const listenPort = env.WASMCLUSTER_PORT ? Number(env.WASMCLUSTER_PORT.value) : 8000;
  const port = container.ports.find((p) => p.containerPort === listenPort);
  assert.ok(port, `no containerPort ${listenPort}, the port the server listens on`);

  assert.equal(container.livenessProbe.httpGet.path, '/healthz');
  assert.equal(container.readinessProbe.httpGet.path, '/readyz');
  for (const kind of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
    const probe = container[kind];
    if (!probe) continue;
    assert.ok(probe.httpGet, `${kind} is not an HTTP probe`);
    assert.equal(resolvePort(container, probe.httpGet.port), port, `${kind} is not on the server's port`);
  }
  if (container.startupProbe) assert.equal(container.startupProbe.httpGet.path, '/healthz');

  // A Service named "wasmcluster" would inject WASMCLUSTER_PORT=tcp://...
  assert.ok(pod.enableServiceLinks === false || env.WASMCLUSTER_PORT,
    'service links would set WASMCLUSTER_PORT to tcp://...');
});

test('Deployment: grace period covers preStop and the drain', () => {
  const { deployment, pod, container } = wasmclusterPod(k8sDocs());
  const env = envOf(container);
  const drain = env.WASMCLUSTER_SHUTDOWN_TIMEOUT_SECS ? Number(env.WASMCLUSTER_SHUTDOWN_TIMEOUT_SECS.value) : 10;
  const preStop = container.lifecycle && container.lifecycle.preStop;
  assert.ok(preStop, 'no preStop hook');
  let sleep;
  if (preStop.sleep) {
    sleep = Number(preStop.sleep.seconds);
  } else {
    const command = preStop.exec.command.join(' ');
    const match = /\bsleep\s+(\d+)/.exec(command);
    assert.ok(match, `preStop does not sleep: ${command}`);
    sleep = Number(match[1]);
  }
  assert.ok(sleep > 0);
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  assert.ok(grace > sleep + drain, `grace ${grace}s <= preStop ${sleep}s + drain ${drain}s`);
  assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
});

test('Deployment: non-root, read-only root, cache on emptyDir, plugins from the ConfigMap with --watch', () => {
  const docs = k8sDocs();
  const { pod, container } = wasmclusterPod(docs);
  const podSec = pod.securityContext || {};
  const sec = container.securityContext || {};
  assert.equal(sec.runAsNonRoot ?? podSec.runAsNonRoot, true);
  const uid = sec.runAsUser ?? podSec.runAsUser;
  assert.ok(uid === undefined || uid > 0, 'runs as uid 0');
  assert.equal(sec.readOnlyRootFilesystem, true);
  assert.equal(sec.allowPrivilegeEscalation, false);
  assert.ok(container.resources.requests && container.resources.limits, 'resources');

  const env = envOf(container);
  const volumes = Object.fromEntries(pod.volumes.map((v) => [v.name, v]));
  const mountAt = (dir) => container.volumeMounts.find((m) => m.mountPath === dir);

  const cacheDir = env.WASMCLUSTER_CACHE_DIR && env.WASMCLUSTER_CACHE_DIR.value;
  assert.ok(cacheDir, 'no WASMCLUSTER_CACHE_DIR');
  const cacheMount = mountAt(cacheDir);
  assert.ok(cacheMount, `nothing mounted at the cache dir ${cacheDir}`);
  assert.ok(volumes[cacheMount.name].emptyDir, 'cache dir is not an emptyDir');

  const pluginsMount = mountAt('/plugins');
  assert.ok(pluginsMount, 'nothing mounted at /plugins');
  assert.ok(!pluginsMount.subPath, 'a subPath mount is never updated');
  assert.equal(volumes[pluginsMount.name].configMap.name, 'wasmcluster-plugins');
  assert.match(env.WASMCLUSTER_WATCH.value, /^(true|1|yes|on)$/);
});

test('Deployment: auth key from the Secret, broker URL at the Redis Service', () => {
  const docs = k8sDocs();
  const { container } = wasmclusterPod(docs);
  const env = envOf(container);
  const ref = env.WASMCLUSTER_AUTH_KEY.valueFrom.secretKeyRef;
  const secret = findOne(docs, 'Secret', ref.name);
  const data = { ...(secret.stringData || {}), ...(secret.data || {}) };
  assert.ok(ref.key in data, `Secret ${ref.name} has no key ${ref.key}`);

  const broker = new URL(env.WASMCLUSTER_BROKER.value);
  assert.equal(broker.protocol, 'redis:');
  const redisService = findOne(docs, 'Service', broker.hostname);
  const redisPort = redisService.spec.ports.find((p) => p.port === Number(broker.port || 6379));
  assert.ok(redisPort, `Service ${broker.hostname} has no port ${broker.port}`);
  const redisDeployment = docs.map(({ doc }) => doc).find((doc) => doc.kind === 'Deployment'
    && selects(redisService.spec.selector, doc.spec.template.metadata.labels));
  assert.ok(redisDeployment, `no Deployment behind Service ${broker.hostname}`);
  assert.match(redisDeployment.spec.template.spec.containers[0].image, /^redis:/);
});

test('Service selects the pods and targets the container port; PDB selects them too', () => {
  const docs = k8sDocs();
  const { deployment, container } = wasmclusterPod(docs);
  const podLabels = deployment.spec.template.metadata.labels;
  const service = findOne(docs, 'Service', 'wasmcluster');
  assert.ok(selects(service.spec.selector, podLabels), 'Service selector does not match the pods');
  assert.ok(service.spec.ports.length > 0);
  for (const port of service.spec.ports) {
    assert.ok(resolvePort(container, port.targetPort ?? port.port),
      `Service port ${port.port} targets ${port.targetPort}, not a container port`);
  }
  const pdb = findOne(docs, 'PodDisruptionBudget', 'wasmcluster');
  assert.ok(selects(pdb.spec.selector.matchLabels, podLabels));
});

test('Ingress terminates TLS and routes to the Service port, with long WebSocket timeouts', () => {
  const docs = k8sDocs();
  const ingress = findOne(docs, 'Ingress', 'wasmcluster');
  const tls = ingress.spec.tls;
  assert.ok(Array.isArray(tls) && tls.length > 0, 'no tls section');
  assert.ok(tls.every((entry) => entry.secretName), 'tls entry without secretName');
  const tlsHosts = new Set(tls.flatMap((entry) => entry.hosts || []));

  const backends = [];
  for (const rule of ingress.spec.rules) {
    assert.ok(tlsHosts.has(rule.host), `host ${rule.host} is not covered by tls`);
    for (const p of rule.http.paths) backends.push({ path: p.path, backend: p.backend.service });
  }
  assert.ok(backends.length > 0, 'no paths');
  assert.ok(backends.some((b) => b.path === '/' || b.path.startsWith('/socketcluster')),
    'the WebSocket path /socketcluster/ is not routed');
  for (const { backend } of backends) {
    const service = findOne(docs, 'Service', backend.name);
    const port = service.spec.ports.find((p) => p.name === backend.port.name || p.port === backend.port.number);
    assert.ok(port, `Ingress targets port ${JSON.stringify(backend.port)} that Service ${backend.name} lacks`);
  }

  const annotations = ingress.metadata.annotations || {};
  for (const key of ['proxy-read-timeout', 'proxy-send-timeout']) {
    const value = Number(annotations[`nginx.ingress.kubernetes.io/${key}`]);
    assert.ok(value > 30, `${key} must exceed the 30 s ping timeout, is ${value}`);
  }
});

/** The compose file, its wasmcluster hosts (built from deploy/Dockerfile) and the rest. */
function compose() {
  const [doc] = parseYaml(path.join(deployDir, 'compose.yaml'));
  const services = doc.services;
  const hosts = Object.entries(services).filter(([, s]) => s.build
    && path.resolve(deployDir, s.build.context, s.build.dockerfile) === path.join(deployDir, 'Dockerfile'));
  return { doc, services, hosts };
}

test('compose: redis, two hosts with one auth key and a broker URL at redis', () => {
  const { services, hosts } = compose();
  const redisName = Object.keys(services).find((name) => /^redis(:|$)/.test(services[name].image || ''));
  assert.ok(redisName, 'no redis service');
  assert.ok(hosts.length >= 2, `only ${hosts.length} wasmcluster host(s)`);

  const keys = new Set();
  for (const [name, host] of hosts) {
    const env = host.environment;
    assert.ok(env && !Array.isArray(env), `${name}: environment should be a map`);
    assert.ok(env.WASMCLUSTER_AUTH_KEY, `${name}: no WASMCLUSTER_AUTH_KEY`);
    keys.add(env.WASMCLUSTER_AUTH_KEY);
    const broker = new URL(env.WASMCLUSTER_BROKER);
    assert.equal(broker.protocol, 'redis:');
    assert.equal(broker.hostname, redisName, `${name}: broker does not point at the redis service`);
    assert.ok(host.depends_on && redisName in host.depends_on, `${name} does not depend on redis`);
    const pluginsMount = (host.volumes || []).find((v) => (typeof v === 'string' ? v.split(':')[1] : v.target) === '/plugins');
    assert.ok(pluginsMount, `${name}: nothing mounted at /plugins`);
    const grace = parseInt(host.stop_grace_period, 10);
    const drain = Number(env.WASMCLUSTER_SHUTDOWN_TIMEOUT_SECS || 10);
    assert.ok(grace > drain, `${name}: stop_grace_period ${host.stop_grace_period} <= drain ${drain}s`);
  }
  assert.equal(keys.size, 1, 'hosts have different auth keys');
  const mounts = hosts.map(([, h]) => JSON.stringify(h.volumes.find((v) => v.target === '/plugins' || String(v).includes(':/plugins'))));
  assert.equal(new Set(mounts).size, 1, 'hosts do not share one plugins directory');
});

test('compose: the proxy publishes 8000, depends on every host and mounts its config', () => {
  const { services, hosts } = compose();
  const proxyName = Object.keys(services).find((name) => /^(nginx|haproxy)(:|$)/.test(services[name].image || ''));
  assert.ok(proxyName, 'no nginx/haproxy service');
  const proxy = services[proxyName];
  assert.ok((proxy.ports || []).some((p) => /^(\d+\.\d+\.\d+\.\d+:)?8000:\d+$/.test(String(p))), 'proxy does not publish 8000');
  const dependsOn = Array.isArray(proxy.depends_on) ? proxy.depends_on : Object.keys(proxy.depends_on || {});
  for (const [name] of hosts) {
    assert.ok(dependsOn.includes(name), `proxy does not depend on ${name}`);
  }
  const configMount = proxy.volumes.map((v) => (typeof v === 'string' ? v.split(':')[0] : v.source))
    .map((source) => path.resolve(deployDir, source))
    .find((source) => fs.existsSync(source) && fs.statSync(source).isFile());
  assert.ok(configMount, 'the proxy mounts no config file from deploy/');
});

test('nginx.conf: WebSocket upgrade headers, long timeouts, round robin over every host', () => {
  const conf = fs.readFileSync(path.join(deployDir, 'nginx.conf'), 'utf8')
    .split('\n').map((line) => line.replace(/#.*/, '')).join('\n');
  assert.match(conf, /proxy_http_version\s+1\.1\s*;/);
  assert.match(conf, /proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;/);
  const connection = /proxy_set_header\s+Connection\s+(\S+)\s*;/.exec(conf);
  assert.ok(connection, 'no Connection header');
  if (connection[1].startsWith('$')) {
    const map = new RegExp(`map\\s+\\$http_upgrade\\s+\\${connection[1]}\\s*\\{([^}]*)\\}`).exec(conf);
    assert.ok(map, `${connection[1]} is not mapped from $http_upgrade`);
    assert.match(map[1], /default\s+upgrade\s*;/);
  } else {
    assert.match(connection[1], /^"?upgrade"?$/i);
  }
  for (const key of ['proxy_read_timeout', 'proxy_send_timeout']) {
    const match = new RegExp(`${key}\\s+(\\d+)(s|m|h)?\\s*;`).exec(conf);
    assert.ok(match, `no ${key}`);
    const seconds = Number(match[1]) * { s: 1, m: 60, h: 3600 }[match[2] || 's'];
    assert.ok(seconds > 30, `${key} ${seconds}s is not above the 30 s ping timeout`);
  }
  const upstream = /upstream\s+(\S+)\s*\{([^}]*)\}/.exec(conf);
  assert.ok(upstream, 'no upstream block');
  assert.doesNotMatch(upstream[2], /\b(ip_hash|hash|least_conn|random)\b/, 'not round robin');
  assert.match(conf, new RegExp(`proxy_pass\\s+http://${upstream[1]}\\s*;`));
  const servers = [...upstream[2].matchAll(/^\s*server\s+([^\s;]+)/gm)].map((m) => m[1]);
  for (const [name] of compose().hosts) {
    assert.ok(servers.includes(`${name}:8000`), `upstream lacks ${name}:8000`);
  }
});

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function dockerfile() {
  const text = fs.readFileSync(path.join(deployDir, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').filter((line) => !/^\s*#/.test(line));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  const instructions = joined.split('\n').map((l) => l.trim()).filter(Boolean).map((line) => {
    const [, op, rest] = /^(\S+)\s*(.*)$/.exec(line);
    return { op: op.toUpperCase(), args: rest };
  });
  const args = {};
  const stages = [];
  for (const ins of instructions) {
    if (ins.op === 'ARG' && stages.length === 0) {
      const [name, value] = ins.args.split('=');
      args[name] = value;
    } else if (ins.op === 'FROM') {
      const parts = ins.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const image = parts[0].replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a || b] ?? '');
      const name = parts[1] && parts[1].toUpperCase() === 'AS' ? parts[2] : undefined;
      stages.push({ image, name, instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${ins.op} before FROM`);
      stages.at(-1).instructions.push(ins);
    }
  }
  return stages;
}

test('Dockerfile: builder stage, separate non-root runtime with VOLUME /plugins', () => {
  const stages = dockerfile();
  assert.ok(stages.length >= 2, `${stages.length} FROM stage(s)`);
  const runtime = stages.at(-1);
  const builders = stages.slice(0, -1);
  assert.ok(builders.every((s) => s.image !== runtime.image), 'runtime stage uses the builder image');
  assert.doesNotMatch(runtime.image, /^rust(:|$)/, 'runtime stage is a Rust toolchain image');

  const build = builders.find((s) => /^rust:/.test(s.image));
  assert.ok(build, 'no rust:* build stage');
  const buildRuns = build.instructions.filter((i) => i.op === 'RUN').map((i) => i.args).join('\n');
  assert.match(buildRuns, /rustup target add wasm32-wasip2/);
  // `make dist`: the server as shipped (scripts/ship-binary) and the
  // example plugins, built and stripped as `make plugins` does.
  assert.match(buildRuns, /make dist [^\n]*DIST=\/out[^\n]*EXAMPLES="echo chat"/);

  const of = (op) => runtime.instructions.filter((i) => i.op === op).map((i) => i.args);
  const user = of('USER').at(-1);
  assert.ok(user, 'runtime stage has no USER');
  assert.doesNotMatch(user.split(':')[0], /^(root|0)$/, `runtime runs as ${user}`);
  const volumes = of('VOLUME').flatMap((v) => (v.startsWith('[') ? JSON.parse(v) : v.split(/\s+/)));
  assert.ok(volumes.includes('/plugins'), 'no VOLUME /plugins');
  assert.ok(of('EXPOSE').some((e) => e.split(/\s+/).includes('8000') || e.split(/\s+/).includes('8000/tcp')), 'no EXPOSE 8000');
  const copiesFromBuild = of('COPY').filter((c) => c.includes(`--from=${build.name}`));
  assert.ok(copiesFromBuild.some((c) => /wasmcluster/.test(c)), 'binary not copied from the build stage');
  assert.ok(copiesFromBuild.some((c) => /\/plugins\/?\s*$/.test(c)), 'plugins not copied to /plugins');

  const entrypoint = JSON.parse(of('ENTRYPOINT').at(-1));
  assert.match(entrypoint[0], /(^|\/)wasmcluster$/);
  const line = entrypoint.join(' ');
  assert.match(line, / serve( |$)/);
  assert.match(line, /--host 0\.0\.0\.0/);
  assert.match(line, /--plugins \/plugins/);
});

test('Dockerfile.dockerignore keeps build output and node_modules out of the context', () => {
  const ignore = fs.readFileSync(path.join(deployDir, 'Dockerfile.dockerignore'), 'utf8')
    .split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  for (const pattern of ['target', '**/node_modules', '.git']) {
    assert.ok(ignore.includes(pattern), `${pattern} is not ignored`);
  }
  // cargo loads every workspace member: their sources must stay in the context.
  for (const needed of ['tests', 'bench', 'wit', 'host', 'examples', 'Cargo.lock', 'Makefile', 'scripts']) {
    assert.ok(!ignore.includes(needed) && !ignore.includes(`${needed}/`), `${needed} must not be ignored`);
  }
});
