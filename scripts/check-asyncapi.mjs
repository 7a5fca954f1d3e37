// Validates schemas/asyncapi.yaml with @asyncapi/parser (installed by scripts/check-asyncapi.sh
// into .tools/asyncapi) and checks that it references every message type of the JSON Schemas.
//
//   node scripts/check-asyncapi.mjs <tools dir> <asyncapi.yaml>
//
// - The document is parsed with `fromFile`, so the relative $refs to the JSON Schema files
//   are resolved against the document's own directory.
// - Payloads use `application/schema+json;version=draft-2020-12`. The parser resolves them but
//   (for AsyncAPI 3) validates no payload schema, so this script does: each resolved payload
//   must be a valid draft 2020-12 schema (Ajv, formats on) and every message example must
//   validate against its payload.
// - Every diagnostic is printed; any of severity error (0) fails the check.
// - Catalogue: every message type of ws-client-message.schema.json, ws-server-message.schema.json
//   and task-event.schema.json (the $defs their top-level oneOf/anyOf reference, unions of
//   $refs expanded) must be the payload $ref of some message of some channel.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const [toolsDir, docArg] = process.argv.slice(2);
if (!toolsDir || !docArg) {
  console.error('usage: node scripts/check-asyncapi.mjs <tools dir> <asyncapi.yaml>');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(toolsDir), 'package.json'));
const { Parser, fromFile } = require('@asyncapi/parser');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats');
const yaml = require('js-yaml');

const docPath = path.resolve(docArg);
const docDir = path.dirname(docPath);
const shown = path.relative(process.cwd(), docPath) || docPath;
const DRAFT_2020_12 = 'application/schema+json;version=draft-2020-12';
const SEVERITY = ['error', 'warning', 'info', 'hint'];

let failed = false;
const fail = (line) => {
  console.error(`asyncapi: ${line}`);
  failed = true;
};

const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, docPath).parse();

for (const d of diagnostics) {
  const where = (d.path || []).join('.') || '(root)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  const source = d.source && path.resolve(d.source) !== docPath ? ` [${d.source}]` : '';
  console.log(`${SEVERITY[d.severity] ?? d.severity} ${shown}${line} ${where}: ${d.message} (${d.code})${source}`);
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (errors.length > 0) fail(`${errors.length} error diagnostic(s)`);
if (!document) fail(`${shown} could not be parsed into a document`);

// --- payloads: valid draft 2020-12 schemas, and the examples validate against them ---
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
addFormats(ajv);
const ajvErrors = (errs) =>
  (errs || []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
if (document) {
  for (const message of document.allMessages().all()) {
    const id = message.id();
    const payload = message.json('payload');
    if (!payload) {
      fail(`message ${id} has no payload`);
      continue;
    }
    const format = payload.schemaFormat;
    if (format !== DRAFT_2020_12) {
      fail(`message ${id}: payload schemaFormat is ${format ?? '(none)'}, expected ${DRAFT_2020_12}`);
      continue;
    }
    const schema = payload.schema;
    if (!ajv.validateSchema(schema)) {
      fail(`message ${id}: payload is not a draft 2020-12 schema: ${ajvErrors(ajv.errors)}`);
      continue;
    }
    let validate;
    try {
      validate = ajv.compile(schema);
    } catch (e) {
      fail(`message ${id}: payload does not compile: ${e.message}`);
      continue;
    }
    for (const [i, example] of (message.json('examples') || []).entries()) {
      if (example.payload !== undefined && !validate(example.payload)) {
        fail(`message ${id}: example ${example.name ?? i} does not match its payload: ${ajvErrors(validate.errors)}`);
      }
    }
  }
}

// --- catalogue: every message type of the JSON Schemas is referenced by a channel's message ---
const raw = yaml.load(readFileSync(docPath, 'utf8'));
const pointer = (root, ref) => {
  if (!ref.startsWith('#/')) return undefined;
  return ref
    .slice(2)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((node, key) => (node == null ? undefined : node[key]), root);
};
const referenced = new Set(); // "<file>#/$defs/<name>" as written, file normalized
const normalize = (ref) => {
  const [file, frag = ''] = ref.split('#');
  return `${path.relative(docDir, path.resolve(docDir, file))}#${frag}`;
};
for (const [channelId, channel] of Object.entries(raw.channels || {})) {
  for (const [messageId, entry] of Object.entries(channel?.messages || {})) {
    const message = entry && entry.$ref ? pointer(raw, entry.$ref) : entry;
    if (!message) {
      fail(`channels.${channelId}.messages.${messageId}: ${entry?.$ref} does not resolve`);
      continue;
    }
    const ref = message.payload?.schema?.$ref ?? message.payload?.$ref;
    if (typeof ref === 'string' && !ref.startsWith('#')) referenced.add(normalize(ref));
  }
}

// Operations: a reply's messages belong to the reply's channel (the parser checks this for the
// operation's own messages only), and every message of a channel is used by some operation.
const used = new Set();
for (const [opId, op] of Object.entries(raw.operations || {})) {
  const check = (where, channelRef, messages) => {
    for (const m of messages || []) {
      if (typeof m?.$ref !== 'string') continue;
      used.add(m.$ref);
      if (channelRef && !m.$ref.startsWith(`${channelRef}/messages/`)) {
        fail(`operations.${opId}.${where}: ${m.$ref} is not a message of ${channelRef}`);
      }
    }
  };
  check('messages', op?.channel?.$ref, op?.messages);
  if (op?.reply) check('reply.messages', op.reply.channel?.$ref ?? op.channel?.$ref, op.reply.messages);
}
for (const [channelId, channel] of Object.entries(raw.channels || {})) {
  for (const messageId of Object.keys(channel?.messages || {})) {
    if (!used.has(`#/channels/${channelId}/messages/${messageId}`)) {
      fail(`channels.${channelId}.messages.${messageId} is used by no operation`);
    }
  }
}

// The message types of a JSON Schema file: the $defs its top-level oneOf/anyOf reference, with
// a $def that is only a union of $refs (task-event's any_envelope) replaced by its members.
const messageTypes = (schema) => {
  const names = [];
  const visit = (branches, seen) => {
    for (const branch of branches || []) {
      const m = typeof branch.$ref === 'string' && branch.$ref.match(/^#\/\$defs\/(.+)$/);
      if (!m) continue;
      const name = m[1];
      if (seen.has(name)) continue;
      seen.add(name);
      const def = schema.$defs?.[name];
      const union = def && (def.oneOf || def.anyOf);
      const onlyUnion = union && union.every((b) => b.$ref) &&
        Object.keys(def).every((k) => ['oneOf', 'anyOf', 'title', 'description'].includes(k));
      if (onlyUnion) visit(union, seen);
      else names.push(name);
    }
  };
  visit([...(schema.oneOf || []), ...(schema.anyOf || [])], new Set());
  return names;
};

const catalogues = [
  'ws-client-message.schema.json',
  'ws-server-message.schema.json',
  'task-event.schema.json',
];
for (const file of catalogues) {
  const schemaPath = path.join(docDir, file);
  const schema = JSON.parse(readFileSync(schemaPath, 'utf8'));
  const wholeFile = referenced.has(`${file}#`);
  for (const name of messageTypes(schema)) {
    if (!schema.$defs?.[name]) {
      fail(`${file}: the top-level union references #/$defs/${name}, which does not exist`);
    } else if (!wholeFile && !referenced.has(`${file}#/$defs/${name}`)) {
      fail(`missing: no message of ${shown} has payload ./${file}#/$defs/${name}`);
    }
  }
}

if (failed) process.exit(1);
const channels = document.allChannels().length;
const messages = document.allMessages().length;
const operations = document.allOperations().length;
console.log(`asyncapi: ${shown} valid (${channels} channels, ${messages} messages, ${operations} operations)`);
